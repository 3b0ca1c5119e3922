"""`python -m hyperstyle_jax.generate` on the converted official fixture generator:
its outputs for given latents equal the official images (fixtures/01_generator)."""
import json
import os

import numpy as np
import pytest
from helpers import FIXTURES, nhwc
from PIL import Image

from hyperstyle_jax import generate
from hyperstyle_jax.convert.stylegan2 import convert_stylegan2
from hyperstyle_jax.utils.images import to_uint8

GEN = os.path.join(FIXTURES, "01_generator")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "ckpt"
    convert_stylegan2(os.path.join(GEN, "stylegan2_narrow64_rosinality.pt"), str(out),
                      log=lambda s: None)
    return str(out)


@pytest.fixture(scope="module")
def cases():
    return dict(np.load(os.path.join(GEN, "generator_cases.npz")))


@pytest.mark.parametrize("case,key,space,trunc",
                         [("d", "wplus", "w+", "1"), ("b", "z", "z", "0.7")])
def test_latents_reproduce_official_images(ckpt, cases, tmp_path, case, key, space, trunc):
    """3 codes at batch 2 (the last batch is padded); const noise = the checkpoint buffers;
    case b truncates toward mean_latent, which equals the checkpoint's latent_avg."""
    np.testing.assert_array_equal(cases["mean_latent"][0], _latent_avg(ckpt))
    lat = tmp_path / "codes.npy"
    np.save(lat, cases[key])
    out = tmp_path / "out"
    rc = generate.main(["--checkpoint", ckpt, "--latents", str(lat), "--input_space", space,
                        "--truncation", trunc, "--batch_size", "2", "--out", str(out),
                        "--save_npy"])
    assert rc == 0
    want = nhwc(cases[f"img_{case}"])
    for i in range(3):
        got = np.load(out / f"{i:06d}.npy")
        assert got.dtype == np.float32 and got.shape == (64, 64, 3)
        np.testing.assert_allclose(got, want[i], atol=1e-4, rtol=0)
        png = np.asarray(Image.open(out / f"{i:06d}.png"))
        np.testing.assert_array_equal(png, to_uint8(got))
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (64 + 4, 3 * 66 + 2, 3)
    info = json.load(open(out / "info.json"))
    assert info["input_space"] == space and info["images"] == ["000000", "000001", "000002"]


def _latent_avg(ckpt):
    from hyperstyle_jax.checkpoints import load_generator_with_latent_avg
    return load_generator_with_latent_avg(ckpt)[2]


def test_seeds_are_documented_z(ckpt, tmp_path):
    """--seeds s renders z = RandomState(s).randn(style_dim), the same as --latents of it."""
    z = np.stack([np.random.RandomState(s).randn(64) for s in (5, 6)]).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    common = ["--checkpoint", ckpt, "--truncation", "0.7", "--batch_size", "2", "--save_npy"]
    assert generate.main(common + ["--seeds", "5-6", "--out", str(tmp_path / "s")]) == 0
    assert generate.main(common + ["--latents", str(tmp_path / "z.npy"), "--input_space", "z",
                                   "--out", str(tmp_path / "l")]) == 0
    for s, i in ((5, 0), (6, 1)):
        np.testing.assert_array_equal(np.load(tmp_path / "s" / f"seed{s:04d}.npy"),
                                      np.load(tmp_path / "l" / f"{i:06d}.npy"))


def test_random_noise_independent_of_batch_split(ckpt, tmp_path):
    common = ["--checkpoint", ckpt, "--noise", "random", "--truncation", "0.7", "--batch_size", "2",
              "--save_npy"]
    assert generate.main(common + ["--seeds", "3,5-6", "--out", str(tmp_path / "a")]) == 0
    assert generate.main(common + ["--seeds", "5,3", "--out", str(tmp_path / "b")]) == 0
    a, b = (np.load(tmp_path / d / "seed0005.npy") for d in "ab")
    np.testing.assert_allclose(a, b, atol=1e-5)
    const = tmp_path / "c"
    assert generate.main(["--checkpoint", ckpt, "--seeds", "5-6", "--batch_size", "2",
                          "--truncation", "0.7", "--save_npy", "--out", str(const)]) == 0
    assert np.abs(np.load(const / "seed0005.npy") - a).max() > 1e-3


def test_random_init_runs_and_says_so(tmp_path, capsys):
    out = tmp_path / "r"
    assert generate.main(["--random_init", "16", "--seeds", "0-2", "--out", str(out)]) == 0
    assert "randomly initialised" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["grid.png", "info.json", "seed0000.png", "seed0001.png",
                                       "seed0002.png"]
    assert "RANDOM INIT" in json.load(open(out / "info.json"))["generator"]


def test_bad_inputs_one_line_exit_2(ckpt, tmp_path, capsys):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 63), np.float32))
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not numpy")
    runs = [
        (["--checkpoint", str(tmp_path / "nope"), "--seeds", "0"], "nope: not a converted"),
        (["--checkpoint", ckpt, "--latents", str(bad)], "bad.npy: latents have shape (2, 63)"),
        (["--checkpoint", ckpt, "--latents", str(junk)], "junk.npy: not a readable .npy"),
        (["--checkpoint", ckpt, "--latents", str(tmp_path / "none.npy")], "none.npy: no such file"),
        (["--checkpoint", ckpt, "--seeds", "0", "--truncation", "1.5"], "--truncation"),
        (["--checkpoint", ckpt, "--seeds", "x"], "--seeds 'x'"),
        (["--random_init", "48", "--seeds", "0"], "power of 2"),
    ]
    for argv, msg in runs:
        rc = generate.main(argv + ["--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), (argv, err)
        assert msg in err, (msg, err)
    with pytest.raises(SystemExit) as e:  # argparse: --seeds and --latents are exclusive
        generate.main(["--checkpoint", ckpt, "--seeds", "0", "--latents", str(bad), "--out", "x"])
    assert e.value.code == 2
