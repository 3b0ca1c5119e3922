"""MoCo feature loss (official `criteria/moco_loss.py`): the non-face replacement of the ID loss.

    L_moco = mean_i (1 - <g(y_hat_i), stop_gradient(g(y_i))>)

g: PyTorch `F.interpolate(x, size=224)` (mode 'nearest') applied directly to the [-1, 1]
image (no ImageNet normalization, as the official code), the MoCo v2 ResNet-50 query
encoder without its `fc` head (global average pool -> 2048-d), then
`F.normalize(dim=1)` (x / max(||x||, 1e-12)). Eval mode (running BatchNorm statistics).

Variables: `{'params', 'batch_stats'}` of `models.resnet.ResNet50Trunk`, written by
`tools/convert_weights.py moco`.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from hyperstyle_jax.losses.similarity import similarity_terms
from hyperstyle_jax.models.resnet import ResNet50Trunk

MOCO_INPUT = 224


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source indices of PyTorch 'nearest' (legacy, not 'nearest-exact') interpolation.

    ATen computes scale = (float)n_in / n_out and src = min(floor(dst * scale), n_in - 1)
    in float32 (special cases: equal sizes copy, exact 2x upsampling is dst >> 1).
    Float32 rounding matters: it is not always floor(dst * n_in / n_out) in exact arithmetic.
    """
    dst = np.arange(n_out)
    if n_out == n_in:
        return dst
    if n_out == 2 * n_in:
        return dst >> 1
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.floor(dst.astype(np.float32) * scale).astype(np.int64)
    return np.minimum(src, n_in - 1)


def resize_nearest(x: jnp.ndarray, size: int = MOCO_INPUT) -> jnp.ndarray:
    """`F.interpolate(x, size=size)` on NHWC: [B, H, W, C] -> [B, size, size, C]."""
    rows = nearest_indices(x.shape[1], size)
    cols = nearest_indices(x.shape[2], size)
    return x[:, rows][:, :, cols]


def moco_eval_shape() -> dict:
    """Shapes of the ResNet-50 trunk variables (no computation)."""
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    return jax.eval_shape(lambda a: ResNet50Trunk().init(jax.random.PRNGKey(0), a), x)


def moco_embed(variables: Mapping, x: jnp.ndarray) -> jnp.ndarray:
    """[B, H, W, 3] in [-1, 1] -> unit-norm 2048-d features [B, 2048]."""
    f = ResNet50Trunk().apply(variables, resize_nearest(x), train=False)
    return f / jnp.maximum(jnp.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def moco_loss_terms(variables: Mapping, y_hat: jnp.ndarray, y: jnp.ndarray,
                    x: jnp.ndarray | None = None) -> dict:
    """The official `MocoLoss.forward(y_hat, y, x)` as arrays (same keys as `id_loss_terms`)."""
    return similarity_terms(moco_embed, variables, y_hat, y, x)


def moco_loss(variables: Mapping, y_hat: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Scalar mean_i (1 - <g(y_hat_i), sg(g(y_i))>)."""
    return moco_loss_terms(variables, y_hat, y)["loss"]
