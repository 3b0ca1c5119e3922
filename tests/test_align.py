"""Face alignment against fixture 12 (the official align_face): landmarks, each recorded
step, the pre-transform image and the 1024/256 outputs, for the crop case and the tight
(reflect-pad + blur) case; the --face options on two faces; a folder with a no-face
image; awkward inputs; and invert --align."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from hyperstyle_jax import align
from hyperstyle_jax.align import api, cli, steps
from hyperstyle_jax.align import detect as det
from hyperstyle_jax.utils import images

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "12_alignment")
FACE = os.path.join(FIX, "grace_hopper.jpg")
TIGHT = os.path.join(FIX, "grace_hopper_tight.png")
# (array prefix, file, where the config keeps its steps)
CASES = {"crop": ("", FACE, None), "tight": ("tight_", TIGHT, "tight_case")}
OUT_KEYS = {1024: ("aligned_1024", "steps_recorded_1024"),
            256: ("aligned_outsize256", "steps_recorded_outsize256")}

try:
    det.require()
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


def _rgb(path):
    return Image.open(path).convert("RGB")


def _recorded(cfg, case, size):
    _, _, sub = CASES[case]
    return (cfg[sub] if sub else cfg)[OUT_KEYS[size][1]]


def _assert_steps_equal(ours, ref):
    assert [name for name, _ in ours] == [name for name, _ in ref]
    for (name, a), (_, b) in zip(ours, ref):
        assert sorted(a) == sorted(b), name
        for k in a:
            if k == "data":  # float64 quad: same operations, so equal up to rounding
                np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-9, err_msg=name)
            else:
                assert a[k] == b[k], (name, k)


# ---------------------------------------------------------------- pure steps (no dlib)

@pytest.mark.parametrize("case", ["crop", "tight"])
@pytest.mark.parametrize("size", [1024, 256])
def test_steps_and_outputs_from_landmarks(fx, cfg, case, size):
    prefix, path, _ = CASES[case]
    rec = []
    out = steps.align_from_landmarks(
        _rgb(path), fx[prefix + "landmarks"].astype(np.int64), size, rec
    )
    _assert_steps_equal(json.loads(json.dumps(rec)), _recorded(cfg, case, size))
    np.testing.assert_array_equal(np.asarray(out), fx[prefix + OUT_KEYS[size][0]])


@pytest.mark.parametrize("case", ["crop", "tight"])
def test_each_step_alone(fx, cfg, case):
    """quad -> shrink (none here) -> crop -> pad/blur -> warp, each against its record."""
    prefix, path, _ = CASES[case]
    rec = {name: p for name, p in _recorded(cfg, case, 1024)}
    img = _rgb(path)
    quad, qsize = steps.quad_from_landmarks(fx[prefix + "landmarks"].astype(np.int64))
    assert quad.shape == (4, 2) and quad.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(quad[2] - quad[0]), qsize * np.sqrt(2), rtol=1e-12)

    img2, quad2, qsize2 = steps.shrink(img, quad, qsize, 1024)
    assert img2 is img and qsize2 == qsize  # these faces are far below 4x1024

    img3, quad3 = steps.crop(img2, quad2, qsize2)
    if "crop" in rec:
        assert list(img.size) == rec["crop"]["image_size"]
        assert img3.size == (rec["crop"]["box"][2] - rec["crop"]["box"][0],
                             rec["crop"]["box"][3] - rec["crop"]["box"][1])
    else:
        assert img3 is img2

    pad = steps.pad_amounts(img3.size, quad3, qsize2)
    img4, quad4 = steps.pad_blur(img3, quad3, qsize2)
    if "np.pad" in rec:
        (top, bottom), (left, right), _ = rec["np.pad"]["pad_width"]
        assert list(pad) == [left, top, right, bottom]
        assert img4.size == (img3.size[0] + left + right, img3.size[1] + top + bottom)
    else:
        assert pad is None and img4 is img3
    np.testing.assert_array_equal(np.asarray(img4), fx[prefix + "pre_transform_image"])
    assert list(img4.size) == rec["transform"]["image_size"]
    np.testing.assert_allclose((quad4 + 0.5).flatten(), rec["transform"]["data"], rtol=0, atol=1e-9)

    out = steps.warp(img4, quad4)
    np.testing.assert_array_equal(np.asarray(out), fx[prefix + "aligned_1024"])


@pytest.mark.parametrize("prefix", ["", "tight_"])
def test_model_input(fx, prefix):
    """What invert feeds the model: PIL bilinear to 256, then [-1, 1]."""
    x = images.to_float(images.resize(fx[prefix + "aligned_1024"], (256, 256)))
    np.testing.assert_allclose(
        x, fx[prefix + "model_input_256"][0].transpose(1, 2, 0), rtol=0, atol=1e-6
    )


def test_shrink_on_a_huge_quad():
    """qsize >= 4 x output: an integer LANCZOS downscale, quad and qsize divided."""
    img = Image.new("RGB", (1000, 800))
    quad = np.array([[0, 0], [0, 600.0], [600, 600], [600, 0]])
    rec = []
    img2, quad2, qsize2 = steps.shrink(img, quad, 600.0, 128, rec)
    assert img2.size == (500, 400) and qsize2 == 300.0
    np.testing.assert_array_equal(quad2, quad / 2)
    assert rec == [("resize", {"image_size": [1000, 800], "size": [500, 400], "resample": 1})]


# ---------------------------------------------------------------- detection (dlib)

@needs_dlib
@pytest.mark.parametrize("case", ["crop", "tight"])
def test_landmarks_exact_and_end_to_end(fx, case):
    prefix, path, _ = CASES[case]
    faces = align.align_faces(path)
    assert len(faces) == 1
    np.testing.assert_array_equal(faces[0].landmarks, fx[prefix + "landmarks"])
    np.testing.assert_array_equal(faces[0].image, fx[prefix + "aligned_1024"])


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory):
    """The fixture's composite: [grace | mirrored grace] (PIL decode), as PNG."""
    a = np.asarray(_rgb(FACE))
    path = str(tmp_path_factory.mktemp("two") / "two.png")
    Image.fromarray(np.concatenate([a, a[:, ::-1]], axis=1)).save(path)
    return path


@needs_dlib
def test_two_faces(fx, cfg, two_faces):
    dets = cfg["several_faces"]["detections_in_order"]
    every = align.align_faces(two_faces, size=256, face="all")
    assert [f.index for f in every] == [0, 1]
    assert [list(f.box) for f in every] == dets
    np.testing.assert_allclose([f.score for f in every],
                               cfg["several_faces"]["detector_run_scores_in_that_order"], rtol=1e-6)
    # The official keeps dlib's last (detection 1): reproduced exactly.
    np.testing.assert_array_equal(every[1].landmarks, fx["two_faces_landmarks_used"])
    np.testing.assert_array_equal(every[1].image, fx["two_faces_aligned_outsize256"])
    # Default: the largest box, here the left face (187 px wide vs 186), end to end.
    [f] = align.align_faces(two_faces, size=256)
    assert f.index == 0
    np.testing.assert_array_equal(f.image, every[0].image)
    # The choice itself, on these detections (no second detection run needed).
    dets = [det.Detection(f.index, f.box, f.score) for f in every]
    for face, want in (("last", [1]), (1, [1]), ("1", [1]), (0, [0]), ("largest", [0]),
                       ("all", [0, 1])):
        assert [d.index for d in api.choose(dets, face, "two.png")] == want, face
    with pytest.raises(align.AlignError, match=r"^two\.png: face 2 requested but 2 found"):
        api.choose(dets, 2, "two.png")
    with pytest.raises(align.NoFaceError, match=r"^x\.png: no face found$"):
        api.choose([], "largest", "x.png")
    # Ties go to the first in dlib's order.
    tie = [det.Detection(0, (0, 0, 9, 9), 1.0), det.Detection(1, (20, 0, 29, 9), 2.0)]
    assert api.choose(tie, "largest", "t")[0].index == 0


@needs_dlib
def test_cli_face_all_and_landmarks(fx, two_faces, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["--images", two_faces, "--out", str(out), "--size", "256", "--face", "all",
                     "--save_landmarks"])
    assert code == 0
    for k in (0, 1):
        assert np.asarray(Image.open(out / f"two_face{k}.png")).shape == (256, 256, 3)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "two_face1.png")),
                                  fx["two_faces_aligned_outsize256"])
    meta = json.loads((out / "two.json").read_text())
    assert [f["output"] for f in meta["faces"]] == ["two_face0.png", "two_face1.png"]
    np.testing.assert_array_equal(meta["faces"][1]["landmarks"], fx["two_faces_landmarks_used"])
    assert (out / "failures.txt").read_text() == ""


@needs_dlib
@pytest.mark.parametrize("workers", [1, 2])
def test_folder_with_a_no_face_image(fx, tmp_path, capsys, workers):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(FACE, src / "good.jpg")
    noise = np.random.RandomState(0).randint(0, 256, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(noise).save(src / "noise.png")
    out = tmp_path / "out"
    code = cli.main(["--images", str(src), "--out", str(out), "--workers", str(workers)])
    err = capsys.readouterr().err
    assert code == 1
    failed = [line for line in err.splitlines() if line.startswith("failed:")]
    assert failed == [f"failed: {src / 'noise.png'}: no face found in the 256x256 image"]
    assert "Traceback" not in err
    assert "align: 2/2 images, 1 failed" in err  # stderr is not a TTY here: plain progress
    np.testing.assert_array_equal(np.asarray(Image.open(out / "good.png")), fx["aligned_1024"])
    assert not (out / "noise.png").exists()
    assert (out / "failures.txt").read_text().splitlines() == [failed[0][len("failed: "):]]


@needs_dlib
def test_awkward_inputs(tmp_path):
    """Each awkward file is either aligned or fails with one line naming it."""
    g = _rgb(FACE)
    a = np.asarray(g)
    files = {}
    g.convert("L").save(files.setdefault("gray", tmp_path / "gray.png"))
    g.convert("RGBA").save(files.setdefault("rgba", tmp_path / "rgba.png"))
    Image.fromarray(a[..., 1].astype(np.uint16) * 257).save(
        files.setdefault("16bit", tmp_path / "16bit.png")
    )
    g.convert("CMYK").save(files.setdefault("cmyk", tmp_path / "cmyk.jpg"))
    # Stored turned by 90 degrees, with the EXIF tag (6) that turns it upright.
    rot = g.transpose(Image.Transpose.ROTATE_90)
    exif = rot.getexif()
    exif[0x0112] = 6
    rot.save(files.setdefault("exif", tmp_path / "exif.png"), exif=exif)
    for kind, path in files.items():
        [img] = align.align_image(str(path), size=256)
        assert img.shape == (256, 256, 3) and img.dtype == np.uint8, kind
    # Gray in, gray out (all three channels equal).
    [img] = align.align_image(str(files["gray"]), size=256)
    assert (img[..., 0] == img[..., 1]).all()

    g.resize((8, 8)).save(tmp_path / "tiny.png")
    with pytest.raises(align.NoFaceError, match=r"tiny\.png: no face found in the 8x8 image$"):
        align.align_image(str(tmp_path / "tiny.png"))
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(images.ImageReadError, match=r"text\.png: not an image"):
        align.align_image(str(tmp_path / "text.png"))
    with pytest.raises(align.AlignError, match=r"^<image>: expected uint8"):
        align.align_image(np.zeros((4, 4, 3), np.float32))


@needs_dlib
def test_detection_on_a_downscaled_copy(fx):
    """Large images are searched at a smaller copy; landmarks still come from full res.

    dlib's box depends on the scale it was found at (pyramid steps), and the landmarks on
    the box, so the quad moves a little: measured 1-5 % of its side for max sides 200-500.
    """
    [f] = align.align_faces(FACE, detect_max_side=400)
    quad, qsize = steps.quad_from_landmarks(fx["landmarks"])
    assert np.abs(f.quad - quad).max() < 0.05 * qsize
    [f] = align.align_faces(np.asarray(_rgb(FACE)), detect_max_side=0)  # in-memory array
    assert f.image.shape == (1024, 1024, 3)


# ---------------------------------------------------------------- CLI edges

def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "(default: 1024)" in out and "(default: largest)" in out and "official" in out


def test_missing_extra_is_one_line(monkeypatch, tmp_path, capsys):
    real = det.importlib.util.find_spec
    monkeypatch.setattr(det.importlib.util, "find_spec",
                        lambda name, *a: None if name == "dlib" else real(name, *a))
    with pytest.raises(align.AlignUnavailableError, match=r"pip install -e '\.\[align\]'"):
        align.require()
    monkeypatch.setattr(det, "_MODELS", {})
    code = cli.main(["--images", FACE, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "dlib-bin" in err


def test_bad_face_option(capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_args(["--images", "x", "--out", "y", "--face", "-1"])
    assert e.value.code == 2
    assert "face index must be >= 0" in capsys.readouterr().err


# ---------------------------------------------------------------- invert --align

@needs_dlib
def test_invert_align(tmp_path, fx, capsys, monkeypatch, e2e_checkpoints):
    from hyperstyle_jax import inference, invert

    hs, we = e2e_checkpoints.hyperstyle(), e2e_checkpoints.w_encoder()
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(FACE, src / "face.jpg")
    Image.fromarray(np.random.RandomState(1).randint(0, 256, (96, 96, 3), dtype=np.uint8)).save(
        src / "noise.png")
    out = tmp_path / "out"
    fed = []  # what the model was given: (hw, ok paths, uint8 arrays)
    real = inference.read_batch

    def spy(paths, hw, *a):
        res = real(paths, hw, *a)
        fed.append((hw,) + res[:2])
        return res

    monkeypatch.setattr(inference, "read_batch", spy)
    code = invert.main(["--checkpoint", hs, "--w_encoder", we, "--images", str(src),
                        "--out", str(out), "--n_iters", "1", "--batch_size", "2", "--align"])
    err = capsys.readouterr().err
    assert code == 1
    skipped = [line for line in err.splitlines() if line.startswith("skipped:")]
    assert skipped == [f"skipped: {src / 'noise.png'}: no face found in the 96x96 image"]
    assert (out / "final" / "face.png").is_file() and not (out / "final" / "noise.png").exists()
    # The model got the official aligned 1024 image resized to its input, and the grid's
    # first cell shows that input.
    [(hw, ok, arrs)] = fed
    assert ok == [str(src / "face.jpg")]
    np.testing.assert_array_equal(arrs[0], images.resize(fx["aligned_1024"], hw))
    grid = np.asarray(Image.open(out / "grids" / "face.png"))
    cell = np.asarray(Image.open(out / "final" / "face.png")).shape[:2]
    # One row: the cells end 2 px above the bottom, below any label band.
    top = grid.shape[0] - 2 - cell[0]
    np.testing.assert_array_equal(
        grid[top:top + cell[0], 2:2 + cell[1]], images.resize(arrs[0], cell)
    )
