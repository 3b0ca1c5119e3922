"""HyperNetwork against the official end-to-end fixture, without the generator (fixture 05).

The fixture stores the images fed back to the hypernet at each iteration (`y_init_pooled`,
`y_hat_pooled_iter0`, `y_hat_pooled_iter1`), so in eval mode the official accumulated deltas
are sums of our hypernet's outputs on those inputs, generator-free:
  deltas_acc_iter0 = H(cat[x, y_init_pooled])                      (default variant only)
  deltas_acc_iter2 = H(cat[x, y_init]) + H(cat[x, y_iter0]) + H(cat[x, y_iter1])
Both variants, atol 2e-5 (README); also the body features of iteration 0. Weights: the
official checkpoints through our converter. All six inputs go through one jitted call.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FIXTURES, nhwc

from hyperstyle_jax.convert.common import load_torch_file, to_numpy_state_dict
from hyperstyle_jax.convert.hyperstyle import hyperstyle_from_state_dict
from hyperstyle_jax.models.hypernetwork import (
    DEFAULT_LAYERS_TO_TUNE,
    HyperNetConfig,
    HyperNetwork,
    parse_layers_to_tune,
)
from hyperstyle_jax.models.stylegan2 import GeneratorConfig

D = os.path.join(FIXTURES, "05_e2e")


def _converted(variant):
    path = os.path.join(D, f"hyperstyle_e2e_{variant}.pt")
    obj = load_torch_file(path)
    sd = to_numpy_state_dict(obj["state_dict"], path)
    return hyperstyle_from_state_dict(sd, {k: v for k, v in obj.items() if k != "state_dict"}, path)


def _run(variant):
    """(config, variables, io, features of iteration 0, deltas for the 3 iterations' inputs)."""
    config, tree = _converted(variant)
    cfg, variables = HyperNetConfig.from_dict(config["hypernet"]), tree["hypernet"]
    io = dict(np.load(os.path.join(D, f"e2e_{variant}_io.npz")))
    ys = [io["y_init_pooled"], io["y_hat_pooled_iter0"], io["y_hat_pooled_iter1"]]
    x = jnp.asarray(nhwc(np.concatenate([np.concatenate([io["x"], y], 1) for y in ys], 0)))
    net = HyperNetwork(cfg)

    @jax.jit
    def run(v, x):
        return net.apply(v, x[:2], False, method=HyperNetwork.features), net.apply(v, x, False)

    feats, deltas = run(variables, x)
    return cfg, variables, io, feats, deltas


@pytest.fixture(scope="module")
def default():
    return _run("default")


@pytest.fixture(scope="module")
def separable():
    return _run("separable")


def test_config_from_official_opts(default):
    cfg = default[0]
    meta = json.load(open(os.path.join(D, "config_default.json")))
    assert cfg.n_outputs == meta["n_hypernet_outputs"] == 17
    assert [list(cfg.layer_params[j]) for j in range(17)] == [
        meta["narrow_PARAMETERS"][str(j)] for j in range(17)
    ]
    kinds = {"shared": "HyperRefinementBlock", "refine": "RefinementBlock", None: None}
    assert [[j, kinds[cfg.block_kind(j)]] for j in range(17)] == meta["refinement_blocks"]
    assert (cfg.stem_width, cfg.stages) == (16, ((16, 2, 1), (40, 2, 2)))
    assert (cfg.hypernet_z_dim, cfg.hypernet_out_size, cfg.hypernet_in_size) == (48, 32, 32)
    assert (cfg.hyper_block_inner_c, cfg.refine_block_inner_c, cfg.refine_block_out_c) == (
        20,
        28,
        44,
    )


def test_separable_config(separable):
    cfg = separable[0]
    meta = json.load(open(os.path.join(D, "config_separable.json")))
    kinds = {"shared": "HyperRefinementBlock", "separable": "RefinementBlockSeparable"}
    assert [[j, kinds[cfg.block_kind(j)]] for j in range(17)] == meta["refinement_blocks"]


def test_body_features(default):
    _, _, io, feats, _ = default
    np.testing.assert_allclose(np.asarray(feats), nhwc(io["hypernet_body_features_iter0"]),
                               atol=5e-5, rtol=1e-5)


def test_iteration0_deltas(default):
    cfg, _, io, _, deltas = default
    assert len(deltas) == cfg.n_outputs
    for j, d in enumerate(deltas):
        key = f"deltas_acc_iter0_layer{j:02d}"
        if key not in io:
            assert d is None, j
            continue
        assert d[:2].shape == io[key].shape, (j, d.shape)
        np.testing.assert_allclose(np.asarray(d[:2]), io[key], atol=2e-5, err_msg=f"layer {j}")


@pytest.mark.parametrize("variant", ["default", "separable"])
def test_accumulated_deltas_after_three_iterations(variant, request):
    cfg, _, io, _, deltas = request.getfixturevalue(variant)
    n_checked = 0
    for j, d in enumerate(deltas):
        key = f"deltas_acc_iter2_layer{j:02d}"
        assert (d is None) == (key not in io), j
        if d is not None:
            acc = np.asarray(d).reshape((3, 2) + d.shape[1:]).sum(0)
            np.testing.assert_allclose(acc, io[key], atol=2e-5, err_msg=f"{variant} layer {j}")
            n_checked += 1
    assert n_checked == len(cfg.tuned_layers) == (11 if variant == "default" else 17)


def test_train_mode_updates_batch_stats(default):
    cfg, variables, io = default[:3]
    x = jnp.asarray(nhwc(np.concatenate([io["x"], io["y_init_pooled"]], axis=1)))
    deltas, upd = jax.jit(
        lambda v, x: HyperNetwork(cfg).apply(v, x, True, mutable=["batch_stats"])
    )(variables, x)
    assert jax.tree_util.tree_structure(upd["batch_stats"]) == \
        jax.tree_util.tree_structure(variables["batch_stats"])
    assert not np.allclose(upd["batch_stats"]["bn1"]["running_mean"],
                           variables["batch_stats"]["bn1"]["running_mean"])
    assert all((d is None) == (j not in cfg.tuned_layers) for j, d in enumerate(deltas))


def test_layers_to_tune_parsing():
    assert parse_layers_to_tune("", 5) == (0, 1, 2, 3, 4)
    assert parse_layers_to_tune(DEFAULT_LAYERS_TO_TUNE, 20) == (
        0,
        2,
        3,
        5,
        6,
        8,
        9,
        11,
        12,
        14,
        15,
        17,
        18,
    )
    assert parse_layers_to_tune("3, 1,40", 26) == (1, 3)
    with pytest.raises(ValueError, match="comma-separated"):
        parse_layers_to_tune("0;2", 26)
    with pytest.raises(ValueError, match="negative"):
        parse_layers_to_tune("-1", 26)


def test_config_roundtrip_and_checks():
    g = GeneratorConfig.official(256)
    cfg = HyperNetConfig.for_generator(g, encoder_type="SharedWeightsHyperNetResNetSeparable",
                                       layers_to_tune="")
    assert (
        cfg.n_outputs == 20 and cfg.block_kind(1) == "separable" and cfg.block_kind(0) == "shared"
    )
    assert HyperNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="encoder_type"):
        HyperNetConfig.for_generator(g, encoder_type="HyperNet")
    with pytest.raises(ValueError, match="shared hypernet predicts"):
        HyperNetConfig.for_generator(g, hypernet_in_size=256)


def test_full_size_parameter_count():
    """The official count (measured on `SharedWeightsHyperNetResNet`): 332,664,896 at 1024
    with the default layers."""
    from hyperstyle_jax.models.hypernetwork import init_shapes
    shapes = init_shapes(HyperNetConfig.for_generator(GeneratorConfig.official(1024)))
    assert (
        sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes["params"]))
        == 332_664_896
    )
    sep = init_shapes(HyperNetConfig.for_generator(
        GeneratorConfig.official(1024), encoder_type="SharedWeightsHyperNetResNetSeparable"))
    assert (
        sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(sep["params"])) == 215_123_456
    )


def test_kernel_layout_deltas_match_official(default):
    """`kernel_layout=True` (what an inversion accumulates; the shared layers come from the
    transposed product) gives the official iteration-0 deltas once laid out officially."""
    from hyperstyle_jax.models.ops import KernelDelta
    cfg, variables, io = default[:3]
    assert cfg.hypernet_in_size == cfg.hypernet_out_size  # the transposed-product path
    x = jnp.asarray(nhwc(np.concatenate([io["x"], io["y_init_pooled"]], axis=1)))
    deltas = jax.jit(lambda v, x: HyperNetwork(cfg).apply(v, x, False, True))(variables, x)
    shared = [j for j in cfg.tuned_layers if cfg.block_kind(j) == "shared"]
    assert shared and len(shared) < len(cfg.tuned_layers)  # both kinds of block
    for j, d in enumerate(deltas):
        key = f"deltas_acc_iter0_layer{j:02d}"
        assert (d is None) == (key not in io), j
        if d is not None:
            assert isinstance(d, KernelDelta)
            k = d.value.shape[1]
            assert d.value.shape[3:] == io[key].shape[2:0:-1] and d.value.shape[1:3] == (k, k)
            np.testing.assert_allclose(np.asarray(d.official()), io[key], atol=2e-5,
                                       err_msg=f"layer {j}")
