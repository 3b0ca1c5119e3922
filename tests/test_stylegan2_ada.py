"""NVIDIA StyleGAN2-ADA pickles and the image discriminator (fixture 14).

Parity with NVIDIA's own code (images at noise_mode='const', mapping, w_avg truncation,
conditional mapping, D logits: max |d| / max |ref| <= 1e-4), the full-size 256 / 1024 key
listings, the converters' CLIs, one-line refusals (a pickle that would run code does not run
it), and a tiny HyperStyle inversion with per-sample offsets on a converted ADA generator.
"""
import importlib.util
import json
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURES

from hyperstyle_jax import checkpoints
from hyperstyle_jax.convert import stylegan2_ada as ada
from hyperstyle_jax.convert.common import ConversionError, SourceDict
from hyperstyle_jax.models import discriminator as dmodel
from hyperstyle_jax.models.ops import make_kernel
from hyperstyle_jax.models.stylegan2 import Generator, GeneratorConfig, init_shapes
from hyperstyle_jax.utils.trees import tree_paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(FIXTURES, "14_stylegan2_ada")
NETS = ("cond32", "skip64")
TOL = 1e-4


def rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max() / np.abs(want).max())


def nchw(x):
    return np.transpose(np.asarray(x), (0, 3, 1, 2))


@pytest.fixture(scope="module")
def outputs():
    return dict(np.load(os.path.join(HERE, "outputs.npz")))


@pytest.fixture(scope="module")
def snapshots():
    return {n: ada.read_snapshot(os.path.join(HERE, f"{n}.pkl")) for n in NETS}


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location(
        "convert_weights", os.path.join(ROOT, "tools", "convert_weights.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


# ----------------------------------------------------------------------------- parity


def _render_all(config):
    """One compiled pass: mapping, W, W+ and truncated-z renders (eager apply is slow)."""
    gen = Generator(config)

    @jax.jit
    def run(variables, z, labels, w, wplus, w_avg):
        mapped = gen.apply(variables, z, labels, method=Generator.mapping)
        img_w, _ = gen.apply(variables, w)
        img_wplus, _ = gen.apply(variables, wplus, input_space="w+")
        img_trunc, lat = gen.apply(variables, z, input_space="z", labels=labels, truncation=0.7,
                                   truncation_latent=w_avg, return_latents=True)
        return mapped, img_w, img_wplus, img_trunc, lat
    return run


@pytest.mark.parametrize("name", NETS)
def test_generator_parity(name, snapshots, outputs):
    o = {k[len(name) + 1:]: v for k, v in outputs.items() if k.startswith(name + "_")}
    config, variables, w_avg = ada.generator_from_network(snapshots[name]["G_ema"], name)
    assert config.family == "stylegan2_ada" and config.n_latent == o["ws"].shape[1]
    labels = o["c"] if config.c_dim else None
    mapped, img_w, img_wplus, img_trunc, lat = _render_all(config)(
        variables, o["z"], labels, o["ws"][:, 0], o["wplus"], w_avg)
    assert rel(mapped, o["ws"][:, 0]) <= TOL                             # (conditional) mapping
    assert rel(nchw(img_w), o["img_ws"]) <= TOL                          # synthesis of W
    assert rel(nchw(img_wplus), o["img_wplus"]) <= TOL                   # per-layer W+
    assert rel(lat, o["ws_trunc"]) <= TOL                                # w_avg truncation
    assert rel(nchw(img_trunc), o["img_trunc"]) <= TOL


def test_conv_clamp_is_exercised(snapshots, outputs):
    """cond32's conv_clamp (1.0) clips: rendering without it misses NVIDIA by far."""
    config, variables, _ = ada.generator_from_network(snapshots["cond32"]["G_ema"], "cond32")
    free = GeneratorConfig.from_dict({**config.to_dict(), "conv_clamp": None})
    img, _ = jax.jit(Generator(free).apply)(variables, outputs["cond32_ws"][:, 0])
    assert rel(nchw(img), outputs["cond32_img_ws"]) > 1e-2


def test_which_g_is_the_non_ema_generator(snapshots, outputs):
    config, variables, _ = ada.generator_from_network(snapshots["cond32"]["G"], "cond32 G")
    img, _ = jax.jit(Generator(config).apply)(variables, outputs["cond32_ws"][:, 0])
    assert rel(nchw(img), outputs["cond32_img_G"]) <= TOL
    assert rel(nchw(img), outputs["cond32_img_ws"]) > 1e-3


@pytest.mark.parametrize("name", NETS)
def test_discriminator_parity(name, snapshots, outputs):
    config = ada.discriminator_config(snapshots[name]["D"], name)
    src = SourceDict(snapshots[name]["D"].state_dict(), name)
    variables = ada.discriminator_from_state_dict(src, config)
    src.finish()
    labels = outputs[f"{name}_c"] if config.c_dim else None
    images = np.transpose(outputs[f"{name}_d_images"], (0, 2, 3, 1))
    logits = jax.jit(dmodel.Discriminator(config).apply)(variables, images, labels)
    assert logits.shape == (images.shape[0],)
    assert rel(logits, outputs[f"{name}_d_logits"][:, 0]) <= TOL


# ----------------------------------------------------------------------------- listings


def _listing_sd(listing):
    filt = make_kernel([1, 3, 3, 1])
    return {k: (filt if k.endswith("resample_filter") else np.zeros(s, np.float32))
            for k, s in listing.items()}


@pytest.mark.parametrize("res", [256, 1024])
def test_full_size_listings_convert(res):
    d = json.load(open(os.path.join(HERE, f"keys_{res}.json")))
    g_config = ada.generator_config(ada.Network("Generator", {"_init_kwargs": d["G_init_kwargs"]}),
                                    f"G {res}")
    src = SourceDict(_listing_sd(d["G_ema"]), f"G {res}")
    variables, w_avg = ada.generator_from_state_dict(src, g_config)
    src.finish()                       # every NVIDIA key consumed, none missing or misshaped
    assert tree_paths(variables) == tree_paths(init_shapes(g_config)) and w_avg.shape == (512,)
    assert g_config.n_latent == (18 if res == 1024 else 14) and g_config.conv_clamp == 256
    assert g_config.channels == GeneratorConfig.official(res, channel_multiplier=2 if res == 1024
                                                         else 1).channels
    d_config = ada.discriminator_config(
        ada.Network("Discriminator", {"_init_kwargs": d["D_init_kwargs"]}), f"D {res}")
    src = SourceDict(_listing_sd(d["D"]), f"D {res}")
    dvars = ada.discriminator_from_state_dict(src, d_config)
    src.finish()
    assert tree_paths(dvars) == tree_paths(dmodel.init_shapes(d_config))


# ----------------------------------------------------------------------------- CLIs


def test_cli_generator_folder_renders_with_deltas(cli, tmp_path, snapshots, outputs, capsys):
    """The converted folder loads as a plain `stylegan2` generator; HyperStyle's per-sample
    offsets and a tiny hypernetwork inversion run on it."""
    from hyperstyle_jax.models.hypernetwork import HyperNetConfig
    from hyperstyle_jax.models.hyperstyle import HyperStyle, HyperStyleConfig

    out = tmp_path / "g"
    assert cli(["stylegan2_ada", os.path.join(HERE, "skip64.pkl"), str(out)]) == 0
    assert "StyleGAN2-ADA 64px" in capsys.readouterr().out
    config, variables, latent_avg = checkpoints.load_generator_with_latent_avg(str(out))
    assert config.family == "stylegan2_ada" and latent_avg.shape == (config.style_dim,)
    w = np.repeat(outputs["skip64_ws"][:2, :1], config.n_latent, axis=1)   # W+ codes
    gen = Generator(config, per_sample="map")
    rng = np.random.default_rng(0)
    deltas = [0.1 * rng.standard_normal((2,) + s).astype(np.float32)
              for s in config.delta_shapes()]
    render = jax.jit(lambda v, w, d: gen.apply(v, w, input_space="w+", weights_deltas=d)[0])
    img = render(variables, w, deltas)
    zero = render(variables, w, [np.zeros_like(d) for d in deltas])
    assert rel(nchw(zero), outputs["skip64_img_ws"][:2]) <= TOL          # Δ = 0 is NVIDIA's image
    assert np.isfinite(img).all() and rel(img, zero) > 1e-3

    hcfg = HyperNetConfig.for_generator(
        config, stem_width=8, stages=((8, 1, 2),), hypernet_z_dim=8, hypernet_in_size=32,
        hypernet_out_size=32, hyper_block_inner_c=8, refine_block_inner_c=8,
        refine_block_out_c=8, spatial=8)
    model = HyperStyle(HyperStyleConfig(generator=config, hypernet=hcfg, feedback_hw=(32, 32)),
                       per_sample="map")
    hyper = model.init_hypernet(jax.random.PRNGKey(0))
    frozen = {"generator": variables, "latent_avg": jnp.broadcast_to(
        latent_avg, (config.n_latent, config.style_dim))}
    x = jnp.asarray(rng.uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
    res = jax.jit(lambda h, x, c: model.invert(frozen, h, x, 1, codes=c))(hyper, x, w)
    assert res["images"].shape == (1, 2, 64, 64, 3) and np.isfinite(res["images"]).all()
    assert len(res["deltas"]) == config.n_convs


def test_cli_discriminator_folders(cli, tmp_path, outputs, capsys):
    out = tmp_path / "d"
    assert cli(["stylegan2_ada", os.path.join(HERE, "cond32.pkl"), str(out), "--which", "D"]) == 0
    config, variables = checkpoints.load_discriminator(str(out))
    assert config.family == "stylegan2_ada" and config.architecture == "orig"
    logits = jax.jit(dmodel.Discriminator(config).apply)(
        variables, np.transpose(outputs["cond32_d_images"], (0, 2, 3, 1)), outputs["cond32_c"])
    assert rel(logits, outputs["cond32_d_logits"][:, 0]) <= TOL


def test_rosinality_discriminator_parity(cli, tmp_path, outputs):
    """rosinality's own D (official HyperStyle code, narrowed) through the `discriminator` kind."""
    assert cli(["discriminator", os.path.join(HERE, "rosinality_d32.pt"), str(tmp_path / "d")]) == 0
    config, variables = checkpoints.load_discriminator(str(tmp_path / "d"))
    assert config == dmodel.DiscriminatorConfig(size=32, channels=tuple((r, 32) for r in
                                                                        (4, 8, 16, 32)))
    logits = jax.jit(dmodel.Discriminator(config).apply)(
        variables, np.transpose(outputs["ros32_d_images"], (0, 2, 3, 1)))
    assert rel(logits, outputs["ros32_d_logits"][:, 0]) <= TOL


def test_rosinality_discriminator_matches_nvidia_layout(cli, tmp_path, snapshots, outputs):
    """skip64's D (resnet, group 4, no effective clamp) written in rosinality's key layout
    converts through the `discriminator` kind to the same logits."""
    import torch

    nv = snapshots["skip64"]["D"].state_dict()
    size, ros = 64, {}
    for res in (64, 32, 16, 8):
        i = 6 - int(np.log2(res)) + 1
        b = f"b{res}."
        ros[f"convs.{i}.conv1.0.weight"], ros[f"convs.{i}.conv1.1.bias"] = \
            nv[b + "conv0.weight"], nv[b + "conv0.bias"]
        ros[f"convs.{i}.conv2.1.weight"], ros[f"convs.{i}.conv2.2.bias"] = \
            nv[b + "conv1.weight"], nv[b + "conv1.bias"]
        ros[f"convs.{i}.skip.1.weight"] = nv[b + "skip.weight"]
        ros[f"convs.{i}.conv2.0.kernel"] = make_kernel([1, 3, 3, 1])
        ros[f"convs.{i}.skip.0.kernel"] = make_kernel([1, 3, 3, 1])
    ros["convs.0.0.weight"], ros["convs.0.1.bias"] = nv[f"b{size}.fromrgb.weight"], \
        nv[f"b{size}.fromrgb.bias"]
    final = {"conv": "final_conv.{}", "fc": "final_linear.0", "out": "final_linear.1"}
    for layer, theirs in final.items():
        for j, leaf in enumerate(("weight", "bias")):
            ros[f"{theirs.format(j)}.{leaf}"] = nv[f"b4.{layer}.{leaf}"]
    path = tmp_path / "ros.pt"
    torch.save({"d": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ros.items()}}, path)
    assert cli(["discriminator", str(path), str(tmp_path / "d")]) == 0
    config, variables = checkpoints.load_discriminator(str(tmp_path / "d"))
    assert config == dmodel.DiscriminatorConfig(size=64, channels=tuple((r, 32) for r in
                                                                        (4, 8, 16, 32, 64)))
    logits = jax.jit(dmodel.Discriminator(config).apply)(
        variables, np.transpose(outputs["skip64_d_images"], (0, 2, 3, 1)))
    assert rel(logits, outputs["skip64_d_logits"][:, 0]) <= TOL


# ----------------------------------------------------------------------------- bad input


def _call_pickle(module: str, name: str, args: tuple, key: str = "G_ema") -> bytes:
    """{key: module.name(*args)} as protocol-2 pickle bytes (what a hostile file holds)."""
    body = pickle.dumps(args, protocol=2)[2:-1]
    return (b"\x80\x02}" + pickle.dumps(key, protocol=2)[2:-1]
            + f"c{module}\n{name}\n".encode() + body + b"Rs.")


def _fails(cli, capsys, argv, *needles):
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_code_running_pickle_is_refused_and_does_not_run(cli, tmp_path, capsys):
    ran, kept = tmp_path / "payload_ran", tmp_path / "control_ran"
    hostile = tmp_path / "hostile.pkl"
    hostile.write_bytes(_call_pickle("builtins", "open", (str(ran), "w")))
    pickle.loads(_call_pickle("builtins", "open", (str(kept), "w")))["G_ema"].close()
    assert kept.exists()               # the payload is real: plain pickle runs it
    _fails(cli, capsys, ["stylegan2_ada", str(hostile), str(tmp_path / "o")],
           "refused", "builtins.open", "nothing from the file was run")
    assert not ran.exists() and not (tmp_path / "o").exists()


def test_persistent_source_is_never_run(tmp_path):
    """NVIDIA's reconstruct hook execs `module_src`; our stand-in only keeps data."""
    ran = tmp_path / "src_ran"
    meta = {"type": "class", "version": 6, "class_name": "Generator",
            "module_src": f"open({str(ran)!r}, 'w').close()\nclass Generator: pass\n",
            "state": {"_init_kwargs": {}}}
    path = tmp_path / "src.pkl"
    path.write_bytes(_call_pickle("torch_utils.persistence", "_reconstruct_persistent_obj",
                                  (meta,)))
    snap = ada.read_snapshot(str(path))
    assert isinstance(snap["G_ema"], ada.Network) and not ran.exists()
    with pytest.raises(ConversionError, match="init_kwargs lack"):
        ada.generator_from_network(snap["G_ema"], str(path))
    bad = ada.Network("Generator", {"_parameters": {"weight": "not a tensor"}})
    with pytest.raises(ConversionError, match=r"src.pkl: weight is a str, not a tensor"):
        ada.network_state_dict(bad, str(path))


def test_stylegan3_unknown_truncated_and_missing_network(cli, tmp_path, capsys):
    sg3 = tmp_path / "sg3.pkl"
    meta = {"type": "class", "version": 6, "class_name": "SynthesisInput", "module_src": "",
            "state": {}}
    sg3.write_bytes(_call_pickle("torch_utils.persistence", "_reconstruct_persistent_obj",
                                 (meta,)))
    _fails(cli, capsys, ["stylegan2_ada", str(sg3), str(tmp_path / "a")],
           "StyleGAN3", "not supported yet", "SynthesisInput")
    sg3.write_bytes(_call_pickle("training.networks_stylegan3", "Generator", ()))
    _fails(cli, capsys, ["stylegan2_ada", str(sg3), str(tmp_path / "a")], "StyleGAN3")

    unknown = tmp_path / "unknown.pkl"
    unknown.write_bytes(_call_pickle("collections", "Counter", ()))
    _fails(cli, capsys, ["stylegan2_ada", str(unknown), str(tmp_path / "b")],
           "refused", "collections.Counter")
    meta = dict(meta, class_name="MyCustomLayer")
    unknown.write_bytes(_call_pickle("torch_utils.persistence", "_reconstruct_persistent_obj",
                                     (meta,)))
    _fails(cli, capsys, ["stylegan2_ada", str(unknown), str(tmp_path / "b")], "MyCustomLayer")

    data = open(os.path.join(HERE, "cond32.pkl"), "rb").read()
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(data[: len(data) // 2])
    _fails(cli, capsys, ["stylegan2_ada", str(cut), str(tmp_path / "c")], "truncated or corrupt")

    _fails(cli, capsys, ["stylegan2_ada", os.path.join(HERE, "skip64.pkl"), str(tmp_path / "d"),
                         "--which", "G"], "no 'G' network", "G_ema, D")
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_tensor_views_stay_inside_their_storage():
    storage = (np.arange(6, dtype=np.float32), 4)
    np.testing.assert_array_equal(ada._tensor(storage, 1, (2, 2), (2, 1)), [[1, 2], [3, 4]])
    for offset, size, stride in ((0, (7,), (1,)), (5, (2,), (1,)), (0, (2, 3), (4, 1)),
                                 (-1, (2,), (1,)), (0, (2,), (-1,))):
        with pytest.raises(pickle.UnpicklingError, match="outside its storage"):
            ada._tensor(storage, offset, size, stride)


def test_conditional_generator_needs_labels(snapshots):
    config, variables, _ = ada.generator_from_network(snapshots["cond32"]["G_ema"], "cond32")
    z = np.zeros((1, config.style_dim), np.float32)
    with pytest.raises(ValueError, match="conditional"):
        Generator(config).apply(variables, z, input_space="z")


def test_rosinality_configs_unchanged():
    cfg = GeneratorConfig.official(256)
    assert cfg.family == "rosinality" and "family" not in cfg.to_dict()
    with pytest.raises(ValueError, match="stylegan2_ada"):
        GeneratorConfig(size=8, style_dim=8, n_mlp=1, c_dim=3)
