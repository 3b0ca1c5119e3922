"""PTI-style refinement through the command lines (fixture-05 model): `invert --refine_steps`
writes the refined render to final/, refined/ and arrays 'refined', with a lower L2 and LPIPS
than HyperStyle's last iteration on every image; 0 steps reproduces HyperStyle's final exactly;
an InterFaceGAN edit of the refined inversion renders with the refined offsets (factor 0
is the refined image, ±2 differ); `edit --images --refine_steps` refines before editing;
`evaluate` reports the 'refined' stage; `--export_generator` writes tuned generators; each
bad input is one line."""
import json
import logging
import os
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers import E2E, FIXTURES, nhwc

from hyperstyle_jax import edit, evaluate, invert, refine_cli
from hyperstyle_jax.app.engine import Engine, Prepared
from hyperstyle_jax.checkpoints import load_generator, save_converted
from hyperstyle_jax.convert.losses import lpips_from_state_dict
from hyperstyle_jax.inference import load_inverter
from hyperstyle_jax.losses import lpips_distance
from hyperstyle_jax.models.pooling import adaptive_avg_pool2d
from hyperstyle_jax.models.stylegan2 import Generator
from hyperstyle_jax.utils import cli, images

pytestmark = pytest.mark.usefixtures("xla_optimized")  # refinement computes more than it compiles

N = 2  # hypernetwork iterations
STEPS = 3
METRICS = os.path.join(FIXTURES, "06_metrics")
AGE_SRC = os.path.join(FIXTURES, "09_editing", "interfacegan_random_unit.pt")


def _sd(name):
    sd = torch.load(os.path.join(METRICS, name), map_location="cpu")
    return {k: v.numpy() for k, v in sd.items()}


@pytest.fixture(scope="module")
def ckpts(e2e_checkpoints):
    return e2e_checkpoints.hyperstyle(), e2e_checkpoints.w_encoder()


@pytest.fixture(scope="module")
def lpips_dir(tmp_path_factory):
    """A converted LPIPS folder: random torchvision AlexNet features + the real v0.1 lins."""
    d = str(tmp_path_factory.mktemp("lpips") / "alex")
    v, config = lpips_from_state_dict(_sd("alexnet_features_random_torchvision.pt"),
                                      _sd("lpips_v0.1_alex_lin_ORIGINAL.pth"))
    save_converted(d, v, config, "lpips")
    return d


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """The fixture's two input images as PNG files."""
    d = tmp_path_factory.mktemp("imgs")
    x = nhwc(np.load(os.path.join(E2E, "e2e_default_io.npz"))["x"])
    for i, im in enumerate(x):
        images.save_image(str(d / f"img{i}.png"), im)
    return str(d)


@pytest.fixture(scope="module")
def age(tmp_path_factory):
    path = tmp_path_factory.mktemp("dirs") / "age.pt"
    shutil.copy(AGE_SRC, path)
    return str(path)


def run_invert(ckpts, image_dir, out, *extra):
    hs, we = ckpts
    return invert.main(["--checkpoint", hs, "--w_encoder", we, "--images", image_dir,
                        "--out", str(out), "--n_iters", str(N), "--batch_size", "2",
                        "--save_npy", "--save_latents", "--save_deltas", *extra])


@pytest.fixture(scope="module")
def refined(ckpts, image_dir, lpips_dir, tmp_path_factory):
    """invert --refine_steps 3 with LPIPS, generators exported: (out folder, stdout)."""
    out = tmp_path_factory.mktemp("refined") / "out"
    gens = out.parent / "gens"
    code = run_invert(ckpts, image_dir, out, "--refine_steps", str(STEPS), "--refine_lpips",
                      lpips_dir, "--export_generator", str(gens))
    assert code == 0
    return out, gens


def _l2_at_input(img, target):
    pooled = np.asarray(adaptive_avg_pool2d(jnp.asarray(img[None]), target.shape[:2]))[0]
    return float(np.mean((pooled - target) ** 2))


def _lpips_at_input(lpips_vars, img, target):
    pooled = adaptive_avg_pool2d(jnp.asarray(img[None]), target.shape[:2])
    return float(lpips_distance(lpips_vars, pooled, jnp.asarray(target[None]))[0])


def test_invert_refined_outputs(refined, lpips_dir):
    out, _ = refined
    lpips_vars = refine_cli.load_lpips(lpips_dir)
    stems = sorted(os.path.splitext(f)[0] for f in os.listdir(out / "final"))
    assert stems == ["img0", "img1"]
    for stem in stems:
        arr = np.load(out / "arrays" / f"{stem}.npz")
        assert set(arr.files) == {"init", "codes", "refined"} | {f"iter_{k}"
                                                                 for k in range(1, N + 1)}
        ref = arr["refined"]
        assert ref.dtype == np.float32 and ref.shape == arr[f"iter_{N}"].shape
        png = images.read_image(str(out / "final" / f"{stem}.png"))
        np.testing.assert_array_equal(png, images.read_image(str(out / "refined" / f"{stem}.png")))
        np.testing.assert_array_equal(
            png, np.clip(np.round((ref + 1) * 127.5), 0, 255).astype(np.uint8))
        target = images.to_float(images.read_image(str(out / "inputs" / f"{stem}.png")))
        l2_ref, l2_hs = _l2_at_input(ref, target), _l2_at_input(arr[f"iter_{N}"], target)
        assert l2_ref < l2_hs, (stem, l2_ref, l2_hs)
        lp_ref = _lpips_at_input(lpips_vars, ref, target)
        lp_hs = _lpips_at_input(lpips_vars, arr[f"iter_{N}"], target)
        assert lp_ref < lp_hs, (stem, lp_ref, lp_hs)
        # the saved offsets and codes are the refined ones
        assert not np.array_equal(np.load(out / "deltas" / f"{stem}.npz")["layer_0"], 0)
        np.testing.assert_array_equal(np.load(out / "latents.npz")[stem], arr["codes"])
        grid = images.read_image(str(out / "grids" / f"{stem}.png"))
        assert grid.shape[1] >= (N + 3) * ref.shape[1]  # input | init | 1..n | refined


def test_export_generator(refined):
    """DIR/<stem>/ is a plain generator that renders the refined image from the refined
    codes without offsets."""
    out, gens = refined
    for stem in ("img0", "img1"):
        config, variables = load_generator(str(gens / stem))
        arr = np.load(out / "arrays" / f"{stem}.npz")
        img, _ = Generator(config).apply(variables, jnp.asarray(arr["codes"][None]),
                                         input_space="w+", randomize_noise=False)
        np.testing.assert_allclose(np.asarray(img[0]), arr["refined"], atol=1e-4)
    assert not (gens / "img0.pt").exists()  # only with --export_pt


@pytest.fixture(scope="module")
def plain(ckpts, image_dir, tmp_path_factory):
    """HyperStyle's inversion alone (no refinement)."""
    out = tmp_path_factory.mktemp("plain") / "out"
    assert run_invert(ckpts, image_dir, out) == 0
    return out


def test_zero_steps_is_hyperstyle(ckpts, image_dir, plain, tmp_path):
    zero = tmp_path / "zero"
    assert run_invert(ckpts, image_dir, zero, "--refine_steps", "0") == 0
    for stem in ("img0", "img1"):
        a, b = np.load(plain / "arrays" / f"{stem}.npz"), np.load(zero / "arrays" / f"{stem}.npz")
        np.testing.assert_array_equal(b["refined"], a[f"iter_{N}"])
        np.testing.assert_array_equal(images.read_image(str(plain / "final" / f"{stem}.png")),
                                      images.read_image(str(zero / "final" / f"{stem}.png")))
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])


def test_edit_refined_inversion(refined, ckpts, age, tmp_path, capsys):
    out, _ = refined
    edited = tmp_path / "edited"
    code = edit.main(["interfacegan", "--inversion", str(out), "--checkpoint", ckpts[0],
                      "--out", str(edited), "--direction", age, "--factors=-2,0,2",
                      "--save_npy"])
    assert code == 0, capsys.readouterr().err
    for stem in ("img0", "img1"):
        e = np.load(edited / "arrays" / f"{stem}.npz")
        ref = np.load(out / "arrays" / f"{stem}.npz")["refined"]
        np.testing.assert_allclose(e["age_0"], ref, atol=2e-5)
        np.testing.assert_array_equal(e["age_0"], e["reconstruction"])
        for f in ("-2", "2"):
            assert np.abs(e[f"age_{f}"] - ref).max() > 1e-2


def test_edit_refines_a_stored_inversion(plain, refined, ckpts, lpips_dir, age, tmp_path,
                                        capsys):
    """edit --inversion HyperStyle's folder --refine_steps: refined against inputs/, the same
    numbers as invert's refinement (same steps, same LPIPS)."""
    out, _ = refined
    edited = tmp_path / "edited"
    code = edit.main(["interfacegan", "--inversion", str(plain), "--checkpoint", ckpts[0],
                      "--out", str(edited), "--direction", age, "--factors", "0",
                      "--save_npy", "--batch_size", "2", "--refine_steps", str(STEPS),
                      "--refine_lpips", lpips_dir])
    assert code == 0, capsys.readouterr().err
    for stem in ("img0", "img1"):
        e = np.load(edited / "arrays" / f"{stem}.npz")
        ref = np.load(out / "arrays" / f"{stem}.npz")["refined"]
        np.testing.assert_allclose(e["reconstruction"], ref, atol=1e-4)


def test_edit_images_refined(ckpts, image_dir, age, refined, tmp_path, capsys):
    """edit --images --refine_steps refines each inverted batch before editing: the same
    refined image as invert's."""
    hs, we = ckpts
    out, _ = refined
    capsys.readouterr()
    edited = tmp_path / "edited"
    code = edit.main(["interfacegan", "--images", image_dir, "--checkpoint", hs,
                      "--w_encoder", we, "--n_iters", str(N), "--batch_size", "2",
                      "--out", str(edited), "--direction", age, "--factors", "0",
                      "--save_npy", "--refine_steps", str(STEPS)])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "L2 alone" in cap.out
    # without --refine_lpips: L2 alone, so not invert's LPIPS run; still lower than HyperStyle
    for stem in ("img0", "img1"):
        e = np.load(edited / "arrays" / f"{stem}.npz")
        hs_final = np.load(out / "arrays" / f"{stem}.npz")[f"iter_{N}"]
        target = images.to_float(images.read_image(str(out / "inputs" / f"{stem}.png")))
        assert _l2_at_input(e["reconstruction"], target) < _l2_at_input(hs_final, target)


def test_evaluate_refined_stage(refined, tmp_path, capsys):
    out, _ = refined
    for fmt in ("png", "npz"):
        report = tmp_path / f"{fmt}.json"
        code = evaluate.main(["--pred", str(out), "--gt", str(out / "inputs"),
                              "--metrics", "l2,msssim", "--pred_format", fmt,
                              "--out", str(report)])
        assert code == 0, capsys.readouterr().err
        rep = json.load(open(report))
        assert list(rep["iterations"]) == ["0"] + [str(k) for k in range(1, N + 1)] \
            + ["refined"], fmt
        l2 = {k: v["metrics"]["l2"]["mean"] for k, v in rep["iterations"].items()}
        assert l2["refined"] < l2[str(N)], (fmt, l2)


@pytest.mark.parametrize("extra, message", [
    (["--refine_steps", "-1"], "--refine_steps -1: must be >= 0"),
    (["--refine_steps", "x"], "--refine_steps 'x': not an integer"),
    (["--refine_steps", "1.5"], "--refine_steps '1.5': not an integer"),
    (["--refine_steps", "1", "--refine_lr", "0"], "--refine_lr 0: must be > 0"),
    (["--refine_steps", "1", "--refine_lpips", "/nonexistent/lpips"], "no such folder"),
])
def test_bad_refine_options(ckpts, image_dir, tmp_path, capsys, extra, message):
    capsys.readouterr()
    assert run_invert(ckpts, image_dir, tmp_path / "o", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_lpips_folder_of_the_wrong_kind(ckpts, image_dir, tmp_path, capsys):
    capsys.readouterr()
    code = run_invert(ckpts, image_dir, tmp_path / "o", "--refine_steps", "1",
                      "--refine_lpips", ckpts[1])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--refine_lpips" in err[0], err


def test_batch_that_does_not_fit(ckpts, image_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(refine_cli, "available_bytes", lambda: 1)
    capsys.readouterr()
    code = run_invert(ckpts, image_dir, tmp_path / "o", "--refine_steps", "1")
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if line.startswith("error")]
    assert code == 2 and len(err) == 1, err
    assert "batch of 2 needs about" in err[0] and "not even one image fits" in err[0]


def test_memory_check_names_a_batch_size(monkeypatch):
    """The refusal names the largest batch that fits: weights counted once, the rest per
    image."""
    ref = refine_cli.Refiner.__new__(refine_cli.Refiner)
    gen = types.SimpleNamespace(n_latent=2, style_dim=4, delta_shapes=lambda: [(2, 2, 1, 1)])
    ref.batch_size, ref.fixed_bytes = 8, 1000
    ref.config = types.SimpleNamespace(layers="tuned", tune_codes=False)
    model = types.SimpleNamespace(tuned_delta_shapes=lambda: [(2, 2, 1, 1)])
    ref.inverter = types.SimpleNamespace(generator_config=gen, model=model)
    monkeypatch.setattr(refine_cli.pivotal_tuning, "tuned_layer_indices", lambda *a: (0,))
    stats = types.SimpleNamespace(argument_size_in_bytes=1000 + 8 * 100, output_size_in_bytes=0,
                                  alias_size_in_bytes=0, temp_size_in_bytes=0)
    monkeypatch.setattr(refine_cli, "available_bytes", lambda: 1000 + 3 * 100 + 50)
    with pytest.raises(cli.UserError, match="--batch_size 3 would fit"):
        ref.check_memory(stats)
    monkeypatch.setattr(refine_cli, "available_bytes", lambda: 10 ** 6)
    ref.check_memory(stats)


def test_page_engine_refine(ckpts, lpips_dir, image_dir):
    """The page's engine: warm-up compiles the refiner (no compilation when refining an
    upload afterwards); refine gives a new cached inversion `<key>-r` with a lower L2."""
    inverter = load_inverter(*ckpts)
    engine = Engine(inverter, n_iters=N, refine_steps=STEPS,
                    refine_lpips=refine_cli.load_lpips(lpips_dir))
    engine.warm_up()
    assert engine.info()["refine_steps"] == STEPS
    img = images.resize(images.read_image(os.path.join(image_dir, "img0.png")),
                        inverter.input_hw)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    jax.config.update("jax_log_compiles", True)
    try:
        inv = engine.invert(Prepared("k0", "img0.png", img))
        refined = engine.refine(inv)
    finally:
        jax.config.update("jax_log_compiles", False)
        logger.removeHandler(handler)
    compiles = [r.getMessage() for r in records if "ompil" in r.getMessage()]
    assert not compiles, compiles[:5]
    assert refined.key == "k0-r" and engine.cache.get("k0-r") is refined
    assert "refined (3 steps): L2" in refined.note and "LPIPS" in refined.note
    target = images.to_float(img)
    assert _l2_at_input(refined.reconstruction, target) < _l2_at_input(inv.reconstruction, target)
    assert len(refined.iterations) == len(inv.iterations) + 1
    assert engine.refine(inv) is refined  # cached
