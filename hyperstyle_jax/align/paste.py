"""Paste an (edited) aligned crop back into the photo it came from: the inverse of `align`.

    original, changed = read_original("photo.jpg")     # upright per EXIF, as align saw it
    for crop, face in zip(edited_crops, faces):         # faces: align_faces(...) or from_json
        original = paste_back(original, crop, face)     # several faces: one after another

`AlignedFace` holds the alignment's quad map (affine: the quad is a square); `unwarp`
inverts it onto the photo's pixel grid and `paste_back` blends the result with a soft
face mask. Where the mask is 0 the photo comes back byte-identical, and the part of the
crop that alignment made up (reflect-pad + blur where the quad left the photo or the
crop box) is never pasted.
Photo modes: size, EXIF orientation, grayscale (the face goes in as luma) and alpha
(untouched) are kept; 16/32-bit becomes 8-bit, CMYK and palette become RGB.
"""
from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError
from scipy.ndimage import distance_transform_edt

from hyperstyle_jax.align.api import AlignedFace, one_line
from hyperstyle_jax.align.steps import shrunk_size
from hyperstyle_jax.utils import images

MASK_SIZE = 256  # the face mask is drawn at this side in crop coordinates, then resized
FOREHEAD = 0.5  # brows raised by this fraction of the brow-to-chin height
ERODE = 0.02  # the hull shrinks by this fraction of the crop side...
FEATHER = 0.08  # ...then ramps from 0 to 1 over this fraction (smoothstep)
TRUST_RAMP = 0.02  # fade-in (fraction of the quad side) past alignment's blurred band


class PasteError(ValueError):
    """Inputs paste_back cannot use; the message is one line."""


# ---------------------------------------------------------------- geometry

def crop_to_original(face: AlignedFace, side: int) -> np.ndarray:
    """Affine [3, 3]: continuous crop coordinates (a crop of `side` px; pixel i covers
    [i, i + 1]) -> continuous coordinates of the original photo (same convention).

    The forward warp is PIL's QUAD map at (quad / shrink - crop box + pad + 0.5): the box
    and pad offsets cancel, leaving the shrunk photo's coordinates, which the shrink's
    resize scales by W / round(W / shrink) (not exactly `shrink`) back to the photo's.
    """
    nw, sw, _, ne = face.quad
    size = np.asarray(face.original_size, np.float64)
    scale = size / np.asarray(shrunk_size(face.original_size, face.shrink), np.float64)
    origin = (nw / face.shrink + 0.5) * scale
    ex = (ne - nw) / face.shrink * scale / side
    ey = (sw - nw) / face.shrink * scale / side
    return np.array([[ex[0], ey[0], origin[0]], [ex[1], ey[1], origin[1]], [0.0, 0.0, 1.0]])


def quad_region(face: AlignedFace) -> tuple[int, int, int, int]:
    """The photo pixels the quad covers (its bounding box, clipped): left, top, right,
    bottom (exclusive); empty when the quad lies outside the photo."""
    unit = np.array([[0, 0, 1], [0, 1, 1], [1, 1, 1], [1, 0, 1.0]]).T
    corners = crop_to_original(face, 1) @ unit
    w, h = face.original_size
    left, top = (max(int(math.floor(v)) - 1, 0) for v in corners[:2].min(axis=1))
    right = min(int(math.ceil(corners[0].max())) + 1, w)
    bottom = min(int(math.ceil(corners[1].max())) + 1, h)
    return left, top, max(right, left), max(bottom, top)


def unwarp(image: np.ndarray, face: AlignedFace, region=None,
           resample: Image.Resampling = Image.Resampling.BICUBIC) -> np.ndarray:
    """Map a crop-sized image (any square side) back onto the photo's pixel grid.

    image: [n, n] or [n, n, C], any real dtype. region: the photo box (left, top, right,
    bottom) to fill, default `quad_region(face)`. Returns float32 [h, w] or [h, w, C] for
    that box, 0 outside the quad. Sampling is in float (PIL's 8-bit transforms truncate,
    which would darken by half a level). When the crop has more pixels than the quad
    spans in the photo it is first downscaled (LANCZOS, antialiased) to the quad's side.
    """
    region = quad_region(face) if region is None else tuple(int(v) for v in region)
    size = (max(region[2] - region[0], 0), max(region[3] - region[1], 0))
    arr = np.asarray(image)
    side_in_photo = max(math.ceil(float(np.hypot(*crop_to_original(face, 1)[:2, 0]))), 1)
    if arr.dtype == np.uint8 and arr.shape[0] > side_in_photo:  # one 8-bit pass (it rounds)
        arr = np.asarray(Image.fromarray(arr).resize((side_in_photo,) * 2,
                                                     Image.Resampling.LANCZOS))
    arr = arr.astype(np.float32)
    side = min(arr.shape[0], side_in_photo)
    # PIL's AFFINE data maps output (x + 0.5, y + 0.5) to input coordinates.
    to_crop = np.linalg.inv(crop_to_original(face, side))
    data = (to_crop @ np.array([[1, 0, region[0]], [0, 1, region[1]], [0, 0, 1.0]]))[:2].ravel()
    planes = []
    for c in range(1 if arr.ndim == 2 else arr.shape[2]):
        pil = Image.fromarray(arr if arr.ndim == 2 else np.ascontiguousarray(arr[..., c]))
        if pil.size[0] != side:
            pil = pil.resize((side, side), Image.Resampling.LANCZOS)
        planes.append(np.asarray(pil.transform(size, Image.Transform.AFFINE, tuple(data),
                                               resample)))
    return planes[0] if arr.ndim == 2 else np.stack(planes, axis=-1)


def trusted(face: AlignedFace, region) -> np.ndarray:
    """float32 [h, w] over `region`: 1 where the crop's pixels are the photo's own, 0 in
    the band alignment's pad step blurred (a third of the pad width inside each padded
    side of the crop box, `steps.pad_blur`), with a short ramp in between. All 1 when
    alignment did not pad."""
    left, top, right, bottom = region
    if not any(face.pad):
        return np.ones((bottom - top, right - left), np.float32)
    sx, sy = np.asarray(face.original_size, np.float64) / shrunk_size(face.original_size,
                                                                      face.shrink)
    ramp = max(TRUST_RAMP * float(np.hypot(*(face.quad[3] - face.quad[0]))), 1.0)
    pl, pt, pr, pb = face.pad
    cl, ct, cr, cb = face.crop
    # Pixel i of the crop box is untouched by the blur when i >= pad / 3 from each padded
    # edge; +1 for the warp's bilinear reach. Photo coordinates: pixel centres x + 0.5.
    lo_x = (cl + math.ceil(pl / 3) + 1) * sx
    hi_x = (cr - math.ceil(pr / 3) - 1) * sx
    lo_y = (ct + math.ceil(pt / 3) + 1) * sy
    hi_y = (cb - math.ceil(pb / 3) - 1) * sy
    x = np.arange(left, right) + 0.5
    y = np.arange(top, bottom) + 0.5
    fx = np.clip(np.minimum(x - lo_x, hi_x - x) / ramp, 0, 1) if pl or pr else np.ones_like(x)
    fy = np.clip(np.minimum(y - lo_y, hi_y - y) / ramp, 0, 1) if pt or pb else np.ones_like(y)
    return (fy[:, None] * fx[None, :]).astype(np.float32)


# ---------------------------------------------------------------- mask

def face_mask(face: AlignedFace, size: int = MASK_SIZE) -> np.ndarray:
    """Soft mask of the face in crop coordinates, float32 [size, size] in [0, 1].

    The convex hull of the jaw line (landmarks 0-16) and the brows (17-26) raised towards
    the hairline by FOREHEAD of the brow-to-chin height, eroded by ERODE and feathered
    over FEATHER of the side. Landmarks rather than a face-parsing network: they exist
    for every aligned face already (no second model, no weights to fetch, nothing slow),
    and they bound what HyperStyle reconstructs well (skin, eyes, mouth; hair and
    background are its weakest parts), so the paste keeps the photo's own hair and edges.
    A parsing mask can still be passed to `paste_back(mask=...)`.
    """
    to_crop = np.linalg.inv(crop_to_original(face, size))
    pts = np.c_[face.landmarks + 0.5, np.ones(68)] @ to_crop.T  # pixel centres, crop coords
    jaw, brows = pts[0:17, :2], pts[17:27, :2].copy()
    height = jaw[8, 1] - brows[:, 1].mean()  # chin to brows, along the crop's vertical
    brows[:, 1] -= FOREHEAD * height
    hull = _convex_hull(np.concatenate([jaw, brows]))
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in hull], fill=1)
    inside = np.asarray(canvas, dtype=bool)
    depth = distance_transform_edt(inside) / size
    t = np.clip((depth - ERODE) / FEATHER, 0.0, 1.0)
    return (t * t * (3 - 2 * t)).astype(np.float32)


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain; [k, 2] counter-clockwise."""
    pts = sorted(map(tuple, points))

    def turn(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def half(seq):
        out = []
        for p in seq:
            while len(out) >= 2 and turn(out[-2], out[-1], p) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = half(pts), half(reversed(pts))
    return np.array(lower[:-1] + upper[:-1])


# ---------------------------------------------------------------- paste

def paste_back(original: np.ndarray, edited_crop: np.ndarray, face: AlignedFace, mask=None,
               color_match: bool = False) -> np.ndarray:
    """The photo with the crop pasted over the face it was aligned from.

    original: uint8 [H, W, 3], [H, W, 4] (alpha kept as is) or [H, W] (the crop pasted as
    luma): the photo as `read_original` gives it, (W, H) == face.original_size.
    edited_crop: uint8 [n, n, 3], any n (256 from the model, 1024 from the generator).
    mask: None (`face_mask`) or float [m, m] in [0, 1] in crop coordinates, any m.
    color_match: shift the crop's colour by the mean difference to the photo over the
    feathered border (see docs/benchmarks.md: it helps only when the whole crop is off).
    Returns a new array like `original`; pixels outside the mask's support are its bytes.
    """
    original = np.asarray(original)
    crop = np.asarray(edited_crop)
    _check(original, crop, face, mask)
    out = original.copy()
    alpha, box = blend_weight(face, mask)
    if box is None:
        return out
    gray = original.ndim == 2
    source = np.asarray(Image.fromarray(crop).convert("L")) if gray else crop
    warped = unwarp(source, face, box)
    target = out[box[1]:box[3], box[0]:box[2]]
    if not gray:
        target = target[..., :3]  # a view: alpha stays as it is
    photo = target.astype(np.float32)
    if color_match:
        band = (alpha > 0) & (alpha < 1)
        if band.any():
            warped += photo[band].mean(axis=0) - warped[band].mean(axis=0)
    a = alpha if gray else alpha[..., None]
    blended = np.clip(np.rint(photo + (warped - photo) * a), 0, 255).astype(np.uint8)
    keep = alpha == 0
    target[...] = np.where(keep if gray else keep[..., None], target, blended)
    return out


def blend_weight(face: AlignedFace, mask=None):
    """(alpha float32 [h, w] in [0, 1], box) on the photo, as paste_back blends: the mask
    (default `face_mask`) unwarped, times `trusted`; values under half a level are 0.
    box (left, top, right, bottom) bounds the support; (None, None) when it is empty."""
    m = face_mask(face) if mask is None else np.clip(np.asarray(mask, np.float32), 0.0, 1.0)
    box = _support_box(m, face)
    if box is None:
        return None, None
    alpha = unwarp(m, face, box, Image.Resampling.BILINEAR) * trusted(face, box)
    alpha[alpha < 1.0 / 512] = 0.0  # below half a level: not pasted at all
    return alpha, box


def _support_box(mask: np.ndarray, face: AlignedFace):
    """The photo box (left, top, right, bottom) the mask's nonzero part can reach, or None."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return None
    x0, x1, y0, y1 = cols[0] - 1, cols[-1] + 2, rows[0] - 1, rows[-1] + 2  # +1: resampling
    corners = np.array([[x0, y0, 1], [x0, y1, 1], [x1, y1, 1], [x1, y0, 1.0]]).T
    pts = crop_to_original(face, mask.shape[0]) @ corners
    region = quad_region(face)
    box = (max(int(math.floor(pts[0].min())) - 4, region[0]),
           max(int(math.floor(pts[1].min())) - 4, region[1]),
           min(int(math.ceil(pts[0].max())) + 4, region[2]),
           min(int(math.ceil(pts[1].max())) + 4, region[3]))
    return box if box[2] > box[0] and box[3] > box[1] else None


def _check(original, crop, face, mask):
    if not isinstance(face, AlignedFace):
        raise PasteError(f"paste_back: face must be an AlignedFace, got {type(face).__name__}")
    if original.dtype != np.uint8 or not (
            original.ndim == 2 or (original.ndim == 3 and original.shape[2] in (3, 4))):
        raise PasteError(f"paste_back: original must be uint8 [H, W], [H, W, 3] or [H, W, 4], "
                         f"got {original.dtype} {list(original.shape)}")
    w, h = face.original_size
    if original.shape[:2] != (h, w):
        raise PasteError(f"paste_back: the photo is {original.shape[1]}x{original.shape[0]} but "
                         f"the face was aligned on a {w}x{h} one (read it with read_original, "
                         f"upright per EXIF)")
    if (crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3
            or crop.shape[0] != crop.shape[1]):
        raise PasteError(f"paste_back: edited_crop must be uint8 [n, n, 3], "
                         f"got {crop.dtype} {list(crop.shape)}")
    if mask is not None:
        m = np.asarray(mask)
        if m.ndim != 2 or m.shape[0] != m.shape[1] or not np.issubdtype(m.dtype, np.number):
            raise PasteError(f"paste_back: mask must be a square [m, m] array in [0, 1], "
                             f"got {m.dtype} {list(m.shape)}")


# ---------------------------------------------------------------- reading the photo

def read_original(src, name: str | None = None) -> tuple[np.ndarray, str]:
    """A photo as paste_back takes it: (uint8 [H, W] | [H, W, 3] | [H, W, 4], what changed).

    Upright per EXIF, like `align.load`, so that the faces' coordinates apply. Kept:
    grayscale, alpha. Changed (said in the returned line, '' when nothing): 16/32-bit to
    8-bit, CMYK or palette to RGB. Unreadable files raise images.ImageReadError.
    """
    if isinstance(src, (str, os.PathLike)):
        name = name or os.fspath(src)
        try:
            with Image.open(src) as raw:
                raw.load()
                img = ImageOps.exif_transpose(raw)
        except UnidentifiedImageError:
            raise images.ImageReadError(f"{name}: not an image (unrecognised format)") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise images.ImageReadError(f"{name}: unreadable image ({one_line(e)})") from None
    elif isinstance(src, Image.Image):
        img = ImageOps.exif_transpose(src)
    else:
        raise PasteError(f"read_original: expected a path or a PIL image, got {type(src).__name__}")
    mode = img.mode
    if mode in ("RGB", "L", "RGBA"):
        return np.asarray(img), ""
    if mode == "LA" or (mode == "P" and "transparency" in img.info) or mode == "PA":
        return np.asarray(img.convert("RGBA")), f"{mode} -> RGBA"
    if mode.startswith(("I", "F")):
        return np.asarray(images.pil_to_rgb8(img).convert("L")), f"{mode} -> 8-bit grayscale"
    return np.asarray(img.convert("RGB")), f"{mode} -> RGB"
