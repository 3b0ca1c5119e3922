"""GANSpace: edits along PCA components of W (the math and the PCA file; the CLI is
`cli_ganspace`). Official `editing/cars_editor.py` `CarsEditor.apply_ganspace`.

PCA file (official `cars_pca.pt` structure): {'mean': (1, D), 'std': (K,), 'comp': (K, 1, D)}.
A direction is (component, start, end, strength). The official `_get_delta`:
    w_coord = sum((latent[0] - mean) · comp[i]) / std[i]     # W+ row 0 only
    delta   = (strength - w_coord) · comp[i] · std[i]        # (1, D)
added to W+ rows [start, end). Each image's edits are rendered with its own deltas and
then cropped to rows [64:448] (the official crop, hard-coded for 512x384 cars in a 512
frame; `official_crop`).
"""
from __future__ import annotations

import os
import re
from typing import Optional, Sequence

import numpy as np

from hyperstyle_jax.convert.common import ConversionError
from hyperstyle_jax.convert.editing_files import read_tensor_file
from hyperstyle_jax.editing import EditError

# cars_editor.py:16, (pca_idx, start, end, strength)
OFFICIAL_DIRECTIONS = {
    "pose_i": (0, 0, 5, 2),
    "pose_ii": (0, 0, 5, -2),
    "cube": (16, 3, 6, 25),
    "color": (22, 9, 11, -8),
    "grass": (41, 9, 11, -18),
}
OFFICIAL_LABELS = {"pose_i": "Pose I", "pose_ii": "Pose II", "cube": "Cube", "color": "Color",
                   "grass": "Grass"}
CROP_ROWS = (64, 448)  # cars_editor._latents_to_image: images[:, :, 64:448, :]


def edit_key(name: str) -> str:
    """'Pose II', 'pose-ii', 'POSE_II' -> 'pose_ii'."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def named_direction(name: str) -> tuple:
    key = edit_key(name)
    if key not in OFFICIAL_DIRECTIONS:
        raise EditError(f"unknown GANSpace edit {name!r}; the official ones are "
                        + ", ".join(OFFICIAL_LABELS[k] for k in OFFICIAL_DIRECTIONS))
    return OFFICIAL_DIRECTIONS[key]


def load_pca(path: str) -> dict:
    """A PCA file (.pt as `cars_pca.pt`, or .npz with the same keys) -> float32 numpy dict."""
    if not os.path.isfile(path):
        raise EditError(f"{path}: no such PCA file")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                pca = {k: np.asarray(f[k], np.float32) for k in f.files}
        except (OSError, ValueError) as e:
            raise EditError(f"{path}: not a readable .npz ({e})") from None
    elif ext in (".pt", ".pth"):
        try:
            pca = read_tensor_file(path)
        except ConversionError as e:
            raise EditError(str(e)) from None
        if not isinstance(pca, dict):
            raise EditError(f"{path}: holds a bare tensor, expected a dict with 'mean', 'std', "
                            f"'comp' (the official cars_pca.pt structure)")
    else:
        raise EditError(f"{path}: unknown PCA format {ext!r} (use .pt or .npz)")
    missing = [k for k in ("mean", "std", "comp") if k not in pca]
    if missing:
        raise EditError(f"{path}: PCA file lacks {', '.join(missing)} "
                        f"(has {', '.join(sorted(pca))})")
    return {k: pca[k] for k in ("mean", "std", "comp")}


def check_pca(pca: dict, style_dim: int, origin: str = "pca") -> dict:
    """Shapes (1, D), (K,), (K, 1, D) with D = the generator's code width."""
    mean, std, comp = (np.asarray(pca[k], np.float32) for k in ("mean", "std", "comp"))
    k = comp.shape[0] if comp.ndim >= 1 else 0
    if mean.reshape(-1).shape[0] != style_dim or comp.ndim != 3 or comp.shape[1:] != (1, style_dim):
        raise EditError(f"{origin}: PCA of width {mean.reshape(-1).shape[0]} (comp "
                        f"{tuple(comp.shape)}), but this generator's codes are {style_dim} wide; "
                        f"expected mean (1, {style_dim}), comp (K, 1, {style_dim})")
    if std.shape != (k,):
        raise EditError(f"{origin}: std has shape {tuple(std.shape)}, expected ({k},) for {k} "
                        f"components")
    return {"mean": mean.reshape(1, style_dim), "std": std, "comp": comp}


def check_direction(pca: dict, direction: Sequence, n_styles: int, origin: str = "pca") -> tuple:
    """(component, start, end, strength) within the PCA file and the W+ rows."""
    idx, start, end, strength = direction
    idx, start, end = int(idx), int(start), int(end)
    k = pca["comp"].shape[0]
    if not 0 <= idx < k:
        raise EditError(f"{origin}: component {idx} out of range: the file has {k} components "
                        f"(0..{k - 1})")
    if not 0 <= start < end <= n_styles:
        raise EditError(f"GANSpace rows [{start}, {end}) out of range: need 0 <= start < end <= "
                        f"{n_styles} (this generator's W+ rows)")
    return idx, start, end, float(strength)


def get_delta(pca: dict, latent: np.ndarray, idx: int, strength: float) -> np.ndarray:
    """The official `_get_delta`: latent [n_styles, D] -> delta (1, D), float32."""
    w_centered = latent - pca["mean"]
    w_coord = np.sum(w_centered[0].reshape(-1) * pca["comp"][idx].reshape(-1)) / pca["std"][idx]
    return ((strength - w_coord) * pca["comp"][idx] * pca["std"][idx]).astype(np.float32)


def apply(codes: np.ndarray, deltas: Sequence[Optional[np.ndarray]], pca: dict,
          directions: Sequence[tuple]):
    """codes [n_styles, D] of one image -> ([len(directions), n_styles, D] edited codes,
    the same unbatched deltas for every edit)."""
    codes = np.asarray(codes, np.float32)
    out = []
    for idx, start, end, strength in directions:
        padded = np.zeros(codes.shape, np.float32)  # official delta_padded is float32
        padded[int(start):int(end)] += get_delta(pca, codes, int(idx), float(strength))
        out.append(codes + padded)
    return np.stack(out).astype(np.float32), list(deltas)


def official_crop(images: np.ndarray) -> np.ndarray:
    """[B, H, W, 3] -> rows [64:448], as the official cars editor does unconditionally
    (the 384-row car band of a 512 frame; at other sizes it is still these rows)."""
    return images[:, CROP_ROWS[0]:CROP_ROWS[1]]
