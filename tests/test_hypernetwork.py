"""HyperNetwork against the official end-to-end fixture, without the generator (fixture 05).

`e2e_default_io.npz` holds the raw hypernet output of iteration 0 for the input
cat[x, y_init_pooled] in eval mode (`deltas_acc_iter0_layer{jj}`, atol 2e-5) and the body
features (`hypernet_body_features_iter0`). Weights: the official checkpoint through our
converter. The separable variant has no iteration-0 deltas; it is checked for structure
(every tuned layer has the right shape) and converted end to end in test_convert_hyperstyle.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperstyle_jax.convert.common import load_torch_file, to_numpy_state_dict
from hyperstyle_jax.convert.hyperstyle import hyperstyle_from_state_dict
from hyperstyle_jax.models.hypernetwork import (DEFAULT_LAYERS_TO_TUNE, HyperNetConfig,
                                                HyperNetwork, parse_layers_to_tune)
from hyperstyle_jax.models.stylegan2 import GeneratorConfig
from tests.conftest import FIXTURES

D = os.path.join(FIXTURES, "05_e2e")


def _converted(variant):
    path = os.path.join(D, f"hyperstyle_e2e_{variant}.pt")
    obj = load_torch_file(path)
    sd = to_numpy_state_dict(obj["state_dict"], path)
    return hyperstyle_from_state_dict(sd, {k: v for k, v in obj.items() if k != "state_dict"}, path)


@pytest.fixture(scope="module")
def default():
    config, tree = _converted("default")
    io = dict(np.load(os.path.join(D, "e2e_default_io.npz")))
    return HyperNetConfig.from_dict(config["hypernet"]), tree["hypernet"], io


def nhwc(a):
    return np.transpose(a, (0, 2, 3, 1))


def test_config_from_official_opts(default):
    cfg, _, _ = default
    meta = json.load(open(os.path.join(D, "config_default.json")))
    assert cfg.n_outputs == meta["n_hypernet_outputs"] == 17
    assert [list(cfg.layer_params[j]) for j in range(17)] == [meta["narrow_PARAMETERS"][str(j)] for j in range(17)]
    kinds = {"shared": "HyperRefinementBlock", "refine": "RefinementBlock", None: None}
    assert [[j, kinds[cfg.block_kind(j)]] for j in range(17)] == meta["refinement_blocks"]
    assert (cfg.stem_width, cfg.stages) == (16, ((16, 2, 1), (40, 2, 2)))
    assert (cfg.hypernet_z_dim, cfg.hypernet_out_size, cfg.hypernet_in_size) == (48, 32, 32)
    assert (cfg.hyper_block_inner_c, cfg.refine_block_inner_c, cfg.refine_block_out_c) == (20, 28, 44)


@pytest.fixture(scope="module")
def outputs(default):
    cfg, variables, io = default
    x = jnp.asarray(nhwc(np.concatenate([io["x"], io["y_init_pooled"]], axis=1)))
    net = HyperNetwork(cfg)
    feats = net.apply(variables, x, False, method=HyperNetwork.features)
    deltas = jax.jit(lambda v, x: net.apply(v, x, False))(variables, x)
    return feats, deltas


def test_body_features(default, outputs):
    _, _, io = default
    np.testing.assert_allclose(np.asarray(outputs[0]), nhwc(io["hypernet_body_features_iter0"]),
                               atol=5e-5, rtol=1e-5)


def test_iteration0_deltas(default, outputs):
    cfg, _, io = default
    deltas = outputs[1]
    assert len(deltas) == cfg.n_outputs
    for j, d in enumerate(deltas):
        key = f"deltas_acc_iter0_layer{j:02d}"
        if key not in io:
            assert d is None, j
            continue
        assert d.shape == io[key].shape, (j, d.shape)
        np.testing.assert_allclose(np.asarray(d), io[key], atol=2e-5, err_msg=f"layer {j}")


def test_train_mode_updates_batch_stats(default):
    cfg, variables, io = default
    x = jnp.asarray(nhwc(np.concatenate([io["x"], io["y_init_pooled"]], axis=1)))
    deltas, upd = HyperNetwork(cfg).apply(variables, x, True, mutable=["batch_stats"])
    assert jax.tree_util.tree_structure(upd["batch_stats"]) == \
        jax.tree_util.tree_structure(variables["batch_stats"])
    assert not np.allclose(upd["batch_stats"]["bn1"]["running_mean"],
                           variables["batch_stats"]["bn1"]["running_mean"])
    assert all((d is None) == (j not in cfg.tuned_layers) for j, d in enumerate(deltas))


def test_layers_to_tune_parsing():
    assert parse_layers_to_tune("", 5) == (0, 1, 2, 3, 4)
    assert parse_layers_to_tune(DEFAULT_LAYERS_TO_TUNE, 20) == (0, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18)
    assert parse_layers_to_tune("3, 1,40", 26) == (1, 3)
    with pytest.raises(ValueError, match="comma-separated"):
        parse_layers_to_tune("0;2", 26)
    with pytest.raises(ValueError, match="negative"):
        parse_layers_to_tune("-1", 26)


def test_config_roundtrip_and_checks():
    g = GeneratorConfig.official(256)
    cfg = HyperNetConfig.for_generator(g, encoder_type="SharedWeightsHyperNetResNetSeparable",
                                       layers_to_tune="")
    assert cfg.n_outputs == 20 and cfg.block_kind(1) == "separable" and cfg.block_kind(0) == "shared"
    assert HyperNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="encoder_type"):
        HyperNetConfig.for_generator(g, encoder_type="HyperNet")
    with pytest.raises(ValueError, match="shared hypernet predicts"):
        HyperNetConfig.for_generator(g, hypernet_in_size=256)


def test_full_size_parameter_count():
    """The official count (SPEC §1.9): 332,664,896 at 1024 with the default layers."""
    from hyperstyle_jax.models.hypernetwork import init_shapes
    shapes = init_shapes(HyperNetConfig.for_generator(GeneratorConfig.official(1024)))
    assert sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes["params"])) == 332_664_896
    sep = init_shapes(HyperNetConfig.for_generator(
        GeneratorConfig.official(1024), encoder_type="SharedWeightsHyperNetResNetSeparable"))
    assert sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(sep["params"])) == 215_123_456
