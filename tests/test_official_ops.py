"""benchmarks/official_ops (the CPU stand-ins compare_official.py installs into the official
repo) against our upfirdn2d, itself tested against the official op (fixture 02)."""
import importlib.util
import os
import sys

import numpy as np
import pytest
from helpers import ROOT

torch = pytest.importorskip("torch")

from hyperstyle_jax.models import ops  # noqa: E402


@pytest.fixture(scope="module")
def official_ops():
    spec = importlib.util.spec_from_file_location(
        "official_ops", os.path.join(ROOT, "benchmarks", "official_ops", "__init__.py"),
        submodule_search_locations=[os.path.join(ROOT, "benchmarks", "official_ops")])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["official_ops"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("up,down,pad", [(1, 1, (1, 1)), (2, 1, (2, 1)), (1, 2, (1, 1)),
                                         (2, 2, (-1, 2)), (1, 1, (0, -1))])
def test_upfirdn2d_standin_matches_ours(official_ops, up, down, pad):
    rng = np.random.RandomState(0)
    x = rng.randn(2, 3, 7, 6).astype(np.float32)
    k = rng.rand(4, 3).astype(np.float32)  # asymmetric: flips would show
    got = official_ops.upfirdn2d(torch.from_numpy(x), torch.from_numpy(k), up, down, pad).numpy()
    want = np.asarray(ops.upfirdn2d(x.transpose(0, 2, 3, 1), k, up, down, pad)).transpose(
        0, 3, 1, 2
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fused_leaky_relu_standin(official_ops):
    rng = np.random.RandomState(1)
    x, b = rng.randn(2, 4, 3, 3).astype(np.float32), rng.randn(4).astype(np.float32)
    got = official_ops.fused_leaky_relu(torch.from_numpy(x), torch.from_numpy(b)).numpy()
    want = np.asarray(ops.fused_leaky_relu(x.transpose(0, 2, 3, 1), b)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    m = official_ops.FusedLeakyReLU(4)
    assert m(torch.from_numpy(x)).shape == x.shape
