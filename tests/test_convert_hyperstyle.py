"""Converters `hyperstyle`, `w_encoder`, `resnet34` (and the ArcFace / ResNet-50 mappings).

* Full-size key listings (fixture 07): every key consumed, and the converted trees equal
  `jax.eval_shape` of the modules' init built from the OFFICIAL defaults (not from the
  converter's inferred config). The state dicts are zero-cost `np.broadcast_to` views.
* Strict failures: missing, misshaped, unexpected keys, unequal shared-hypernet copies,
  bad opts: one clear line naming the key.
* The real `.pt` files of fixture 05 convert end to end through the CLI, load back, and
  the W-encoder reproduces the official `w_encoder_out` / `codes`.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FIXTURES

from hyperstyle_jax import checkpoints
from hyperstyle_jax.convert import hyperstyle as H
from hyperstyle_jax.convert.common import (
    ConversionError,
    SourceDict,
    check_tree_matches,
    load_torch_file,
    to_numpy_state_dict,
)
from hyperstyle_jax.models import stylegan2
from hyperstyle_jax.models.hypernetwork import HyperNetConfig, init_shapes
from hyperstyle_jax.models.irse import Backbone, WEncoder, get_blocks
from hyperstyle_jax.models.ops import make_kernel
from hyperstyle_jax.models.resnet import RESNET34_STAGES, HypernetBackbone, ResNet50Trunk
from hyperstyle_jax.models.stylegan2 import GeneratorConfig

K = os.path.join(FIXTURES, "07_key_listings")
E2E = os.path.join(FIXTURES, "05_e2e")
_ZERO = {"float32": np.zeros((), np.float32), "int64": np.zeros((), np.int64)}


def listing(name):
    with open(os.path.join(K, name)) as f:
        return json.load(f)


def views(keys, value=None):
    """name -> read-only zero-cost array of the listed shape (one shared scalar per dtype)."""
    return {k: np.broadcast_to(_ZERO[v["dtype"]] if value is None else value(i, k, v), v["shape"])
            for i, (k, v) in enumerate(keys.items())}


# ----------------------------------------------------------------------------- key listings


@pytest.mark.parametrize("name,size,encoder_type", [
    ("hyperstyle_ckpt_default_1024.json", 1024, "SharedWeightsHyperNetResNet"),
    ("hyperstyle_ckpt_default_512.json", 512, "SharedWeightsHyperNetResNet"),
    ("hyperstyle_ckpt_default_256.json", 256, "SharedWeightsHyperNetResNet"),
    ("hyperstyle_ckpt_separable_1024.json", 1024, "SharedWeightsHyperNetResNetSeparable"),
])
def test_hyperstyle_listing(name, size, encoder_type):
    lst = listing(name)
    sd = views(lst["keys"])
    fir = make_kernel([1, 3, 3, 1]) * 4  # the decoder's constant blur/upsample buffers
    sd.update({k: fir for k in sd if k.endswith((".blur.kernel", ".upsample.kernel"))})
    n_styles = 2 * int(np.log2(size)) - 2
    opts = {"encoder_type": encoder_type, "output_size": size, "device": "cuda:0",
            "layers_to_tune": "0,2,3,5,6,8,9,11,12,14,15,17,18,20,21,23,24",
            "n_hypernet_outputs": {1024: 26, 512: 23, 256: 20}[size]}
    config, tree = H.hyperstyle_from_state_dict(
        sd, {"opts": opts, "latent_avg": np.zeros((n_styles, 512), np.float32)}, name)
    official = HyperNetConfig.for_generator(
        GeneratorConfig.official(size),
        encoder_type=encoder_type,
        layers_to_tune=opts["layers_to_tune"],
    )
    assert HyperNetConfig.from_dict(config["hypernet"]) == official
    assert GeneratorConfig.from_dict(config["generator"]) == GeneratorConfig.official(size)
    check_tree_matches(tree["hypernet"], init_shapes(official), name, "hypernet")
    check_tree_matches(
        tree["generator"], stylegan2.init_shapes(GeneratorConfig.official(size)), name
    )
    assert tree["latent_avg"].shape == (n_styles, 512)
    if size == 1024 and "default" in name:
        n = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(
            (tree["hypernet"]["params"], tree["generator"]["params"])))
        assert n == lst["unique_parameter_count_hypernet_plus_decoder"] == 363_034_956
        # the 40 duplicate keys are listed as 4 groups of one tensor
        assert len(lst["shared_storage_groups"]) == 4


def test_w_encoder_listing():
    lst = listing("w_encoder_psp_ckpt_1024.json")
    sd = views(lst["keys"])
    assert H._n_styles_from_decoder(sd) == 18
    for top, want in (({"opts": {"output_size": 1024}}, 18), ({}, 16)):
        config, variables = H.w_encoder_from_state_dict(sd, top, "w_encoder_psp_ckpt_1024.json",
                                                        n_styles=None if want == 18 else 16)
        assert config["n_styles"] == want and config["style_dim"] == 512
        assert [tuple(u) for u in config["units"]] == list(get_blocks(50)) and config[
            "mode"
        ] == "ir_se"
        expected = H.eval_shape_init(WEncoder(want), jnp.zeros((1, 64, 64, 3)))
        check_tree_matches(variables, expected, "w_encoder listing")


def test_resnet34_listing_maps_layers_to_body():
    lst = listing("torchvision_resnet34.json")
    index = {k: i for i, k in enumerate(lst["keys"])}
    conv1 = np.random.RandomState(0).randn(64, 3, 7, 7).astype(np.float32)
    sd = views(lst["keys"], lambda i, k, v: np.array(i, np.dtype(v["dtype"])))
    sd["conv1.weight"] = conv1
    config, variables = H.resnet34_to_hypernet_init(sd, "resnet34.json")
    expected = H.eval_shape_init(
        HypernetBackbone(6, 64, RESNET34_STAGES), jnp.zeros((1, 64, 64, 6))
    )
    del expected["params"]["relu"]  # PReLU slopes are not in ResNet-34: fresh init
    check_tree_matches(variables, expected, "resnet34")
    # the body mapping of the listing ("layer2.0" -> "body.3", ...)
    for tv, ours in lst["body_index_map"].items():
        n = int(ours.split(".")[1])
        got = variables["params"][f"body_{n}"]["conv1"]["kernel"]
        assert np.all(got == index[f"{tv}.conv1.weight"]), (tv, ours)
    assert np.all(variables["batch_stats"]["body_3"]["downsample_1"]["running_var"]
                  == index["layer2.0.downsample.1.running_var"])
    # the 6-channel stem: both halves = RGB filters * 0.5 (HWIO: input channels on axis 2)
    k = variables["params"]["conv1"]["kernel"]
    np.testing.assert_array_equal(k[:, :, :3], k[:, :, 3:])
    np.testing.assert_allclose(k[:, :, :3] * 2, np.transpose(conv1, (2, 3, 1, 0)), rtol=1e-7)
    _, zeros = H.resnet34_to_hypernet_init(sd, "resnet34.json", extra_channels="zeros")
    assert np.all(zeros["params"]["conv1"]["kernel"][:, :, 3:] == 0)
    assert config["extra_channels"] == "half"


def test_resnet34_init_merges_into_fresh_hypernet():
    lst = listing("torchvision_resnet34.json")
    _, init_tree = H.resnet34_to_hypernet_init(
        views(lst["keys"], lambda i, k, v: np.array(1, v["dtype"])), "resnet34.json"
    )
    cfg = HyperNetConfig.for_generator(GeneratorConfig.official(256))
    fresh = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), init_shapes(cfg))
    merged = checkpoints.merge_backbone_init(fresh, init_tree)
    assert np.all(merged["params"]["body_15"]["conv2"]["kernel"] == 1)
    assert np.all(merged["params"]["relu"]["weight"] == 0)  # kept from the fresh init
    bad = {"params": {"body_99": {"conv1": {"kernel": np.zeros((3, 3, 1, 1))}}}}
    with pytest.raises(Exception, match="body_99/conv1/kernel: not in the hypernetwork"):
        checkpoints.merge_backbone_init(fresh, bad)


def test_arcface_listing_and_flatten_order():
    lst = listing("arcface_ir_se50_backbone.json")
    sd = views(lst["keys"])
    # torch's Flatten is view(B, -1) of NCHW: column c*49 + h*7 + w. Label each column.
    sd["output_layer.3.weight"] = np.broadcast_to(
        np.arange(512 * 49, dtype=np.float32), (512, 512 * 49)
    )
    src = SourceDict(sd, "arcface")
    variables = H.arcface_from_state_dict(src)
    src.finish()
    check_tree_matches(
        variables, H.eval_shape_init(Backbone(), jnp.zeros((1, 112, 112, 3))), "arcface"
    )
    # ours flattens NHWC: row (h*7 + w)*512 + c must hold torch's column c*49 + h*7 + w
    k = variables["params"]["output_layer_3"]["kernel"]
    h, w, c = np.meshgrid(np.arange(7), np.arange(7), np.arange(512), indexing="ij")
    np.testing.assert_array_equal(k[:, 0], (c * 49 + h * 7 + w).reshape(-1))
    assert np.all(k[:, 0:1] == k)


def test_moco_resnet50_listing():
    lst = listing("moco_v2_800ep_resnet50.json")
    keys = {
        k: v
        for k, v in lst["keys_after_rename_loaded_into_resnet50"].items()
        if not k.startswith("fc.")
    }
    src = SourceDict(views(keys), "resnet50")
    variables = H.resnet50_trunk_from_state_dict(src)
    src.finish()
    check_tree_matches(
        variables, H.eval_shape_init(ResNet50Trunk(), jnp.zeros((1, 64, 64, 3))), "resnet50"
    )


# ----------------------------------------------------------------------------- strict failures


@pytest.fixture(scope="module")
def e2e_default():
    path = os.path.join(E2E, "hyperstyle_e2e_default.pt")
    obj = load_torch_file(path)
    return to_numpy_state_dict(obj["state_dict"], path), {
        k: v for k, v in obj.items() if k != "state_dict"
    }


def _fails(sd, top, match):
    with pytest.raises(ConversionError) as e:
        H.hyperstyle_from_state_dict(sd, top, "ckpt.pt")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("ckpt.pt: "), msg
    assert match in msg, msg
    return msg


def test_e2e_shares_one_storage(e2e_default):
    sd, _ = e2e_default
    main = sd["hypernet.shared_weight_hypernet.w2"]
    copy = sd["hypernet.refinement_blocks.9.hypernet.w2"]
    assert np.shares_memory(main, copy)


def test_missing_key(e2e_default):
    sd, top = e2e_default
    sd = {k: v for k, v in sd.items() if k != "hypernet.body.2.downsample.0.weight"}
    _fails(sd, top, "missing keys (1): hypernet.body.2.downsample.0.weight")


def test_misshaped_key(e2e_default):
    sd, top = dict(e2e_default[0]), e2e_default[1]
    sd["hypernet.refinement_blocks.14.output.1.weight"] = np.zeros((5, 44, 1, 1), np.float32)
    _fails(sd, top, "hypernet.refinement_blocks.14.output.1.weight: shape (5, 44, 1, 1), "
                    "expected (768, 44, 1, 1)")


def test_unexpected_key(e2e_default):
    sd, top = dict(e2e_default[0]), e2e_default[1]
    sd["hypernet.refinement_blocks.14.extra.weight"] = np.zeros(3, np.float32)
    _fails(sd, top, "unexpected keys (1): hypernet.refinement_blocks.14.extra.weight")


def test_unequal_shared_copy(e2e_default):
    sd, top = dict(e2e_default[0]), e2e_default[1]
    sd["hypernet.refinement_blocks.5.hypernet.b1"] = sd["hypernet.shared_weight_hypernet.b1"] + 1e-3
    _fails(
        sd,
        top,
        "hypernet.refinement_blocks.5.hypernet.b1 differs from hypernet.shared_weight_hypernet.b1",
    )


def test_equal_but_separate_shared_copies_are_fine(e2e_default):
    sd, top = dict(e2e_default[0]), e2e_default[1]
    sd["hypernet.refinement_blocks.5.hypernet.w2"] = sd["hypernet.shared_weight_hypernet.w2"].copy()
    H.hyperstyle_from_state_dict(sd, top, "ckpt.pt")


def test_bad_opts(e2e_default):
    sd, top = e2e_default
    _fails(
        sd,
        {**top, "opts": {**top["opts"], "encoder_type": "HyperNet"}},
        "opts['encoder_type'] = 'HyperNet'",
    )
    _fails(
        sd,
        {**top, "opts": {**top["opts"], "layers_to_tune": "0,2"}},
        "checkpoint has refinement blocks for",
    )
    _fails(sd, {**top, "opts": {**top["opts"], "output_size": 256}}, "opts['output_size'] = 256")
    _fails(sd, {k: v for k, v in top.items() if k != "opts"}, "no 'opts' dict")


# ----------------------------------------------------------------------------- CLI end to end


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    import tools.convert_weights as cw

    out = tmp_path_factory.mktemp("conv")
    for kind, src, dst in (("hyperstyle", "hyperstyle_e2e_default.pt", "hs_default"),
                           ("hyperstyle", "hyperstyle_e2e_separable.pt", "hs_separable"),
                           ("w_encoder", "w_encoder_narrow_psp.pt", "wenc")):
        assert cw.main([kind, os.path.join(E2E, src), str(out / dst)]) == 0
    return out


def test_cli_hyperstyle_roundtrip(converted, e2e_default):
    configs, tree = checkpoints.load_hyperstyle(str(converted / "hs_default"))
    assert configs["hypernet"].encoder_type == "SharedWeightsHyperNetResNet"
    assert configs["opts"]["n_iters_per_batch"] == 3 and configs["generator"].size == 128
    sd, top = e2e_default
    np.testing.assert_array_equal(tree["latent_avg"], top["latent_avg"].numpy())
    np.testing.assert_array_equal(tree["hypernet"]["params"]["shared_weight_hypernet"]["w2"],
                                  sd["hypernet.shared_weight_hypernet.w2"])
    np.testing.assert_array_equal(tree["hypernet"]["params"]["conv1"]["kernel"],
                                  np.transpose(sd["hypernet.conv1.weight"], (2, 3, 1, 0)))
    sep, _ = checkpoints.load_hyperstyle(str(converted / "hs_separable"))
    assert sep["hypernet"].encoder_type == "SharedWeightsHyperNetResNetSeparable"
    assert sep["hypernet"].tuned_layers == tuple(range(17))
    assert [sep["hypernet"].block_kind(j) for j in (1, 13, 14, 16)] == ["separable"] * 4


def test_cli_w_encoder_matches_official(converted):
    config, variables = checkpoints.load_w_encoder(str(converted / "wenc"))
    assert config["n_styles"] == 12 and config["style_dim"] == 64 and config["input_width"] == 16
    io = np.load(os.path.join(E2E, "e2e_default_io.npz"))
    model = WEncoder.from_config(config)
    w = jax.jit(model.apply)(variables, jnp.asarray(np.transpose(io["x"], (0, 2, 3, 1))))
    np.testing.assert_allclose(np.asarray(w), io["w_encoder_out"], atol=1e-5)
    _, tree = checkpoints.load_hyperstyle(str(converted / "hs_default"))
    np.testing.assert_allclose(np.asarray(w) + tree["latent_avg"], io["codes"], atol=1e-5)


def test_cli_bad_file_one_line(tmp_path, capsys):
    import tools.convert_weights as cw

    bad = tmp_path / "truncated.pt"
    bad.write_bytes(open(os.path.join(E2E, "w_encoder_narrow_psp.pt"), "rb").read()[:5000])
    assert cw.main(["w_encoder", str(bad), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err
    assert not (tmp_path / "out").exists()
    # a hyperstyle file given to w_encoder: named, one line
    assert (
        cw.main(["w_encoder", os.path.join(E2E, "hyperstyle_e2e_default.pt"), str(tmp_path / "o2")])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a pSp-format W-encoder" in err


def test_loader_rejects_wrong_kind(converted):
    from hyperstyle_jax.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="expected 'hyperstyle'"):
        checkpoints.load_hyperstyle(str(converted / "wenc"))
