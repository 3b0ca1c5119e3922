"""Building TFDS datasets from a folder with bad files; reading them back through grain.

References are independent of the package: the files' own bytes, PIL's `convert('RGB')`
(what the official loaders do), the closed form for 16-bit scaling, and PIL's bilinear
`resize` + `x / 127.5 - 1` (torchvision `Resize` on a PIL image, `ToTensor`, `Normalize`).
"""
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

HW = (24, 32)  # non-square, so a swapped H/W shows
N_GOOD = 30


def _smooth_image(rng, h, w):
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [np.sin(6 * xx * rng.uniform(0.5, 2) + 3 * yy * rng.uniform(0.5, 2) + rng.uniform(0, 6))
             for _ in range(3)]
    return np.clip(np.stack(chans, -1) * 110 + 128 + rng.normal(0, 8, (h, w, 3)), 0, 255
                   ).astype(np.uint8)


def make_mixed_folder(root, seed=0):
    """30 good RGB images (JPEG and PNG, nested, various sizes) and 6 special files."""
    rng = np.random.default_rng(seed)
    good = []
    for i in range(N_GOOD):
        sub = os.path.join(root, f"{i % 3:05d}")
        os.makedirs(sub, exist_ok=True)
        h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        ext = ".jpg" if i % 2 else ".png"
        path = os.path.join(sub, f"img{i:03d}{ext}")
        Image.fromarray(_smooth_image(rng, h, w)).save(path, quality=90)
        good.append(os.path.relpath(path, root))
    bad = os.path.join(root, "bad")
    os.makedirs(bad)
    with open(os.path.join(root, good[1]), "rb") as f:
        jpeg = f.read()
    with open(os.path.join(bad, "truncated.jpg"), "wb") as f:
        f.write(jpeg[: len(jpeg) // 2])
    open(os.path.join(bad, "empty.png"), "wb").close()
    with open(os.path.join(bad, "text.jpg"), "w") as f:
        f.write("this is not a JPEG\n")
    Image.fromarray(_smooth_image(rng, 30, 26)).convert("CMYK").save(
        os.path.join(bad, "cmyk.jpg"), quality=95)
    Image.fromarray(rng.integers(0, 65536, (22, 28), dtype=np.uint16)).save(
        os.path.join(bad, "gray16.png"))
    rgba = np.concatenate([_smooth_image(rng, 25, 21),
                           rng.integers(0, 256, (25, 21, 1), dtype=np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(os.path.join(bad, "rgba.png"))
    with open(os.path.join(root, "README.txt"), "w") as f:
        f.write("not an image\n")
    return good


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Build `ffhq` from the mixed folder with the real CLI, in a subprocess."""
    src = str(tmp_path_factory.mktemp("src"))
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    good = make_mixed_folder(src)
    proc = subprocess.run(
        [sys.executable, "-m", "hyperstyle_jax.data.build", "--dataset", "ffhq",
         "--source", src, "--data_dir", data_dir],
        capture_output=True, text=True, timeout=300)
    return dict(src=src, data_dir=data_dir, good=good, proc=proc)


def test_cli_reports_bad_files(built):
    proc = built["proc"]
    assert proc.returncode == 1, proc.stderr  # built, but some files were skipped
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("ffhq: 33 images written (train 33), 3 converted")
    assert "3 skipped as unreadable, 1 non-image files ignored" in summary
    for name in ("truncated.jpg", "empty.png", "text.jpg"):
        assert f"skipped train: bad/{name}:" in proc.stderr
    report = open(os.path.join(built["data_dir"], "ffhq", "build_report.txt")).read()
    lines = {ln.split("\t")[1]: ln.split("\t")[2] for ln in report.splitlines() if "\t" in ln
             and not ln.startswith("README")}
    assert lines["bad/empty.png"] == "empty file"
    assert lines["bad/text.jpg"] == "not an image (unrecognised format)"
    assert "truncated" in lines["bad/truncated.jpg"]
    assert lines["bad/cmyk.jpg"] == "JPEG CMYK -> PNG 8-bit RGB"
    assert lines["bad/gray16.png"].startswith("PNG I;16")
    assert lines["bad/rgba.png"] == "PNG RGBA -> PNG 8-bit RGB"
    assert "README.txt\tnot an image file extension" in report
    assert sorted(os.listdir(built["data_dir"])) == ["ffhq"]  # no empty downloads/ left


def test_refuses_to_overwrite(built):
    proc = subprocess.run(
        [sys.executable, "-m", "hyperstyle_jax.data.build", "--dataset", "ffhq",
         "--source", built["src"], "--data_dir", built["data_dir"]],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "already built" in proc.stderr and "--overwrite" in proc.stderr


def _stored(built):
    import tensorflow_datasets as tfds

    ds = tfds.data_source("ffhq", split="train", data_dir=built["data_dir"], download=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
    return {r["file_name"].decode(): r["image"] for r in (ds[i] for i in range(len(ds)))}


def test_stored_bytes(built):
    stored = _stored(built)
    assert sorted(stored) == sorted(built["good"] + ["bad/cmyk.jpg", "bad/gray16.png",
                                                     "bad/rgba.png"])
    src = built["src"]
    for rel in built["good"]:  # RGB files are stored bit-exact, no re-encode
        with open(os.path.join(src, rel), "rb") as f:
            assert stored[rel] == f.read(), rel

    def png_pixels(data):
        img = Image.open(io.BytesIO(data))
        assert img.format == "PNG" and img.mode == "RGB"
        return np.asarray(img)

    for rel in ("bad/cmyk.jpg", "bad/rgba.png"):  # official loaders: .convert('RGB')
        want = np.asarray(Image.open(os.path.join(src, rel)).convert("RGB"))
        np.testing.assert_array_equal(png_pixels(stored[rel]), want, err_msg=rel)
    g16 = np.asarray(Image.open(os.path.join(src, "bad/gray16.png")), dtype=np.float64)
    want = np.round(g16 / 65535 * 255).astype(np.uint8)  # scaled, not clipped
    np.testing.assert_array_equal(png_pixels(stored["bad/gray16.png"]),
                                  np.repeat(want[..., None], 3, -1))


def test_readable_through_grain(built):
    from hyperstyle_jax.data import default_data_config, make_eval_iterator

    cfg = default_data_config()
    cfg.source, cfg.data_dir, cfg.eval_split = "tfds", built["data_dir"], "train"
    cfg.image_hw = HW
    stored = _stored(built)
    it = make_eval_iterator(cfg, global_batch_size=8, process_index=0, process_count=1)
    assert it.num_records == 33 and it.steps_per_epoch == 5
    seen = []
    import tensorflow_datasets as tfds
    names = [r["file_name"].decode() for r in tfds.data_source(
        "ffhq", split="train", data_dir=built["data_dir"], download=False,
        decoders={"image": tfds.decode.SkipDecoding()})]
    for batch in it:
        assert batch["image"].shape == (8, *HW, 3) and batch["image"].dtype == np.float32
        assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
        for img, idx, real in zip(batch["image"], batch["index"], batch["mask"]):
            if not real:
                continue
            seen.append(int(idx))
            pil = Image.open(io.BytesIO(stored[names[idx]])).convert("RGB")
            ref = np.asarray(pil.resize((HW[1], HW[0]), Image.BILINEAR), np.float32)
            np.testing.assert_allclose(img, ref / 127.5 - 1.0, atol=1e-6)
    assert sorted(seen) == list(range(33))


def test_image_folder_ratio_and_folders(tmp_path):
    from hyperstyle_jax.data.build import build_dataset

    rng = np.random.default_rng(1)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(10):
        Image.fromarray(_smooth_image(rng, 16, 16)).save(flat / f"{i}.png")
    rep = build_dataset("image_folder", str(flat), str(tmp_path / "d1"), split_by="ratio",
                        test_fraction=0.3, split_seed=5, progress=False)
    assert rep.written == {"train": 7, "test": 3}
    tree = tmp_path / "tree"
    for split, n in (("train", 4), ("val", 2)):
        (tree / split / "x").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(_smooth_image(rng, 16, 16)).save(tree / split / "x" / f"{i}.jpg")
    rep = build_dataset("image_folder", str(tree), str(tmp_path / "d2"), progress=False)
    assert rep.written == {"train": 4, "val": 2}


def test_celeba_hq_file_list_and_missing_split(tmp_path):
    from hyperstyle_jax.data.build import build_dataset

    rng = np.random.default_rng(2)
    src = tmp_path / "celeba"
    src.mkdir()
    for i in range(6):
        Image.fromarray(_smooth_image(rng, 16, 16)).save(src / f"{i}.jpg")
    (tmp_path / "list.txt").write_text("1.jpg\n3\n9.jpg\n")
    rep = build_dataset("celeba_hq", str(src), str(tmp_path / "d"),
                        file_list=str(tmp_path / "list.txt"), progress=False)
    assert rep.written == {"test": 2}
    assert [s[1] for s in rep.skipped] == ["9.jpg"] and "not found" in rep.skipped[0][2]
    with pytest.raises(FileNotFoundError, match="cars_train"):
        build_dataset("stanford_cars", str(src), str(tmp_path / "d3"), progress=False)


@pytest.mark.parametrize("dataset,layout,splits", [
    ("stanford_cars", {"cars_train": 3, "cars_test": 2}, {"train": 3, "test": 2}),
    ("afhq_wild", {"train/wild": 3, "val/wild": 2, "train/cat": 4}, {"train": 3, "test": 2}),
])
def test_official_layouts(tmp_path, dataset, layout, splits):
    from hyperstyle_jax.data.build import build_dataset

    rng = np.random.default_rng(3)
    for sub, n in layout.items():
        (tmp_path / "src" / sub).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(_smooth_image(rng, 12, 16)).save(tmp_path / "src" / sub / f"{i}.jpg")
    rep = build_dataset(dataset, str(tmp_path / "src"), str(tmp_path / "d"), progress=False)
    assert rep.written == splits and not rep.skipped
