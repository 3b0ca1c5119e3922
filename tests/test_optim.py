"""Ranger / Adam against independent references.

The Ranger reference below is a line-by-line numpy transcription of the official
`training/ranger.py` step (float32 tensors, Python-float scalars, PyTorch layouts), so it
checks our RAdam rule, the gradient-centralization axes and the Lookahead sync. Adam is
checked against `torch.optim.Adam` itself.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hyperstyle_jax.training import optim


def _torch_layout(name, a):
    """Our layout -> the PyTorch tensor the official optimizer sees."""
    if name == "conv_kernel":   # HWIO -> OIHW
        return np.transpose(a, (3, 2, 0, 1))
    if name in ("dense_kernel", "eq_weight"):  # (in, out) -> (out, in)
        return a.T
    return a                    # raw w2 and 1-D bias are stored as in PyTorch


def _our_layout(name, a):
    if name == "conv_kernel":
        return np.transpose(a, (2, 3, 1, 0))
    if name in ("dense_kernel", "eq_weight"):
        return a.T
    return a


class RangerReference:
    """Official Ranger.step, transcribed (training/ranger.py), on float32 numpy arrays."""

    def __init__(self, params, lr, alpha=0.5, k=6, n_sma_threshhold=5, betas=(.95, 0.999),
                 eps=1e-5, weight_decay=0, use_gc=True, gc_conv_only=False):
        self.p = {n: v.astype(np.float32).copy() for n, v in params.items()}
        self.lr, self.alpha, self.k, self.thr = lr, alpha, k, n_sma_threshhold
        self.betas, self.eps, self.wd, self.use_gc = betas, eps, weight_decay, use_gc
        self.gc_threshold = 3 if gc_conv_only else 1
        self.state = {}

    def step(self, grads):
        beta1, beta2 = self.betas
        for n, p in self.p.items():
            grad = grads[n].astype(np.float32).copy()
            if n not in self.state:
                self.state[n] = dict(step=0, exp_avg=np.zeros_like(p), exp_avg_sq=np.zeros_like(p),
                                     slow=p.copy())
            st = self.state[n]
            if self.use_gc and grad.ndim > self.gc_threshold:
                grad = grad - grad.mean(axis=tuple(range(1, grad.ndim)), keepdims=True)
            st["step"] += 1
            t = st["step"]
            st["exp_avg_sq"] = (st["exp_avg_sq"] * np.float32(beta2)
                                + np.float32(1 - beta2) * grad * grad)
            st["exp_avg"] = st["exp_avg"] * np.float32(beta1) + np.float32(1 - beta1) * grad
            beta2_t = beta2 ** t
            n_sma_max = 2 / (1 - beta2) - 1
            n_sma = n_sma_max - 2 * t * beta2_t / (1 - beta2_t)
            if n_sma > self.thr:
                step_size = math.sqrt((1 - beta2_t) * (n_sma - 4) / (n_sma_max - 4) * (n_sma - 2)
                                      / n_sma * n_sma_max / (n_sma_max - 2)) / (1 - beta1 ** t)
            else:
                step_size = 1.0 / (1 - beta1 ** t)
            if self.wd != 0:
                p = p + np.float32(-self.wd * self.lr) * p
            if n_sma > self.thr:
                denom = np.sqrt(st["exp_avg_sq"]) + np.float32(self.eps)
                p = p + np.float32(-step_size * self.lr) * (st["exp_avg"] / denom)
            else:
                p = p + np.float32(-step_size * self.lr) * st["exp_avg"]
            if t % self.k == 0:
                st["slow"] = st["slow"] + np.float32(self.alpha) * (p - st["slow"])
                p = st["slow"].copy()
            self.p[n] = p.astype(np.float32)


def _params(rng):
    return {
        "conv_kernel": rng.normal(size=(3, 3, 5, 7)).astype(np.float32),
        "dense_kernel": rng.normal(size=(6, 4)).astype(np.float32),
        "w2": rng.normal(size=(4, 9)).astype(np.float32),
        "eq_weight": rng.normal(size=(5, 3)).astype(np.float32),
        "bias": rng.normal(size=(7,)).astype(np.float32),
    }


def _as_tree(flat):
    """Nest under the leaf names our modules use: Flax `kernel`, EqualLinear `weight`
    (in, out), the shared hypernet's raw `w2` (official layout)."""
    return {"conv": {"kernel": flat["conv_kernel"]}, "dense": {"kernel": flat["dense_kernel"]},
            "hyper": {"w2": flat["w2"]}, "conv_b": {"bias": flat["bias"]},
            "linear": {"weight": flat["eq_weight"]}}


def _flat(tree):
    return {"conv_kernel": tree["conv"]["kernel"], "dense_kernel": tree["dense"]["kernel"],
            "w2": tree["hyper"]["w2"], "bias": tree["conv_b"]["bias"],
            "eq_weight": tree["linear"]["weight"]}


def _run_both(tx, ref_kwargs, n_steps=20, seed=0, lr=1e-2, grad_scale=1.0):  # lr: reference only
    rng = np.random.default_rng(seed)
    ours = _params(rng)
    ref = RangerReference({n: _torch_layout(n, v) for n, v in ours.items()}, lr, **ref_kwargs)
    params = jax.tree.map(jnp.asarray, _as_tree(ours))
    state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(n_steps):
        # Scaled so that some steps have large, some small gradients.
        g = {n: (rng.normal(size=v.shape) * rng.uniform(0.1, 3) * grad_scale).astype(np.float32)
             for n, v in ours.items()}
        ref.step({n: _torch_layout(n, v) for n, v in g.items()})
        updates, state = update(jax.tree.map(jnp.asarray, _as_tree(g)), state, params)
        params = optax.apply_updates(params, updates)
    got = {n: np.asarray(v) for n, v in _flat(params).items()}
    want = {n: _our_layout(n, v) for n, v in ref.p.items()}
    return got, want


@pytest.mark.parametrize("kwargs", [
    {},                                       # official defaults
    {"weight_decay": 0.1, "k": 4, "alpha": 0.3},
    {"gc_conv_only": True},
    {"use_gc": False, "n_sma_threshhold": 6},
])
def test_ranger_matches_official_step(kwargs):
    ours = dict(kwargs)
    if "n_sma_threshhold" in ours:
        ours["n_sma_threshold"] = ours.pop("n_sma_threshhold")
    tx = optim.ranger(1e-2, **ours)
    got, want = _run_both(tx, kwargs, n_steps=20)
    for n in got:
        np.testing.assert_allclose(got[n], want[n], rtol=2e-6, atol=2e-6, err_msg=n)


def test_ranger_eps_placement_with_small_gradients():
    """Gradients ~1e-5: eps (1e-5) is added to sqrt(v) before bias correction, as official."""
    got, want = _run_both(optim.ranger(1.0), {}, n_steps=12, lr=1.0, grad_scale=1e-5)
    start = _params(np.random.default_rng(0))
    for n in got:
        moved = np.abs(want[n] - start[n]).max()
        assert moved > 1e-3, n  # the steps are large enough for eps to show
        # A few float32 ulps of the parameters (|p| < 4); optax.radam's eps placement is
        # off by > 1e-2 here.
        np.testing.assert_allclose(got[n] - start[n], want[n] - start[n],
                                   rtol=1e-4, atol=1e-6, err_msg=n)


def test_ranger_moves_params_and_gc_matters():
    """Guards the test itself: GC on/off must give different results (axes are exercised)."""
    got_gc, _ = _run_both(optim.ranger(1e-2), {}, n_steps=3)
    got_nogc, _ = _run_both(optim.ranger(1e-2, use_gc=False), {"use_gc": False}, n_steps=3)
    assert np.abs(got_gc["conv_kernel"] - got_nogc["conv_kernel"]).max() > 1e-4
    assert np.abs(got_gc["w2"] - got_nogc["w2"]).max() > 1e-4
    assert np.abs(got_gc["eq_weight"] - got_nogc["eq_weight"]).max() > 1e-4
    np.testing.assert_array_equal(got_gc["bias"], got_nogc["bias"])  # 1-D: no GC


@pytest.mark.parametrize("t", [1, 2, 5, 6, 7, 100, 1024, 1025, 5000, 120000])
def test_radam_schedule_float32_matches_float64(t):
    """Closed form: the jitted coefficients equal the float64 formula to float32 precision."""
    b1, b2, thr = 0.95, 0.999, 5.0
    beta2_t = b2 ** t
    n_max = 2 / (1 - b2) - 1
    n_sma = n_max - 2 * t * beta2_t / (1 - beta2_t)
    if n_sma > thr:
        want = math.sqrt((1 - beta2_t) * (n_sma - 4) / (n_max - 4) * (n_sma - 2) / n_sma
                         * n_max / (n_max - 2)) / (1 - b1 ** t)
    else:
        want = 1.0 / (1 - b1 ** t)
    tx = optim.official_radam(1.0, b1, b2, 0.0, thr)
    p = {"a": jnp.ones((1,))}
    st = tx.init(p)._replace(count=jnp.int32(t - 1))
    # With v = 0 the rectified branch divides by eps = 0: use m = v = tiny so m / sqrt(v) = 1.
    g = jnp.full((1,), 1.0)
    st = st._replace(mu={"a": jnp.zeros((1,))}, nu={"a": jnp.zeros((1,))})
    u, _ = jax.jit(tx.update)({"a": g}, st, p)
    m = (1 - b1) * 1.0
    v = (1 - b2) * 1.0
    expect = -want * (m / math.sqrt(v) if n_sma > thr else m)
    np.testing.assert_allclose(float(u["a"][0]), expect, rtol=3e-6)


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_adam_matches_torch(wd):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    w = rng.normal(size=(5, 3)).astype(np.float32)
    tw = torch.nn.Parameter(torch.from_numpy(w.copy()))
    topt = torch.optim.Adam([tw], lr=1e-2, weight_decay=wd)

    class Cfg:  # the config.optim fields make_optimizer reads
        name, lr, weight_decay = "adam", 1e-2, wd
        adam_beta1, adam_beta2, adam_eps = 0.9, 0.999, 1e-8

    tx = optim.make_optimizer(Cfg)
    params = {"w": jnp.asarray(w)}
    state = tx.init(params)
    for _ in range(10):
        g = rng.normal(size=w.shape).astype(np.float32)
        tw.grad = torch.from_numpy(g.copy())
        topt.step()
        u, state = tx.update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, u)
    np.testing.assert_allclose(np.asarray(params["w"]), tw.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_threshold_below_four_is_rejected():
    with pytest.raises(ValueError, match="n_sma_threshold=3"):
        optim.ranger(1e-3, n_sma_threshold=3)


def test_unknown_optimizer_name_is_a_clear_error():
    class Cfg:
        name = "sgd"
    with pytest.raises(ValueError, match="config.optim.name='sgd'"):
        optim.make_optimizer(Cfg)
