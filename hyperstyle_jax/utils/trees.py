"""Nested-dict helpers shared by the converters and loaders."""
from __future__ import annotations

from typing import Any, Iterable, Mapping


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
