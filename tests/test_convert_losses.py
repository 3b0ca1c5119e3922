"""Loss-network converters: full-size official key listings -> trees equal to
`jax.eval_shape(init)`, strictness (every bad key named), and the CLI round trip.

The listings (07_key_listings) hold shapes only; each becomes an in-memory dict of
zero-cost broadcast zeros, so nothing large is written.
"""
import json
import os

import jax
import numpy as np
import pytest
import torch
from helpers import FIXTURES

from hyperstyle_jax.checkpoints import load_converted
from hyperstyle_jax.convert.common import ConversionError, load_torch_file, to_numpy_state_dict
from hyperstyle_jax.convert.losses import (
    arcface_from_state_dict,
    lpips_expected,
    lpips_from_state_dict,
    moco_from_state_dict,
)
from hyperstyle_jax.losses import LossNets
from hyperstyle_jax.losses.id_loss import arcface_config_from_variables, arcface_eval_shape
from hyperstyle_jax.losses.moco import moco_eval_shape

LISTINGS = os.path.join(FIXTURES, "07_key_listings")
METRICS = os.path.join(FIXTURES, "06_metrics")


def listing(name, key):
    with open(os.path.join(LISTINGS, name)) as f:
        entries = json.load(f)[key]
    return {k: np.broadcast_to(np.zeros((), np.int64 if v["dtype"] == "int64" else np.float32),
                               tuple(v["shape"])) for k, v in entries.items()}


def shapes(tree):
    return jax.tree_util.tree_map(lambda x: (tuple(x.shape), np.dtype(x.dtype).name), tree)


def test_arcface_ir_se50_listing_matches_init():
    sd = listing("arcface_ir_se50_backbone.json", "keys")
    assert len(sd) == 397
    variables, config = arcface_from_state_dict(sd, "model_ir_se50.pth")
    assert config == {"num_layers": 50, "mode": "ir_se", "affine": True, "input_size": 112}
    assert shapes(variables) == shapes(arcface_eval_shape(config))
    assert arcface_config_from_variables(variables) == config
    assert variables["params"]["output_layer_3"]["kernel"].shape == (512 * 7 * 7, 512)


def test_curricularface_ir101_depth_and_affinity_from_keys():
    """IR-101 (`IR_101(112)` = Backbone(112, 100, 'ir', drop 0.4, affine=False)), keys built
    on the meta device from the torch reference checked against the official listing."""
    from tests.test_losses_id_moco import TorchBackbone

    with torch.device("meta"):
        net = TorchBackbone(100, "ir", drop_ratio=0.4, affine=False)
    sd = {
        k: np.broadcast_to(np.zeros((), np.float32), tuple(v.shape))
        for k, v in net.state_dict().items()
    }
    assert (
        "output_layer.4.weight" not in sd
        and len([k for k in sd if k.endswith("res_layer.1.weight")]) == 49
    )
    variables, config = arcface_from_state_dict(sd, "CurricularFace_Backbone.pth")
    assert config == {"num_layers": 100, "mode": "ir", "affine": False, "input_size": 112}
    assert shapes(variables) == shapes(arcface_eval_shape(config))
    assert arcface_config_from_variables(variables) == config


def test_moco_listing_matches_init():
    sd = listing("moco_v2_800ep_resnet50.json", "keys_in_file_expected")
    assert len(sd) == 646
    variables, config = moco_from_state_dict(sd, "moco_v2_800ep_pretrain.pt")
    assert config["source_prefix"] == "module.encoder_q."
    assert shapes(variables) == shapes(moco_eval_shape())


def test_moco_plain_torchvision_resnet50_accepted():
    sd = listing("moco_v2_800ep_resnet50.json", "keys_after_rename_loaded_into_resnet50")
    sd["fc.weight"], sd["fc.bias"] = np.zeros((1000, 2048), np.float32), np.zeros(1000, np.float32)
    variables, config = moco_from_state_dict(sd, "resnet50.pth")
    assert config["source_prefix"] == ""
    assert shapes(variables) == shapes(moco_eval_shape())


def _lpips_lists():
    with open(os.path.join(LISTINGS, "lpips_alex.json")) as f:
        d = json.load(f)
    z = lambda e: {k: np.zeros(v["shape"], np.float32) for k, v in e.items()}  # noqa: E731
    module = z(d["lpips_module_state_dict"])
    module["net.mean"] = np.array([-.030, -.088, -.188], np.float32).reshape(1, 3, 1, 1)
    module["net.std"] = np.array([.458, .448, .450], np.float32).reshape(1, 3, 1, 1)
    features = {k.replace("net.layers.", "features."): v for k, v in module.items()
                if k.startswith("net.layers.")}
    return module, features, z(d["original_file_keys"]), z(d["renamed_keys_LinLayers"])


@pytest.mark.parametrize("lin_format", ["original", "renamed", "module"])
def test_lpips_listing_matches_init(lin_format):
    module, features, original, renamed = _lpips_lists()
    lin = {"original": original, "renamed": renamed, "module": module}[lin_format]
    feats = module if lin_format == "module" else features
    variables, config = lpips_from_state_dict(feats, lin, "features", "lin")
    assert config == {"net_type": "alex"}
    assert shapes(variables) == shapes(lpips_expected("alex"))
    if lin_format == "module":  # the constant buffers are checked, not silently dropped
        module["net.std"] = module["net.std"] * 2
        with pytest.raises(ConversionError, match="net.std"):
            lpips_from_state_dict(module, module, "lpips.pt", "lpips.pt")


# ----------------------------------------------------------------------------- strictness


def test_arcface_missing_unexpected_and_misshaped_keys_are_named():
    sd = dict(listing("arcface_ir_se50_backbone.json", "keys"))
    del sd["body.5.res_layer.5.fc2.weight"]
    sd["body.3.res_layer.9.weight"] = np.zeros(3, np.float32)
    sd["output_layer.4.bias"] = np.zeros(7, np.float32)
    with pytest.raises(ConversionError) as e:
        arcface_from_state_dict(sd, "model_ir_se50.pth")
    msg = str(e.value)
    assert msg.startswith("model_ir_se50.pth")
    for key in (
        "body.5.res_layer.5.fc2.weight",
        "body.3.res_layer.9.weight",
        "output_layer.4.bias",
    ):
        assert key in msg


def test_arcface_unknown_depth_and_wrong_file():
    sd = {k: v for k, v in listing("arcface_ir_se50_backbone.json", "keys").items()
          if not k.startswith("body.23.")}
    with pytest.raises(ConversionError, match="23 body units match no IR depth"):
        arcface_from_state_dict(sd, "cut.pth")
    with pytest.raises(ConversionError, match="not an ArcFace/CurricularFace Backbone"):
        arcface_from_state_dict({"conv1.weight": np.zeros((64, 3, 7, 7))}, "resnet.pth")


def test_moco_strictness():
    sd = dict(listing("moco_v2_800ep_resnet50.json", "keys_in_file_expected"))
    del sd["module.encoder_q.layer3.2.bn2.running_var"]
    sd["module.encoder_q.layer9.0.conv1.weight"] = np.zeros(1, np.float32)
    with pytest.raises(ConversionError) as e:
        moco_from_state_dict(sd, "moco.pt")
    assert "module.encoder_q.layer3.2.bn2.running_var" in str(e.value)
    assert "module.encoder_q.layer9.0.conv1.weight" in str(e.value)
    with pytest.raises(ConversionError, match="no ResNet-50 query encoder found"):
        moco_from_state_dict({"queue": np.zeros(3)}, "moco.pt")


def test_lpips_strictness():
    _, features, original, _ = _lpips_lists()
    bad_lin = dict(original)
    bad_lin["lin2.model.1.weight"] = np.zeros((1, 383, 1, 1), np.float32)
    bad_lin["lin5.model.1.weight"] = np.zeros((1, 8, 1, 1), np.float32)
    with pytest.raises(ConversionError) as e:
        lpips_from_state_dict(features, bad_lin, "alexnet.pth", "alex.pth")
    msg = str(e.value)
    assert msg.startswith("alex.pth") and "lin2.model.1.weight: shape (1, 383, 1, 1)" in msg
    assert "lin5.model.1.weight" in msg
    with pytest.raises(ConversionError, match="no LPIPS linear-layer weights found"):
        lpips_from_state_dict(features, {"x": np.zeros(1)}, "alexnet.pth", "x.pth")
    with pytest.raises(ConversionError, match="no AlexNet/VGG feature weights found"):
        lpips_from_state_dict({"x": np.zeros(1)}, original, "x.pth", "alex.pth")
    partial = {k: v for k, v in features.items() if not k.startswith("features.10.")}
    with pytest.raises(ConversionError, match=r"features\.10\.weight"):
        lpips_from_state_dict(partial, original, "alexnet.pth", "alex.pth")


# ----------------------------------------------------------------------------- CLI


def test_convert_weights_cli_lpips_round_trip(tmp_path, capsys):
    """tools/convert_weights.py lpips on the fixture files (legacy CUDA-saved lin file),
    then load_converted / LossNets.load give exactly the in-memory conversion."""
    from tools.convert_weights import main

    feats = os.path.join(METRICS, "alexnet_features_random_torchvision.pt")
    lin = os.path.join(METRICS, "lpips_v0.1_alex_lin_ORIGINAL.pth")
    out = str(tmp_path / "lpips_alex")
    assert main(["lpips", feats, lin, out]) == 0
    config, tree = load_converted(out, "lpips")
    assert config["net_type"] == "alex"
    want, _ = lpips_from_state_dict(to_numpy_state_dict(load_torch_file(feats), feats),
                                    to_numpy_state_dict(load_torch_file(lin), lin))
    jax.tree_util.tree_map(np.testing.assert_array_equal, tree, want)
    nets = LossNets.load(lpips=out)
    jax.tree_util.tree_map(np.testing.assert_array_equal, nets.variables["lpips"], want)
    # Converting into the same folder again is refused; a non-checkpoint file is named.
    assert main(["lpips", feats, lin, out]) == 2
    assert "already holds a converted checkpoint" in capsys.readouterr().err
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["arcface", str(bad), str(tmp_path / "a")]) == 2
    assert str(bad) in capsys.readouterr().err
