"""File names and files: finding inputs, naming outputs, writing files whole.

`atomic_write` is the one way a finished file appears: written under a temporary name in
the same folder and renamed, so a file that exists is complete even if the run is killed.
"""
from __future__ import annotations

import contextlib
import glob
import os
from typing import Iterator, Sequence

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb") -> Iterator:
    """`with atomic_write(path) as f: ...` -> `path` appears only when the block finishes
    (parent folders created; on an exception the temporary file is removed)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        with open(tmp, mode) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def list_images(spec: str) -> list[str]:
    """A file, a folder (recursively, image extensions only) or a glob -> sorted paths.

    A single file or glob match is returned whatever its extension, so a misnamed or
    broken file is reported by the reader rather than silently dropped.
    """
    if os.path.isfile(spec):
        return [spec]
    if os.path.isdir(spec):
        out = []
        for root, _, files in os.walk(spec):
            for f in files:
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    out.append(os.path.join(root, f))
        return sorted(out)
    matches = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
    return matches


def parse_index_ranges(spec: str) -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11]."""
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            a, b = part.split("-", 1) if not part.startswith("-") else (part, part)
            a, b = int(a), int(b)
            if b < a:
                raise ValueError(f"bad range {part!r}: end before start")
            out.extend(range(a, b + 1))
        else:
            out.append(int(part))
    if not out:
        raise ValueError(f"no indices in {spec!r}")
    return out


def unique_stems(paths: Sequence[str]) -> list:
    """File stems, disambiguated with a counter where two inputs share one (a.png, a.jpg
    -> a, a_1): the names every CLI writes its outputs under."""
    seen, out = {}, []
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0]
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        out.append(stem if n == 0 else f"{stem}_{n}")
    return out
