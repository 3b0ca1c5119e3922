"""PyTorch's `AdaptiveAvgPool2d`, exactly: the official `face_pool` and the ID-loss pooling.

Output cell i averages input rows [floor(i*n/m), ceil((i+1)*n/m)) for n inputs and m
outputs. When m divides n that is a plain block mean (1024 -> 256 is a 4x4 mean, not an
image resize); when m > n cells replicate pixels, as PyTorch does.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def _pool_matrix(n: int, m: int) -> np.ndarray:
    """[m, n] row-stochastic matrix of PyTorch's adaptive average bins."""
    mat = np.zeros((m, n), np.float32)
    for i in range(m):
        a = (i * n) // m
        b = -((-(i + 1) * n) // m)  # ceil
        mat[i, a:b] = 1.0 / (b - a)
    return mat


def adaptive_avg_pool2d(x: jnp.ndarray, out_hw: tuple[int, int]) -> jnp.ndarray:
    """x: [B, H, W, C] -> [B, h, w, C]."""
    _, h_in, w_in, _ = x.shape
    h, w = out_hw
    if (h_in, w_in) == (h, w):
        return x
    if h_in % h == 0 and w_in % w == 0:
        b, _, _, c = x.shape
        return x.reshape(b, h, h_in // h, w, w_in // w, c).mean(axis=(2, 4))
    ph = jnp.asarray(_pool_matrix(h_in, h), x.dtype)
    pw = jnp.asarray(_pool_matrix(w_in, w), x.dtype)
    return jnp.einsum("ih,bhwc,jw->bijc", ph, x, pw, precision="highest")
