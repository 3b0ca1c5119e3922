"""Per-image state of the page: content hash -> inversion, in a bounded LRU.

An `Inversion` is what every edit of one uploaded photo needs (its W+ codes and weight
offsets, plus the model-size input and the iteration images for display). The cache is
keyed by the hash of the uploaded bytes (and the alignment choice), so the same photo
uploaded twice, by one user or several, is inverted once. Entries are evicted least
recently used first when either bound (count, bytes) is exceeded; a page that still holds
an evicted key gets a "upload it again" message, never a wrong image.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import threading
from typing import Optional

import numpy as np

from hyperstyle_jax.align import AlignedFace


def content_key(data: bytes, align: bool) -> str:
    """sha256 of the uploaded bytes, plus the alignment choice (a different model input)."""
    h = hashlib.sha256(data).hexdigest()[:32]
    return h + ("-a" if align else "")


@dataclasses.dataclass
class Inversion:
    """One inverted photo.

    codes [n_styles, D]; deltas: per generator layer None or [out, in, k, k] (the `invert`
    formats' unbatched entries); image: the model input, uint8 [h, w, 3]; iterations: uint8
    [H, W, 3] renders after the W-encoder (0) and each hypernetwork iteration (1..n);
    restyle_codes: ReStyle-e4e W+ codes for domain adaptation (None without --restyle);
    face, photo: for an aligned upload, its `align.AlignedFace` and the uploaded bytes
    (the full-photo download pastes the edit into them; None otherwise).
    """
    key: str
    name: str
    image: np.ndarray
    codes: np.ndarray
    deltas: list
    iterations: list
    reconstruction: np.ndarray          # float32 [H, W, 3], un-clipped: the final render
    restyle_codes: Optional[np.ndarray] = None
    note: str = ""
    face: Optional[AlignedFace] = None
    photo: Optional[bytes] = None

    @property
    def nbytes(self) -> int:
        arrays = [self.image, self.codes, self.reconstruction, *self.iterations,
                  *(d for d in self.deltas if d is not None)]
        if self.restyle_codes is not None:
            arrays.append(self.restyle_codes)
        return int(sum(np.asarray(a).nbytes for a in arrays)) + len(self.photo or b"")


class InversionCache:
    """Thread-safe LRU of `Inversion`s bounded by count and by bytes.

    The newest entry is always kept, even alone over `max_bytes` (a single full-size
    inversion must be editable); everything older goes first.
    """

    def __init__(self, max_items: int = 16, max_bytes: int = 2 << 30):
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.max_items, self.max_bytes = int(max_items), int(max_bytes)
        self._d: "collections.OrderedDict[str, Inversion]" = collections.OrderedDict()
        self._lock = threading.Lock()
        self.evictions = 0

    def get(self, key: str) -> Optional[Inversion]:
        with self._lock:
            inv = self._d.get(key)
            if inv is not None:
                self._d.move_to_end(key)
            return inv

    def put(self, inv: Inversion) -> None:
        with self._lock:
            self._d[inv.key] = inv
            self._d.move_to_end(inv.key)
            while len(self._d) > 1 and (len(self._d) > self.max_items
                                        or self._bytes() > self.max_bytes):
                self._d.popitem(last=False)
                self.evictions += 1

    def _bytes(self) -> int:
        return sum(v.nbytes for v in self._d.values())

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._d

    def __len__(self) -> int:
        with self._lock:
            return len(self._d)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes()
