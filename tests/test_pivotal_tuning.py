"""Pivotal tuning after HyperStyle (`hyperstyle_jax.pivotal_tuning`) on the fixture-05 model:
refinement lowers L2 and LPIPS on every image, 0 steps is HyperStyle's result bit for bit,
the objective's gradient matches central differences, an image under the LPIPS threshold
keeps its offsets, the extra tuning options move what they say, and the exported tuned
generator renders as the refined inversion through `generate`'s loader and through the
rosinality checkpoint round trip."""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers import xla_optimized_compiles

from hyperstyle_jax import generate
from hyperstyle_jax import pivotal_tuning as pt
from hyperstyle_jax.checkpoints import load_generator, load_generator_with_latent_avg
from hyperstyle_jax.convert.hyperstyle import convert_hyperstyle, convert_w_encoder
from hyperstyle_jax.convert.losses import lpips_from_state_dict
from hyperstyle_jax.convert.stylegan2 import convert_stylegan2
from hyperstyle_jax.inference import load_inverter
from hyperstyle_jax.models.stylegan2 import Generator

FIX = os.path.join(os.path.dirname(__file__), "fixtures")
E2E = os.path.join(FIX, "05_e2e")
METRICS = os.path.join(FIX, "06_metrics")
N_ITERS = 3
STEPS = 10


def _sd(name):
    sd = torch.load(os.path.join(METRICS, name), map_location="cpu")
    return {k: v.numpy() for k, v in sd.items()}


@pytest.fixture(scope="module")
def inv(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    convert_hyperstyle(os.path.join(E2E, "hyperstyle_e2e_default.pt"), str(d / "hs"),
                       log=lambda *a: None)
    convert_w_encoder(os.path.join(E2E, "w_encoder_narrow_psp.pt"), str(d / "we"),
                      log=lambda *a: None)
    return load_inverter(str(d / "hs"), str(d / "we"))


@pytest.fixture(scope="module")
def lpips_vars():
    """Random torchvision AlexNet features + the real v0.1 lin weights (as test_losses)."""
    v, _ = lpips_from_state_dict(_sd("alexnet_features_random_torchvision.pt"),
                                 _sd("lpips_v0.1_alex_lin_ORIGINAL.pth"))
    return v


@pytest.fixture(scope="module")
def hyperstyle(inv):
    """The fixture's two images and HyperStyle's inversion of them (3 iterations)."""
    x = np.load(os.path.join(E2E, "e2e_default_io.npz"))["x"].transpose(0, 2, 3, 1)
    with xla_optimized_compiles():  # as `refiner`: 0 steps is this result bit for bit
        return x, inv.batched_inverter(2, N_ITERS)(x)


# The tests below compile at the suite's -O0 (a gradient check, short runs); this shared
# refinement computes more than it compiles: fully optimised, 21 s instead of 40 here.
@pytest.fixture(scope="module")
def refiner(inv, lpips_vars):
    with xla_optimized_compiles():
        return pt.batched_refiner(inv, 2, pt.RefineConfig(steps=STEPS), lpips=lpips_vars)


@pytest.fixture(scope="module")
def refined(refiner, hyperstyle):
    x, res = hyperstyle
    seen = []
    with xla_optimized_compiles():
        out = refiner(x, res["codes"], res["deltas"], progress=lambda *a: seen.append(a))
    return out, seen


def test_refinement_beats_hyperstyle_on_every_image(inv, hyperstyle, refined, lpips_vars):
    x, res = hyperstyle
    out, seen = refined
    # HyperStyle's final iteration, measured independently of the refiner.
    pooled = np.asarray(inv.model.pool(res["images"][-1]))
    l2_hs = np.mean((pooled - x) ** 2, axis=(1, 2, 3))
    lp_hs = np.asarray(pt.lpips_distance(lpips_vars, pooled, x))
    np.testing.assert_allclose(out["l2_start"], l2_hs, rtol=1e-5)
    np.testing.assert_allclose(out["lpips_start"], lp_hs, rtol=1e-4)
    assert (out["lpips_start"] > 0.06).all()  # the default threshold stops nothing here
    assert (out["l2"] < l2_hs).all(), (out["l2"], l2_hs)
    assert (out["lpips"] < lp_hs).all(), (out["lpips"], lp_hs)
    np.testing.assert_array_equal(out["steps"], [STEPS, STEPS])
    # The refined image is the render of the refined codes and offsets.
    render = inv.batched_renderer(2)
    np.testing.assert_allclose(render(out["codes"], out["deltas"]), out["image"], atol=1e-5)
    np.testing.assert_allclose(np.mean((np.asarray(inv.model.pool(out["image"])) - x) ** 2,
                                       axis=(1, 2, 3)), out["l2"], rtol=1e-5)
    # Progress: one report per chunk, ending at the total, with a falling running loss.
    assert [s[0] for s in seen][-1] == STEPS and seen[0][1] == STEPS
    assert seen[-1][2]["loss"] < seen[0][2]["loss"] and seen[-1][2]["active"] == 2
    # Only the layers HyperStyle tuned are tuned by default; codes are the pivot.
    assert [d is None for d in out["deltas"]] == [d is None for d in res["deltas"]]
    np.testing.assert_array_equal(out["codes"], res["codes"])


def test_zero_steps_is_hyperstyle_exactly(refiner, hyperstyle):
    x, res = hyperstyle
    out = refiner(x, res["codes"], res["deltas"], steps=0)
    np.testing.assert_array_equal(out["image"], res["images"][-1])
    np.testing.assert_array_equal(out["codes"], res["codes"])
    for a, b in zip(out["deltas"], res["deltas"]):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(out["steps"], [0, 0])
    np.testing.assert_array_equal(out["l2"], out["l2_start"])


def test_partial_batch_and_bad_steps(refiner, hyperstyle):
    x, res = hyperstyle
    one = refiner(x[:1], res["codes"][:1], [None if d is None else d[:1] for d in res["deltas"]],
                  steps=0)
    np.testing.assert_array_equal(one["image"], res["images"][-1][:1])
    with pytest.raises(ValueError, match="steps = -1"):
        refiner(x, res["codes"], res["deltas"], steps=-1)
    with pytest.raises(ValueError, match="steps = 2.5"):
        pt.RefineConfig(steps=2.5)


def test_masking_stops_an_image_under_the_threshold(inv, hyperstyle, lpips_vars):
    """PTI's per-image early stop: image 1's LPIPS is under the threshold before the first
    step, so its offsets stay bit-equal; image 0 is above it and keeps moving."""
    x, res = hyperstyle
    start = np.asarray(pt.lpips_distance(lpips_vars, np.asarray(inv.model.pool(
        res["images"][-1])), x))
    assert start[1] < start[0]
    thr = float(start.mean())
    gen = inv.model.generator
    config = pt.RefineConfig(steps=3, lpips_threshold=thr)
    fn = jax.jit(lambda g, lp, t, c, d: pt.refine(gen, config, g, lp, t, c, d))
    out = jax.device_get(fn(inv.frozen["generator"], lpips_vars, x, res["codes"], res["deltas"]))
    np.testing.assert_array_equal(out["steps"], [3, 0])
    moved = [j for j, d in enumerate(res["deltas"]) if d is not None]
    for j in moved:
        np.testing.assert_array_equal(out["deltas"][j][1], res["deltas"][j][1])
    assert any(not np.array_equal(out["deltas"][j][0], res["deltas"][j][0]) for j in moved)
    assert out["lpips"][1] == pytest.approx(start[1], rel=1e-5)


def test_objective_gradient_matches_central_differences(inv, hyperstyle, lpips_vars):
    """Directional derivatives of the summed L2 + LPIPS objective (float32): the gradient
    w.r.t. all offsets, one layer's offsets, and a toRGB layer's (layers='all') against
    (f(p + eps v) - f(p - eps v)) / 2 eps; and the micro-batched gradient (one image at a
    time) equals the whole batch's."""
    x, res = hyperstyle
    gen = inv.model.generator
    config = pt.RefineConfig(layers="all")
    params, fixed = pt.make_params(gen.config, config, jnp.asarray(x), jnp.asarray(res["codes"]),
                                   res["deltas"])
    gv = inv.frozen["generator"]
    f = jax.jit(lambda p: pt.objective(gen, config, gv, lpips_vars, p, fixed)[0])
    g = jax.jit(lambda p: pt.loss_and_grad(gen, config, gv, lpips_vars, p, fixed)[1])(params)
    micro = dataclasses.replace(config, micro_batch=1)
    g1 = jax.jit(lambda p: pt.loss_and_grad(gen, micro, gv, lpips_vars, p, fixed)[1])(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), g1, g)
    rng = np.random.RandomState(0)
    to_rgb = str(gen.config.layer_names().index("to_rgbs_2"))
    for only in (None, "2", to_rgb):
        v = {"deltas": {k: (rng.randn(*a.shape).astype(np.float32) if only in (None, k)
                            else np.zeros(a.shape, np.float32))
                        for k, a in params["deltas"].items()}}
        scale = 1.0 / max(np.abs(a).max() for a in v["deltas"].values())
        v = jax.tree.map(lambda a: a * scale, v)
        eps = 1e-3
        plus = jax.tree.map(lambda p, d: p + eps * d, params, v)
        minus = jax.tree.map(lambda p, d: p - eps * d, params, v)
        fd = (float(f(plus)) - float(f(minus))) / (2 * eps)
        an = sum(float(jnp.vdot(g["deltas"][k], v["deltas"][k])) for k in v["deltas"])
        assert abs(an) > 1e-3, (only, an)
        assert fd == pytest.approx(an, rel=2e-2), (only, fd, an)


def test_options_tune_what_they_say(inv, hyperstyle):
    """layers='all' + tune_codes + the locality term, without LPIPS (L2 alone, nothing
    stops early): the toRGB and untuned layers get offsets, the codes move, L2 falls."""
    x, res = hyperstyle
    gen = inv.model.generator
    config = pt.RefineConfig(steps=2, layers="all", tune_codes=True, locality=True)
    fn = jax.jit(lambda g, t, c, d, w: pt.refine(gen, config, g, None, t, c, d, w_avg=w))
    out = jax.device_get(fn(inv.frozen["generator"], x, res["codes"], res["deltas"],
                            inv.frozen["latent_avg"]))
    assert all(d is not None and np.isfinite(d).all() for d in out["deltas"])
    for j, d in enumerate(res["deltas"]):
        if d is None:
            assert np.abs(out["deltas"][j]).max() > 0
    assert np.abs(out["codes"] - res["codes"]).max() > 0
    np.testing.assert_array_equal(out["steps"], [2, 2])
    np.testing.assert_array_equal(out["lpips"], [0, 0])
    pooled = np.asarray(inv.model.pool(res["images"][-1]))
    assert (out["l2"] < np.mean((pooled - x) ** 2, axis=(1, 2, 3))).all()
    with pytest.raises(ValueError, match="w_avg"):
        pt.make_params(gen.config, config, x, res["codes"], res["deltas"])


def test_export_generator_renders_the_refined_image(inv, hyperstyle, refined, tmp_path, capsys):
    """Image 0's tuned generator θ·(1+D): `generate --latents` with the checkpoint noise
    renders the refined image; the rosinality .pt converts back to the same variables."""
    _, res = hyperstyle
    out, _ = refined
    d0 = [None if d is None else d[0] for d in out["deltas"]]
    folder, pt_path = str(tmp_path / "gen0"), str(tmp_path / "gen0.pt")
    pt.export_generator(folder, inv.generator_config, inv.frozen["generator"], d0,
                        latent_avg=inv.frozen["latent_avg"], pt_path=pt_path)
    config, variables, latent_avg = load_generator_with_latent_avg(folder)
    assert config == inv.generator_config and latent_avg.shape == (config.style_dim,)
    np.save(tmp_path / "codes.npy", out["codes"][:1])
    assert generate.main(["--checkpoint", folder, "--latents", str(tmp_path / "codes.npy"),
                          "--out", str(tmp_path / "gen"), "--save_npy"]) == 0
    capsys.readouterr()
    img = np.load(tmp_path / "gen" / "000000.npy")
    np.testing.assert_allclose(img, out["image"][0], atol=1e-5)
    # Same generator without offsets: not the refined image (the weights did change).
    plain, _ = Generator(config).apply(inv.frozen["generator"], out["codes"][:1],
                                       input_space="w+")
    assert np.abs(np.asarray(plain[0]) - out["image"][0]).max() > 1e-2
    # rosinality round trip through our converter: the same arrays.
    convert_stylegan2(pt_path, str(tmp_path / "back"), log=lambda *a: None)
    _, back = load_generator(str(tmp_path / "back"))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(back), jax.device_get(variables))
