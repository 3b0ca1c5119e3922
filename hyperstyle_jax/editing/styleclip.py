"""StyleCLIP global directions on the HyperStyle-tuned generator.

An edit is `(s, deltas) -> s'`: the per-layer styles s of one image move along a
direction Δs built from a CLIP text direction Δi and the per-channel CLIP directions
`fs3`; the image's own deltas are reused unchanged when rendering.

Official `editing/styleclip/global_direction.py` + `stylespace_utils.py`:
    r_c  = fs3 @ Δi                          (one value per fs3 row = StyleSpace channel)
    Δs   = r_c · [|r_c| >= β];  Δs /= max|Δs|   (max over ALL fs3 rows, also the rows of
                                              layers that are never edited: the quirk)
    dir_j = Δs[rows of j] · s_std[j] for the first 11 non-toRGB layers j, else zeros
    s'_j = s_j + α · dir_j

Files: `fs3.npy` (rows, D_clip) and `S_mean_std` (a pickle of [means, stds], each a list
of per-layer float32 arrays, toRGB layers included); both official formats, read safely.
"""
from __future__ import annotations

import importlib
import io
import os
import pickle
from typing import Optional, Sequence

import jax
import numpy as np

from hyperstyle_jax.editing import EditError
from hyperstyle_jax.inference import compile_for_batch
from hyperstyle_jax.models import stylespace
from hyperstyle_jax.models.stylespace import StyleSpaceLayout

# ----------------------------------------------------------------------------- files


def load_fs3(path: str) -> np.ndarray:
    """`fs3.npy`: float (rows, D_clip), one unit CLIP direction per StyleSpace channel."""
    if not os.path.isfile(path):
        raise EditError(f"{path}: no such fs3 file")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise EditError(f"{path}: not a readable .npy array ({e})") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise EditError(f"{path}: fs3 must be a 2-D float array (rows, D_clip), got "
                        f"{arr.dtype} {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise EditError(f"{path}: fs3 holds NaN or inf")
    return arr.astype(np.float32)  # the official `torch.from_numpy(...).float()`


# numpy's pickle of an ndarray needs exactly these globals; numpy >= 2 writes numpy._core,
# numpy 1.x wrote numpy.core (both spellings resolve to the same functions).
_NUMPY_GLOBALS = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): lambda: _multiarray()._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): lambda: _multiarray()._reconstruct,
    ("numpy.core.multiarray", "scalar"): lambda: _multiarray().scalar,
    ("numpy._core.multiarray", "scalar"): lambda: _multiarray().scalar,
}


def _multiarray():
    # numpy 2 moved numpy.core to numpy._core; fs3.npy pickles name one or the other.
    try:
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy 1.x
        return importlib.import_module("numpy.core.multiarray")


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Plain containers and numpy arrays only: any other global is refused, so loading a
    downloaded statistics file cannot run code."""

    def find_class(self, module, name):
        get = _NUMPY_GLOBALS.get((module, name))
        if get is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return get()


def load_s_mean_std(path: str) -> tuple[list, list]:
    """The official `S_mean_std` (pickle of [means, stds]) -> (means, stds), each a list of
    float32 [C_j] arrays, one per StyleSpace layer (toRGB layers included)."""
    if not os.path.isfile(path):
        raise EditError(f"{path}: no such S_mean_std file")
    with open(path, "rb") as f:
        data = f.read()
    try:
        obj = _ArraysOnlyUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        raise EditError(f"{path}: not an S_mean_std pickle ({e})") from None
    except Exception as e:  # truncated or corrupt files raise many kinds of errors
        raise EditError(f"{path}: unreadable S_mean_std pickle ({type(e).__name__}: {e})") from None
    if not (isinstance(obj, (list, tuple)) and len(obj) == 2
            and all(isinstance(v, (list, tuple)) for v in obj)):
        raise EditError(f"{path}: expected a pickled [means, stds] pair of lists, got "
                        f"{type(obj).__name__}")
    means, stds = obj
    if len(means) != len(stds) or not means:
        raise EditError(f"{path}: {len(means)} means but {len(stds)} stds")
    out = []
    for what, arrs in (("means", means), ("stds", stds)):
        conv = []
        for j, a in enumerate(arrs):
            if (not isinstance(a, np.ndarray) or a.ndim != 1
                    or not np.issubdtype(a.dtype, np.floating)):
                raise EditError(f"{path}: {what}[{j}] is not a 1-D float array")
            conv.append(a.astype(np.float32))
        out.append(conv)
    for j, (m, s) in enumerate(zip(*out)):
        if m.shape != s.shape:
            raise EditError(f"{path}: layer {j}: mean {m.shape} vs std {s.shape}")
    return out[0], out[1]


def save_s_mean_std(path: str, means: Sequence[np.ndarray], stds: Sequence[np.ndarray]) -> None:
    """Write [means, stds] as the official file: pickle protocol 3 of two lists of float32
    arrays (readable by `load_s_mean_std` and by the official `pickle.load`)."""
    obj = [[np.asarray(m, np.float32) for m in means], [np.asarray(s, np.float32) for s in stds]]
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=3)
    os.replace(tmp, path)


def check_files(fs3: np.ndarray, s_std: Sequence[np.ndarray], lay: StyleSpaceLayout,
                clip_dim: Optional[int] = None) -> None:
    """Check fs3 / S_mean_std against a generator's StyleSpace (one clear line each).

    Like the official code, fs3 must cover at least the edited layers' channels (its rows
    are read in order), and s_std may have more layers than the generator (a 1024 file
    used with a 256 generator: the extra entries are ignored, as `zip` does there).
    """
    need = sum(lay.dims[j] for j in lay.edited_indices)
    if fs3.shape[0] < need:
        raise EditError(f"fs3 has {fs3.shape[0]} rows, but this generator's edited layers "
                        f"{list(lay.edited_indices)} have {need} channels")
    if clip_dim is not None and fs3.shape[1] != clip_dim:
        raise EditError(f"fs3 rows are {fs3.shape[1]} wide, the CLIP text features are "
                        f"{clip_dim} wide")
    if len(s_std) < lay.n_layers:
        raise EditError(f"S_mean_std has {len(s_std)} layers, this generator has {lay.n_layers}")
    for j in lay.edited_indices:
        if s_std[j].shape != (lay.dims[j],):
            raise EditError(f"S_mean_std layer {j} ({lay.names[j]}) has {s_std[j].shape[0]} "
                            f"channels, the generator has {lay.dims[j]}")


# ----------------------------------------------------------------------------- directions


def channel_weights(fs3: np.ndarray, delta_i: np.ndarray, beta: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """`get_delta_s` up to the per-layer split: (r_c, Δs), both [rows] float32.

    r_c = fs3 @ Δi; rows with |r_c| < beta are zeroed, the rest divided by max|Δs| over
    all rows (unchanged when every row is zeroed).
    """
    fs3 = np.asarray(fs3, np.float32)
    delta_i = np.asarray(delta_i, np.float32)  # the official `.float()`
    r_c = fs3 @ delta_i
    delta_s = np.where(np.abs(r_c) < beta, np.float32(0), r_c).astype(np.float32)
    m = np.abs(delta_s).max() if delta_s.size else np.float32(0)
    if m > 0:
        delta_s = delta_s / m
    return r_c, delta_s


def features_channels_to_s(delta_s: np.ndarray, s_std: Sequence[np.ndarray],
                           lay: StyleSpaceLayout) -> list:
    """`stylespace_utils.features_channels_to_s`: consecutive blocks of Δs go to the edited
    layers in order, each times that layer's std; every other layer gets zeros.
    Returns n_layers float32 arrays [dims_j]."""
    out, start = [], 0
    edited = set(lay.edited_indices)
    for j, c in enumerate(lay.dims):
        if j in edited:
            out.append((delta_s[start:start + c] * s_std[j]).astype(np.float32))
            start += c
        else:
            out.append(np.zeros((c,), np.float32))
    return out


def get_delta_s(fs3: np.ndarray, delta_i: np.ndarray, s_std: Sequence[np.ndarray], beta: float,
                lay: StyleSpaceLayout) -> list:
    """The official `StyleCLIPGlobalDirection.get_delta_s` given Δi: per-layer directions
    [dims_j] (zeros outside the 11 edited layers)."""
    check_files(fs3, s_std, lay, clip_dim=int(np.shape(delta_i)[0]))
    _, delta_s = channel_weights(fs3, delta_i, beta)
    return features_channels_to_s(delta_s, s_std, lay)


def text_direction(t_target: np.ndarray, t_neutral: np.ndarray) -> np.ndarray:
    """Δi = normalize(T(target) - T(neutral)) from the template-averaged text features."""
    d = np.asarray(t_target, np.float32) - np.asarray(t_neutral, np.float32)
    n = np.linalg.norm(d)
    if not n > 0:
        raise EditError("the neutral and target prompts give the same CLIP text features")
    return (d / n).astype(np.float32)


def apply(styles: Sequence[np.ndarray], direction: Sequence[np.ndarray],
          alphas: Sequence[float]) -> list:
    """One image's styles (list of [dims_j]) -> per-layer [A, dims_j]: s + α·dir for α in
    alphas (float32, α a Python scalar as in the official `s + alpha * delta_s`)."""
    if len(styles) != len(direction):
        raise EditError(f"{len(styles)} style layers but the direction has {len(direction)}")
    return [np.stack([np.asarray(s, np.float32) + float(a) * np.asarray(d, np.float32)
                      for a in alphas]).astype(np.float32) for s, d in zip(styles, direction)]


# ------------------------------------------------------------------ fs3 (StyleCLIP's GetFs)


def normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """x / |x| along axis; an all-zero vector stays zero (the official code would give NaN
    for a channel that changes nothing)."""
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    return np.where(n > 0, x / np.where(n > 0, n, 1), 0)


# ----------------------------------------------------------------------------- rendering


class StyleSpaceRenderer:
    """Compiled G(s, deltas) (`input_is_stylespace`) for batches of styles that share ONE
    image's deltas, as the official edit.py renders every edit of an image with its d[i].

    r = StyleSpaceRenderer(inverter, batch_size=4)
    images = r(styles, deltas)   # styles: per layer [K, dims_j]; deltas: per layer None or
                                 # [out, in, k, k] -> float32 [K, size, size, 3], un-clipped
    K may exceed batch_size: the styles go through in chunks, the last one padded. One
    compile serves every image, β and α.
    """

    def __init__(self, inverter, batch_size: int = 4):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.config = inverter.generator_config
        self.layout = stylespace.layout(self.config)
        self.shapes = inverter.model.tuned_delta_shapes()
        gen = inverter.model.generator

        def fn(gen_vars, styles, deltas):
            return stylespace.render_styles(gen, gen_vars, styles, weights_deltas=deltas)

        f32 = np.float32
        self._compiled = compile_for_batch(
            fn, self.batch_size, bound=(inverter.frozen["generator"],),
            batched=([jax.ShapeDtypeStruct((c,), f32) for c in self.layout.dims],),
            shared=([None if s is None else jax.ShapeDtypeStruct(s, f32) for s in self.shapes],))

    def __call__(self, styles: Sequence[np.ndarray], deltas: Sequence[Optional[np.ndarray]]
                 ) -> np.ndarray:
        if len(styles) != self.layout.n_layers:
            raise EditError(f"{len(styles)} style layers, the generator has "
                            f"{self.layout.n_layers}")
        if len(deltas) != len(self.shapes):
            raise EditError(f"deltas has {len(deltas)} entries, the generator has "
                            f"{len(self.shapes)} layers")
        ds = []
        for j, (d, s) in enumerate(zip(deltas, self.shapes)):
            if s is None:
                ds.append(None)
                continue
            d = np.zeros(s, np.float32) if d is None else np.asarray(d, np.float32)
            if d.shape != s:
                raise EditError(f"deltas[{j}] has shape {d.shape}, expected {s}")
            ds.append(d)
        # Any number of styles: batches of batch_size, the last one padded.
        styles = [np.asarray(s, np.float32) for s in styles]
        return self._compiled(styles, ds).astype(np.float32)
