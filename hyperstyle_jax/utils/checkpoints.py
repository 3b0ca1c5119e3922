"""Converted-weight folders: an orbax checkpoint of arrays plus a JSON model config.

Layout of a folder written by `save_converted(DIR, tree, config)`:
    DIR/config.json   the model config (plain JSON: ints, floats, strings, lists)
    DIR/arrays/       orbax StandardCheckpointer of `tree` (nested dict of arrays)
Every converter in `tools/convert_weights.py` writes this, and every loader reads it.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np


class CheckpointError(ValueError):
    """A converted checkpoint folder is missing or unreadable; the message names it."""


def save_converted(out_dir: str, tree: dict, config: dict, kind: str) -> None:
    """Write `tree` (nested dict of numpy/jax arrays) and `config` to `out_dir`."""
    import orbax.checkpoint as ocp

    out_dir = os.path.abspath(out_dir)
    arrays = os.path.join(out_dir, "arrays")
    if os.path.exists(arrays):
        raise CheckpointError(f"{out_dir}: already holds a converted checkpoint; "
                              "choose a new folder or delete it first")
    os.makedirs(out_dir, exist_ok=True)
    tree = _as_numpy(tree)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(arrays, tree)
        ckptr.wait_until_finished()
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump({"kind": kind, **config}, f, indent=1, sort_keys=True)


def load_converted(path: str, kind: str | None = None) -> tuple[dict, dict]:
    """Read a folder written by `save_converted`: returns (config, tree of numpy arrays)."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    cfg_path = os.path.join(path, "config.json")
    arrays = os.path.join(path, "arrays")
    if not os.path.isfile(cfg_path) or not os.path.isdir(arrays):
        raise CheckpointError(
            f"{path}: not a converted checkpoint folder (needs config.json and arrays/; "
            "make one with tools/convert_weights.py)")
    try:
        with open(cfg_path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: unreadable config: {e}") from None
    if kind is not None and config.get("kind") != kind:
        raise CheckpointError(
            f"{path}: holds a {config.get('kind')!r} checkpoint, expected {kind!r}")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            meta = ckptr.metadata(arrays)
            tree_meta = getattr(meta, "item_metadata", meta)
            target = _restore_target(tree_meta)
            tree = ckptr.restore(arrays, target)
    except Exception as e:  # orbax raises many types; name the folder either way
        raise CheckpointError(f"{arrays}: cannot restore arrays: {type(e).__name__}: {e}") from None
    return config, _as_numpy(tree)


def _restore_target(meta: Any) -> Any:
    """Host numpy targets from orbax metadata, so restore never needs a device layout."""
    import jax

    def leaf(m):
        return np.zeros(m.shape, m.dtype) if hasattr(m, "shape") else m

    return jax.tree_util.tree_map(leaf, dict(meta) if hasattr(meta, "keys") else meta)


def _as_numpy(tree: Any) -> Any:
    import jax

    return jax.tree_util.tree_map(lambda x: np.asarray(x), tree)
