"""Nested-dict helpers: leaves by path, shapes by 'a/b/c' path, '/'-joined flat dicts.

Shared by the converters, the checkpoint loaders and the synthetic-data cache. A tree here
is a nested mapping of arrays (or ShapeDtypeStructs); keys are strings.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
from flax import traverse_util


def leaves_with_paths(tree: Any, path: tuple = ()) -> Iterable[tuple[tuple, Any]]:
    """(('a', 'b', 'c'), leaf) for every leaf of a nested mapping, in insertion order."""
    if isinstance(tree, Mapping):
        for k in tree:
            yield from leaves_with_paths(tree[k], path + (str(k),))
    else:
        yield path, tree


def set_path(tree: dict, path: tuple, value: Any) -> None:
    """tree[p0][p1]...[pn] = value, creating the intermediate dicts."""
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def tree_paths(tree: Any) -> dict[str, tuple]:
    """{'a/b/c': shape} for every leaf of a nested dict (arrays or ShapeDtypeStructs)."""
    return {"/".join(path): tuple(leaf.shape) for path, leaf in leaves_with_paths(tree)}


def tree_mismatch(got: Any, expected: Any) -> str | None:
    """None when both trees have the same paths and shapes; else every difference, named."""
    g, e = tree_paths(got), tree_paths(expected)
    missing = sorted(set(e) - set(g))
    extra = sorted(set(g) - set(e))
    bad = sorted(f"{p}: {g[p]} vs expected {e[p]}" for p in set(g) & set(e) if g[p] != e[p])
    lines = []
    if missing:
        lines.append(f"missing ({len(missing)}): " + ", ".join(missing))
    if extra:
        lines.append(f"unexpected ({len(extra)}): " + ", ".join(extra))
    if bad:
        lines.append(f"misshaped ({len(bad)}): " + "; ".join(bad))
    return " | ".join(lines) or None


def flatten(tree: Mapping, prefix: str) -> dict[str, Any]:
    """{'prefix/a/b': leaf} for every leaf of a nested dict (e.g. to store it in an .npz)."""
    return {f"{prefix}/{k}": v for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def unflatten(flat: Mapping[str, Any], prefix: str) -> dict:
    """Inverse of `flatten`: the nested dict of the entries under 'prefix/' (others ignored)."""
    start = prefix + "/"
    return traverse_util.unflatten_dict(
        {k[len(start):]: v for k, v in flat.items() if k.startswith(start)}, sep="/")


def n_params(tree: Any) -> int:
    """How many numbers the arrays of a nested dict hold (the converters' summaries)."""
    return sum(int(np.prod(np.shape(a))) for _, a in leaves_with_paths(tree))
