"""`python -m hyperstyle_jax.edit` end to end: parity with fixture 09 through the CLI (an
`invert`-format folder holding the fixture's own codes and deltas -> --save_npy arrays),
the --images path (invert, then edit; outputs kept when a file fails), one-line errors
with a non-zero exit status, --help with defaults."""
import os

import numpy as np
import pytest
from helpers import nhwc
from PIL import Image

from hyperstyle_jax import edit

HERE = os.path.join(os.path.dirname(__file__), "fixtures")
F09 = os.path.join(HERE, "09_editing")
F08 = os.path.join(HERE, "08_interfacegan_directions")
STEMS = ["img0", "img1"]
IMG_ATOL = 2e-4  # fixtures README §9


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(os.path.join(F09, "editing_io.npz")))


@pytest.fixture(scope="module")
def ckpts(e2e_checkpoints):
    return e2e_checkpoints.hyperstyle(), e2e_checkpoints.w_encoder()


@pytest.fixture(scope="module")
def inversion(ref, tmp_path_factory):
    """The fixture's inversion written as `invert --save_latents --save_deltas` does."""
    d = tmp_path_factory.mktemp("inv")
    np.save(d / "latents.npy", {s: ref["codes"][i] for i, s in enumerate(STEMS)}, allow_pickle=True)
    os.makedirs(d / "deltas")
    for i, s in enumerate(STEMS):
        np.savez(d / "deltas" / f"{s}.npz", **{f"layer_{int(k[-2:])}": ref[k][i] for k in ref
                                               if k.startswith("deltas_layer")})
    return str(d)


def run(capsys, *argv):
    code = edit.main([str(a) for a in argv])
    return code, capsys.readouterr()


def test_interfacegan_cli_parity(ref, ckpts, inversion, tmp_path, capsys):
    out = tmp_path / "out"
    code, cap = run(capsys, "interfacegan", "--checkpoint", ckpts[0], "--inversion", inversion,
                    "--out", out, "--direction", os.path.join(F09, "interfacegan_random_unit.pt"),
                    "--direction", os.path.join(F09, "interfacegan_pose_like.pt"),
                    "--factors", "-2,-1,0,1,2", "--save_npy")  # '--factors -2,..' as typed
    assert code == 0, cap.err
    for i, stem in enumerate(STEMS):
        arr = np.load(out / "arrays" / f"{stem}.npz")
        assert set(arr.files) == {"reconstruction"} | {
            f"interfacegan_{n}_{f}" for n in ("random_unit", "pose_like") for f in range(-2, 3)}
        for k, f in enumerate(range(-2, 3)):
            np.testing.assert_allclose(arr[f"interfacegan_random_unit_{f}"],
                                       nhwc(ref["interfacegan_unit_images"][i])[k], atol=IMG_ATOL)
        np.testing.assert_allclose(arr["interfacegan_pose_like_1"],
                                   nhwc(ref["interfacegan_pose_images"][i])[0], atol=IMG_ATOL)
        np.testing.assert_allclose(arr["reconstruction"], nhwc(ref["y_hat_final_full"])[i],
                                   atol=IMG_ATOL)
        assert (arr["reconstruction"].dtype == np.float32
                and arr["reconstruction"].shape == (128, 128, 3))
        png = np.asarray(Image.open(out / "edits" / "interfacegan_random_unit_-2" / f"{stem}.png"))
        np.testing.assert_array_equal(png, np.clip(np.round(
            (arr["interfacegan_random_unit_-2"] + 1) * 127.5), 0, 255).astype(np.uint8))
        grid = np.asarray(Image.open(out / "grids" / f"{stem}.png"))
        # two labelled rows (one per direction) of 7 cells: input | reconstruction | 5 factors
        assert grid.shape[1] == 7 * 130 + 2 and grid.shape[0] > 2 * 130 + 2


@pytest.mark.parametrize("crop", ["none", "official"])
def test_ganspace_cli_parity(ref, ckpts, inversion, tmp_path, capsys, crop):
    out = tmp_path / "out"
    code, cap = run(capsys, "ganspace", "--checkpoint", ckpts[0], "--inversion", inversion,
                    "--out", out, "--pca", os.path.join(F09, "ganspace_random_pca.pt"),
                    "--edit", "Pose II", "--edit", "color", "--crop", crop, "--save_npy")
    assert code == 0, cap.err
    want = ref["ganspace_images_full" if crop == "none" else "ganspace_images_official_crop"]
    for i, stem in enumerate(STEMS):
        arr = np.load(out / "arrays" / f"{stem}.npz")
        assert set(arr.files) == {"reconstruction", "pose_ii", "color"}
        for k, key in enumerate(["reconstruction", "pose_ii", "color"]):
            np.testing.assert_allclose(arr[key], nhwc(want[i])[k], atol=IMG_ATOL, err_msg=key)
        assert (out / "edits" / "pose_ii" / f"{stem}.png").is_file()


def test_interpolate_cli_parity(ref, ckpts, inversion, tmp_path, capsys):
    out = tmp_path / "out"
    gif = tmp_path / "anim.gif"
    code, cap = run(capsys, "interpolate", "--checkpoint", ckpts[0], "--inversion", inversion,
                    "--out", out, "--pair", "img0", "img1", "--alphas", "0.5,0.25",
                    "--frames", "4", "--animation", gif, "--save_npy")
    assert code == 0, cap.err
    arr = np.load(out / "arrays" / "img0__img1.npz")
    assert set(arr.files) == {"alpha_0.5", "alpha_0.25"}
    for k, a in enumerate(["alpha_0.5", "alpha_0.25"]):
        np.testing.assert_allclose(arr[a], nhwc(ref["interp_images"])[k], atol=IMG_ATOL)
        assert (out / "edits" / a / "img0__img1.png").is_file()
    assert (out / "grids" / "img0__img1.png").is_file()
    with Image.open(gif) as im:
        assert im.n_frames == 4 and im.size == (128, 128)


def test_inputs_named_by_file_name(ref, ckpts, inversion, tmp_path, capsys):
    """--pair takes an input's file name as well as its stem (img0.png == img0)."""
    out = tmp_path / "out"
    code, cap = run(capsys, "interpolate", "--checkpoint", ckpts[0], "--inversion", inversion,
                    "--out", out, "--pair", "img0.png", "photos/img1.jpg", "--alphas", "0.5",
                    "--save_npy")
    assert code == 0, cap.err
    np.testing.assert_allclose(np.load(out / "arrays" / "img0__img1.npz")["alpha_0.5"],
                               nhwc(ref["interp_images"])[0], atol=IMG_ATOL)


def test_images_path_and_kept_outputs(ref, ckpts, tmp_path, capsys):
    """--images: invert then edit; an unreadable file is named in one line, the others are
    finished, exit 1; --save_inversion output edits identically through --inversion."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    x = np.clip(np.round((nhwc(ref["x"]) + 1) * 127.5), 0, 255).astype(np.uint8)
    for i, s in enumerate(STEMS):
        Image.fromarray(x[i]).save(imgs / f"{s}.png")
    (imgs / "zz_broken.png").write_text("not an image")
    out = tmp_path / "out"
    unit = os.path.join(F09, "interfacegan_random_unit.pt")
    code, cap = run(capsys, "interfacegan", "--checkpoint", ckpts[0], "--w_encoder", ckpts[1],
                    "--images", imgs, "--out", out, "--n_iters", "2", "--batch_size", "2",
                    "--direction", unit, "--factors", "0,2", "--save_npy", "--save_inversion")
    assert code == 1
    skipped = [line for line in cap.err.splitlines() if "zz_broken.png" in line]
    assert len(skipped) == 2 and skipped[0].startswith("skipped:"), cap.err  # + the summary
    for s in STEMS:
        arr = np.load(out / "arrays" / f"{s}.npz")
        # factor 0 re-renders the reconstruction
        np.testing.assert_allclose(arr["interfacegan_random_unit_0"], arr["reconstruction"],
                                   atol=1e-5)
        assert np.abs(arr["interfacegan_random_unit_2"] - arr["reconstruction"]).mean() > 0.05
        assert (out / "grids" / f"{s}.png").is_file()
    out2 = tmp_path / "out2"
    code, cap = run(capsys, "interfacegan", "--checkpoint", ckpts[0], "--inversion", out,
                    "--out", out2, "--direction", unit, "--factors", "0,2", "--save_npy")
    assert code == 0, cap.err
    for s in STEMS:
        a, b = np.load(out / "arrays" / f"{s}.npz"), np.load(out2 / "arrays" / f"{s}.npz")
        for k in a.files:
            np.testing.assert_allclose(a[k], b[k], atol=1e-5)


def _one_error_line(cap):
    lines = [line for line in cap.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), cap.err
    return lines[0]


def test_errors_one_line(ckpts, inversion, tmp_path, capsys):
    hs = ckpts[0]
    age = os.path.join(F08, "age.pt")
    code, cap = run(capsys, "interfacegan", "--checkpoint", hs, "--inversion", inversion,
                    "--out", tmp_path / "a", "--direction", age)
    line = _one_error_line(cap)
    assert code == 1 and age in line and "512" in line and "64" in line, line

    pca = os.path.join(F09, "ganspace_random_pca.pt")
    code, cap = run(capsys, "ganspace", "--checkpoint", hs, "--inversion", inversion,
                    "--out", tmp_path / "b", "--pca", pca, "--component", "80", "--start", "0",
                    "--end", "5", "--strength", "2")
    line = _one_error_line(cap)
    assert code == 1 and "component 80 out of range" in line and "80 components" in line, line

    broken = tmp_path / "inv_no_deltas"
    broken.mkdir()
    np.save(broken / "latents.npy", {"img0": np.load(os.path.join(inversion, "latents.npy"),
                                                     allow_pickle=True).item()["img0"]},
            allow_pickle=True)
    code, cap = run(capsys, "interpolate", "--checkpoint", hs, "--inversion", broken,
                    "--out", tmp_path / "c", "--pair", "img0", "img0")
    line = _one_error_line(cap)
    assert code == 1 and "missing deltas/img0.npz" in line and "--save_deltas" in line, line

    code, cap = run(capsys, "interpolate", "--checkpoint", hs, "--inversion", inversion,
                    "--out", tmp_path / "d", "--pair", "img0", "nope")
    assert code == 1 and "no image 'nope'" in _one_error_line(cap)

    code, cap = run(capsys, "interfacegan", "--checkpoint", hs, "--inversion", inversion,
                    "--out", tmp_path / "e", "--direction", age, "--align")
    assert code == 1 and "--align applies to --images" in _one_error_line(cap)


def test_help_shows_defaults(capsys):
    for sub, needle in [("interfacegan", "(default: -3,0,3)"), ("ganspace", "(default: auto)"),
                        ("interpolate", "(default: 0.25,0.5,0.75)")]:
        with pytest.raises(SystemExit) as e:
            edit.main([sub, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert needle in text and "--n_iters" in text and "(default: 5)" in text, sub


def test_progress_plain_lines_without_tty():
    import io

    from hyperstyle_jax.utils.cli import progress_bar

    buf = io.StringIO()  # not a TTY: periodic plain lines, no carriage returns
    bar = progress_bar(20, "interfacegan", unit="", file=buf)
    for _ in range(20):
        bar.update()
    bar.close()
    lines = buf.getvalue().splitlines()
    assert "\r" not in buf.getvalue() and len(lines) == 10, lines
    assert lines[-1].startswith("interfacegan: 20/20 (100%)")


def test_inversion_input_panel_from_invert_inputs(ref, inversion, tmp_path):
    """With an `invert` folder, the grids' input column is the input invert saved in
    inputs/<stem>.png (the image as the model saw it)."""
    import shutil

    from hyperstyle_jax.inversion_files import read_inversion
    from hyperstyle_jax.utils import images

    d = tmp_path / "inv"
    shutil.copytree(inversion, d)
    shutil.rmtree(d / "inputs", ignore_errors=True)
    x = np.random.RandomState(0).randint(0, 256, (64, 64, 3), dtype=np.uint8)
    images.save_image(str(d / "inputs" / "img0.png"), x)
    tuned = {int(k[-2:]): ref[k].shape[1:] for k in ref if k.startswith("deltas_layer")}
    shapes = [tuned.get(j) for j in range(17)]
    items = read_inversion(str(d), shapes, 12, 64)
    np.testing.assert_array_equal(items[0].image, x)
    assert items[1].image is None  # no saved input for img1
