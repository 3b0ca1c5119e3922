"""`tools/convert_weights.py stylegan2`: the full-size rosinality listings map onto the
model's init tree exactly, the CLI writes a loadable folder, and broken or hostile files
each give one clear line (exit 2)."""
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from helpers import FIXTURES, ROOT

from hyperstyle_jax.checkpoints import load_generator, load_generator_with_latent_avg
from hyperstyle_jax.convert.common import ConversionError, SourceDict
from hyperstyle_jax.convert.stylegan2 import generator_from_state_dict
from hyperstyle_jax.models.ops import make_kernel
from hyperstyle_jax.models.stylegan2 import GeneratorConfig, init_shapes
from hyperstyle_jax.utils.trees import tree_paths

NARROW = os.path.join(FIXTURES, "01_generator", "stylegan2_narrow64_rosinality.pt")


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("convert_weights",
                                                  os.path.join(ROOT, "tools", "convert_weights.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture(scope="module")
def narrow_sd():
    return torch.load(NARROW, weights_only=True)


def listing_state_dict(size):
    """Zeros of exactly the listed shapes (FIR buffers hold their real constant)."""
    d = json.load(
        open(os.path.join(FIXTURES, "07_key_listings", f"rosinality_stylegan2_{size}.json"))
    )
    sd = {}
    for k, meta in d["keys"].items():
        if k.endswith(".blur.kernel") or k.endswith(".upsample.kernel"):
            sd[k] = make_kernel([1, 3, 3, 1]) * 4
        else:
            sd[k] = np.zeros(meta["shape"], np.float32)
    return sd, d


@pytest.mark.parametrize("size", [1024, 256])
def test_full_size_listing_matches_init_tree(size):
    sd, listing = listing_state_dict(size)
    src = SourceDict(sd, f"listing_{size}")
    config, variables = generator_from_state_dict(src)
    src.finish()  # every key consumed, none missing or misshaped
    assert config == GeneratorConfig.official(size)
    got, want = tree_paths(variables), tree_paths(init_shapes(config))
    assert got == want  # same paths and shapes, nothing more
    # Same element count as the listing, less the FIR constants (not parameters here).
    fir = sum(int(np.prod(m["shape"])) for k, m in listing["keys"].items() if k.endswith("kernel"))
    assert (
        sum(int(np.prod(s)) for s in got.values())
        == listing["summary"]["numel_sum_over_keys"] - fir
    )


def test_decoder_prefix(narrow_sd):
    """The HyperStyle converter reads 'decoder.*' keys through the same table."""
    sd = {"decoder." + k: v.numpy() for k, v in narrow_sd["g_ema"].items()}
    sd["encoder.x"] = np.zeros(1, np.float32)
    src = SourceDict(sd, "ckpt.pt", prefix="decoder.")
    config, _ = generator_from_state_dict(src)
    assert config.size == 64
    with pytest.raises(ConversionError, match=r"unexpected keys \(1\): encoder.x"):
        src.finish()


def test_cli_converts_and_loads(cli, tmp_path, capsys, narrow_sd):
    out = tmp_path / "g"
    assert cli(["stylegan2", NARROW, str(out)]) == 0
    assert "64px" in capsys.readouterr().out
    config, variables, latent_avg = load_generator_with_latent_avg(str(out))
    assert config.size == 64 and dict(config.channels)[64] == 16
    np.testing.assert_array_equal(latent_avg, narrow_sd["latent_avg"].numpy())
    g = narrow_sd["g_ema"]
    # Spot-check the layout transposes against the source tensors.
    np.testing.assert_array_equal(variables["params"]["convs_2"]["conv"]["weight"],
                                  g["convs.2.conv.weight"][0].permute(2, 3, 1, 0).numpy())
    np.testing.assert_array_equal(
        variables["params"]["style_2"]["weight"], g["style.2.weight"].T.numpy()
    )
    np.testing.assert_array_equal(
        variables["noises"]["noise_5"][0, :, :, 0], g["noises.noise_5"][0, 0].numpy()
    )
    np.testing.assert_array_equal(
        variables["params"]["to_rgbs_1"]["bias"], g["to_rgbs.1.bias"].reshape(3).numpy()
    )
    cfg2, v2 = load_generator(str(out))
    assert cfg2 == config and set(v2) == {"params", "noises"}
    # A second conversion into the same folder never overwrites it.
    assert cli(["stylegan2", NARROW, str(out)]) == 2
    assert "already holds" in capsys.readouterr().err


def test_bare_state_dict_and_g(cli, tmp_path, capsys, narrow_sd):
    bare = tmp_path / "bare.pt"
    torch.save(narrow_sd["g_ema"], bare)
    assert cli(["stylegan2", str(bare), str(tmp_path / "o1")]) == 0
    assert load_generator_with_latent_avg(str(tmp_path / "o1"))[2] is None
    train = tmp_path / "train.pt"
    torch.save({"g": narrow_sd["g_ema"], "g_optim": {}}, train)
    assert cli(["stylegan2", str(train), str(tmp_path / "o2"), "--which", "g"]) == 0


def _one_error_line(capsys, path):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {path}:"), err
    return err


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def _hostile_cases(tmp_path, narrow_sd):
    g = dict(narrow_sd["g_ema"])
    cases = {}

    p = tmp_path / "truncated.pt"
    p.write_bytes(open(NARROW, "rb").read()[:20000])
    cases["truncated"] = (p, "truncated or corrupt")

    p = tmp_path / "missing.pt"
    torch.save({"g_ema": {k: v for k, v in g.items() if k != "convs.3.noise.weight"}}, p)
    cases["missing"] = (p, r"missing keys \(1\): convs.3.noise.weight")

    p = tmp_path / "misshaped.pt"
    torch.save({"g_ema": {**g, "to_rgbs.1.conv.weight": torch.zeros(1, 3, 31, 1, 1)}}, p)
    cases["misshaped"] = (
        p,
        r"to_rgbs.1.conv.weight: shape \(1, 3, 31, 1, 1\), expected \(1, 3, 32, 1, 1\)",
    )

    p = tmp_path / "extra.pt"
    torch.save({"g_ema": {**g, "convs.99.conv.bias": torch.zeros(3)}}, p)
    cases["unexpected"] = (p, r"unexpected keys \(1\): convs.99.conv.bias")

    p = tmp_path / "blur.pt"
    torch.save({"g_ema": {**g, "convs.2.conv.blur.kernel": torch.ones(4, 4)}}, p)
    cases["blur"] = (p, "convs.2.conv.blur.kernel: values differ")

    p = tmp_path / "latent.pt"
    torch.save({"g_ema": g, "latent_avg": torch.zeros(7)}, p)
    cases["latent"] = (p, r"'latent_avg' has shape \(7,\)")

    p = tmp_path / "not_a_generator.pt"
    torch.save({"g_ema": {"conv1.weight": torch.zeros(3)}}, p)
    cases["not_gen"] = (p, "conv1.conv.modulation.weight' is missing")

    p = tmp_path / "empty.pt"
    p.write_bytes(b"")
    cases["empty"] = (p, "file is empty")

    p = tmp_path / "evil.pt"
    _Evil.marker = str(tmp_path / "PWNED")
    torch.save({"g_ema": g, "payload": _Evil()}, p)
    cases["evil"] = (p, "refused")
    return cases


def test_hostile_inputs_one_clear_line(cli, tmp_path, capsys, narrow_sd):
    cases = _hostile_cases(tmp_path, narrow_sd)
    for name, (path, pattern) in cases.items():
        rc = cli(["stylegan2", str(path), str(tmp_path / f"out_{name}")])
        assert rc == 2, name
        err = _one_error_line(capsys, path)
        assert __import__("re").search(pattern, err), (name, err)
        assert not (tmp_path / f"out_{name}" / "arrays").exists(), name
    assert not (tmp_path / "PWNED").exists()  # the pickle's code never ran
    assert "never loaded" in err or "execute" in err
