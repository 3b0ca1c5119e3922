"""Read an image, detect faces, choose, align: the functions the CLIs call.

Each aligned face comes back as an `AlignedFace`: the crop's pixels plus the transform
that made it (quad, shrink, crop box, pad, sizes, landmarks), which `paste.paste_back`
inverts and `to_json`/`from_json` keep next to the crop.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

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


JSON_FORMAT = "hyperstyle_jax.AlignedFace/1"


@dataclass(frozen=True, eq=False)
class AlignedFace:
    """One aligned face: the transform from the original photo to the crop, and the crop.

    All coordinates are pixel indices (pixel i covers [i - 0.5, i + 0.5]) of the photo as
    `load` sees it: upright per EXIF, size original_size = (W, H). The crop is the quad
    sampled into transform_size, resized to output_size (see `steps`); the geometry in
    between is `steps.plan(original_size, landmarks, output_size)`, recorded here so that
    a JSON file alone is enough to paste back. Arrays are read-only; `image` (the crop) is
    not part of the JSON, nor of ==.
    """
    original_size: tuple[int, int]  # (W, H), upright per EXIF
    landmarks: np.ndarray  # float64 [68, 2] (x, y); dlib's are whole pixels
    quad: np.ndarray  # float64 [4, 2] NW, SW, SE, NE (before shrink/crop/pad)
    shrink: int  # integer downscale before cropping; 1 when none
    crop: tuple[int, int, int, int]  # box in the shrunk photo: left, top, right, bottom (excl.)
    pad: tuple[int, int, int, int]  # reflect-pad + blur added around the crop box: l, t, r, b
    output_size: int
    transform_size: int
    index: int = 0  # detection index in dlib's order
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # detection: left, top, right, bottom (incl.)
    score: float = 0.0  # detector score (HOG margin or CNN confidence)
    detector: str = "hog"
    image: np.ndarray | None = field(default=None, repr=False)  # uint8 [S, S, 3], S = output_size

    def __post_init__(self):
        def frozen(name, dtype, shape):
            arr = np.array(getattr(self, name), dtype=dtype)
            if arr.shape != shape or not np.isfinite(arr).all():
                raise AlignError(f"AlignedFace: {name} must be finite {list(shape)}, "
                                 f"got {list(arr.shape)}")
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

        frozen("landmarks", np.float64, (68, 2))
        frozen("quad", np.float64, (4, 2))
        for name, n in (("original_size", 2), ("crop", 4), ("pad", 4), ("box", 4)):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != n:
                raise AlignError(f"AlignedFace: {name} needs {n} integers, got {len(value)}")
            object.__setattr__(self, name, value)
        q = self.quad
        side = float(np.hypot(*(q[3] - q[0])))
        if min(self.original_size) < 1 or self.shrink < 1 or self.output_size < 1 or side <= 0:
            raise AlignError(f"AlignedFace: sizes, shrink and the quad's side must be positive "
                             f"(original_size {self.original_size}, shrink {self.shrink}, "
                             f"output_size {self.output_size})")
        # quad_from_landmarks makes a square: the warp is then affine (PIL's QUAD map is
        # bilinear, affine exactly when NW - SW + SE - NE = 0), which paste-back inverts.
        if np.abs(q[0] - q[1] + q[2] - q[3]).max() > 1e-6 * side:
            raise AlignError("AlignedFace: the quad is not a parallelogram")
        if self.image is not None:
            image = np.asarray(self.image)
            image.setflags(write=False)
            object.__setattr__(self, "image", image)

    def __eq__(self, other):
        return isinstance(other, AlignedFace) and self.to_dict() == other.to_dict()

    __hash__ = None

    def to_dict(self) -> dict:
        """Everything but the pixels, as JSON types."""
        return {"format": JSON_FORMAT, "original_size": list(self.original_size),
                "output_size": self.output_size, "transform_size": self.transform_size,
                "quad": self.quad.tolist(), "shrink": self.shrink, "crop": list(self.crop),
                "pad": list(self.pad), "landmarks": self.landmarks.tolist(),
                "index": self.index, "box": list(self.box), "score": self.score,
                "detector": self.detector}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d, name: str = "<json>", image=None) -> AlignedFace:
        if not isinstance(d, dict) or d.get("format") != JSON_FORMAT:
            raise AlignError(f"{name}: not an aligned-face record (format {JSON_FORMAT})")
        keys = ("original_size", "landmarks", "quad", "shrink", "crop", "pad", "output_size",
                "transform_size", "index", "box", "score", "detector")
        missing = [k for k in keys if k not in d]
        if missing:
            raise AlignError(f"{name}: aligned-face record lacks {', '.join(missing)}")
        try:
            return cls(**{k: d[k] for k in keys}, image=image)
        except AlignError as e:
            raise AlignError(f"{name}: {e}") from None
        except (TypeError, ValueError) as e:
            raise AlignError(f"{name}: bad aligned-face record ({one_line(e)})") from None

    @classmethod
    def from_json(cls, text: str, name: str = "<json>", image=None) -> AlignedFace:
        """Inverse of to_json; errors are one-line AlignErrors starting with `name`."""
        try:
            d = json.loads(text)
        except ValueError as e:
            raise AlignError(f"{name}: not JSON ({one_line(e)})") from None
        return cls.from_dict(d, name, image)


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


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
        import dlib  # noqa: PLC0415  optional extra

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
            raise imio.ImageReadError(f"{name}: unreadable image ({one_line(e)})") from None
        rgb = np.asarray(img, dtype=np.uint8)
        return Loaded(name, img, dlib_rgb if dlib_rgb is not None else rgb)
    name = name or "<image>"
    if isinstance(src, Image.Image):
        img = imio.pil_to_rgb8(ImageOps.exif_transpose(src))
    else:
        arr = np.asarray(src)
        if (arr.dtype != np.uint8 or arr.ndim not in (2, 3)
                or (arr.ndim == 3 and arr.shape[2] not in (3, 4))):
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
            raise ValueError(f"face must be largest, last, all or an index >= 0, "
                             f"got {value!r}") from None
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
                detect_max_side: int | None = None, detector: str = "hog") -> list[AlignedFace]:
    """Detect ('hog' or 'cnn'), choose and align faces; see the package docstring.

    detect_max_side None: the detector's default (`detect.default_max_side`).
    """
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    face = parse_face(face)
    det.require(detector)
    im = load(src, name)
    dets = choose(det.detect(im.detect_rgb, detect_max_side, detector), face, im.name,
                  im.image.size)
    out = []
    for d in dets:
        if detector == "cnn":
            lm = det.upright_landmarks(im.detect_rgb, d.box)
        else:
            lm = det.landmarks(im.detect_rgb, d.box)
        out.append(align_landmarks(im.image, lm, size, d, detector))
    return out


def align_landmarks(image: Image.Image, lm, size: int = 1024,
                    detection: det.Detection | None = None, detector: str = "hog") -> AlignedFace:
    """Align an RGB PIL image (as `load` gives it) at given 68 landmarks -> AlignedFace.

    What align_faces does per detection; callers with landmarks of their own (smoothed
    over video frames, say) start here. `detection` only fills index, box and score.
    """
    size = int(size)
    lm = np.asarray(lm, dtype=np.float64)  # float32 geometry would move the quad
    geometry = st.plan(image.size, lm, size)
    crop = np.asarray(st.align_from_landmarks(image, lm, size), dtype=np.uint8)
    d = detection or det.Detection(0, (0, 0, 0, 0), 0.0)
    return AlignedFace(image.size, lm, geometry.quad, geometry.shrink, geometry.crop,
                       geometry.pad, size, max(st.TRANSFORM_SIZE, size), d.index, d.box,
                       d.score, detector, crop)


def align_image(src, size: int = 1024, face="largest", name: str | None = None,
                detect_max_side: int | None = None, detector: str = "hog") -> list[np.ndarray]:
    """Aligned uint8 [size, size, 3] crops, one per chosen face (one unless face='all')."""
    return [f.image for f in align_faces(src, size, face, name, detect_max_side, detector)]
