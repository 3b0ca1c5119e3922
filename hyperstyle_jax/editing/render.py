"""Rendering edited codes: one compiled generator per (batch size, delta kind), reused for
every image, factor and direction, so nothing retraces after the first chunk.

    r = EditRenderer(inverter, batch_size=4)
    images = r(codes [K, n_styles, D], deltas)    # numpy float32 [K, size, size, 3], un-clipped

`deltas` entries are None (untuned), unbatched [out, in, k, k] (one image's offsets shared by
all K codes: `Inverter.shared_delta_renderer`) or [K, out, in, k, k] (one per code:
`Inverter.batched_renderer`). K may exceed the batch size: codes go through in chunks, the
last one padded.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def delta_kind(deltas: Sequence[Optional[np.ndarray]]) -> str:
    """'shared' (every present entry unbatched), 'per_code' (every one batched) or 'none'."""
    ndims = {np.ndim(d) for d in deltas if d is not None}
    if not ndims:
        return "none"
    if ndims == {4}:
        return "shared"
    if ndims == {5}:
        return "per_code"
    raise ValueError(f"deltas mix entry ranks {sorted(ndims)}; expected all [out, in, k, k] "
                     f"or all [K, out, in, k, k]")


class EditRenderer:
    def __init__(self, inverter, batch_size: int = 4):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.inverter = inverter
        self.batch_size = int(batch_size)
        self._compiled = {}

    def _fn(self, kind: str):
        if kind not in self._compiled:
            inv = self.inverter
            self._compiled[kind] = (inv.batched_renderer(self.batch_size) if kind == "per_code"
                                    else inv.shared_delta_renderer(self.batch_size))
        return self._compiled[kind]

    def __call__(self, codes: np.ndarray, deltas: Sequence[Optional[np.ndarray]]) -> np.ndarray:
        kind = delta_kind(deltas)
        fn = self._fn("per_code" if kind == "per_code" else "shared")
        # The compiled renderers take any number of codes: batches, the last one padded.
        return fn(np.asarray(codes, np.float32), deltas).astype(np.float32)
