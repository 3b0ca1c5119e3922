"""Generator parity with the official code (tests/fixtures/01_generator, made by the
official HyperStyle generator) through our converter, plus invariants and input errors."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FIXTURES, nhwc

from hyperstyle_jax.convert.common import (
    SourceDict,
    load_torch_file,
    to_numpy_state_dict,
    unwrap_state_dict,
)
from hyperstyle_jax.convert.stylegan2 import generator_from_state_dict
from hyperstyle_jax.models.stylegan2 import Generator, GeneratorConfig, init_shapes

GEN = os.path.join(FIXTURES, "01_generator")
IMG_TOL = 1e-4     # max |diff| <= 1e-4 on every case (README: atol 1e-4)
LATENT_TOL = 1e-5  # README: latents and mapping
TORGB = (1, 4, 7, 10, 13)


@pytest.fixture(scope="module")
def gen_setup():
    path = os.path.join(GEN, "stylegan2_narrow64_rosinality.pt")
    sd, top = unwrap_state_dict(load_torch_file(path), path, ("g_ema",))
    src = SourceDict(to_numpy_state_dict(sd, path), path)
    cfg, variables = generator_from_state_dict(src)
    src.finish()
    f = dict(np.load(os.path.join(GEN, "generator_cases.npz")))
    return cfg, jax.tree_util.tree_map(jnp.asarray, variables), f


def case_inputs(f):
    deltas = [jnp.asarray(f[f"delta_{j:02d}"]) for j in range(14)]
    noise = [jnp.asarray(nhwc(f[f"noise_{i}"])) for i in range(9)]
    return {  # fixtures/01_generator/config.json "cases"
        "a": (f["z"], dict(input_space="z")),
        "b": (
            f["z"],
            dict(
                input_space="z",
                truncation=float(f["truncation"]),
                truncation_latent=jnp.asarray(f["mean_latent"]),
            ),
        ),
        "c": (f["w"], {}),
        "d": (f["wplus"], dict(input_space="w+")),
        "e": (f["wplus"], dict(weights_deltas=deltas)),
        "f": (f["wplus"], dict(noise=noise)),
        "g": (
            f["wplus"],
            dict(weights_deltas=[None if j in TORGB else d for j, d in enumerate(deltas)]),
        ),
        "h": (f["wplus"], dict(weights_deltas=[d[0] for d in deltas])),
    }


def test_config_inferred_from_fixture(gen_setup):
    cfg, _, _ = gen_setup
    want = __import__("json").load(open(os.path.join(GEN, "config.json")))
    assert cfg.size == 64 and cfg.style_dim == 64 and cfg.n_mlp == 3
    assert dict(cfg.channels) == {int(k): v for k, v in want["patched_channel_table"].items()}
    assert cfg.n_latent == want["n_latent"] and cfg.num_layers == want["num_noise_layers"]
    assert cfg.n_convs == len(want["weights_deltas_order"])
    assert cfg.delta_shapes() == [
        tuple(e["shape_per_sample"]) for e in want["weights_deltas_order"]
    ]
    assert [n.replace("_", ".") + ".conv" for n in cfg.layer_names()] == [
        e["module"].replace("_", ".") for e in want["weights_deltas_order"]]


@functools.lru_cache(maxsize=None)
def _jitted(cfg, static_items):
    static = dict(static_items)
    return jax.jit(lambda v, s, arrays: Generator(cfg).apply(v, s, return_latents=True,
                                                             **static, **arrays))


def jit_apply(cfg, v, styles, **kw):
    """Generator.apply under jit (one compile per case is cheaper than eager dispatch here;
    calls with the same options share it): arrays travel as arguments."""
    arrays = {k: a for k, a in kw.items() if k in ("truncation_latent", "noise", "weights_deltas")}
    static = tuple(sorted((k, a) for k, a in kw.items() if k not in arrays))
    return _jitted(cfg, static)(v, jnp.asarray(styles), arrays)


@pytest.mark.parametrize("case", list("abcdfgh"))  # e: with its intermediates below
def test_generator_cases_match_official(gen_setup, case):
    cfg, v, f = gen_setup
    styles, kw = case_inputs(f)[case]
    img, lat = jit_apply(cfg, v, styles, **kw)
    assert img.shape == (3, 64, 64, 3)
    np.testing.assert_allclose(np.asarray(img), nhwc(f[f"img_{case}"]), atol=IMG_TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(lat), f[f"latent_{case}"], atol=LATENT_TOL, rtol=0)


def test_mapping_matches_official(gen_setup):
    cfg, v, f = gen_setup
    w = Generator(cfg).apply(v, jnp.asarray(f["z"]), method=Generator.mapping)
    np.testing.assert_allclose(np.asarray(w), f["mapping_out_z"], atol=LATENT_TOL, rtol=0)


def test_case_e_intermediates(gen_setup):
    """Every StyledConv / up-conv / ToRGB output of case e (fixture holds samples 0-1)."""
    cfg, v, f = gen_setup
    inter = dict(np.load(os.path.join(GEN, "generator_case_e_intermediates.npz")))
    styles, kw = case_inputs(f)["e"]
    (img, _), state = jax.jit(lambda v, s, d: Generator(cfg).apply(
        v, s, capture_intermediates=True, mutable=["intermediates"], weights_deltas=d))(
        v, jnp.asarray(styles), kw["weights_deltas"])
    np.testing.assert_allclose(np.asarray(img), nhwc(f["img_e"]), atol=IMG_TOL, rtol=0)
    got = state["intermediates"]
    for name, want in inter.items():
        if name.endswith("_conv"):  # convs_N_conv: the ModulatedConv2d output
            out = got[name[:-5]]["conv"]["__call__"][0]
        else:
            out = got[name]["__call__"][0]
        np.testing.assert_allclose(np.asarray(out)[:2], nhwc(want), atol=IMG_TOL, rtol=0,
                                   err_msg=name)
    assert len(inter) == 18


def test_zero_offsets_equal_no_offsets(gen_setup):
    cfg, v, f = gen_setup
    w = jnp.asarray(f["wplus"])
    ref, _ = jit_apply(cfg, v, w, input_space="w+")  # shares case d's compile
    # Per-sample zeros take the per-sample path; equal up to float rounding.
    img, _ = jit_apply(cfg, v, w, input_space="w+",
                       weights_deltas=[jnp.zeros((3,) + s) for s in cfg.delta_shapes()])
    np.testing.assert_allclose(np.asarray(img), np.asarray(ref), atol=2e-5, rtol=0)


def test_differentiable_wrt_deltas_under_jit(gen_setup):
    """The trainer backpropagates into the deltas: grad agrees with a central difference."""
    cfg, v, f = gen_setup
    g = Generator(cfg)
    w = jnp.asarray(f["wplus"][:2])
    rng = np.random.RandomState(0)
    # One layer of each kind (conv1, up-conv, conv, toRGB) keeps the compile short.
    d0 = [jnp.asarray(0.05 * rng.randn(2, *s).astype(np.float32)) if j in (0, 2, 3, 4) else None
          for j, s in enumerate(cfg.delta_shapes())]
    target = jnp.asarray(rng.randn(2, 64, 64, 3).astype(np.float32))

    @jax.jit
    def loss(deltas):
        img, _ = g.apply(v, w, weights_deltas=deltas)
        return jnp.mean((img - target) ** 2)

    grads = jax.jit(jax.grad(loss))(d0)
    grads = [x for x in grads if x is not None]
    assert len(grads) == 4
    assert all(np.isfinite(np.asarray(x)).all() and float(jnp.abs(x).max()) > 0 for x in grads)
    direction = [None if x is None else jnp.asarray(rng.randn(*x.shape).astype(np.float32))
                 for x in d0]

    def shifted(eps):
        return [None if a is None else a + eps * b for a, b in zip(d0, direction)]

    eps = 1e-2
    fd = (float(loss(shifted(eps))) - float(loss(shifted(-eps)))) / (2 * eps)
    an = sum(
        float(jnp.sum(gr * dr)) for gr, dr in zip(grads, [d for d in direction if d is not None])
    )
    assert abs(fd - an) <= 2e-2 * abs(an) + 1e-4, (fd, an)


def test_random_noise_uses_noise_rng(gen_setup):
    cfg, v, f = gen_setup
    g = Generator(cfg)
    w = jnp.asarray(f["w"])
    params_only = {"params": v["params"]}  # random noise needs no buffers
    render = jax.jit(lambda key: g.apply(params_only, w, randomize_noise=True,
                                         rngs={"noise": key})[0])
    a, b, c = render(jax.random.key(1)), render(jax.random.key(1)), render(jax.random.key(2))
    const, _ = jit_apply(cfg, v, w)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(jnp.abs(a - c).max()) > 1e-3 and float(jnp.abs(a - const).max()) > 1e-3
    with pytest.raises(ValueError, match="noises"):
        g.apply(params_only, w)


def test_bad_inputs_name_the_problem(gen_setup):
    cfg, v, f = gen_setup
    g = Generator(cfg)
    w = jnp.asarray(f["w"])
    with pytest.raises(ValueError, match="14"):
        g.apply(v, w, weights_deltas=[None] * 13)
    bad = [None] * 14
    bad[2] = jnp.zeros((3, 40, 40, 3, 3))
    with pytest.raises(ValueError, match=r"weights_deltas\[2\] \(convs_0\)"):
        g.apply(v, w, weights_deltas=bad)
    with pytest.raises(ValueError, match="styles has shape"):
        g.apply(v, jnp.zeros((3, 9, 64)))
    with pytest.raises(ValueError, match="truncation_latent"):
        g.apply(v, w, truncation=0.5)
    with pytest.raises(ValueError, match="input_space"):
        g.apply(v, w, input_space="W")


@pytest.mark.parametrize("size,n_latent,n_convs,n_noise", [(1024, 18, 26, 17), (512, 16, 23, 15),
                                                           (256, 14, 20, 13), (8, 4, 5, 3)])
def test_sizes_and_delta_shapes_match_params(size, n_latent, n_convs, n_noise):
    """The official `Generator`'s layer counts per size; delta_shapes()[j] is the
    (out, in, k, k) of layer j's weight."""
    cfg = GeneratorConfig.official(size) if size >= 256 else GeneratorConfig(
        size=8, style_dim=16, n_mlp=2, channels=((4, 12), (8, 10)))
    assert (cfg.n_latent, cfg.n_convs, cfg.num_layers) == (n_latent, n_convs, n_noise)
    shapes = init_shapes(cfg)
    for name, (o, i, k, _) in zip(cfg.layer_names(), cfg.delta_shapes()):
        assert shapes["params"][name]["conv"]["weight"].shape == (k, k, i, o), name
    assert len(shapes["noises"]) == n_noise
    assert GeneratorConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="power of 2"):
        GeneratorConfig(size=96)
