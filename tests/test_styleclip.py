"""StyleSpace and StyleCLIP global directions against the official `editing/styleclip/edit.py`
(fixture 10_styleclip: narrow 128 px generator end to end, and the full-size `full1024`
case for the Δs math), the safe file loaders, and `tools/styleclip_stats.py` on a tiny
generator built so that one channel's effect on the image is known."""
import functools
import importlib.util
import os
import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers import FIXTURES, ROOT, nhwc

from hyperstyle_jax import parallel
from hyperstyle_jax.convert.common import SourceDict, to_numpy_state_dict, unwrap_state_dict
from hyperstyle_jax.convert.stylegan2 import generator_from_state_dict
from hyperstyle_jax.editing import EditError, styleclip
from hyperstyle_jax.models import stylespace
from hyperstyle_jax.models.stylegan2 import Generator, GeneratorConfig

F10 = os.path.join(FIXTURES, "10_styleclip")
TOL_IMG, TOL_S, TOL_DS = 2e-4, 1e-5, 1e-6  # fixtures README §10


@functools.partial(jax.jit, static_argnums=0)
def render(gen, variables, styles, deltas=None):
    return stylespace.render_styles(gen, variables, styles, weights_deltas=deltas)


@functools.partial(jax.jit, static_argnums=0)
def render_w(gen, variables, w, deltas=None):
    return gen.apply(variables, w, input_space="w+", weights_deltas=deltas)[0]


@pytest.fixture(scope="module")
def io():
    return dict(np.load(os.path.join(F10, "styleclip_io.npz")))


@pytest.fixture(scope="module")
def narrow():
    obj = torch.load(os.path.join(FIXTURES, "05_e2e", "stylegan2_narrow128_rosinality.pt"),
                     weights_only=True)
    sd, _ = unwrap_state_dict(obj, "narrow128", ("g_ema",))
    src = SourceDict(to_numpy_state_dict(sd, "narrow128"), "narrow128")
    config, variables = generator_from_state_dict(src)
    src.finish()
    return config, jax.tree.map(jnp.asarray, variables)


def fixture_styles(io, key="s"):
    n = len(io["stylespace_dims"])
    return [jnp.asarray(io[f"{key}_layer{j:02d}"]) for j in range(n)]


def fixture_deltas(io, config):
    return [jnp.asarray(io[f"weights_deltas_layer{j:02d}"]) if f"weights_deltas_layer{j:02d}" in io
            else None for j in range(config.n_convs)]


# ----------------------------------------------------------------------------- layout


def test_layout_matches_official_constants(io):
    narrow = GeneratorConfig(
        128, 64, 3, ((4, 32), (8, 32), (16, 32), (32, 32), (64, 32), (128, 24))
    )
    lay = stylespace.layout(narrow)
    assert list(lay.dims) == list(io["stylespace_dims"])
    assert list(lay.is_torgb) == list(io["is_torgb"])
    assert lay.edited_indices == (0, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15)
    for size in (1024, 512, 256):
        lay = stylespace.layout(GeneratorConfig.official(size))
        c = stylespace.official_constants(size)
        assert lay.dims == c["STYLESPACE_DIMENSIONS"]
        assert lay.torgb_indices == c["TORGB_INDICES"]
        assert lay.edited_indices == c["STYLESPACE_INDICES_WITHOUT_TORGB"]
    lay = stylespace.layout(GeneratorConfig.official(1024))
    assert sum(lay.dims) == 9088 and lay.n_fs3_rows == 6048
    assert sum(lay.dims[j] for j in lay.edited_indices) == 5376
    assert list(io["full1024_stylespace_dims"]) == list(lay.dims)


# ----------------------------------------------------------------------------- narrow end to end


def test_styles_per_layer(io, narrow):
    config, variables = narrow
    got = stylespace.styles_from_w(variables, config, io["w_plus"])
    want = fixture_styles(io)
    assert len(got) == len(want) == config.n_convs
    for j, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_allclose(np.asarray(g), w, rtol=0, atol=TOL_S, err_msg=f"layer {j}")


@pytest.mark.parametrize("with_deltas", [True, False])
def test_renders_from_w_and_from_s(io, narrow, with_deltas):
    config, variables = narrow
    gen = Generator(config)
    deltas = fixture_deltas(io, config) if with_deltas else None
    tag = "deltas" if with_deltas else "nodeltas"
    img_s = render(gen, variables, fixture_styles(io), deltas)
    np.testing.assert_allclose(np.asarray(img_s), nhwc(io[f"img_s_{tag}"]), rtol=0, atol=TOL_IMG)
    img_w = render_w(gen, variables, jnp.asarray(io["w_plus"]), deltas)
    np.testing.assert_allclose(np.asarray(img_w), nhwc(io[f"img_w_{tag}"]), rtol=0, atol=TOL_IMG)


def test_narrow_delta_s_and_edit(io, narrow):
    config, variables = narrow
    lay = stylespace.layout(config)
    fs3 = styleclip.load_fs3(os.path.join(F10, "fs3_narrow.npy"))
    means, stds = styleclip.load_s_mean_std(os.path.join(F10, "S_mean_std_narrow"))
    for j in range(lay.n_layers):
        np.testing.assert_array_equal(stds[j], io[f"s_std_layer{j:02d}"])
        np.testing.assert_array_equal(means[j], io[f"s_mean_layer{j:02d}"])
    beta, alpha = float(io["beta"]), float(io["alpha"])
    r_c, ds = styleclip.channel_weights(fs3, io["delta_i"], beta)
    np.testing.assert_allclose(r_c, io["r_c"], rtol=0, atol=TOL_DS)
    np.testing.assert_allclose(ds, io["delta_s_channels"], rtol=0, atol=TOL_DS)
    direction = styleclip.get_delta_s(fs3, io["delta_i"], stds, beta, lay)
    for j in range(lay.n_layers):
        np.testing.assert_allclose(direction[j], io[f"delta_s_layer{j:02d}"], rtol=0, atol=TOL_DS,
                                   err_msg=f"layer {j}")
    assert not any(direction[j].any() for j in lay.torgb_indices)

    # The edit (s, deltas) -> s' per image, then the StyleSpace render with its deltas.
    s = stylespace.styles_from_w(variables, config, io["w_plus"])
    gen = Generator(config)
    for b in range(2):
        edited = styleclip.apply([np.asarray(x[b]) for x in s], direction, [alpha])
        for j in range(lay.n_layers):
            np.testing.assert_allclose(edited[j][0], io[f"edited_s_layer{j:02d}"][b], rtol=0,
                                       atol=TOL_S)
        deltas = [None if d is None else d[b] for d in fixture_deltas(io, config)]
        img = render(gen, variables, [jnp.asarray(e) for e in edited], deltas)
        np.testing.assert_allclose(np.asarray(img[0]), nhwc(io["img_edit_deltas"])[b], rtol=0,
                                   atol=TOL_IMG)
    img = render(gen, variables, fixture_styles(io, "edited_s"))
    np.testing.assert_allclose(np.asarray(img), nhwc(io["img_edit_nodeltas"]), rtol=0, atol=TOL_IMG)


def test_full1024_delta_s_math(io):
    lay = stylespace.layout(GeneratorConfig.official(1024))
    std_concat = io["full1024_s_std_concat"]
    s_std = np.split(std_concat, np.cumsum(lay.dims)[:-1])
    r_c, ds = styleclip.channel_weights(io["full1024_delta_i_c"], io["full1024_delta_i"],
                                        float(io["beta"]))
    np.testing.assert_allclose(r_c, io["full1024_r_c"], rtol=0, atol=TOL_DS)
    # The divisor is max|r_c| over all 6048 rows (row 5476 is never placed): the quirk.
    assert np.argmax(np.abs(ds)) == 5476 and abs(ds[5476]) == 1.0
    got = styleclip.get_delta_s(io["full1024_delta_i_c"], io["full1024_delta_i"], s_std,
                                float(io["beta"]), lay)
    np.testing.assert_allclose(np.concatenate(got), io["full1024_delta_s_concat"], rtol=0,
                               atol=TOL_DS)


# ----------------------------------------------------------------------------- files


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_s_mean_std_roundtrip_and_refusals(tmp_path):
    means = [np.arange(4, dtype=np.float32), np.ones(3, np.float32)]
    stds = [np.full(4, 2, np.float32), np.full(3, 0.5, np.float32)]
    p = str(tmp_path / "S_mean_std")
    styleclip.save_s_mean_std(p, means, stds)
    m2, s2 = styleclip.load_s_mean_std(p)
    assert [a.tolist() for a in m2] == [a.tolist() for a in means]
    assert [a.tolist() for a in s2] == [a.tolist() for a in stds]
    with open(p, "rb") as f:  # the official reader sees the same structure
        raw = pickle.load(f)
    assert isinstance(raw, list) and len(raw) == 2 and isinstance(raw[0], list)

    bad = tmp_path / "evil"
    bad.write_bytes(pickle.dumps([[_Evil()], [_Evil()]], protocol=3))
    with pytest.raises(EditError, match="refusing to load global"):
        styleclip.load_s_mean_std(str(bad))
    wrong = tmp_path / "wrong"
    wrong.write_bytes(pickle.dumps({"mean": [1.0]}, protocol=3))
    with pytest.raises(EditError, match=r"\[means, stds\]"):
        styleclip.load_s_mean_std(str(wrong))
    trunc = tmp_path / "trunc"
    trunc.write_bytes(open(p, "rb").read()[:40])
    with pytest.raises(EditError, match="truncated"):
        styleclip.load_s_mean_std(str(trunc))
    np.save(tmp_path / "fs3_1d.npy", np.zeros(5, np.float32))
    with pytest.raises(EditError, match="2-D float"):
        styleclip.load_fs3(str(tmp_path / "fs3_1d.npy"))


def test_files_checked_against_generator(io):
    lay = stylespace.layout(GeneratorConfig(128, 64, 3, ((4, 32), (8, 32), (16, 32), (32, 32),
                                                          (64, 32), (128, 24))))
    fs3 = np.load(os.path.join(F10, "fs3_narrow.npy"))
    stds = [io[f"s_std_layer{j:02d}"] for j in range(lay.n_layers)]
    with pytest.raises(EditError, match="rows"):
        styleclip.get_delta_s(fs3[:300], io["delta_i"], stds, 0.13, lay)
    with pytest.raises(EditError, match="wide"):
        styleclip.get_delta_s(fs3, io["delta_i"][:8], stds, 0.13, lay)
    with pytest.raises(EditError, match="layers"):
        styleclip.get_delta_s(fs3, io["delta_i"], stds[:5], 0.13, lay)


# ----------------------------------------------------------------------------- styleclip_stats


def _stats_tool():
    if "styleclip_stats" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "styleclip_stats", os.path.join(ROOT, "tools", "styleclip_stats.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules["styleclip_stats"] = mod  # its dataclass looks itself up there
        spec.loader.exec_module(mod)
    return sys.modules["styleclip_stats"]


TINY = GeneratorConfig(16, 16, 2, ((4, 8), (8, 8), (16, 8)))
C_UP, C_DOWN, OUT = 2, 5, 3  # channel that reddens the image, one that greens it, hidden unit


def constructed_generator():
    """A random 16 px generator whose last two convs are rewired so that, in layer j=6
    (convs_3), raising s[C_UP] makes the image redder and raising s[C_DOWN] makes it less
    red, with nothing else in layers 5-6 having any effect:

      convs_2 (j=5): zero kernel, bias 1 on C_UP only -> its output is the constant √2 on
                     channel C_UP and 0 elsewhere;
      convs_3 (j=6): only output OUT, from inputs C_UP and C_DOWN at the centre tap; after
                     demodulation out = √2·s_up / sqrt(s_up² + s_down²), which rises with
                     s_up and falls with s_down (both stay > 0: its modulation is shrunk);
      to_rgbs_1 (j=7): red = that channel, green/blue = 0 (plus the random skip).
    """
    v = jax.tree.map(np.array, stylespace_random_init())
    p = v["params"]
    p["convs_2"]["conv"]["weight"][:] = 0
    p["convs_2"]["activate"]["bias"][:] = 0
    p["convs_2"]["activate"]["bias"][C_UP] = 1.0
    w = np.zeros_like(p["convs_3"]["conv"]["weight"])
    w[1, 1, C_UP, OUT] = w[1, 1, C_DOWN, OUT] = 1.0
    p["convs_3"]["conv"]["weight"] = w
    p["convs_3"]["conv"]["modulation"]["weight"] *= 0.05
    p["convs_3"]["activate"]["bias"][:] = 0
    rgb = np.zeros_like(p["to_rgbs_1"]["conv"]["weight"])
    rgb[0, 0, OUT, 0] = 1.0
    p["to_rgbs_1"]["conv"]["weight"] = rgb
    p["to_rgbs_1"]["conv"]["modulation"]["weight"] *= 0.05
    for name in ("convs_2", "convs_3"):
        p[name]["noise"]["weight"][:] = 0
    return jax.tree.map(jnp.asarray, v)


def stylespace_random_init():
    from hyperstyle_jax.models.stylegan2 import random_init
    return random_init(TINY, seed=3)


def mean_rgb_encoder(_, images):
    """CLIP stand-in: features [1, mean R, mean G, mean B, 0, 0] (axis 1 = 'red')."""
    m = jnp.mean(images, axis=(1, 2))
    one = jnp.ones_like(m[:, :1])
    return jnp.concatenate([one, m, jnp.zeros_like(m[:, :2])], axis=1)


SETTINGS = dict(n_samples=64, n_images=6, alpha=5.0, seed=1, sample_batch=16)


def test_stats_structure_sign_and_resume(tmp_path):
    tool = _stats_tool()
    gen = (TINY, constructed_generator())
    lay = stylespace.layout(TINY)
    settings = tool.StatsSettings(**SETTINGS)
    out = str(tmp_path / "stats")
    kw = dict(image_batch=4, encode=mean_rgb_encoder, enc_vars=None, gen=gen, progress=False,
              log=lambda *_: None)
    info = tool.run("", "", out, settings, max_channels=7, **kw)   # stopped early
    assert info["done"] == 7 and not os.path.exists(os.path.join(out, "fs3.npy"))
    info = tool.run("", "", out, settings, channels_per_step=3, **kw)  # resumed
    assert info["done"] == info["rows"] == lay.n_fs3_rows == 40

    # Structure of the official files: [means, stds] of every layer (toRGB included) and
    # fs3 (rows of the non-toRGB layers in order, embed).
    with open(os.path.join(out, "S_mean_std"), "rb") as f:
        raw = pickle.load(f)
    assert isinstance(raw, list) and len(raw) == 2
    assert [a.shape for a in raw[0]] == [a.shape for a in raw[1]] == [(c,) for c in lay.dims]
    assert all(a.dtype == np.float32 for a in raw[0] + raw[1])
    fs3 = np.load(os.path.join(out, "fs3.npy"))
    assert fs3.shape == (40, 6) and fs3.dtype == np.float32

    # S statistics equal a direct computation over the same z stream.
    z = np.concatenate([np.asarray(tool._z(1, i, 16, 16)) for i in range(4)])
    w = Generator(TINY).apply(gen[1], jnp.asarray(z), method=Generator.mapping)
    s = np.concatenate([np.asarray(x) for x in stylespace.styles_from_w(gen[1], TINY, w)], 1)
    np.testing.assert_allclose(np.concatenate(raw[0]), s.mean(0), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.concatenate(raw[1]), s.std(0), rtol=0, atol=1e-5)

    # The known channels: fs3 row of (j=6, C_UP) points to 'redder', (j=6, C_DOWN) away.
    off = lay.fs3_offsets()
    up, down = fs3[off[6] + C_UP], fs3[off[6] + C_DOWN]
    assert up[1] > 0.5 and np.argmax(np.abs(up)) == 1, up
    assert down[1] < -0.5 and np.argmax(np.abs(down)) == 1, down
    dead = [off[5] + c for c in range(8)] + [
        off[6] + c for c in range(8) if c not in (C_UP, C_DOWN)
    ]
    np.testing.assert_array_equal(fs3[dead], 0)   # no effect: zero rows
    live = [r for r in range(40) if r not in dead]
    np.testing.assert_allclose(np.linalg.norm(fs3[live], axis=1), 1, atol=1e-5)

    # Resumed in pieces == one run from scratch.
    info = tool.run("", "", str(tmp_path / "once"), settings, **kw)
    np.testing.assert_allclose(np.load(os.path.join(tmp_path, "once", "fs3.npy")), fs3,
                               rtol=0, atol=1e-6)

    # One row recomputed by hand from the procedure (set to mean ∓ α·std, render, encode).
    means, stds = styleclip.load_s_mean_std(os.path.join(out, "S_mean_std"))
    s_img = [jnp.asarray(x[:6]) for x in np.split(s, np.cumsum(lay.dims)[:-1], axis=1)]
    row = off[3] + 4
    render = jax.jit(lambda v, st: stylespace.render_styles(Generator(TINY), v, st))
    feats = []
    for sign in (-1, 1):
        edited = list(s_img)
        edited[3] = edited[3].at[:, 4].set(means[3][4] + sign * 5.0 * stds[3][4])
        f = np.asarray(mean_rgb_encoder(None, render(gen[1], edited)), np.float64)
        feats.append(f / np.linalg.norm(f, axis=1, keepdims=True))
    d = feats[1] - feats[0]
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    want = d.mean(0) / np.linalg.norm(d.mean(0))
    np.testing.assert_allclose(fs3[row], want, rtol=0, atol=1e-4)


def test_stats_refuses_other_settings(tmp_path):
    tool = _stats_tool()
    kw = dict(image_batch=4, encode=mean_rgb_encoder, enc_vars=None,
              gen=(TINY, constructed_generator()), progress=False, log=lambda *_: None)
    out = str(tmp_path / "s")
    tool.run("", "", out, tool.StatsSettings(**SETTINGS), max_channels=2, **kw)
    before = open(os.path.join(out, "stats_settings.json")).read()
    with pytest.raises(EditError, match="other settings"):
        tool.run("", "", out, tool.StatsSettings(**{**SETTINGS, "alpha": 3.0}), **kw)
    assert open(os.path.join(out, "stats_settings.json")).read() == before


# ----------------------------------------------------------------------------- edit CLI


@pytest.fixture(scope="module")
def cli_inputs(io, tmp_path_factory, e2e_checkpoints):
    """05's HyperStyle checkpoint (its decoder is the narrow generator of fixture 10) and
    fixture 10's codes and deltas as an `invert --save_latents --save_deltas` folder."""
    d = tmp_path_factory.mktemp("styleclip_cli")
    inv = d / "inv"
    os.makedirs(inv / "deltas")
    stems = ["img0", "img1"]
    np.save(inv / "latents.npy", {s: io["w_plus"][i] for i, s in enumerate(stems)},
            allow_pickle=True)
    for i, s in enumerate(stems):
        np.savez(inv / "deltas" / f"{s}.npz", **{f"layer_{int(k[-2:])}": io[k][i] for k in io
                                               if k.startswith("weights_deltas_layer")})
    np.save(d / "delta_i.npy", io["delta_i"])
    return e2e_checkpoints.hyperstyle(), str(inv), str(d / "delta_i.npy"), stems


def _edit(capsys, *argv):
    from hyperstyle_jax import edit

    code = edit.main([str(a) for a in argv])
    return code, capsys.readouterr()


def test_edit_cli_matches_official_edit(io, cli_inputs, tmp_path, capsys):
    hs, inv, delta_i, stems = cli_inputs
    out = tmp_path / "out"
    code, cap = _edit(capsys, "styleclip", "--checkpoint", hs, "--inversion", inv, "--out", out,
                      "--delta_i", delta_i, "--fs3", os.path.join(F10, "fs3_narrow.npy"),
                      "--s_stats", os.path.join(F10, "S_mean_std_narrow"),
                      "--alphas", "-4,0,4", "--betas", "0.13,0.9", "--save_npy")
    assert code == 0, cap.err
    for i, stem in enumerate(stems):
        arr = np.load(out / "arrays" / f"{stem}.npz")
        assert set(arr.files) == {"reconstruction"} | {
            f"styleclip_b{b}_a{a}" for b in ("0.13", "0.9") for a in ("-4", "0", "4")}
        np.testing.assert_allclose(arr["styleclip_b0.13_a4"], nhwc(io["img_edit_deltas"])[i],
                                   rtol=0, atol=TOL_IMG)
        for key in ("reconstruction", "styleclip_b0.13_a0", "styleclip_b0.9_a4"):
            # α = 0, and β above every |r_c| (no channel edited), give the inversion back.
            np.testing.assert_allclose(arr[key], nhwc(io["img_w_deltas"])[i], rtol=0,
                                       atol=TOL_IMG, err_msg=key)
        assert os.path.isfile(out / "edits" / "styleclip_b0.13_a-4" / f"{stem}.png")
        assert os.path.isfile(out / "grids" / f"{stem}.png")


def test_edit_cli_with_clip_and_errors(io, cli_inputs, tmp_path, capsys):
    """--clip: Δi from a (random, narrow) converted CLIP through the text pipeline; bad
    inputs give one line and exit status 1."""
    from hyperstyle_jax.checkpoints import save_converted
    from hyperstyle_jax.clip import ClipEncoder, load_clip
    from hyperstyle_jax.models.clip import CLIPConfig, random_init

    hs, inv, delta_i, stems = cli_inputs
    cfg = CLIPConfig(embed_dim=512, image_resolution=32, vision_layers=1, vision_width=32,
                     vision_patch_size=16, vision_heads=2, transformer_width=32,
                     transformer_heads=2, transformer_layers=1)
    clip_dir = str(tmp_path / "clip")
    save_converted(clip_dir, jax.tree.map(np.asarray, random_init(cfg, seed=5)), cfg.to_dict(),
                   kind="clip")
    out = tmp_path / "out"
    common = ["--checkpoint", hs, "--inversion", inv, "--fs3", os.path.join(F10, "fs3_narrow.npy"),
              "--s_stats", os.path.join(F10, "S_mean_std_narrow")]
    code, cap = _edit(capsys, "styleclip", *common, "--out", out, "--clip", clip_dir,
                      "--neutral", "a face", "--target", "a smiling face", "--alphas", "3",
                      "--betas", "0.05", "--save_npy")
    assert code == 0, cap.err
    d_i = ClipEncoder(*load_clip(clip_dir)).delta_i("a smiling face", "a face")
    fs3 = styleclip.load_fs3(os.path.join(F10, "fs3_narrow.npy"))
    _, stds = styleclip.load_s_mean_std(os.path.join(F10, "S_mean_std_narrow"))
    config = GeneratorConfig(
        128, 64, 3, ((4, 32), (8, 32), (16, 32), (32, 32), (64, 32), (128, 24))
    )
    lay = stylespace.layout(config)
    direction = styleclip.get_delta_s(fs3, d_i, stds, 0.05, lay)
    assert sum(int(np.count_nonzero(d)) for d in direction) > 0
    want = [s[0] + 3.0 * d for s, d in zip(fixture_styles(io), direction)]
    deltas = [None if d is None else d[0] for d in fixture_deltas(io, config)]
    img = render(Generator(config), cli_variables(hs), [jnp.asarray(w)[None] for w in want], deltas)
    got = np.load(out / "arrays" / f"{stems[0]}.npz")["styleclip_b0.05_a3"]
    np.testing.assert_allclose(got, np.asarray(img[0]), rtol=0, atol=TOL_IMG)

    for extra, msg in [(["--delta_i", delta_i, "--clip", clip_dir], "exactly one of"),
                       (["--delta_i", delta_i, "--betas", "x"], "--betas"),
                       (["--delta_i", os.path.join(F10, "fs3_narrow.npy")], "vector")]:
        code, cap = _edit(capsys, "styleclip", *common, "--out", tmp_path / "bad", *extra)
        assert code == 1 and msg in cap.err and len(cap.err.strip().splitlines()) == 1, cap.err
    code, cap = _edit(capsys, "styleclip", "--checkpoint", hs, "--inversion", inv, "--out",
                      tmp_path / "bad", "--delta_i", delta_i, "--fs3",
                      os.path.join(F10, "fs3_narrow.npy"), "--s_stats",
                      os.path.join(F10, "fs3_narrow.npy"))
    assert code == 1 and "S_mean_std" in cap.err, cap.err


def cli_variables(hs):
    from hyperstyle_jax.checkpoints import load_hyperstyle

    return jax.tree.map(jnp.asarray, load_hyperstyle(hs)[1]["generator"])


def test_stats_cli_with_clip_sharded_over_two_devices(tmp_path):
    """The command line with converted folders and the real CLIP image path; the same run
    on two (fake CPU) devices gives the same files."""
    import subprocess

    from hyperstyle_jax.checkpoints import KIND_STYLEGAN2, save_converted
    from hyperstyle_jax.models.clip import CLIPConfig
    from hyperstyle_jax.models.clip import random_init as clip_init
    from hyperstyle_jax.models.stylegan2 import random_init

    tool = _stats_tool()
    save_converted(str(tmp_path / "gen"), jax.tree.map(np.asarray, random_init(TINY, 0)),
                   TINY.to_dict(), KIND_STYLEGAN2)
    cfg = CLIPConfig(embed_dim=16, image_resolution=32, vision_layers=1, vision_width=32,
                     vision_patch_size=16, vision_heads=2, transformer_width=32,
                     transformer_heads=2, transformer_layers=1)
    save_converted(str(tmp_path / "clip"), jax.tree.map(np.asarray, clip_init(cfg, 0)),
                   cfg.to_dict(), "clip")
    args = [str(tmp_path / "gen"), str(tmp_path / "clip"), None, "--n_samples", "64",
            "--n_images", "4", "--image_batch", "2", "--sample_batch", "16"]
    args[2] = str(tmp_path / "one")
    assert tool.main(args) == 0
    args[2] = str(tmp_path / "two")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "styleclip_stats.py")] + args,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 cpu device(s)" in r.stdout
    a, b = (np.load(tmp_path / d / "fs3.npy") for d in ("one", "two"))
    assert a.shape == (40, 16) and np.all(np.isfinite(a))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    (m1, s1), (m2, s2) = (styleclip.load_s_mean_std(str(tmp_path / d / "S_mean_std"))
                          for d in ("one", "two"))
    for x, y in zip(m1 + s1, m2 + s2):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    assert tool.main([str(tmp_path / "clip"), str(tmp_path / "clip"), str(tmp_path / "x")]) == 2


def test_stats_files_have_the_official_structure(narrow, tmp_path):
    """On fixture 10's narrow generator, the tool's S_mean_std has the structure of the
    fixture's official-format file (same pickle protocol, lists, shapes, dtypes) and its fs3
    would have the rows of fs3_narrow.npy."""
    tool = _stats_tool()
    config, variables = narrow
    settings = tool.StatsSettings(n_samples=32, n_images=1, sample_batch=16)
    means, stds = tool.s_mean_std(config, variables, settings, parallel.make_mesh())
    p = str(tmp_path / "S_mean_std")
    styleclip.save_s_mean_std(p, means, stds)
    ours, official = open(p, "rb").read(), open(os.path.join(F10, "S_mean_std_narrow"), "rb").read()
    assert ours[:2] == official[:2] == b"\x80\x03"   # pickle protocol 3
    a, b = pickle.loads(ours), pickle.loads(official)
    assert type(a) is type(b) is list and len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert type(x) is type(y) is list
        assert [(v.shape, v.dtype) for v in x] == [(v.shape, v.dtype) for v in y]
    lay = stylespace.layout(config)
    assert (
        len(tool.fs3_flat_indices(lay, "all"))
        == np.load(os.path.join(F10, "fs3_narrow.npy")).shape[0]
    )
    assert (
        len(tool.fs3_flat_indices(stylespace.layout(GeneratorConfig.official(1024)), "all")) == 6048
    )
    assert (
        len(tool.fs3_flat_indices(stylespace.layout(GeneratorConfig.official(1024)), "edited"))
        == 5376
    )
