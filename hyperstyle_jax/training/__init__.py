"""Training parts: the tasks (HyperStyle, W-encoder), their jitted steps, the optimizers,
configs, checkpoints, metrics, signal handling and config files.

`hyperstyle_jax.train` is the loop that wires them together; the mesh and shardings are
`hyperstyle_jax.parallel`'s.
"""
