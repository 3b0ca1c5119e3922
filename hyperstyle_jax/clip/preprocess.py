"""CLIP's image preprocessing (official `clip/clip.py` `_transform`), NHWC.

* `preprocess_image(img)`: PIL exactly as the official: resize the shorter side to 224 with
  PIL BICUBIC (torchvision's size rule: the long side becomes int(224 * long / short)),
  centre-crop 224 (torchvision's rounding), RGB, /255, normalise with CLIP's mean/std.
  Matches the fixture to 1e-6.
* `preprocess_batch(x)`: a jittable version for generator outputs in [-1, 1] ([B, H, W, 3]),
  with `jax.image.resize` (bicubic, antialiased); it is not bit-equal to PIL (about 1e-2).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _resized_size(h: int, w: int, size: int) -> tuple[int, int]:
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    return (size, new_long) if h <= w else (new_long, size)


def _crop_box(h: int, w: int, size: int) -> tuple[int, int]:
    return int(round((h - size) / 2.0)), int(round((w - size) / 2.0))


def preprocess_image(img, size: int = 224) -> np.ndarray:
    """PIL image or uint8 [H, W, 3|4|1] array -> float32 [size, size, 3], CLIP-normalised."""
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8:
            raise ValueError(f"preprocess_image: expected a uint8 image array, got {img.dtype}")
        img = Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img)
    w, h = img.size
    nh, nw = _resized_size(h, w, size)
    img = img.resize((nw, nh), Image.BICUBIC)
    top, left = _crop_box(nh, nw, size)
    if nh < size or nw < size:  # cannot happen after the resize; kept for odd sizes
        raise ValueError(f"preprocess_image: resized image {nw}x{nh} is smaller than {size}")
    img = img.crop((left, top, left + size, top + size)).convert("RGB")
    x = np.asarray(img, np.float32) / 255.0
    return (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)


def preprocess_images(images, size: int = 224) -> np.ndarray:
    """A list of PIL images / uint8 arrays -> float32 [N, size, size, 3]."""
    return np.stack([preprocess_image(im, size) for im in images])


def preprocess_batch(x, size: int = 224):
    """Jittable: images in [-1, 1] [B, H, W, 3] -> CLIP input [B, size, size, 3].

    Same geometry as `preprocess_image` (shorter side to `size`, centre crop) with JAX's
    antialiased bicubic resize instead of PIL's.
    """
    b, h, w, c = x.shape
    nh, nw = _resized_size(h, w, size)
    x = (x.astype(jnp.float32) + 1.0) / 2.0
    x = jax.image.resize(x, (b, nh, nw, c), method="bicubic", antialias=True)
    top, left = _crop_box(nh, nw, size)
    x = x[:, top:top + size, left:left + size]
    return (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)
