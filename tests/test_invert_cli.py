"""The invert CLI on a folder mixing good images (PNG, JPEG, grayscale, RGBA, non-square,
large) with bad ones (truncated JPEG, text named .png, empty file): good ones done, each
bad one named in one line, exit status 1, nothing written lost; and two runs are
bit-identical on CPU."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from hyperstyle_jax import invert

N = 2


@pytest.fixture(scope="module")
def ckpts(e2e_checkpoints):
    return e2e_checkpoints.hyperstyle(), e2e_checkpoints.w_encoder()


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.RandomState(0)
    rgb = lambda h, w: rng.randint(0, 256, (h, w, 3), dtype=np.uint8)  # noqa: E731
    Image.fromarray(rgb(64, 64)).save(d / "a_png.png")
    Image.fromarray(rgb(80, 120)).save(d / "b_nonsquare.jpg", quality=90)
    Image.fromarray(rng.randint(0, 256, (50, 50), dtype=np.uint8), "L").save(d / "c_gray.png")
    Image.fromarray(rng.randint(0, 256, (64, 64, 4), dtype=np.uint8), "RGBA").save(d / "d_rgba.png")
    Image.fromarray(rgb(1024, 1024)).save(d / "e_big.png")
    buf = io.BytesIO()
    Image.fromarray(rgb(64, 64)).save(buf, "JPEG")
    (d / "x_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (d / "y_text.png").write_text("this is not an image\n")
    (d / "z_empty.png").write_bytes(b"")
    return str(d)


GOOD = ["a_png", "b_nonsquare", "c_gray", "d_rgba", "e_big"]
BAD = ["x_truncated.jpg", "y_text.png", "z_empty.png"]


def run(ckpts, image_dir, out, capsys, *extra):
    hs, we = ckpts
    code = invert.main(["--checkpoint", hs, "--w_encoder", we, "--images", image_dir,
                        "--out", str(out), "--n_iters", str(N), "--batch_size", "2",
                        "--save_npy", "--save_latents", "--save_deltas", *extra])
    return code, capsys.readouterr()


def test_mixed_folder(ckpts, image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, cap = run(ckpts, image_dir, out, capsys)
    assert code == 1
    err_lines = [line for line in cap.err.splitlines() if line.startswith("skipped:")]
    assert len(err_lines) == len(BAD)
    for name in BAD:
        assert sum(name in line for line in err_lines) == 1, (name, err_lines)
    for stem in GOOD:
        for k in range(N + 1):
            assert (out / "iterations" / str(k) / f"{stem}.png").is_file()
        img = np.asarray(Image.open(out / "final" / f"{stem}.png"))
        assert img.shape == (128, 128, 3)  # the fixture generator's output size
        assert (out / "grids" / f"{stem}.png").is_file()
        arr = np.load(out / "arrays" / f"{stem}.npz")
        assert set(arr.files) == {"init", "codes"} | {f"iter_{k}" for k in range(1, N + 1)}
        assert arr["iter_1"].dtype == np.float32 and arr["codes"].shape == (12, 64)
        # The PNG is the clipped, rounded array.
        np.testing.assert_array_equal(
            img, np.clip(np.round((arr[f"iter_{N}"] + 1) * 127.5), 0, 255).astype(np.uint8))
        deltas = np.load(out / "deltas" / f"{stem}.npz")
        assert deltas["layer_0"].shape == (32, 32, 3, 3)
    for name in BAD:
        assert not (out / "final" / f"{os.path.splitext(name)[0]}.png").exists()
    latents = np.load(out / "latents.npz")
    assert sorted(latents) == GOOD
    assert "excluding compilation" in cap.out


def test_bit_identical_runs(ckpts, image_dir, tmp_path, capsys):
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        run(ckpts, image_dir, out, capsys)
        outs.append(out)
    for stem in GOOD:
        a = np.load(outs[0] / "arrays" / f"{stem}.npz")
        b = np.load(outs[1] / "arrays" / f"{stem}.npz")
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{stem}/{k}")


def test_no_images_is_an_error(ckpts, tmp_path, capsys):
    hs, we = ckpts
    code = invert.main(["--checkpoint", hs, "--w_encoder", we, "--images",
                        str(tmp_path / "nothing*.png"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "no images found" in capsys.readouterr().err
