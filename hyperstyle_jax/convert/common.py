"""Shared pieces of every weight converter: safe torch loading and strict key mapping.

This is the one place where PyTorch layouts (NCHW activations, OIHW conv weights,
(out, in) linear weights) meet ours (NHWC, HWIO, (in, out)). Every converter reads a
state dict through `SourceDict`, which records each key it hands out, and ends with
`SourceDict.finish()`, which fails listing every missing, misshaped or unused key.
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np

from hyperstyle_jax.utils.trees import leaves_with_paths, set_path, tree_mismatch


class ConversionError(ValueError):
    """A checkpoint cannot be converted; the message names the file and keys."""


# ----------------------------------------------------------------------------- loading


def load_torch_file(path: str) -> Any:
    """`torch.load(path, weights_only=True)` with errors that name the file.

    Never executes pickled code: a file that needs more than tensors and plain Python
    containers is refused with an explanation.
    """
    try:
        import torch  # noqa: PLC0415  optional extra (convert)
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ConversionError(
            "reading .pt files needs torch: pip install 'hyperstyle_jax[convert]' "
            "(torch==2.13.0, CPU build)") from e
    if not os.path.exists(path):
        raise ConversionError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise ConversionError(f"{path}: file is empty")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Weights only load failed" in str(e) or "Unsupported" in str(e) or "global" in str(e):
            raise ConversionError(
                f"{path}: refused: the file's pickle asks to run or import code that is not "
                f"a tensor or a plain container (torch.load weights_only=True rejected it: "
                f"{_short(str(e))}). Such files can execute arbitrary code, so they are never "
                f"loaded. Re-save just the state dict in a trusted environment: "
                f"torch.save(model.state_dict(), 'clean.pt').") from None
        raise ConversionError(f"{path}: not a readable torch checkpoint ({first})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise ConversionError(
            f"{path}: not a readable torch checkpoint (truncated or corrupt?): {_short(str(e))}"
        ) from None


def _short(msg: str, n: int = 300) -> str:
    msg = " ".join(msg.split())
    return msg if len(msg) <= n else msg[:n] + "..."


def to_numpy_state_dict(sd: Mapping[str, Any], origin: str) -> dict[str, np.ndarray]:
    """Tensors -> float32/int numpy arrays; anything else in a state dict is an error."""
    out = {}
    for k, v in sd.items():
        if hasattr(v, "detach"):
            v = v.detach().cpu()
            if v.is_floating_point():
                v = v.float()
            out[k] = v.numpy()
        elif isinstance(v, np.ndarray):
            out[k] = v
        else:
            raise ConversionError(f"{origin}: key {k!r} is a {type(v).__name__}, not a tensor")
    return out


# ----------------------------------------------------------------------------- layouts


def conv_weight(w: np.ndarray) -> np.ndarray:
    """PyTorch conv weight [O, I, kh, kw] -> HWIO [kh, kw, I, O]."""
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


# ----------------------------------------------------------------------------- strict mapping


class SourceDict:
    """A source state dict that remembers what was read and what went wrong.

    `take` never raises: problems are collected and reported together by `finish`,
    so one run names every bad key at once.
    """

    def __init__(self, sd: Mapping[str, np.ndarray], origin: str, prefix: str = ""):
        self.sd = dict(sd)
        self.origin = origin
        self.prefix = prefix
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.misshaped: list[str] = []

    def has(self, key: str) -> bool:
        return self.prefix + key in self.sd

    def take(self, key: str, shape: Iterable[int] | None = None) -> np.ndarray:
        """The array stored at `prefix + key`, checked against `shape` if given."""
        full = self.prefix + key
        if full not in self.sd:
            self.missing.append(full + (f" (expected shape {tuple(shape)})" if shape else ""))
            return np.zeros(tuple(shape) if shape is not None else (0,), np.float32)
        self.used.add(full)
        arr = self.sd[full]
        if shape is not None and tuple(arr.shape) != tuple(shape):
            self.misshaped.append(f"{full}: shape {tuple(arr.shape)}, expected {tuple(shape)}")
            return np.zeros(tuple(shape), arr.dtype)
        return arr

    def skip(self, *keys_or_prefixes: str) -> None:
        """Mark keys (or every key under a prefix ending in '.') as deliberately unused."""
        for k in keys_or_prefixes:
            full = self.prefix + k
            if full.endswith("."):
                self.used.update(x for x in self.sd if x.startswith(full))
            elif full in self.sd:
                self.used.add(full)

    def finish(self, what: str = "checkpoint") -> None:
        unused = sorted(set(self.sd) - self.used)
        lines = []
        if self.missing:
            lines.append(f"missing keys ({len(self.missing)}): " + ", ".join(self.missing))
        if self.misshaped:
            lines.append(f"misshaped keys ({len(self.misshaped)}): " + "; ".join(self.misshaped))
        if unused:
            lines.append(f"unexpected keys ({len(unused)}): " + ", ".join(unused))
        if lines:
            raise ConversionError(f"{self.origin}: cannot convert {what}: " + " | ".join(lines))


def check_tree_matches(got: Any, expected: Any, origin: str, what: str = "parameters") -> None:
    """Fail naming every path that is missing, unexpected or of the wrong shape."""
    problem = tree_mismatch(got, expected)
    if problem:
        raise ConversionError(f"{origin}: converted {what} do not match the model: {problem}")


def unwrap_state_dict(obj: Any, path: str, candidates: Iterable[str]) -> tuple[dict, dict]:
    """Find the state dict inside a checkpoint object.

    Returns (state_dict, top_level) where top_level is the containing dict (or {}).
    `candidates` are top-level keys to try in order (e.g. 'g_ema', 'state_dict');
    a bare state dict (all values tensors) is accepted as is.
    """
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    for c in candidates:
        if c in obj and isinstance(obj[c], Mapping):
            return dict(obj[c]), dict(obj)
    if obj and all(hasattr(v, "shape") for v in obj.values()):
        return dict(obj), {}
    raise ConversionError(
        f"{path}: no state dict found: expected one of the top-level keys "
        f"{list(candidates)} or a bare state dict; found keys {sorted(obj)[:20]}")


# ----------------------------------------------------------------------------- the rule engine

_INDEX = re.compile(r"_(\d+)$")


def torch_key(path: Sequence[str]) -> str:
    """Our variable path -> the official state-dict key.

    `body_3/downsample_0/kernel` -> `body.3.downsample.0.weight`: a trailing `_N` on a module
    name is PyTorch's Sequential/ModuleList index; Flax's `kernel` is PyTorch's `weight`.
    """
    parts = [_INDEX.sub(r".\1", p) for p in path[:-1]]
    leaf = "weight" if path[-1] == "kernel" else path[-1]
    return ".".join(parts + [leaf])


def _torch_shape(leaf: str, shape: tuple) -> tuple:
    """Shape of the official tensor for one of our leaves (inverse of the layout change)."""
    if leaf == "kernel" and len(shape) == 4:          # conv HWIO <- OIHW
        return (shape[3], shape[2], shape[0], shape[1])
    if leaf in ("kernel", "weight") and len(shape) == 2:  # Dense / EqualLinear [in,out] <- [out,in]
        return (shape[1], shape[0])
    return tuple(shape)


def _to_ours(leaf: str, arr: np.ndarray) -> np.ndarray:
    """OIHW -> HWIO, [out, in] -> [in, out]; transposed views (no copy of large tensors)."""
    if leaf == "kernel" and arr.ndim == 4:
        return np.transpose(arr, (2, 3, 1, 0))
    if leaf in ("kernel", "weight") and arr.ndim == 2:
        return np.transpose(arr)
    return arr


Rule = Callable[[SourceDict, str, tuple], np.ndarray]   # (src, official key, our shape) -> array


def from_state_dict(src: SourceDict, expected: Mapping, custom: Mapping[str, Rule] | None = None,
                    rules: Sequence[tuple[str, Rule]] = ()) -> dict:
    """Fill the model's variable tree `expected` (e.g. `jax.eval_shape(model.init, …)`) from `src`.

    Every leaf is read from `torch_key(path)` with the shape the model needs (so a missing or
    misshaped key is reported by its official name), converted to our layout and cast to
    float32. `num_batches_tracked` next to each BatchNorm's running stats is consumed and
    dropped. For the few leaves that need more than a rename: `custom` maps an exact
    '/'-joined path (collection first) to a rule, and `rules` is a table of (pattern, rule)
    tried in order with `re.fullmatch` (the family's legacy.py-style table). Every custom
    path and every pattern must be used. Call `src.finish()` afterwards.
    """
    custom = dict(custom or {})
    compiled = [(re.compile(p), p, f) for p, f in rules]
    unused = {p for p, _ in rules}
    out: dict = {}
    for collection, tree in expected.items():
        for path, leaf in leaves_with_paths(tree):
            key = torch_key(path)
            joined = "/".join((collection,) + path)
            rule = custom.pop(joined, None)
            for rx, pattern, f in ([] if rule else compiled):
                if rx.fullmatch(joined):
                    rule = f
                    unused.discard(pattern)
                    break
            if rule is not None:
                arr = rule(src, key, tuple(leaf.shape))
            else:
                arr = _to_ours(path[-1], src.take(key, _torch_shape(path[-1], tuple(leaf.shape))))
            set_path(out.setdefault(collection, {}), path, np.asarray(arr, dtype=np.float32))
            if path[-1] == "running_mean":
                src.skip(key[: -len("running_mean")] + "num_batches_tracked")
    if custom or unused:
        raise ConversionError(f"internal: rules that matched no variable: "
                              f"{sorted(custom) + sorted(unused)}")
    return out


def eval_shape_init(model, *inputs) -> dict:
    """The model's variable shapes without computing anything: `jax.eval_shape(model.init, …)`."""
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs))


def _f32(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _shape(src: SourceDict, key: str, ndim: int, what: str) -> tuple:
    """Shape of `src.prefix + key`, for inferring the architecture; fails naming the key."""
    full = src.prefix + key
    if full not in src.sd:
        raise ConversionError(f"{src.origin}: cannot infer the {what}: key {full!r} is missing")
    s = tuple(int(v) for v in src.sd[full].shape)
    if len(s) != ndim:
        raise ConversionError(f"{src.origin}: cannot infer the {what}: {full} has shape {s}, "
                              f"expected {ndim} dimensions")
    return s


def _consume_prefix(src: SourceDict, prefix: str) -> int:
    """Mark every key starting with `prefix` (absolute, ignoring src.prefix) as used."""
    keys = [k for k in src.sd if k.startswith(prefix)]
    src.used.update(keys)
    return len(keys)


def _json_safe(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        return v.item()
    return str(v)
