"""Reading, converting and writing images; the one place PIL is used.

Images inside the package are float32 NHWC in [-1, 1] (the official `Normalize(.5, .5)`);
on disk they are 8-bit RGB.
"""
from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from hyperstyle_jax.utils.paths import atomic_write


class ImageReadError(ValueError):
    """An image file cannot be read; the message starts with the path."""


def pil_to_rgb8(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F, ...) -> 8-bit RGB.

    Alpha is dropped (as `Image.convert('RGB')` in the official loaders); 16- and 32-bit
    grayscale is scaled to 8 bits instead of being clipped.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F" and arr.max() <= 1.0:
            top = 1.0
        arr = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB") if img.mode != "RGB" else img


def read_image(path: str) -> np.ndarray:
    """Read any readable image file as uint8 RGB [H, W, 3]; ImageReadError names the file."""
    try:
        if os.path.getsize(path) == 0:
            raise ImageReadError(f"{path}: empty file")
        with Image.open(path) as img:
            img.load()  # decode now, so truncated files fail here
            rgb = pil_to_rgb8(img)
            return np.asarray(rgb, dtype=np.uint8).copy()
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image (unrecognised format)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"{path}: unreadable image ({' '.join(str(e).split())})") from None


def decode_image_bytes(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Like `read_image` for encoded bytes (PNG, JPEG, ...)."""

    if not data:
        raise ImageReadError(f"{name}: empty file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.asarray(pil_to_rgb8(img), dtype=np.uint8).copy()
    except UnidentifiedImageError:
        raise ImageReadError(f"{name}: not an image (unrecognised format)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"{name}: unreadable image ({' '.join(str(e).split())})") from None


def resize(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [h, w, 3], bilinear with antialiasing.

    This is what torchvision `Resize((h, w))` does to a PIL image in the official transforms.
    """
    h, w = hw
    if img.shape[:2] == (h, w):
        return img
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR), dtype=np.uint8)


def to_float(img: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, 3] -> float32 in [-1, 1] (`ToTensor` then `Normalize(.5, .5)`)."""
    return img.astype(np.float32) / 127.5 - 1.0


def to_uint8(x: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> uint8, clipped and rounded (as the official `tensor2im`)."""
    x = np.asarray(x, dtype=np.float32)
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def save_image(path: str, x: np.ndarray) -> None:
    """Save float [-1, 1] or uint8 [H, W, 3] as an image (format from the extension)."""
    arr = x if x.dtype == np.uint8 else to_uint8(x)
    fmt = Image.registered_extensions().get(os.path.splitext(path)[1].lower(), "PNG")
    with atomic_write(path) as f:
        Image.fromarray(arr).save(f, format=fmt)


def make_grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2,
              cell_hw: tuple[int, int] | None = None,
              labels: Sequence[Sequence[str]] | None = None) -> np.ndarray:
    """Tile rows of images (float [-1, 1] or uint8, [H, W, 3]) into one uint8 grid.

    Cells are resized to `cell_hw` (default: the first image's size); short rows are
    padded with white; a None cell stays white. `labels` (same shape as `rows`, '' for
    none) are written in black on a white band above each row's cells.
    """
    rows = [list(r) for r in rows]
    first = next(im for r in rows for im in r if im is not None)
    ch, cw = cell_hw or first.shape[:2]
    ncol = max(len(r) for r in rows)
    band, font = 0, None
    if labels is not None and any(t for r in labels for t in r):
        font = _label_font(max(10, min(32, cw // 12)))
        band = font.getbbox("Ag-0.9")[3] + 6
    rh = band + ch + pad
    grid = np.full((len(rows) * rh + pad, ncol * (cw + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            if im is None:
                continue
            im = im if im.dtype == np.uint8 else to_uint8(im)
            im = resize(im, (ch, cw))
            y, x = pad + i * rh + band, pad + j * (cw + pad)
            grid[y:y + ch, x:x + cw] = im
    if font is not None:
        pil = Image.fromarray(grid)
        draw = ImageDraw.Draw(pil)
        for i, row in enumerate(labels):
            for j, text in enumerate(row):
                if text:
                    # Centred over the cell, in a smaller font when it would not fit.
                    f, size = font, getattr(font, "size", 0)
                    while size > 8 and f.getlength(str(text)) > cw - 2:
                        size -= 1
                        f = _label_font(size)
                    x = pad + j * (cw + pad) + cw // 2
                    draw.text((x, pad + i * rh + band // 2), str(text), fill=(0, 0, 0),
                              font=f, anchor="mm")
        grid = np.asarray(pil, dtype=np.uint8).copy()
    return grid


def _label_font(size: int):
    """PIL's bundled font at `size` px (needs FreeType), else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()
