"""Weight converters from the official PyTorch checkpoints (the only NCHW/OIHW code).

Each family module defines `register(subparsers)`, adding its subcommands to
`tools/convert_weights.py`. Every converter is strict: it fails naming every
missing, misshaped or unexpected key, and it never executes pickled code.
"""
FAMILIES = (
    "hyperstyle_jax.convert.stylegan2",   # stylegan2
    "hyperstyle_jax.convert.hyperstyle",  # hyperstyle, w_encoder, resnet34
    "hyperstyle_jax.convert.losses",      # lpips, arcface, moco
    "hyperstyle_jax.convert.restyle",     # restyle_e4e
    "hyperstyle_jax.convert.clip",        # clip
    "hyperstyle_jax.convert.stylegan2_ada",  # stylegan2_ada (NVIDIA pickles: G_ema, G, D)
    "hyperstyle_jax.convert.discriminator",  # discriminator (rosinality d)
)
