"""Scalars and image grids to TensorBoard (tensorboardX) and `<workdir>/metrics.jsonl`.

Only process 0 writes; on other processes every call is a no-op. One JSON object a line:
`{"step": s, "split": "train"|"val", "<name>": value, ...}`; an image grid is also saved
as `<workdir>/images/<name>_<step>.png` with a line `{"step", "split": "image", "name",
"path"}`. A run resumed at step s first drops the rows (and TensorBoard events) past s
that the interrupted run wrote, so the replayed steps appear once and the curves continue.
"""
from __future__ import annotations

import json
import os
import time
from typing import Mapping

import numpy as np
from tensorboardX import SummaryWriter

from hyperstyle_jax.utils.images import save_image
from hyperstyle_jax.utils.paths import atomic_write


class MetricsWriter:
    def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        self.workdir = workdir
        self._tb = None
        self._jsonl = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            path = os.path.join(workdir, "metrics.jsonl")
            if resume_step is not None:
                _truncate_after(path, resume_step)
            # purge_step: TensorBoard hides the events at and past it from earlier runs.
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                     purge_step=None if resume_step is None else resume_step + 1)
            self._jsonl = open(path, "a", buffering=1)

    def scalars(self, step: int, values: Mapping[str, float], split: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: _to_float(v) for k, v in values.items()}
        for k, v in clean.items():
            self._tb.add_scalar(f"{split}/{k}", v, step)
        row = {"step": int(step), "split": split, "time": round(time.time(), 3), **clean}
        self._jsonl.write(json.dumps(row, allow_nan=True) + "\n")

    def image(self, step: int, name: str, grid_uint8: np.ndarray) -> None:
        """grid: uint8 [H, W, 3] (e.g. from `utils.images.make_grid`)."""
        if not self.enabled:
            return
        grid = np.asarray(grid_uint8)
        self._tb.add_image(name, grid, step, dataformats="HWC")
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        path = os.path.join(self.workdir, "images", f"{safe}_{int(step)}.png")
        save_image(path, grid)
        row = {"step": int(step), "split": "image", "name": name, "path": path}
        self._jsonl.write(json.dumps(row) + "\n")

    def flush(self) -> None:
        if self.enabled:
            self._tb.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
            self.enabled = False


def grid_labels(tag: str, rows: list) -> list:
    """Column headers from a grid tag 'val/input|initial|iterations' (first row only)."""
    names = tag.split("/", 1)[-1].split("|")
    head = []
    for name in names:
        if name == "iterations":
            head += [f"iteration {t}" for t in range(1, len(rows[0]) - len(head) + 1)]
        else:
            head.append(name)
    return [head[:len(rows[0])]] + [[""] * len(r) for r in rows[1:]]


def _truncate_after(path: str, step: int) -> None:
    """Keep the rows of steps <= `step` (atomically); unreadable lines are dropped."""
    if not os.path.exists(path):
        return
    keep = []
    with open(path) as f:
        for line in f:
            try:
                if int(json.loads(line)["step"]) <= step:
                    keep.append(line if line.endswith("\n") else line + "\n")
            except (ValueError, KeyError, TypeError):
                continue
    with atomic_write(path, "w") as f:
        f.writelines(keep)


def _to_float(v) -> float:
    return float(np.asarray(v))  # NaN/inf kept: json writes NaN/Infinity
