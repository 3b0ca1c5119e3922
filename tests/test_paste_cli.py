"""Photo in, photo out through the command lines (fixture-05 model, fixture-12 face):
`invert --paste_back` writes pasted/<name>.png at the photo's size and keeps each face's
transform; `edit interfacegan --paste_back` writes full-size photos whose pixels outside
the face mask are the input's, two faces pasted into one photo (--face all); `edit
--inversion DIR --paste_back` pastes with the stored transforms, and a missing transform
is one line naming the file while the rest goes on. The fixture generator is tiny, so the
pasted faces are blocky: the checks are geometry and untouched pixels."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import hyperstyle_jax
from hyperstyle_jax import edit, invert
from hyperstyle_jax.align import detect, paste
from hyperstyle_jax.editing import interfacegan
from hyperstyle_jax.inference import image_loader
from hyperstyle_jax.inversion_files import read_transform

HERE = os.path.join(os.path.dirname(__file__), "fixtures")
FACE = os.path.join(HERE, "12_alignment", "grace_hopper.jpg")
# fixture 08 holds the official 512-wide directions; the fixture-05 generator is 64 wide,
# so its direction comes from fixture 09 (a random unit vector, named "age" here).
AGE_SRC = os.path.join(HERE, "09_editing", "interfacegan_random_unit.pt")

try:
    detect.require("hog")
    HAVE_DLIB = True
except detect.AlignUnavailableError:
    HAVE_DLIB = False
pytestmark = pytest.mark.skipif(not HAVE_DLIB, reason="the align extra (dlib) is not installed")


@pytest.fixture(scope="module")
def age(tmp_path_factory):
    path = tmp_path_factory.mktemp("dirs") / "age.pt"
    shutil.copy(AGE_SRC, path)
    return str(path)


@pytest.fixture(scope="module")
def ckpts(e2e_checkpoints):
    return e2e_checkpoints.hyperstyle(), e2e_checkpoints.w_encoder()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """face.jpg (the fixture photo, 600x512) and two.png (two copies side by side)."""
    d = tmp_path_factory.mktemp("photos")
    shutil.copy(FACE, d / "face.jpg")
    one = np.asarray(Image.open(FACE).convert("RGB"))
    Image.fromarray(np.concatenate([one, one], axis=1)).save(d / "two.png")
    return d


@pytest.fixture(scope="module")
def inverted(ckpts, photos, tmp_path_factory):
    """`invert --paste_back --face all --save_latents --save_deltas` on both photos."""
    out = tmp_path_factory.mktemp("inv") / "out"
    hs, we = ckpts
    code = invert.main(["--checkpoint", hs, "--w_encoder", we, "--images", str(photos),
                        "--out", str(out), "--n_iters", "1", "--batch_size", "2",
                        "--save_latents", "--save_deltas", "--paste_back", "--face", "all"])
    assert code == 0
    return out


def _photo(path):
    return paste.read_original(str(path))[0]


def _support(photo_shape, faces):
    """Where paste_back may change pixels: the union of the faces' blend weights."""
    support = np.zeros(photo_shape[:2], np.float32)
    for face in faces:
        alpha, box = paste.blend_weight(face)
        region = support[box[1]:box[3], box[0]:box[2]]
        np.maximum(region, alpha, out=region)
    return support


def _check_pasted(pasted_path, photo_path, faces):
    return _check_pasted_array(np.asarray(Image.open(pasted_path)), photo_path, faces)


def _check_pasted_array(out, photo_path, faces):
    photo = _photo(photo_path)
    assert out.shape == photo.shape and out.dtype == np.uint8
    support = _support(photo.shape, faces)
    np.testing.assert_array_equal(out[support == 0], photo[support == 0])
    for face in faces:  # every face was pasted: pixels changed inside each one
        alpha, box = paste.blend_weight(face)
        inside = out[box[1]:box[3], box[0]:box[2]][alpha > 0.99]
        assert np.abs(inside.astype(int)
                      - photo[box[1]:box[3], box[0]:box[2]][alpha > 0.99]).mean() > 1
    return out


def test_invert_paste_back(inverted, photos):
    out = inverted
    assert sorted(os.listdir(out / "pasted")) == ["face.png", "two.png"]
    stems = ["face_face0", "two_face0", "two_face1"]
    assert sorted(f[:-5] for f in os.listdir(out / "transforms")) == stems
    origins = {s: read_transform(str(out), s) for s in stems}
    assert origins["two_face1"].photo == "two"
    assert origins["face_face0"].source == os.path.abspath(photos / "face.jpg")
    assert origins["face_face0"].face.original_size == (512, 600)
    _check_pasted(out / "pasted" / "face.png", photos / "face.jpg", [origins["face_face0"].face])
    _check_pasted(out / "pasted" / "two.png", photos / "two.png",
                  [origins["two_face0"].face, origins["two_face1"].face])
    # the crops are there as without --paste_back
    assert (out / "final" / "two_face1.png").is_file()


def test_edit_images_paste_back(ckpts, age, photos, tmp_path, capsys):
    """edit interfacegan --images --paste_back (implies --align): the photo at its size,
    outside the mask the input's bytes; the two faces of two.png in one photo."""
    hs, we = ckpts
    out = tmp_path / "edit"
    code = edit.main(["interfacegan", "--checkpoint", hs, "--w_encoder", we, "--images",
                      str(photos), "--out", str(out), "--n_iters", "1", "--batch_size", "2",
                      "--direction", age, "--factors=-3,3", "--paste_back", "--face", "all",
                      "--save_inversion"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    for key in ("age_-3", "age_3"):
        assert sorted(os.listdir(out / "pasted" / key)) == ["face.png", "two.png"]
        assert (out / "edits" / key / "two_face1.png").is_file()
    faces = [read_transform(str(out), s).face for s in ("two_face0", "two_face1")]
    a = _check_pasted(out / "pasted" / "age_-3" / "two.png", photos / "two.png", faces)
    b = _check_pasted(out / "pasted" / "age_3" / "two.png", photos / "two.png", faces)
    assert not np.array_equal(a, b)  # each key pastes its own edit
    [face] = [read_transform(str(out), "face_face0").face]
    _check_pasted(out / "pasted" / "age_3" / "face.png", photos / "face.jpg", [face])


def test_edit_inversion_paste_back(ckpts, age, inverted, photos, tmp_path, capsys):
    """--inversion DIR --paste_back takes DIR/transforms; a missing transform is one line
    naming the file and the other photos are pasted; a missing photo likewise."""
    inv = tmp_path / "inv"
    shutil.copytree(inverted, inv)
    out = tmp_path / "edit"
    code = edit.main(["interfacegan", "--checkpoint", ckpts[0], "--inversion", str(inv),
                      "--out", str(out), "--direction", age, "--factors", "2",
                      "--paste_back"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    faces = [read_transform(str(inv), s).face for s in ("two_face0", "two_face1")]
    _check_pasted(out / "pasted" / "age_2" / "two.png", photos / "two.png", faces)
    _check_pasted(out / "pasted" / "age_2" / "face.png", photos / "face.jpg",
                  [read_transform(str(inv), "face_face0").face])

    os.remove(inv / "transforms" / "face_face0.json")
    out2 = tmp_path / "edit2"
    code = edit.main(["interfacegan", "--checkpoint", ckpts[0], "--inversion", str(inv),
                      "--out", str(out2), "--direction", age, "--factors", "2",
                      "--paste_back"])
    cap = capsys.readouterr()
    assert code == 1
    lines = [line for line in cap.err.splitlines() if line.startswith("not pasted:")]
    assert len(lines) == 1, cap.err
    assert str(inv / "transforms" / "face_face0.json") in lines[0] and "missing" in lines[0]
    assert (out2 / "edits" / "age_2" / "face_face0.png").is_file()  # the crop is kept
    assert os.listdir(out2 / "pasted" / "age_2") == ["two.png"]


def test_edit_inversion_photo_missing(ckpts, age, inverted, tmp_path, capsys):
    inv = tmp_path / "inv"
    shutil.copytree(inverted, inv)
    path = inv / "transforms" / "face_face0.json"
    record = json.loads(path.read_text())
    record["source"] = str(tmp_path / "gone.jpg")
    path.write_text(json.dumps(record))
    out = tmp_path / "edit"
    code = edit.main(["interfacegan", "--checkpoint", ckpts[0], "--inversion", str(inv),
                      "--out", str(out), "--direction", age, "--factors", "2",
                      "--paste_back"])
    cap = capsys.readouterr()
    assert code == 1
    lines = [line for line in cap.err.splitlines() if line.startswith("not pasted:")]
    assert len(lines) == 1 and str(tmp_path / "gone.jpg") in lines[0], cap.err
    assert os.listdir(out / "pasted" / "age_2") == ["two.png"]


def test_api_keeps_transforms(ckpts, age, photos, tmp_path):
    """hyperstyle_jax.load(...).invert(align=True) keeps the transform; paste_back gives
    the photo at its size; save/load_inversion keep the transform."""
    model = hyperstyle_jax.load(*ckpts, batch_size=1)
    [item] = model.invert([str(photos / "face.jpg")], n_iters=1, align=True)
    assert item.origin is not None and item.origin.photo == "face"
    edited = model.edit(item, interfacegan.apply, interfacegan.load_direction(age), [3])
    out = model.paste_back(item, edited[0])
    _check_pasted_array(out, photos / "face.jpg", [item.origin.face])
    model.save(str(tmp_path / "saved"), [item])
    [back] = model.load_inversion(str(tmp_path / "saved"))
    assert back.origin == item.origin


def test_detector_and_face_reach_alignment(photos):
    """--detector and --face go through to alignment (the loader invert_paths uses), and
    every subcommand and invert take them."""
    load, _ = image_loader(True, face="all", detector="cnn")
    faces = [f for _, f in load(str(photos / "two.png"))]
    assert len(faces) == 2 and {f.detector for f in faces} == {"cnn"}
    args = edit.build_parser().parse_args(
        ["ganspace", "--checkpoint", "c", "--inversion", "i", "--out", "o", "--pca", "p",
         "--paste_back", "--face", "all", "--detector", "cnn"])
    assert (args.paste_back, args.face, args.detector) == (True, "all", "cnn")
    args = invert.parse_args(["--checkpoint", "c", "--w_encoder", "w", "--images", "i",
                              "--out", "o", "--paste_back", "--detector", "cnn"])
    assert args.align and args.detector == "cnn" and args.face == "largest"


def test_interpolate_pastes_into_the_first_photo(ckpts, inverted, photos, tmp_path, capsys):
    out = tmp_path / "interp"
    code = edit.main(["interpolate", "--checkpoint", ckpts[0], "--inversion", str(inverted),
                      "--out", str(out), "--pair", "face_face0", "two_face1", "--alphas", "0.5",
                      "--paste_back"])
    assert code == 0, capsys.readouterr().err
    assert os.listdir(out / "pasted" / "alpha_0.5") == ["face_face0__two_face1.png"]
    _check_pasted(out / "pasted" / "alpha_0.5" / "face_face0__two_face1.png",
                  photos / "face.jpg", [read_transform(str(inverted), "face_face0").face])


def test_invert_paste_back_exif_and_gray(ckpts, tmp_path, capsys):
    """An EXIF-rotated JPEG is pasted into its upright view (the face lands where it is);
    a grayscale photo stays grayscale at its size."""
    src = tmp_path / "in"
    src.mkdir()
    upright = Image.open(FACE).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers rotate 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(src / "turned.jpg", quality=95, exif=exif)
    upright.convert("L").save(src / "gray.png")
    out = tmp_path / "out"
    hs, we = ckpts
    code = invert.main(["--checkpoint", hs, "--w_encoder", we, "--images", str(src),
                        "--out", str(out), "--n_iters", "1", "--batch_size", "2",
                        "--paste_back"])
    assert code == 0, capsys.readouterr().err
    turned = read_transform(str(out), "turned")
    assert turned.face.original_size == upright.size
    got = _check_pasted(out / "pasted" / "turned.png", src / "turned.jpg", [turned.face])
    assert got.shape == (upright.size[1], upright.size[0], 3)
    gray = _check_pasted(out / "pasted" / "gray.png", src / "gray.png",
                         [read_transform(str(out), "gray").face])
    assert gray.ndim == 2
