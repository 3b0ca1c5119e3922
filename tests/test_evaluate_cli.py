"""`python -m hyperstyle_jax.evaluate` on small trees of images.

Expected numbers come from closed forms (constant images: L2 = (Δ/127.5)^2; MS-SSIM
= ssim^0.1333 with the official per-image dynamic range; identical images: L2 0,
MS-SSIM 1) and from the official-code fixture 06_metrics (its 8-bit image pairs saved as
PNG give back the official per-pair LPIPS / MS-SSIM / L2).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import FIXTURES, ROOT
from PIL import Image

from hyperstyle_jax.evaluate import main

METRICS_DIR = os.path.join(FIXTURES, "06_metrics")


def save(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8)).save(path)


def const(v, hw=(256, 256)):
    return np.full(hw + (3,), v, np.uint8)


def f(v):
    """uint8 -> [-1, 1] as ToTensor + Normalize(.5, .5)."""
    return v / 127.5 - 1.0


def l2_const(p, g):
    return (f(p) - f(g)) ** 2


def msssim_const(p, g):
    """Constant images: cs = 1 and ssim = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1) at every level;
    L from the prediction alone (max > 128 -> 255 else 1; min < -0.5 -> -1 else 0)."""
    m1, m2 = f(p), f(g)
    L = 1.0 - (-1.0 if m1 < -0.5 else 0.0)
    c1 = (0.01 * L) ** 2
    return ((2 * m1 * m2 + c1) / (m1 * m1 + m2 * m2 + c1)) ** 0.1333


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """An invert output folder and a ground-truth folder."""
    root = tmp_path_factory.mktemp("eval")
    gt, out = str(root / "gt"), str(root / "out")
    tex = np.random.default_rng(0).integers(0, 256, (256, 256, 3))
    save(f"{gt}/a.png", const(100))
    save(f"{gt}/b.png", const(200, (300, 200)))  # resized to 256x256: still constant
    save(f"{gt}/tex.png", tex)
    save(f"{gt}/bad.png", const(10))
    os.makedirs(gt, exist_ok=True)
    with open(f"{gt}/broken_gt.png", "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n truncated")
    for k, (a, b) in {"0": (120, 200), "1": (110, 180)}.items():
        d = f"{out}/iterations/{k}"
        save(f"{d}/a.png", const(a))
        save(f"{d}/b.png", const(b))
        save(f"{d}/tex.png", tex)
    save(f"{out}/iterations/0/nogt.png", const(0))
    save(f"{out}/iterations/0/broken_gt.png", const(50))
    with open(f"{out}/iterations/1/bad.png", "wb") as fh:
        fh.write(b"this is not an image")
    save(f"{out}/final/a.png", const(1))  # the rest of the invert layout is not scored
    save(f"{out}/grids/a.png", const(1))
    np.save(f"{out}/latents.npy", {"a": np.zeros((14, 512), np.float32)}, allow_pickle=True)
    # --save_npy arrays: float, un-clipped, 512x512 (resized to 256 like the images).
    os.makedirs(f"{out}/arrays")
    np.savez(f"{out}/arrays/a.npz", init=np.full((512, 512, 3), 0.3, np.float32),
             iter_1=np.full((512, 512, 3), f(100), np.float32),
             codes=np.zeros((14, 512), np.float32))
    np.savez(f"{out}/arrays/tex.npz", init=f(tex).astype(np.float32),
             iter_1=np.full((256, 256, 3), 1.5, np.float32))
    with open(f"{out}/arrays/corrupt.npz", "wb") as fh:
        fh.write(b"PK garbage")
    return out, gt


def run(capsys, *argv):
    rc = main(list(argv) + ["--batch_size", "2", "--no_progress"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_invert_layout_pngs(tree, capsys, tmp_path):
    out, gt = tree
    report_path = str(tmp_path / "m.json")
    rc, stdout, stderr = run(capsys, "--pred", out, "--gt", gt, "--metrics", "l2,msssim",
                             "--out", report_path)
    assert rc == 1  # some files were skipped
    rep = json.load(open(report_path))
    assert list(rep["iterations"]) == ["0", "1"]
    pi = rep["per_image"]
    assert set(pi["0"]) == {"a", "b", "tex"} and set(pi["1"]) == {"a", "b", "tex"}
    expect = {("0", "a"): (120, 100), ("0", "b"): (200, 200),
              ("1", "a"): (110, 100), ("1", "b"): (180, 200)}
    for (it, stem), (p, g) in expect.items():
        np.testing.assert_allclose(pi[it][stem]["l2"], l2_const(p, g), rtol=1e-5, atol=1e-12)
        # rtol 1e-4: E[x^2] - mu^2 of a constant cancels to ~1e-7, against C2 ~ 1e-3.
        np.testing.assert_allclose(pi[it][stem]["msssim"], msssim_const(p, g), rtol=1e-4)
    for it in ("0", "1"):
        assert pi[it]["tex"]["l2"] == 0.0
        np.testing.assert_allclose(pi[it]["tex"]["msssim"], 1.0, atol=1e-6)
    vals = [l2_const(120, 100), 0.0, 0.0]
    s = rep["iterations"]["0"]["metrics"]["l2"]
    np.testing.assert_allclose([s["mean"], s["std"]], [np.mean(vals), np.std(vals)], rtol=1e-5)
    assert s["n"] == 3 and rep["iterations"]["0"]["n_images"] == 3
    # Skipped files: each named with its reason, on stderr and in the JSON.
    reasons = {os.path.basename(x["file"]): x["reason"] for x in rep["skipped"]}
    assert set(reasons) == {"nogt.png", "broken_gt.png", "bad.png"}
    assert reasons["nogt.png"].startswith("no ground truth named 'nogt.*'")
    assert reasons["bad.png"].startswith("unreadable") and "bad.png" in reasons["bad.png"]
    assert (reasons["broken_gt.png"].startswith("ground truth unreadable")
            and "gt/broken_gt.png" in reasons["broken_gt.png"])
    for name in ("nogt.png", "broken_gt.png", "bad.png"):
        assert name in stderr
    assert rep["counts"]["scored"] == 6 and rep["counts"]["skipped"] == 3
    # Markdown beside the JSON and on stdout.
    md = open(str(tmp_path / "m.md")).read()
    assert "| iteration | images | skipped | l2 ↓ | msssim ↑ |" in md and "| 0 | 3 | 2 |" in md
    assert "| 1 | 3 | 1 |" in stdout and "bad.png" in md


def test_invert_layout_npz(tree, capsys):
    out, gt = tree
    rc, _, stderr = run(capsys, "--pred", out, "--gt", gt, "--metrics", "l2,msssim",
                        "--pred_format", "npz")
    assert rc == 1 and "corrupt.npz" in stderr
    rep = json.load(open(os.path.join(out, "metrics.json")))  # the default --out
    assert os.path.isfile(os.path.join(out, "metrics.md"))
    pi = rep["per_image"]
    np.testing.assert_allclose(pi["0"]["a"]["l2"], (0.3 - f(100)) ** 2, rtol=1e-5)  # not quantized
    np.testing.assert_allclose(pi["1"]["a"]["l2"], 0.0, atol=1e-12)
    assert pi["0"]["tex"]["l2"] < 1e-12
    np.testing.assert_allclose(pi["1"]["tex"]["l2"], np.mean((1.5 - f(np.asarray(
        Image.open(os.path.join(gt, "tex.png")), np.float64))) ** 2), rtol=1e-5)  # un-clipped 1.5
    assert [s["iteration"] for s in rep["skipped"]] == ["*"]


def test_numeric_folders_plain_folder_and_usage_errors(tree, capsys, tmp_path):
    out, gt = tree
    rc, _, _ = run(capsys, "--pred", os.path.join(out, "iterations"), "--gt", gt,
                   "--metrics", "l2,msssim", "--out", str(tmp_path / "a.json"))
    assert rc == 1 and list(json.load(open(tmp_path / "a.json"))["iterations"]) == ["0", "1"]
    plain = os.path.join(out, "iterations", "1")
    rc, _, _ = run(capsys, "--pred", plain, "--gt", gt, "--metrics", "l2,msssim",
                   "--out", str(tmp_path / "b.json"))
    rep = json.load(open(tmp_path / "b.json"))
    assert rc == 1 and list(rep["iterations"]) == ["images"] and rep["counts"]["scored"] == 3
    # Missing weights name the flag; a bad folder is named; exit status 2.
    rc, _, err = run(capsys, "--pred", plain, "--gt", gt, "--metrics", "l2,lpips")
    assert rc == 2 and "metric 'lpips' needs --lpips_weights" in err
    rc, _, err = run(capsys, "--pred", plain, "--gt", gt, "--metrics", "id")
    assert rc == 2 and "--id_weights" in err
    rc, _, err = run(capsys, "--pred", plain, "--gt", gt, "--metrics", "l2",
                     "--lpips_weights", str(tmp_path))
    assert rc == 1 and "lpips" not in err  # lpips not requested: its weights are not read
    rc, _, err = run(capsys, "--pred", plain, "--gt", str(tmp_path / "nope"), "--metrics", "l2")
    assert rc == 2 and "nope: not a folder" in err
    rc, _, err = run(capsys, "--pred", plain, "--gt", gt, "--metrics", "l2", "--pred_format", "npz")
    assert rc == 2 and "arrays not found" in err and "--save_npy" in err
    with pytest.raises(SystemExit):
        main(["--pred", plain, "--gt", gt, "--metrics", "l2,psnr"])
    assert "unknown ['psnr']" in capsys.readouterr().err


@pytest.fixture(scope="module")
def fixture_pairs(tmp_path_factory):
    """The fixture's 8-bit pairs as PNG files (pred = img_a, gt = img_b) and converted LPIPS."""
    from tools.convert_weights import main as convert

    root = tmp_path_factory.mktemp("pairs")
    io = dict(np.load(os.path.join(METRICS_DIR, "metrics_io.npz")))
    for name, key in (("pred", "img_a256"), ("gt", "img_b256")):
        for i, img in enumerate(io[key]):
            u8 = np.round((np.transpose(img, (1, 2, 0)) + 1) * 127.5)
            # exactly 8-bit
            assert np.abs(u8 / 127.5 - 1 - np.transpose(img, (1, 2, 0))).max() < 1e-6
            save(str(root / name / f"pair{i}.png"), u8)
    weights = str(root / "lpips")
    assert convert(["lpips", os.path.join(METRICS_DIR, "alexnet_features_random_torchvision.pt"),
                    os.path.join(METRICS_DIR, "lpips_v0.1_alex_lin_ORIGINAL.pth"), weights]) == 0
    return str(root / "pred"), str(root / "gt"), weights, io


def check_fixture_numbers(report, io):
    pi = report["per_image"]["images"]
    got = lambda m: np.array([pi[f"pair{i}"][m] for i in range(4)])  # noqa: E731
    np.testing.assert_allclose(got("lpips"), io["lpips256_per_pair"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got("l2"), io["l2_256_per_pair"], rtol=1e-5)
    np.testing.assert_allclose(got("msssim")[:3], io["msssim256_per_pair"], atol=1e-5)
    np.testing.assert_allclose(got("msssim")[3], io["msssim256_pair3_unrelated"], atol=1e-5)


def test_official_fixture_pairs_lpips_msssim_l2(fixture_pairs, tmp_path, capsys):
    """The CLI reproduces the official per-pair LPIPS, MS-SSIM and L2 from PNG files."""
    pred, gt, weights, io = fixture_pairs
    capsys.readouterr()
    rc, stdout, _ = run(capsys, "--pred", pred, "--gt", gt, "--metrics", "l2,lpips,msssim",
                        "--lpips_weights", weights, "--out", str(tmp_path / "r.json"))
    assert rc == 0 and "scored 4 images, skipped 0 files" in stdout
    check_fixture_numbers(json.load(open(tmp_path / "r.json")), io)


def test_two_devices_sharded_and_padded(fixture_pairs, tmp_path):
    """A fresh process with 2 CPU devices: --batch_size 5 -> 6 (a multiple of 2), the 4 pairs
    in one padded batch sharded over both devices; the official numbers are unchanged."""
    pred, gt, weights, io = fixture_pairs
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-m", "hyperstyle_jax.evaluate",
                          "--pred", pred, "--gt", gt,
                          "--metrics", "l2,lpips,msssim", "--lpips_weights", weights,
                          "--batch_size", "5",
                          "--out", str(tmp_path / "d.json"), "--no_progress"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rep = json.load(open(tmp_path / "d.json"))
    assert rep["devices"] == 2 and rep["batch_size"] == 6
    check_fixture_numbers(rep, io)
