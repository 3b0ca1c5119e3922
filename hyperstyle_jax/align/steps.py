"""The official FFHQ alignment (`align_face`), split into pure steps.

    quad_from_landmarks -> shrink -> crop -> pad_blur -> warp -> resize_output

`plan` gives the same geometry without touching pixels (shrink factor, crop box, pad
widths): what `AlignedFace` records so that `paste.paste_back` can go the other way.

Each step takes and returns a PIL image plus the quad (float64 [4, 2], NW, SW, SE, NE in
the current image's pixel indices) and appends what it did to `steps` in the format of
the fixture's `steps_recorded_*` (only when it acts), so each one is testable on its own.

Numerics follow the official code: float64 geometry with floor/ceil/rint, a float32
image in the pad branch, scipy's `gaussian_filter`, PIL's QUAD/BILINEAR warp and LANCZOS
resizes. That is what makes the output pixel-exact against fixture 12.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter  # the official's filter: needed for exact pixels

TRANSFORM_SIZE = 1024  # the official samples the quad at 1024 and resizes after
Steps = list  # [(name, params)], as the fixture's steps_recorded_*


def _record(steps, name, **params):
    if steps is not None:
        steps.append((name, params))


def quad_from_landmarks(lm) -> tuple[np.ndarray, float]:
    """68 landmarks (x, y) -> (quad [4, 2] float64 NW, SW, SE, NE; side length qsize).

    Only the eyes (36:42, 42:48) and the outer mouth corners (48, 54) matter.
    """
    lm = np.asarray(lm)
    eye_left = np.mean(lm[36:42], axis=0)
    eye_right = np.mean(lm[42:48], axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg

    # x points right along the face, rotated so that eyes and mouth both count.
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad, float(np.hypot(*x) * 2)


def border_of(qsize: float) -> int:
    return max(int(np.rint(qsize * 0.1)), 3)


def _bounds(quad):
    """Integer bounding box (floor min, ceil max) of the quad: left, top, right, bottom."""
    return (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))),
            int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))


def shrink_factor(qsize: float, output_size: int) -> int:
    """The integer downscale applied before cropping; 1 (none) unless qsize >= 4x output."""
    return max(int(np.floor(qsize / output_size * 0.5)), 1)


def shrunk_size(img_size, factor: int) -> tuple[int, int]:
    """(W, H) of the image after `shrink` by `factor`."""
    if factor <= 1:
        return tuple(int(v) for v in img_size)
    return (int(np.rint(float(img_size[0]) / factor)), int(np.rint(float(img_size[1]) / factor)))


def shrink(img: Image.Image, quad, qsize: float, output_size: int, steps: Steps | None = None):
    """Downscale by an integer factor (LANCZOS) when the quad is >= 4x the output size.

    The official sampling is not antialiased, so this bounds aliasing on huge faces.
    """
    factor = shrink_factor(qsize, output_size)
    if factor <= 1:
        return img, quad, qsize
    rsize = shrunk_size(img.size, factor)
    _record(steps, "resize", image_size=list(img.size), size=list(rsize),
            resample=int(Image.Resampling.LANCZOS))
    img = img.resize(rsize, Image.Resampling.LANCZOS)
    return img, quad / factor, qsize / factor


def crop_box(img_size, quad, qsize: float) -> tuple[int, int, int, int]:
    """The quad's bounding box plus a border of 10 % (at least 3 px), clamped to the
    image: (left, top, right, bottom), right and bottom exclusive."""
    border = border_of(qsize)
    left, top, right, bottom = _bounds(quad)
    return (max(left - border, 0), max(top - border, 0),
            min(right + border, img_size[0]), min(bottom + border, img_size[1]))


def crop(img: Image.Image, quad, qsize: float, steps: Steps | None = None):
    """Crop to `crop_box` (nothing to do when that is the whole image)."""
    box = crop_box(img.size, quad, qsize)
    if box[2] - box[0] < img.size[0] or box[3] - box[1] < img.size[1]:
        _record(steps, "crop", image_size=list(img.size), box=list(box))
        img = img.crop(box)
        quad = quad - box[0:2]
    return img, quad


def pad_amounts(img_size, quad, qsize: float) -> np.ndarray | None:
    """Pad widths (left, top, right, bottom) when the quad comes within 4 px of an edge
    (always when the border is 3 px), else None."""
    border = border_of(qsize)
    left, top, right, bottom = _bounds(quad)
    pad = (max(-left + border, 0), max(-top + border, 0),
           max(right - img_size[0] + border, 0), max(bottom - img_size[1] + border, 0))
    if max(pad) > border - 4:
        # Every side gets at least 30 % of the quad, as the official does.
        return np.maximum(pad, int(np.rint(qsize * 0.3)))
    return None


def pad_blur(img: Image.Image, quad, qsize: float, steps: Steps | None = None):
    """Reflect-pad, then fade the padding into a blur and the image's median colour.

    The official branch, in its dtypes: the image as float32, the mask as float64.
    """
    pad = pad_amounts(img.size, quad, qsize)
    if pad is None:
        return img, quad
    pad_width = ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0))
    arr = np.float32(img)
    _record(steps, "np.pad", array_shape=list(arr.shape),
            pad_width=[[int(a), int(b)] for a, b in pad_width], mode="reflect")
    arr = np.pad(arr, pad_width, "reflect")
    h, w, _ = arr.shape
    yy, xx, _ = np.ogrid[:h, :w, :1]
    # 0 inside the original image, rising to 1 at the outer edge of the padding.
    mask = np.maximum(1.0 - np.minimum(np.float32(xx) / pad[0], np.float32(w - 1 - xx) / pad[2]),
                      1.0 - np.minimum(np.float32(yy) / pad[1], np.float32(h - 1 - yy) / pad[3]))
    blur = qsize * 0.02
    arr += (gaussian_filter(arr, [blur, blur, 0]) - arr) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
    img = Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)), "RGB")
    return img, quad + pad[:2]


def warp(img: Image.Image, quad, transform_size: int = TRANSFORM_SIZE,
         steps: Steps | None = None) -> Image.Image:
    """Sample the quad into a transform_size square: PIL QUAD, bilinear, no antialiasing.

    +0.5 turns dlib's pixel indices into PIL's continuous coordinates.
    """
    data = (quad + 0.5).flatten()
    size = (transform_size, transform_size)
    _record(steps, "transform", image_size=list(img.size), size=list(size),
            method=int(Image.Transform.QUAD), data=[float(v) for v in data],
            resample=int(Image.Resampling.BILINEAR))
    return img.transform(size, Image.Transform.QUAD, data, Image.Resampling.BILINEAR)


def resize_output(img: Image.Image, output_size: int, steps: Steps | None = None) -> Image.Image:
    """LANCZOS down to the output size (only when it is smaller, as the official)."""
    if output_size >= img.size[0]:
        return img
    size = (output_size, output_size)
    _record(steps, "resize", image_size=list(img.size), size=list(size),
            resample=int(Image.Resampling.LANCZOS))
    return img.resize(size, Image.Resampling.LANCZOS)


def prepare(img: Image.Image, lm, output_size: int = 1024, steps: Steps | None = None):
    """Landmarks -> (the image handed to the warp, its quad): quad, shrink, crop, pad/blur."""
    if img.mode != "RGB":
        raise ValueError(f"prepare expects an RGB image, got mode {img.mode}")
    quad, qsize = quad_from_landmarks(lm)
    img, quad, qsize = shrink(img, quad, qsize, output_size, steps)
    img, quad = crop(img, quad, qsize, steps)
    img, quad = pad_blur(img, quad, qsize, steps)
    return img, quad


class Plan(NamedTuple):
    """The geometry of `prepare` for an image size, without the pixels."""
    quad: np.ndarray  # float64 [4, 2] NW, SW, SE, NE in the input image's pixel indices
    qsize: float
    shrink: int  # integer downscale factor, 1 when none
    crop: tuple[int, int, int, int]  # box in the shrunk image (left, top, right, bottom), excl.
    pad: tuple[int, int, int, int]  # (left, top, right, bottom) added around the crop; 0s if none


def plan(img_size, lm, output_size: int = 1024) -> Plan:
    """What `prepare` does to an image of img_size (W, H): the same helpers, no pixels."""
    quad, qsize = quad_from_landmarks(lm)
    factor = shrink_factor(qsize, output_size)
    size = shrunk_size(img_size, factor)
    q, qs = quad / factor, qsize / factor
    box = crop_box(size, q, qs)
    pad = pad_amounts((box[2] - box[0], box[3] - box[1]), q - box[:2], qs)
    pad = (0, 0, 0, 0) if pad is None else tuple(int(v) for v in pad)
    return Plan(quad, qsize, factor, tuple(int(v) for v in box), pad)


def align_from_landmarks(img: Image.Image, lm, output_size: int = 1024,
                         steps: Steps | None = None) -> Image.Image:
    """The official `align_face` for an RGB PIL image and its 68 landmarks.

    output_size plays the official's local constant of that name (shrink and the final
    resize use it); the warp samples at max(1024, output_size).
    """
    pre, quad = prepare(img, lm, output_size, steps)
    out = warp(pre, quad, max(TRANSFORM_SIZE, output_size), steps)
    return resize_output(out, output_size, steps)
