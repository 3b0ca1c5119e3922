"""ReStyle-e4e and domain adaptation against the official `run_domain_adaptation`
(fixture 13_restyle_domain: a narrowed ReStyle-e4e, the 05 HyperStyle model and a perturbed
"fine-tuned" generator), the restyle_e4e converter on full-size key listings, the
generator compatibility checks, and rosinality generators of other channel multipliers."""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers import FIXTURES, nhwc, quiet

from hyperstyle_jax.checkpoints import load_generator
from hyperstyle_jax.convert.common import ConversionError
from hyperstyle_jax.convert.restyle import convert_restyle_e4e, restyle_e4e_from_state_dict
from hyperstyle_jax.convert.stylegan2 import convert_stylegan2
from hyperstyle_jax.editing import EditError, domain
from hyperstyle_jax.inference import load_inverter, load_restyle
from hyperstyle_jax.models import e4e, stylegan2
from hyperstyle_jax.models.irse import get_blocks
from hyperstyle_jax.models.ops import make_kernel
from hyperstyle_jax.utils.trees import tree_paths

F13 = os.path.join(FIXTURES, "13_restyle_domain")
F05 = os.path.join(FIXTURES, "05_e2e")
QUIET = dict(log=quiet)


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(os.path.join(F13, "restyle_domain_io.npz")))


@pytest.fixture(scope="module")
def folders(tmp_path_factory, e2e_checkpoints):
    root = tmp_path_factory.mktemp("domain")
    out = {k: str(root / k) for k in ("restyle", "ft")}
    out["hs"], out["wenc"] = e2e_checkpoints.hyperstyle(), e2e_checkpoints.w_encoder()
    convert_restyle_e4e(os.path.join(F13, "restyle_e4e_narrow.pt"), out["restyle"], **QUIET)
    convert_stylegan2(os.path.join(F13, "stylegan2_narrow128_finetuned.pt"), out["ft"], **QUIET)
    return out


# ----------------------------------------------------------------------------- fixture 13


@pytest.fixture(scope="module")
def restyle_out(folders, ref):
    rs = load_restyle(folders["restyle"])
    assert rs.input_hw == (64, 64)  # the fixture's face_pool
    np.testing.assert_array_equal(rs.variables["latent_avg"], ref["restyle_latent_avg"])
    return rs.batched_runner(batch_size=2, n_iters=2)(nhwc(ref["x"]))


def test_restyle_iterations_match_official(restyle_out, ref):
    """Average image, and per iteration the encoder output, the accumulated W+ codes, the
    full-resolution y_hat and its pooled feedback, through load_restyle's compiled runner."""
    out = restyle_out
    np.testing.assert_allclose(out["avg_image"], ref["restyle_avg_image"].transpose(1, 2, 0),
                               atol=2e-4)
    for t in range(2):
        np.testing.assert_allclose(out["encoder_out"][t], ref[f"restyle_encoder_out_iter{t}"],
                                   atol=5e-5)
        np.testing.assert_allclose(out["codes"][t], ref[f"restyle_latent_iter{t}"], atol=5e-5)
        np.testing.assert_allclose(out["images"][t], nhwc(ref[f"restyle_y_hat_iter{t}"]),
                                   atol=2e-4)
        np.testing.assert_allclose(out["pooled"][t], nhwc(ref[f"restyle_y_hat_pooled_iter{t}"]),
                                   atol=2e-4)
    np.testing.assert_allclose(out["latent"], ref["final_latent"], atol=5e-5)


def test_domain_adaptation_matches_official(folders, ref, restyle_out):
    """HyperStyle offsets filtered to the official layers, rendered with the fine-tuned
    generator on the ReStyle latents: with the recorded random noise (final_image) and,
    through the compiled renderer, with the generator's buffers."""
    inv = load_inverter(folders["hs"], folders["wenc"])
    x = nhwc(ref["x"])
    deltas = inv.batched_inverter(batch_size=2, n_iters=3)(x)["deltas"]
    tuned = [j for j, d in enumerate(deltas) if d is not None]
    kept = domain.kept_layers(inv.generator_config.n_convs, tuned)
    assert list(kept) == list(ref["kept_layers"])
    assert sorted(set(tuned) - set(kept)) == list(ref["dropped_layers"])
    filtered = domain.filter_deltas(deltas)
    assert [j for j, d in enumerate(filtered) if d is not None] == list(kept)
    assert deltas[0] is not None  # the input list is untouched (the official filter is in place)
    for j in kept:
        np.testing.assert_allclose(filtered[j], ref[f"kept_deltas_layer{j}"], atol=2e-5)

    ft_config, ft_vars = load_generator(folders["ft"])
    latents = restyle_out["latent"]  # our ReStyle codes: the whole chain is ours
    domain.check_generator(inv.generator_config, ft_config, latents.shape[1:], "ft", layers=kept)
    gen = stylegan2.Generator(ft_config)
    render = jax.jit(lambda v, c, k, nz: domain.render_domain(gen, v, c, k, nz))
    recorded = [jnp.asarray(nhwc(ref[f"noise_{i:02d}"])) for i in range(ft_config.num_layers)]
    got = render(ft_vars, latents, filtered, recorded)
    np.testing.assert_allclose(got, nhwc(ref["final_image"]), atol=3e-4)

    # The compiled renderer: const noise is the buffers; random noise follows the seed.
    r = domain.DomainRenderer(ft_config, kept, batch_size=2, noise="const")
    np.testing.assert_allclose(r(ft_vars, latents, filtered, [0, 1]),
                               nhwc(ref["final_image_buffer_noise"]), atol=3e-4)
    r = domain.DomainRenderer(ft_config, kept, batch_size=2, noise="random")
    a = r(ft_vars, latents, filtered, [0, 1], seed=3)
    np.testing.assert_array_equal(a, r(ft_vars, latents, filtered, [0, 1], seed=3))
    b = r(ft_vars, latents[::-1], [None if d is None else d[::-1] for d in filtered], [1, 0],
          seed=3)
    np.testing.assert_allclose(b[::-1], a, atol=1e-5)  # noise follows the image id
    assert np.abs(a - r(ft_vars, latents, filtered, [0, 1], seed=4)).mean() > 1e-2


def test_generator_mismatch_is_refused_in_one_line(folders):
    hs = load_inverter(folders["hs"], folders["wenc"]).generator_config  # 128 px
    other = stylegan2.GeneratorConfig.from_dict({**hs.to_dict(), "size": 64,
                                                 "channels": [list(c) for c in hs.channels[:-1]]})
    with pytest.raises(EditError) as e:
        domain.check_generator(hs, other, (hs.n_latent, hs.style_dim), "toon")
    msg = str(e.value)
    assert "\n" not in msg and "64px" in msg and "128px" in msg and msg.startswith("toon:")
    wide = stylegan2.GeneratorConfig.from_dict(
        {**hs.to_dict(), "channels": [list(c) for c in hs.channels[:-1]] + [[128, 48]]})
    with pytest.raises(EditError, match=r"layer 14 \(convs_8\) has weight \(48, 32, 3, 3\)"):
        domain.check_generator(hs, wide, (hs.n_latent, hs.style_dim), "w", layers=(14, 15))
    with pytest.raises(EditError, match="style dimension 32 but .* has 64"):
        domain.check_generator(hs, stylegan2.GeneratorConfig.from_dict(
            {**hs.to_dict(), "style_dim": 32}), (hs.n_latent, 32), "s")


def random_values(shapes, rng):
    """Random variables of an init-shape tree without running the init (a compile each,
    slow on a loaded CPU); BatchNorm variances 1."""
    return {k: random_values(v, rng) if isinstance(v, dict) else
            (np.ones(v.shape, np.float32) if k == "running_var"
             else 0.3 * rng.randn(*v.shape).astype(np.float32)) for k, v in shapes.items()}


def test_cars_crop_and_pool():
    """The cars variant on a tiny random model: the average image is face_pool (to the
    feedback width) then rows [W/8, 7W/8); each y_hat is cropped at full resolution
    ([size/8, 7 size/8), 64:448 of 512) and pooled to the 3:4 feedback size."""
    enc = {"n_styles": 8, "style_dim": 16, "units": [[16, 16, 2], [16, 32, 2]], "input_width": 16,
           "input_nc": 6, "mode": "ir_se", "spatial": 16}
    gen = stylegan2.GeneratorConfig(size=32, style_dim=16, n_mlp=1,
                                    channels=((4, 8), (8, 8), (16, 8), (32, 8)))
    model = e4e.ReStyleE4E(e4e.ReStyleConfig(enc, gen, feedback_hw=(12, 16), cars_crop=True))
    rng = np.random.RandomState(0)
    variables = {"encoder": random_values(e4e.init_shapes(enc), rng),
                 "generator": random_values(stylegan2.init_shapes(gen), rng),
                 "latent_avg": rng.randn(8, 16).astype(np.float32)}
    x = rng.uniform(-1, 1, (2, 12, 16, 3)).astype(np.float32)

    def fn(v, x):  # one compile: the inversion and the renders it should equal
        out = model.invert(v, x, 2)
        avg_full = model.render(v["generator"], v["latent_avg"][None])[0]
        return out, avg_full, model.render(v["generator"], out["codes"][1])

    out, full, y = jax.jit(fn)(variables, x)
    want = full.reshape(16, 2, 16, 2, 3).mean(axis=(1, 3))[2:14]  # face_pool 16, rows 2:14
    np.testing.assert_allclose(out["avg_image"], want, atol=1e-5)
    assert out["images"].shape == (2, 2, 24, 32, 3) and out["pooled"].shape == (2, 2, 12, 16, 3)
    y = y[:, 4:28]  # rows [32/8, 7*32/8)
    np.testing.assert_allclose(out["images"][1], y, atol=1e-5)
    np.testing.assert_allclose(out["pooled"][1], y.reshape(2, 12, 2, 16, 2, 3).mean(axis=(2, 4)),
                               atol=1e-5)
    assert e4e.default_restyle_feedback(enc, {"dataset_type": "cars_encode"}) == ((192, 256), True)


# ----------------------------------------------------------------------------- converter


def official_encoder_listing(config):
    """The official `encoder.*` names and shapes of a ProgressiveBackboneEncoder, rebuilt
    from our init tree: `a_N` -> `a.N`, kernel HWIO -> OIHW, EqualLinear [in,out] ->
    [out,in], plus BatchNorm's `num_batches_tracked`."""
    out = {}
    for path, shape in tree_paths(e4e.init_shapes(config)).items():
        parts = path.split("/")[1:]
        mods = [re.sub(r"_(\d+)$", r".\1", p) for p in parts[:-1]]
        leaf = "weight" if parts[-1] == "kernel" else parts[-1]
        if len(shape) == 4:
            shape = (shape[3], shape[2], shape[0], shape[1])
        elif len(shape) == 2:
            shape = shape[::-1]
        out["encoder." + ".".join(mods + [leaf])] = tuple(shape)
        if leaf == "running_var":
            out["encoder." + ".".join(mods + ["num_batches_tracked"])] = ()
    return out


def zero_state_dict(listing):
    """Zero-cost arrays (np.broadcast_to) of the listed shapes; FIR buffers hold the constant."""
    sd = {}
    for k, s in listing.items():
        if k.endswith((".blur.kernel", ".upsample.kernel")):
            sd[k] = make_kernel([1, 3, 3, 1]) * 4
        else:
            sd[k] = np.broadcast_to(np.float32(0), tuple(s))
    return sd


@pytest.mark.parametrize("size,n_styles", [(1024, 18), (256, 14)])
def test_full_size_listing_converts(size, n_styles):
    official = {k: tuple(v) for k, v in json.load(open(os.path.join(
        F13, "restyle_e4e_ckpt_1024_256.json")))[f"state_dict_{size}"].items()}
    config = {"n_styles": n_styles, "style_dim": 512, "units": [list(u) for u in get_blocks(50)],
              "input_width": 64, "input_nc": 6, "mode": "ir_se", "spatial": 16}
    ours = official_encoder_listing(config)
    # Our architecture, named back, is exactly the official encoder's key listing.
    assert ours == {k: v for k, v in official.items() if k.startswith("encoder.")}
    if size == 1024:  # official e4e at 1024: 205,610,164 elements (incl. BN buffers)
        assert sum(int(np.prod(s)) for s in ours.values()) == 205_610_164
    sd = zero_state_dict(official)
    top = {"opts": {"encoder_type": "ProgressiveBackboneEncoder", "input_nc": 6,
                    "output_size": size, "dataset_type": "ffhq_encode"},
           "latent_avg": np.zeros((n_styles, 512), np.float32)}
    cfg, tree = restyle_e4e_from_state_dict(sd, top, "listing.pt")
    assert cfg["encoder"] == config and cfg["generator"]["size"] == size
    assert tree_paths(tree["encoder"]) == tree_paths(e4e.init_shapes(config))
    assert tree["latent_avg"].shape == (n_styles, 512)
    # The full-size pipeline traces (shapes only): 256 px input, 18 or 14 W+ rows, then the
    # domain render of a same-size generator with the official layers' offsets.
    model = e4e.ReStyleE4E(e4e.ReStyleConfig(cfg["encoder"], stylegan2.GeneratorConfig.from_dict(
        cfg["generator"])))
    x = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
    out = jax.eval_shape(lambda v, x: model.invert(v, x, 2), tree, x)
    assert out["codes"].shape == (2, 1, n_styles, 512) and out["images"].shape[2:4] == (size, size)
    gen_cfg = stylegan2.GeneratorConfig.official(size)
    layers = domain.kept_layers(gen_cfg.n_convs, range(gen_cfg.n_convs))
    assert layers == ((14, 15, 17, 18, 20, 21, 23, 24) if size == 1024 else (14, 15, 17, 18))
    shapes = gen_cfg.delta_shapes()
    kept = [jax.ShapeDtypeStruct((1,) + shapes[j], jnp.float32) if j in layers else None
            for j in range(gen_cfg.n_convs)]
    g = stylegan2.Generator(gen_cfg)
    img = jax.eval_shape(lambda v, c, k: domain.render_domain(g, v, c, k), tree["generator"],
                         out["latent"], kept)
    assert img.shape == (1, size, size, 3)

    # A missing and a misshaped key: one line naming both.
    bad = dict(sd)
    del bad["encoder.styles.7.convs.4.bias"]
    bad["encoder.body.5.res_layer.1.weight"] = np.broadcast_to(np.float32(0), (128, 128, 1, 1))
    with pytest.raises(ConversionError) as e:
        restyle_e4e_from_state_dict(bad, top, "listing.pt")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("listing.pt: cannot convert ReStyle-e4e encoder")
    assert "encoder.styles.7.convs.4.bias (expected shape (512,))" in msg
    assert ("encoder.body.5.res_layer.1.weight: shape (128, 128, 1, 1), expected "
            "(128, 128, 3, 3)") in msg
    bad = dict(sd, **{"encoder.extra.weight": np.zeros(1, np.float32)})
    with pytest.raises(ConversionError, match=r"unexpected keys \(1\): encoder.extra.weight"):
        restyle_e4e_from_state_dict(bad, top, "listing.pt")
    with pytest.raises(ConversionError, match="only 'ProgressiveBackboneEncoder'"):
        restyle_e4e_from_state_dict(sd, {**top, "opts": {"encoder_type":
                                                         "ResNetProgressiveBackboneEncoder"}}, "x")


def test_cli_one_line_errors(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "convert_weights", os.path.join(os.path.dirname(FIXTURES), "..", "tools",
                                        "convert_weights.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    ckpt = torch.load(os.path.join(F13, "restyle_e4e_narrow.pt"), weights_only=True)
    del ckpt["state_dict"]["encoder.styles.3.linear.bias"]
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    assert cli.main(["restyle_e4e", str(bad), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing keys (1): encoder.styles.3.linear.bias" in err
    del ckpt["latent_avg"]
    ckpt["state_dict"]["encoder.styles.3.linear.bias"] = torch.zeros(64)
    torch.save(ckpt, bad)
    assert cli.main(["restyle_e4e", str(bad), str(tmp_path / "o")]) == 2
    assert "no top-level 'latent_avg'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- any generator


def rosinality_state_dict(variables):
    """Our generator variables -> rosinality `g_ema` names and layouts (the converter's
    table read backwards), as numpy views."""
    sd = {}
    for path, _ in tree_paths(variables).items():
        coll, *parts = path.split("/")
        arr = variables[coll]
        for p in parts:
            arr = arr[p]
        arr = np.asarray(arr)
        key = ".".join(re.sub(r"_(\d+)$", r".\1", p) for p in parts)
        if coll == "noises":
            key, arr = "noises." + parts[0], arr.transpose(0, 3, 1, 2)
        elif parts[-1] == "input":
            arr = arr.transpose(0, 3, 1, 2)
        elif parts[-2:] == ["conv", "weight"]:
            arr = arr.transpose(3, 2, 0, 1)[None]
        elif arr.ndim == 2:
            arr = arr.T
        elif parts[0].startswith("to_rgb") and parts[-1] == "bias" and len(parts) == 2:
            arr = arr.reshape(1, 3, 1, 1)
        sd[key] = arr
    k = make_kernel([1, 3, 3, 1]) * 4
    n_blocks = sum(1 for p in variables["params"] if p.startswith("to_rgbs_"))
    for b in range(n_blocks):
        sd[f"convs.{2 * b}.conv.blur.kernel"] = k
        sd[f"to_rgbs.{b}.upsample.kernel"] = k
    return sd


@pytest.mark.parametrize("size,mult", [(512, 1), (1024, 1), (256, 4)])
def test_other_channel_multipliers_are_inferred(size, mult):
    """Full-size listings of non-default multipliers: the converter reads the widths off
    the shapes (no multiplier option needed)."""
    from hyperstyle_jax.convert.common import SourceDict
    from hyperstyle_jax.convert.stylegan2 import generator_from_state_dict

    want = stylegan2.GeneratorConfig.official(size, channel_multiplier=mult)
    shapes = stylegan2.init_shapes(want)
    zeros = jax.tree_util.tree_map(lambda s: np.broadcast_to(np.float32(0), s.shape), shapes)
    src = SourceDict(rosinality_state_dict(zeros), "g.pt")
    config, variables = generator_from_state_dict(src)
    src.finish()
    assert config == want and tree_paths(variables) == tree_paths(shapes)


def test_narrow_multiplier_generator_converts_and_generates(tmp_path):
    """A narrow generator with its own width table (channel multiplier 1 pattern, halved):
    rosinality .pt -> converter -> `generate` renders exactly what the model renders."""
    from hyperstyle_jax import generate

    config = stylegan2.GeneratorConfig(size=32, style_dim=32, n_mlp=2,
                                       channels=((4, 24), (8, 24), (16, 24), (32, 12)))
    variables = random_values(stylegan2.init_shapes(config), np.random.RandomState(5))
    pt = tmp_path / "g.pt"
    sd = {k: torch.from_numpy(np.array(v)) for k, v in rosinality_state_dict(variables).items()}
    torch.save({"g_ema": sd}, pt)
    convert_stylegan2(str(pt), str(tmp_path / "ckpt"), **QUIET)
    got_config, _ = load_generator(str(tmp_path / "ckpt"))
    assert got_config == config
    w = np.random.RandomState(0).randn(2, config.n_latent, config.style_dim).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    assert generate.main(["--checkpoint", str(tmp_path / "ckpt"), "--latents",
                          str(tmp_path / "w.npy"), "--out", str(tmp_path / "out"),
                          "--save_npy", "--batch_size", "2"]) == 0
    want, _ = jax.jit(lambda v, s: stylegan2.Generator(config).apply(v, s, input_space="w+"))(
        variables, w)
    for i in range(2):
        np.testing.assert_allclose(np.load(tmp_path / "out" / f"{i:06d}.npy"), want[i], atol=1e-5)


# ----------------------------------------------------------------------------- CLI


def test_edit_domain_cli(folders, ref, tmp_path, capsys):
    """`edit domain` with two generators in one run: the fine-tuned one reproduces the
    official render (constant noise; the fixture's x is exactly 8-bit), the reconstruction
    is HyperStyle's; a generator of another size is refused in one line before any work."""
    from PIL import Image

    from hyperstyle_jax import edit
    from hyperstyle_jax.utils.images import to_uint8

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, im in enumerate(to_uint8(nhwc(ref["x"]))):
        Image.fromarray(im).save(imgs / f"face{i}.png")
    toon = tmp_path / "toon"
    os.symlink(folders["ft"], toon)
    orig = str(tmp_path / "orig")
    convert_stylegan2(os.path.join(F05, "stylegan2_narrow128_rosinality.pt"), orig, **QUIET)
    base = ["domain", "--checkpoint", folders["hs"], "--w_encoder", folders["wenc"],
            "--restyle", folders["restyle"], "--images", str(imgs), "--n_iters", "3",
            "--batch_size", "2"]
    out = tmp_path / "out"
    assert edit.main(base + ["--generator", str(toon), "--generator", orig, "--noise", "const",
                             "--out", str(out), "--save_npy"]) == 0
    for i in range(2):
        arr = np.load(out / "arrays" / f"face{i}.npz")
        assert set(arr.files) == {"reconstruction", "domain_toon", "domain_orig"}
        np.testing.assert_allclose(arr["domain_toon"], nhwc(ref["final_image_buffer_noise"])[i],
                                   atol=3e-4)
        pooled = arr["reconstruction"].reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
        np.testing.assert_allclose(pooled, nhwc(ref["hyperstyle_y_hat_pooled"])[i], atol=2e-4)
        assert (out / "edits" / "domain_orig" / f"face{i}.png").is_file()
        assert (out / "grids" / f"face{i}.png").is_file()
    capsys.readouterr()

    small = str(tmp_path / "g64")
    convert_stylegan2(os.path.join(FIXTURES, "01_generator", "stylegan2_narrow64_rosinality.pt"),
                      small, **QUIET)
    assert edit.main(base + ["--generator", str(toon), "--generator", small,
                             "--out", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "64px" in err and "128px" in err and small in err
    assert not (tmp_path / "o2" / "grids").exists()
