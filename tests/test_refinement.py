"""Refinement blocks and the shared hypernet against the official outputs (fixture 03).

Tolerances (fixture README): deltas atol 5e-6 rtol 1e-4; `__convs_out`/`__linear_out`
atol 2e-5. Weights are read from the fixture `.pt` files by the converter's generic
mapping (`from_state_dict`), which also checks that every key is consumed.
"""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FIXTURES

from hyperstyle_jax.convert.common import SourceDict, load_torch_file, to_numpy_state_dict
from hyperstyle_jax.convert.hyperstyle import eval_shape_init, from_state_dict
from hyperstyle_jax.models import refinement as R
from hyperstyle_jax.models.layers import leaky_relu

D = os.path.join(FIXTURES, "03_hypernet_blocks")
B = 3


@pytest.fixture(scope="module")
def io():
    return dict(np.load(os.path.join(D, "hypernet_blocks_io.npz")))


@pytest.fixture(scope="module")
def feats(io):
    return jnp.asarray(np.transpose(io["features_16x16"], (0, 2, 3, 1)))


def load(model, name, *inputs, rename=lambda k: k):
    """Variables of `model` from fixture `name`.pt; every key must be used exactly."""
    path = os.path.join(D, f"{name}.pt")
    sd = to_numpy_state_dict(load_torch_file(path), path)
    src = SourceDict({rename(k): v for k, v in sd.items()}, path)
    v = from_state_dict(src, eval_shape_init(model, *inputs))
    src.finish()
    return v


def delta_close(got, want):
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(np.asarray(got), want, atol=5e-6, rtol=1e-4)


def convs_out_close(m, v, x, last_conv, want_nchw, method=None):
    """The official `self.convs(x)` debug output = LeakyReLU(our last conv's output)."""
    kw = {"method": method} if method else {}
    _, st = m.apply(v, x, capture_intermediates=lambda mdl, _: mdl.name == last_conv, **kw)
    (got,) = jax.tree_util.tree_leaves(st["intermediates"])
    np.testing.assert_allclose(np.asarray(leaky_relu(got)), np.transpose(want_nchw, (0, 2, 3, 1)),
                               atol=2e-5)


def test_refinement_block_l23(io, feats):
    m = R.RefinementBlock(3, 64, 32, is_to_rgb=False, inner_c=40, out_c=56)
    v = load(m, "refinement_block_l23", feats)
    delta_close(m.apply(v, feats), io["out__refinement_block_l23"])
    convs_out_close(m, v, feats, "convs_4", io["out__refinement_block_l23__convs_out"])


def test_refinement_block_l25_torgb(io, feats):
    m = R.RefinementBlock(1, 32, 3, is_to_rgb=True, inner_c=40, out_c=56)
    v = load(m, "refinement_block_l25_torgb", feats)
    delta_close(m.apply(v, feats), io["out__refinement_block_l25_torgb"])


def test_shared_weights_hypernet(io):
    m = R.SharedWeightsHypernet(f_size=3, z_dim=56, out_size=28, in_size=20)
    z = jnp.asarray(io["shared_hypernet_z"])
    v = load(m, "shared_weights_hypernet", z)
    delta_close(m.apply(v, z), io["out__shared_weights_hypernet"])


class _HyperBlockWithNet(nn.Module):
    """The official module tree: the block owns `hypernet`; here its parent does."""

    def setup(self):
        self.hypernet = R.SharedWeightsHypernet(3, 56, 28, 20)
        self.block = R.HyperRefinementBlock(inner_c=36, out_c=56, hypernet=self.hypernet)

    def __call__(self, x):
        return self.block(x)

    def code(self, x):
        return self.block.code(x)


def test_hyper_refinement_block(io, feats):
    m = _HyperBlockWithNet()
    v = load(m, "hyper_refinement_block", feats,
             rename=lambda k: k if k.startswith("hypernet.") else "block." + k)
    delta_close(m.apply(v, feats), io["out__hyper_refinement_block"])
    np.testing.assert_allclose(np.asarray(m.apply(v, feats, method="code")),
                               io["out__hyper_refinement_block__linear_out"], atol=2e-5)
    convs_out_close(m, v, feats, "convs_8", io["out__hyper_refinement_block__convs_out"], "code")


def test_separable_block(io):
    m = R.SeparableBlock(56, 20, 28, 3)
    f = jnp.asarray(np.transpose(io["separable_block_input"], (0, 2, 3, 1)))
    v = load(m, "separable_block", f)
    delta_close(m.apply(v, f), io["out__separable_block"])


def test_refinement_block_separable_l23(io, feats):
    m = R.RefinementBlockSeparable(3, 64, 32, is_to_rgb=False, inner_c=40, out_c=56)
    v = load(m, "refinement_block_separable_l23", feats)
    delta_close(m.apply(v, feats), io["out__refinement_block_separable_l23"])
    convs_out_close(m, v, feats, "convs_6", io["out__refinement_block_separable_l23__convs_out"])


def test_refinement_block_separable_l25_torgb(io, feats):
    m = R.RefinementBlockSeparable(1, 32, 3, is_to_rgb=True, inner_c=40, out_c=56)
    v = load(m, "refinement_block_separable_l25_torgb", feats)
    delta_close(m.apply(v, feats), io["out__refinement_block_separable_l25_torgb"])


def test_non_torgb_delta_is_constant_over_taps(io, feats):
    """Official `repeat` over k x k: all nine taps of a non-toRGB Δ are equal."""
    d = io["out__refinement_block_l23"]
    assert np.array_equal(d, np.broadcast_to(d[..., :1, :1], d.shape))


def test_too_large_features_fail_clearly():
    m = R.RefinementBlock(1, 32, 3, is_to_rgb=True, inner_c=8, out_c=8)
    with pytest.raises(ValueError, match="1x1 feature map"):
        eval_shape_init(m, jnp.zeros((1, 32, 32, 4)))
