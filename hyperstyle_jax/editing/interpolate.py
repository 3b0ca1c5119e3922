"""Interpolation between two inversions (the math; the CLI is `cli_interpolate`).

Official `notebooks/animations_playground.ipynb` `get_result_from_vecs` /
`interpolate_weight_deltas`: codes AND every weight offset move linearly,
b·α + a·(1 − α), so α = 0 is image A's reconstruction and α = 1 image B's.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from hyperstyle_jax.editing import EditError


def apply(codes: np.ndarray, deltas: Sequence[Optional[np.ndarray]], alphas: Sequence[float]):
    """codes [2, n_styles, D] (A, B) and deltas (None, or [2, out, in, k, k] per layer)
    -> (codes' [K, n_styles, D], deltas' None or [K, out, in, k, k]) for K alphas."""
    codes = np.asarray(codes, np.float32)
    if codes.shape[0] != 2:
        raise EditError(f"interpolation needs a pair of codes, got {codes.shape[0]}")
    a64 = np.asarray(alphas, np.float64)
    # The notebook's alpha is a Python float: 1 - alpha is formed before the float32 product.
    wb, wa = a64.astype(np.float32), (1.0 - a64).astype(np.float32)

    def mix(x):
        x = np.asarray(x, np.float32)
        shape = (-1,) + (1,) * (x.ndim - 1)
        return (x[1][None] * wb.reshape(shape) + x[0][None] * wa.reshape(shape)).astype(np.float32)

    return mix(codes), [None if d is None else mix(d) for d in deltas]


def frame_alphas(n_frames: int) -> np.ndarray:
    """Evenly spaced α from 0 to 1 inclusive, for an animation of n_frames."""
    if n_frames < 2:
        raise EditError(f"--frames must be >= 2, got {n_frames}")
    return np.linspace(0.0, 1.0, n_frames)
