"""InterFaceGAN: move W+ codes along a linear direction (the math; the CLI is
`cli_interfacegan`).

Official `editing/face_editor.py` `FaceEditor.apply_interfacegan(factor_range=(a, b))`:
for f in range(a, b), codes + f·direction, every edit rendered with the image's own
deltas and fixed noise. Directions are (1, D) (added to every W+ row) or
(1, n_styles, D) (one row each), as the official `age.pt` / `smile.pt` / `pose.pt`; read
from .pt (needs torch) or .npy.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from hyperstyle_jax.convert.common import ConversionError
from hyperstyle_jax.convert.editing_files import read_tensor_file
from hyperstyle_jax.editing import EditError


def official_factors(a: int, b: int) -> list:
    """`factor_range=(a, b)` of the official editor is Python's range: b is excluded
    (the script's (-5, 5) gives -5..4)."""
    return list(range(a, b))


def load_direction(path: str) -> np.ndarray:
    """A direction file (.pt as the official ones, or .npy) -> float32 numpy, as stored."""
    if not os.path.isfile(path):
        raise EditError(f"{path}: no such direction file")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise EditError(f"{path}: not a readable .npy array ({e})") from None
    elif ext in (".pt", ".pth"):
        try:
            arr = read_tensor_file(path)
        except ConversionError as e:
            raise EditError(str(e)) from None
        if isinstance(arr, dict):
            raise EditError(f"{path}: holds a dict ({', '.join(sorted(arr))}), expected a bare "
                            f"direction tensor (1, D) or (1, n_styles, D)")
    else:
        raise EditError(f"{path}: unknown direction format {ext!r} (use .pt or .npy)")
    return np.asarray(arr, np.float32)


def check_direction(direction: np.ndarray, n_styles: int, style_dim: int,
                    origin: str = "direction") -> np.ndarray:
    """Validate against the generator's codes [n_styles, style_dim]; returns (1, D) or
    (1, n_styles, D). A (D,) or (n_styles, D) array gets its leading 1."""
    d = np.asarray(direction, np.float32)
    if d.ndim in (1, 2) and not (d.ndim == 2 and d.shape[0] == 1):
        d = d[None]
    if d.ndim not in (2, 3) or d.shape[0] != 1:
        raise EditError(f"{origin}: direction has shape {tuple(direction.shape)}; expected "
                        f"(1, {style_dim}) or (1, {n_styles}, {style_dim})")
    if d.shape[-1] != style_dim:
        raise EditError(f"{origin}: direction width {d.shape[-1]}, but this generator's codes "
                        f"are {style_dim} wide ({n_styles} x {style_dim})")
    if d.ndim == 3 and d.shape[1] != n_styles:
        raise EditError(f"{origin}: direction has {d.shape[1]} W+ rows, but this generator "
                        f"has {n_styles} ({n_styles} x {style_dim})")
    if not np.all(np.isfinite(d)):
        raise EditError(f"{origin}: direction holds NaN or inf")
    return d


def apply(codes: np.ndarray, deltas: Sequence[Optional[np.ndarray]], direction: np.ndarray,
          factors: Sequence[float]):
    """codes [n_styles, D] of one image -> (codes + f·direction for f in factors
    [F, n_styles, D], the same unbatched deltas for every edit)."""
    codes = np.asarray(codes, np.float32)
    d = np.asarray(direction, np.float32)
    d = d[0] if d.ndim == 3 else d  # (n_styles, D) or (1, D): broadcasts over rows
    # float32 throughout, f a Python scalar: the official `latents + f * direction`.
    edited = np.stack([codes + float(f) * d for f in factors]).astype(np.float32)
    return edited, list(deltas)
