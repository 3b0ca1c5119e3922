"""StyleSpace and StyleCLIP global directions against the official `editing/styleclip/edit.py`
(fixture 10_styleclip: narrow 128 px generator end to end, and the full-size `full1024`
case for the Δs math), the safe file loaders, and `tools/styleclip_stats.py` on a tiny
generator built so that one channel's effect on the image is known."""
import importlib.util
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import FIXTURES
from hyperstyle_jax.convert.common import SourceDict, to_numpy_state_dict, unwrap_state_dict
from hyperstyle_jax.convert.stylegan2 import generator_from_state_dict
from hyperstyle_jax.editing import EditError
from hyperstyle_jax.editing import styleclip
from hyperstyle_jax.models import stylespace
from hyperstyle_jax.models.stylegan2 import Generator, GeneratorConfig

F10 = os.path.join(FIXTURES, "10_styleclip")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL_IMG, TOL_S, TOL_DS = 2e-4, 1e-5, 1e-6  # fixtures README §10


def nhwc(a):
    return np.transpose(a, (0, 2, 3, 1))


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
    narrow = GeneratorConfig(128, 64, 3, ((4, 32), (8, 32), (16, 32), (32, 32), (64, 32), (128, 24)))
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
    img_s = stylespace.render_styles(gen, variables, fixture_styles(io), weights_deltas=deltas)
    np.testing.assert_allclose(np.asarray(img_s), nhwc(io[f"img_s_{tag}"]), rtol=0, atol=TOL_IMG)
    img_w, _ = gen.apply(variables, jnp.asarray(io["w_plus"]), input_space="w+",
                         weights_deltas=deltas)
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
        img = stylespace.render_styles(gen, variables, [jnp.asarray(e) for e in edited],
                                       weights_deltas=deltas)
        np.testing.assert_allclose(np.asarray(img[0]), nhwc(io["img_edit_deltas"])[b], rtol=0,
                                   atol=TOL_IMG)
    img = stylespace.render_styles(gen, variables, fixture_styles(io, "edited_s"))
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
