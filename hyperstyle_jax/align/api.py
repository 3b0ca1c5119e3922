"""Read an image, detect faces, choose, align: the functions the CLIs call."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hyperstyle_jax.align import detect as det
from hyperstyle_jax.align import steps as st
from hyperstyle_jax.utils import images as imio

FACE_CHOICES = ("largest", "last", "all")


class AlignError(ValueError):
    """An image cannot be aligned; the message is one line and starts with its name."""


class NoFaceError(AlignError):
    """dlib found no face."""


@dataclass
class AlignedFace:
    image: np.ndarray  # uint8 [size, size, 3]
    index: int  # detection index in dlib's order
    box: tuple[int, int, int, int]  # left, top, right, bottom (inclusive), source pixels
    score: float  # dlib detector score
    landmarks: np.ndarray  # int64 [68, 2] (x, y), source pixels
    quad: np.ndarray  # float64 [4, 2] NW, SW, SE, NE, source pixels (before shrink/crop/pad)


@dataclass
class Loaded:
    name: str
    image: Image.Image  # RGB, EXIF-upright: the pixels that are warped
    detect_rgb: np.ndarray  # uint8 [H, W, 3]: the pixels landmarks are found on


def _dlib_pixels(path: str, img: Image.Image) -> np.ndarray | None:
    """dlib's own decode of a JPEG, as the official `dlib.load_rgb_image`.

    dlib's and PIL's JPEG decoders differ by tens of levels, which moves landmarks by
    pixels; decoding as the official does keeps them exact. Only for 8-bit RGB/L JPEGs
    without an EXIF rotation, where both decodes describe the same picture.
    """
    if img.format not in ("JPEG", "MPO") or img.mode not in ("RGB", "L"):  # MPO: phone JPEGs
        return None
    if img.getexif().get(0x0112, 1) != 1:  # Orientation
        return None
    try:
        import dlib

        arr = dlib.load_rgb_image(path)
    except Exception:  # noqa: BLE001 -- dlib cannot read it: use PIL's decode
        return None
    return arr if arr.shape == (img.size[1], img.size[0], 3) else None


def load(src, name: str | None = None) -> Loaded:
    """A path, PIL image or uint8 array ([H, W], [H, W, 3|4]) -> Loaded.

    Any PIL mode becomes 8-bit RGB (16-bit scaled, alpha dropped, CMYK converted); EXIF
    orientation is applied (the official ignores it). Unreadable files raise
    imio.ImageReadError naming the file.
    """
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        name = name or path
        try:
            if os.path.getsize(path) == 0:
                raise imio.ImageReadError(f"{name}: empty file")
            with Image.open(path) as raw:
                raw.load()  # decode now, so truncated files fail here
                dlib_rgb = _dlib_pixels(path, raw)
                img = imio.pil_to_rgb8(ImageOps.exif_transpose(raw))
        except imio.ImageReadError:
            raise
        except UnidentifiedImageError:
            raise imio.ImageReadError(f"{name}: not an image (unrecognised format)") from None
        except Image.DecompressionBombError as e:
            raise imio.ImageReadError(f"{name}: too large ({e})") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise imio.ImageReadError(f"{name}: unreadable image ({' '.join(str(e).split())})") from None
        rgb = np.asarray(img, dtype=np.uint8)
        return Loaded(name, img, dlib_rgb if dlib_rgb is not None else rgb)
    name = name or "<image>"
    if isinstance(src, Image.Image):
        img = imio.pil_to_rgb8(ImageOps.exif_transpose(src))
    else:
        arr = np.asarray(src)
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise AlignError(f"{name}: expected uint8 [H, W], [H, W, 3] or [H, W, 4], "
                             f"got {arr.dtype} {list(arr.shape)}")
        img = imio.pil_to_rgb8(Image.fromarray(np.ascontiguousarray(arr)))
    return Loaded(name, img, np.asarray(img, dtype=np.uint8))


def parse_face(value) -> str | int:
    """'largest' | 'last' | 'all' | a detection index >= 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        idx = value
    elif str(value) in FACE_CHOICES:
        return str(value)
    else:
        try:
            idx = int(str(value))
        except ValueError:
            raise ValueError(f"face must be largest, last, all or an index >= 0, got {value!r}") from None
    if idx < 0:
        raise ValueError(f"face index must be >= 0, got {idx}")
    return idx


def choose(dets: list, face, name: str, image_size=None) -> list:
    """The detections to align. 'largest' takes the biggest box (first on ties);
    'last' is the official's choice (the last in dlib's order, arbitrary)."""
    face = parse_face(face)
    if not dets:
        where = f" in the {image_size[0]}x{image_size[1]} image" if image_size else ""
        raise NoFaceError(f"{name}: no face found{where}")
    if face == "all":
        return list(dets)
    if face == "last":
        return [dets[-1]]
    if face == "largest":
        return [max(dets, key=lambda d: (d.area, -d.index))]
    if face >= len(dets):
        raise AlignError(f"{name}: face {face} requested but {len(dets)} found (indices from 0)")
    return [dets[face]]


def align_faces(src, size: int = 1024, face="largest", name: str | None = None,
                detect_max_side: int = det.DETECT_MAX_SIDE) -> list[AlignedFace]:
    """Detect, choose and align faces; see the package docstring."""
    if int(size) < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    face = parse_face(face)
    det.require()
    im = load(src, name)
    dets = choose(det.detect(im.detect_rgb, detect_max_side), face, im.name, im.image.size)
    out = []
    for d in dets:
        lm = det.landmarks(im.detect_rgb, d.box)
        quad, _ = st.quad_from_landmarks(lm)
        aligned = st.align_from_landmarks(im.image, lm, int(size))
        out.append(AlignedFace(np.asarray(aligned, dtype=np.uint8), d.index, d.box, d.score, lm, quad))
    return out


def align_image(src, size: int = 1024, face="largest", name: str | None = None,
                detect_max_side: int = det.DETECT_MAX_SIDE) -> list[np.ndarray]:
    """Aligned uint8 [size, size, 3] crops, one per chosen face (one unless face='all')."""
    return [f.image for f in align_faces(src, size, face, name, detect_max_side)]
