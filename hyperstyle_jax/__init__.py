"""HyperStyle in JAX/Flax: StyleGAN2 inversion with a weight-offset hypernetwork.

    import hyperstyle_jax
    model = hyperstyle_jax.load("ckpt/hyperstyle_ffhq", "ckpt/w_encoder_faces")
    [me] = model.invert(["me.jpg"])          # see hyperstyle_jax.api

Layout inside the package is NHWC for images and HWIO for conv kernels; PyTorch's
NCHW/OIHW appear only in `hyperstyle_jax.convert`.

`load` and `Model` come from `hyperstyle_jax.api`, imported on first use (PEP 562), so
that `import hyperstyle_jax.utils...` and the CLIs' --help do not load jax and flax.
"""
import importlib

__version__ = "0.1.0"
__all__ = ["InvertedImage", "Model", "load"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("hyperstyle_jax.api"), name)
    raise AttributeError(f"module 'hyperstyle_jax' has no attribute {name!r}")
