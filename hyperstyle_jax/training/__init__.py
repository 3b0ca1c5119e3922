"""Training support: optimizer, mesh and shardings, checkpoints, logging, the jitted step.

`hyperstyle_jax.train` is the loop that wires these together.
"""
