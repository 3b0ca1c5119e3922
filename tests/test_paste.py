"""Paste-back, the inverse of alignment: the recorded transform (AlignedFace) against
fixture 12's recorded steps, the round trip (align, paste the unedited crop back) on the
fixture photo, its tight (padded) crop, an EXIF-rotated copy and a two-face photo, photo
modes, the JSON record, the CNN detector and one-line errors."""
import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image

from hyperstyle_jax import align
from hyperstyle_jax.align import api, cli, paste, steps
from hyperstyle_jax.align import detect as det
from hyperstyle_jax.utils import images

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "12_alignment")
FACE = os.path.join(FIX, "grace_hopper.jpg")
TIGHT = os.path.join(FIX, "grace_hopper_tight.png")
CASES = {"crop": ("", FACE, None), "tight": ("tight_", TIGHT, "tight_case")}

try:
    det.require("cnn")
    HAVE_DLIB = True
except det.AlignUnavailableError:
    HAVE_DLIB = False
needs_dlib = pytest.mark.skipif(not HAVE_DLIB, reason="the align extra (dlib) is not installed")


@pytest.fixture(scope="module")
def fx():
    return np.load(os.path.join(FIX, "alignment_io.npz"))


@pytest.fixture(scope="module")
def cfg():
    with open(os.path.join(FIX, "config.json")) as f:
        return json.load(f)


def _fixture_face(fx, case, size=1024):
    """The fixture's AlignedFace from its recorded landmarks (no dlib)."""
    prefix, path, _ = CASES[case]
    photo, _ = paste.read_original(path)
    return photo, api.align_landmarks(Image.fromarray(photo), fx[prefix + "landmarks"], size)


def _support(face, shape, mask=None):
    """float32 [H, W]: the blend weight paste_back uses (mask x trusted) on the photo."""
    alpha, box = paste.blend_weight(face, mask)
    full = np.zeros(shape[:2], np.float32)
    full[box[1]:box[3], box[0]:box[2]] = alpha
    return full


def _psnr(a, b):
    err = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / err)


def _check_round_trip(photo, out, faces, min_psnr=35.0):
    """Inside each face (weight 1) PSNR >= min_psnr; where no weight, byte-identical."""
    support = np.zeros(photo.shape[:2], np.float32)
    for face in faces:
        w = _support(face, photo.shape)
        inside = w >= 0.999
        assert inside.sum() > 10_000
        assert _psnr(out[inside], photo[inside]) >= min_psnr
        support = np.maximum(support, w)
    np.testing.assert_array_equal(out[support == 0], photo[support == 0])
    assert out.shape == photo.shape and out.dtype == np.uint8


# ---------------------------------------------------------------- the recorded transform

@pytest.mark.parametrize("case", ["crop", "tight"])
def test_plan_is_what_the_steps_did(fx, cfg, case):
    """plan() (the geometry AlignedFace records) equals fixture 12's recorded steps."""
    prefix, path, sub = CASES[case]
    rec = dict((cfg[sub] if sub else cfg)["steps_recorded_1024"])
    photo, face = _fixture_face(fx, case)
    np.testing.assert_array_equal(face.image, fx[prefix + "aligned_1024"])
    assert face.shrink == 1 and face.original_size == photo.shape[1::-1]
    if "crop" in rec:
        assert list(face.crop) == rec["crop"]["box"]
    else:
        assert face.crop == (0, 0) + face.original_size
    if "np.pad" in rec:
        (top, bottom), (left, right), _ = rec["np.pad"]["pad_width"]
        assert face.pad == (left, top, right, bottom)
    else:
        assert face.pad == (0, 0, 0, 0)
    quad_pre = face.quad / face.shrink - face.crop[:2] + face.pad[:2]
    np.testing.assert_allclose((quad_pre + 0.5).ravel(), rec["transform"]["data"], atol=1e-9)


def test_plan_with_shrink():
    """A face >= 4x the output: plan's factor and size are what `shrink` records."""
    lm = np.load(os.path.join(FIX, "alignment_io.npz"))["landmarks"].astype(np.int64) * 4
    rec = []
    steps.prepare(Image.new("RGB", (2048, 2400)), lm, 256, rec)
    g = steps.plan((2048, 2400), lm, 256)
    assert g.shrink == 2 and rec[0] == ("resize", {"image_size": [2048, 2400],
                                                   "size": [1024, 1200], "resample": 1})
    assert [n for n, _ in rec] == ["resize", "crop"]  # prepare stops before the warp
    assert rec[1][1]["box"] == list(g.crop) and g.pad == (0, 0, 0, 0)


def test_unwarp_on_a_shrunk_face(fx):
    """The inverse map with shrink 2, on a smooth photo (so the 256 crop holds all its
    detail): pasting the whole crop back gives the photo within a level or two."""
    yy, xx = np.mgrid[0:2400, 0:2048].astype(np.float32)
    smooth = np.stack([xx / 2048 * 200 + 20, yy / 2400 * 200 + 20,
                       120 + 60 * np.sin(xx / 300) * np.cos(yy / 250)], -1)
    photo = np.uint8(np.rint(smooth))
    face = api.align_landmarks(Image.fromarray(photo), fx["landmarks"].astype(np.int64) * 4, 256)
    assert face.shrink == 2
    ones = np.ones((64, 64), np.float32)
    out = paste.paste_back(photo, face.image, face, mask=ones)
    w = _support(face, photo.shape, ones)
    inside = w >= 0.999
    assert inside.sum() > 500_000
    assert np.abs(out[inside].astype(int) - photo[inside]).max() <= 3
    np.testing.assert_array_equal(out[w == 0], photo[w == 0])


def test_json_round_trip(fx):
    _, face = _fixture_face(fx, "tight")
    text = face.to_json()
    back = api.AlignedFace.from_json(text)
    assert back == face and back.image is None and back.to_json() == text
    assert json.loads(text)["pad"] == [99, 99, 99, 99]
    with pytest.raises(AttributeError):
        face.shrink = 2  # frozen
    with pytest.raises(ValueError):
        face.quad[0, 0] = 1.0  # read-only arrays


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("case", ["crop", "tight"])
def test_round_trip_from_landmarks(fx, case):
    photo, face = _fixture_face(fx, case)
    out = paste.paste_back(photo, face.image, face)
    _check_round_trip(photo, out, [face])
    if case == "tight":  # the quad leaves the photo: the blurred band is not pasted
        band = 99 // 3 + 1
        np.testing.assert_array_equal(out[:, :band], photo[:, :band])
        np.testing.assert_array_equal(out[:band], photo[:band])


@needs_dlib
def test_round_trip_detected_and_exif_rotated(tmp_path):
    [face] = align.align_faces(FACE)
    photo, changed = paste.read_original(FACE)
    assert changed == ""
    _check_round_trip(photo, paste.paste_back(photo, face.image, face), [face])
    # The same photo stored turned by 90 degrees, with the EXIF tag (6) that turns it upright.
    turned = Image.fromarray(photo).transpose(Image.Transpose.ROTATE_90)
    exif = turned.getexif()
    exif[0x0112] = 6
    turned.save(tmp_path / "exif.png", exif=exif)
    [face_r] = align.align_faces(str(tmp_path / "exif.png"))
    photo_r, _ = paste.read_original(str(tmp_path / "exif.png"))
    np.testing.assert_array_equal(photo_r, photo)  # upright, as align saw it
    assert face_r.original_size == (512, 600)
    out = paste.paste_back(photo_r, face_r.image, face_r)
    _check_round_trip(photo_r, out, [face_r])
    # Not upright (EXIF ignored): one line, and nothing pasted in the wrong place.
    with pytest.raises(paste.PasteError, match=r"^paste_back: the photo is 600x512 but .* 512x600"):
        paste.paste_back(np.asarray(turned), face_r.image, face_r)


@needs_dlib
def test_two_faces_in_one_photo(tmp_path):
    photo = np.asarray(Image.open(FACE).convert("RGB"))
    both = np.concatenate([photo, photo[:, ::-1]], axis=1)
    faces = align.align_faces(both, face="all")
    assert len(faces) == 2
    out = both
    for face in faces:
        out = paste.paste_back(out, face.image, face)
    _check_round_trip(both, out, faces)
    # Disjoint supports: the order does not matter.
    rev = both
    for face in faces[::-1]:
        rev = paste.paste_back(rev, face.image, face)
    np.testing.assert_array_equal(rev, out)


def test_photo_modes(fx):
    """Gray stays gray (the crop pasted as luma); alpha is kept as is; 16-bit -> 8-bit."""
    photo, face = _fixture_face(fx, "crop")
    gray = np.asarray(Image.fromarray(photo).convert("L"))
    out = paste.paste_back(gray, face.image, face)
    w = _support(face, photo.shape)
    assert out.shape == gray.shape
    np.testing.assert_array_equal(out[w == 0], gray[w == 0])
    assert _psnr(out[w >= 0.999], gray[w >= 0.999]) >= 35
    alpha = np.random.RandomState(0).randint(0, 256, photo.shape[:2], dtype=np.uint8)
    rgba = np.dstack([photo, alpha])
    out = paste.paste_back(rgba, face.image, face)
    np.testing.assert_array_equal(out[..., 3], alpha)
    np.testing.assert_array_equal(out[..., :3], paste.paste_back(photo, face.image, face))

    wide = Image.fromarray(gray.astype(np.uint16) * 257)
    arr, changed = paste.read_original(wide)
    assert arr.dtype == np.uint8 and changed.endswith("-> 8-bit grayscale")
    np.testing.assert_array_equal(arr, gray)
    arr, changed = paste.read_original(Image.fromarray(rgba).convert("LA"))
    assert arr.shape[2] == 4 and changed == "LA -> RGBA"


def test_color_match_corrects_a_cast(fx):
    """A crop whose colours are off overall (as a reconstruction can be): matching the
    border takes most of the cast away; on the true crop it changes little."""
    photo, face = _fixture_face(fx, "crop")
    cast = np.clip(face.image.astype(int) + [12, -8, 6], 0, 255).astype(np.uint8)
    inside = _support(face, photo.shape) >= 0.999
    plain = _psnr(paste.paste_back(photo, cast, face)[inside], photo[inside])
    matched = _psnr(paste.paste_back(photo, cast, face, color_match=True)[inside], photo[inside])
    assert matched > plain + 5
    true = _psnr(paste.paste_back(photo, face.image, face, color_match=True)[inside], photo[inside])
    assert true >= 35


# ---------------------------------------------------------------- the CNN detector

@needs_dlib
def test_cnn_detector_finds_the_fixture_face(fx):
    [hog] = align.align_faces(FACE, size=256)
    [cnn] = align.align_faces(FACE, size=256, detector="cnn", detect_max_side=400)
    assert cnn.detector == "cnn" and 0 < cnn.score
    b1, b2 = np.array(hog.box), np.array(cnn.box)
    inter = np.prod(np.maximum(np.minimum(b1[2:], b2[2:]) - np.maximum(b1[:2], b2[:2]), 0))
    union = np.prod(b1[2:] - b1[:2]) + np.prod(b2[2:] - b2[:2]) - inter
    assert inter / union > 0.6
    # Its box is tighter; the 68 landmarks on it move the quad by a few % of its side.
    _, qsize = steps.quad_from_landmarks(hog.landmarks)
    assert np.abs(cnn.quad - hog.quad).max() < 0.05 * qsize


@needs_dlib
def test_cnn_aligns_a_face_hog_misses(fx):
    """The tight crop turned by 60 degrees: HOG finds nothing; the CNN finds it and the
    roll search (detect.upright_landmarks) aligns it: the quad is the turned one."""
    img = Image.open(TIGHT).convert("RGB")
    rot = img.rotate(60, Image.Resampling.BICUBIC, expand=True, fillcolor=(60, 60, 60))
    with pytest.raises(align.NoFaceError):
        align.align_faces(np.asarray(rot), size=256)
    [face] = align.align_faces(np.asarray(rot), size=256, detector="cnn")
    t = np.deg2rad(60)
    turn = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    lm = (fx["tight_landmarks"] + 0.5 - np.array(img.size) / 2) @ turn.T
    quad, qsize = steps.quad_from_landmarks(lm + np.array(rot.size) / 2 - 0.5)
    assert np.abs(face.quad - quad).max() < 0.05 * qsize


@needs_dlib
def test_models_load_after_the_cnn_alone(monkeypatch):
    monkeypatch.setattr(det, "_MODELS", {})
    det.cnn_model()
    hog, predictor = det.models()
    assert hog is not None and predictor is not None


def test_detector_option():
    assert cli.parse_args(["--images", "x", "--out", "y", "--detector", "cnn"]).detector == "cnn"
    assert cli.parse_args(["--images", "x", "--out", "y"]).detector == "hog"
    assert det.default_max_side("cnn") == det.CNN_MAX_SIDE
    with pytest.raises(ValueError, match=r"^detector must be one of hog, cnn, got 'mtcnn'$"):
        align.align_faces(FACE, detector="mtcnn")


@needs_dlib
def test_cli_writes_the_transform(fx, tmp_path):
    out = tmp_path / "out"
    assert cli.main(["--images", TIGHT, "--out", str(out), "--size", "256"]) == 0
    face = api.AlignedFace.from_json((out / "grace_hopper_tight.json").read_text(),
                                     image=np.asarray(Image.open(out / "grace_hopper_tight.png")))
    _, ref = _fixture_face(fx, "tight", 256)
    assert face == dataclasses.replace(ref, box=face.box, score=face.score)
    np.testing.assert_array_equal(face.image, fx["tight_aligned_outsize256"])


# ---------------------------------------------------------------- bad input, one line

def test_bad_inputs_one_line(fx, tmp_path):
    photo, face = _fixture_face(fx, "crop")
    cases = [
        (lambda: paste.paste_back(photo.astype(np.float32), face.image, face),
         r"^paste_back: original must be uint8 \[H, W\], \[H, W, 3\] or \[H, W, 4\], got float32"),
        (lambda: paste.paste_back(photo, face.image[:, :100], face),
         r"^paste_back: edited_crop must be uint8 \[n, n, 3\], got uint8 \[1024, 100, 3\]$"),
        (lambda: paste.paste_back(photo, face.image, face, mask=np.ones((4, 5))),
         r"^paste_back: mask must be a square"),
        (lambda: paste.paste_back(photo, face.image, face.to_dict()),
         r"^paste_back: face must be an AlignedFace, got dict$"),
        (lambda: api.AlignedFace.from_json("{", name="a.json"), r"^a\.json: not JSON \("),
        (lambda: api.AlignedFace.from_json('{"format": "x"}', name="a.json"),
         r"^a\.json: not an aligned-face record"),
        (lambda: api.AlignedFace.from_dict({**face.to_dict(), "quad": [[0, 0]] * 4}, "b.json"),
         r"^b\.json: AlignedFace: the quad's side must be positive|^b\.json: AlignedFace: sizes"),
        (lambda: api.AlignedFace.from_dict(
            {**face.to_dict(), "quad": [[0, 0], [0, 9], [9, 9], [8, 0]]}, "c.json"),
         r"^c\.json: AlignedFace: the quad is not a parallelogram$"),
        (lambda: api.AlignedFace.from_dict(
            {k: v for k, v in face.to_dict().items() if k != "pad"}, "d.json"),
         r"^d\.json: aligned-face record lacks pad$"),
    ]
    for call, pattern in cases:
        with pytest.raises(ValueError, match=pattern) as e:
            call()
        assert "\n" not in str(e.value)
    (tmp_path / "t.png").write_text("not an image")
    with pytest.raises(images.ImageReadError, match=r"t\.png: not an image"):
        paste.read_original(str(tmp_path / "t.png"))
