"""HyperStyle in JAX/Flax: StyleGAN2 inversion with a weight-offset hypernetwork.

Layout inside the package is NHWC for images and HWIO for conv kernels; PyTorch's
NCHW/OIHW appear only in `hyperstyle_jax.convert`.
"""
__version__ = "0.1.0"
