"""The official HyperStyle image transforms, on the host, in NumPy.

`configs/transforms_config.py` (EncodeTransforms / CarsEncodeTransforms):
    train: Resize((256, 256)) [(192, 256) for cars], RandomHorizontalFlip(0.5), ToTensor,
           Normalize([.5]*3, [.5]*3)
    test:  the same without the flip
Resize acts on the PIL image (bilinear with antialiasing: `utils.images.resize`), the flip
on the resized uint8 image, and `to_float` does ToTensor + Normalize, in NHWC.

The flip is a pure function of (seed, epoch, position of the example in the epoch's global
order), so it does not depend on the process count or on thread scheduling.
"""
from __future__ import annotations

import numpy as np

from hyperstyle_jax.utils.images import decode_image_bytes, resize, to_float

_M64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64 finaliser: a fixed, well-mixed 64-bit hash (numpy-version independent)."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def flip_decision(seed: int, epoch: int, position: int) -> bool:
    """Bernoulli(0.5) for the example at `position` of epoch `epoch` (deterministic)."""
    return bool(_mix64(_mix64(_mix64(seed & _M64) ^ epoch) ^ position) >> 63)


def decode_and_resize(data: bytes, hw: tuple[int, int], name: str = "<bytes>") -> np.ndarray:
    """Encoded image -> uint8 [h, w, 3] (`Resize(hw)` on the PIL image)."""
    return resize(decode_image_bytes(data, name), tuple(hw))


def finish(img_u8: np.ndarray, flip: bool) -> np.ndarray:
    """uint8 [h, w, 3] -> float32 [h, w, 3] in [-1, 1], mirrored left-right when `flip`."""
    if flip:
        img_u8 = img_u8[:, ::-1]
    return to_float(np.ascontiguousarray(img_u8))
