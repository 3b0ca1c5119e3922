"""Optimizers of the official coach: Ranger (the default) and Adam.

Ranger (official `training/ranger.py`, lessw2020's Ranger) is RAdam with gradient
centralization, wrapped in Lookahead. Here it is `optax.lookahead` over a RAdam written to
the official update rule, with the slow weights kept in the optimizer state so that the
parameters stay a plain tree (the model never sees a `LookaheadParams`).

The official RAdam differs from `optax.radam` in two ways that matter for parity:
  * eps is added to sqrt(v) *before* bias correction (`exp_avg_sq.sqrt().add_(eps)`, then
    the step size carries sqrt(1 - beta2^t));
  * rectification switches on at `N_sma > threshold` (strict).
It also computes its step-size schedule in float64 (Python floats). `1 - beta2^t` and
`N_sma` cancel badly in float32 at small t (N_sma = 1999 - 1998 at t = 1), so the first
`_TABLE_STEPS` coefficients are a float64 table rounded to float32; later steps use a
float32 closed form written with exp/log1p, which is accurate to ~1e-7 there.

Gradient centralization: the official subtracts the mean over every dimension but dim 0
of each gradient with more than 1 dimension (more than 3 with `gc_conv_only`), dim 0
being the PyTorch output axis. Flax `kernel`s (conv HWIO, Dense (in, out)) keep their
output axis last; any other >1-D parameter is assumed stored in the official layout
(e.g. the shared hypernet's raw `w1`/`w2`, used as `z @ w`), output-of-dim-0 first.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Official defaults, training/ranger.py:31-34.
RANGER_DEFAULTS = dict(alpha=0.5, k=6, n_sma_threshold=5.0, beta1=0.95, beta2=0.999,
                       eps=1e-5, weight_decay=0.0, use_gc=True, gc_conv_only=False)
# torch.optim.Adam defaults (the coach passes only lr).
ADAM_DEFAULTS = dict(beta1=0.9, beta2=0.999, eps=1e-8)

_TABLE_STEPS = 1024


# ---------------------------------------------------------------------------------------
# Gradient centralization
# ---------------------------------------------------------------------------------------
# Parameters stored in the official PyTorch layout (dim 0 first), by leaf name.
TORCH_LAYOUT_PARAMS = ("w1", "w2")


def torch_out_axis(path: tuple, leaf: Any) -> int:
    """Axis of `leaf` that is PyTorch's dim 0 (output channels) for this parameter."""
    name = getattr(path[-1], "key", getattr(path[-1], "name", None)) if path else None
    return 0 if name in TORCH_LAYOUT_PARAMS else leaf.ndim - 1


def centralize_gradients(min_ndim: int = 2,
                         out_axis_fn: Callable[[tuple, Any], int] = torch_out_axis
                         ) -> optax.GradientTransformation:
    """Subtract from each gradient with >= `min_ndim` dims its mean over all non-output axes.

    `min_ndim=2` is the official `gc_conv_only=False` (`grad.dim() > 1`), 4 is
    `gc_conv_only=True` (`grad.dim() > 3`).
    """
    def centre(path, g):
        if g.ndim < min_ndim:
            return g
        keep = out_axis_fn(path, g) % g.ndim
        axes = tuple(a for a in range(g.ndim) if a != keep)
        return g - g.mean(axis=axes, keepdims=True)

    def update_fn(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(centre, updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


# ---------------------------------------------------------------------------------------
# RAdam, official update rule
# ---------------------------------------------------------------------------------------
def radam_coefficients(t, beta1: float, beta2: float, threshold: float, xp=np):
    """(rectified, step_size) of the official RAdam at step t (1-based), in `xp` arithmetic.

    N_sma = N_max - 2 t b2^t / (1 - b2^t), N_max = 2 / (1 - b2) - 1;
    rectified: step = sqrt((1-b2^t)(N-4)(N-2) N_max / ((N_max-4) N (N_max-2))) / (1-b1^t)
    otherwise: step = 1 / (1 - b1^t).
    """
    log_b1, log_b2 = math.log1p(-(1.0 - beta1)), math.log1p(-(1.0 - beta2))
    one_m_b1t = -xp.expm1(t * log_b1)
    one_m_b2t = -xp.expm1(t * log_b2)
    b2t = 1.0 - one_m_b2t
    n_max = 2.0 / (1.0 - beta2) - 1.0
    n_sma = n_max - 2.0 * t * b2t / one_m_b2t
    rect = n_sma > threshold
    safe = xp.where(rect, n_sma, 5.0)
    rect_step = xp.sqrt(one_m_b2t * (safe - 4.0) / (n_max - 4.0) * (safe - 2.0) / safe
                        * n_max / (n_max - 2.0)) / one_m_b1t
    return rect, xp.where(rect, rect_step, 1.0 / one_m_b1t)


class MomentsState(NamedTuple):
    count: jax.Array  # int32, steps taken
    mu: Any           # exp_avg, float32
    nu: Any           # exp_avg_sq, float32


def _init_moments(params) -> MomentsState:
    def zeros(p):
        return jnp.zeros_like(p, dtype=jnp.float32)

    return MomentsState(jnp.zeros([], jnp.int32), jax.tree.map(zeros, params),
                        jax.tree.map(zeros, params))


def _update_moments(grads, state: MomentsState, beta1: float, beta2: float) -> MomentsState:
    mu = jax.tree.map(lambda m, g: beta1 * m + (1.0 - beta1) * g, state.mu, grads)
    nu = jax.tree.map(lambda v, g: beta2 * v + (1.0 - beta2) * g * g, state.nu, grads)
    return MomentsState(state.count + 1, mu, nu)


def one_minus_pow(beta: float, t):
    """1 - beta**t in float32 without cancellation (log1p(beta - 1) taken in float64)."""
    if beta == 0.0:  # StyleGAN2's D Adam (betas 0, 0.99): 1 - 0**t = 1 for t >= 1
        return jnp.ones_like(t)
    return -jnp.expm1(t * math.log1p(-(1.0 - beta)))


def official_radam(learning_rate: float, beta1: float, beta2: float, eps: float,
                   n_sma_threshold: float, weight_decay: float = 0.0
                   ) -> optax.GradientTransformation:
    """RAdam exactly as the official Ranger's inner step (without GC and Lookahead)."""
    if n_sma_threshold < 4:
        # The official step takes sqrt(N_sma - 4) once N_sma > threshold: a math domain
        # error there for thresholds below 4.
        raise ValueError(f"n_sma_threshold={n_sma_threshold}: must be >= 4 "
                         "(the rectification term needs N_sma > 4)")
    steps = np.arange(1, _TABLE_STEPS + 1, dtype=np.float64)
    t_rect, t_step = radam_coefficients(steps, beta1, beta2, n_sma_threshold, xp=np)
    t_rect, t_step = jnp.asarray(t_rect), jnp.asarray(t_step, jnp.float32)

    def coefficients(count):
        idx = jnp.clip(count - 1, 0, _TABLE_STEPS - 1)
        c_rect, c_step = radam_coefficients(count.astype(jnp.float32), beta1, beta2,
                                            n_sma_threshold, xp=jnp)
        in_table = count <= _TABLE_STEPS
        return (jnp.where(in_table, t_rect[idx], c_rect),
                jnp.where(in_table, t_step[idx], c_step))

    def update_fn(grads, state, params=None):
        state = _update_moments(grads, state, beta1, beta2)
        rect, step = coefficients(state.count)

        def delta(m, v, p):
            adam = jnp.where(rect, m / (jnp.sqrt(v) + eps), m)
            u = -learning_rate * step * adam
            if weight_decay:
                u = u - weight_decay * learning_rate * p
            return u.astype(p.dtype)

        if weight_decay and params is None:
            raise ValueError("official_radam with weight_decay needs params in update()")
        ps = params if params is not None else state.mu
        return jax.tree.map(delta, state.mu, state.nu, ps), state

    return optax.GradientTransformation(_init_moments, update_fn)


def torch_adam(learning_rate: float, beta1: float = 0.9, beta2: float = 0.999,
               eps: float = 1e-8, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """torch.optim.Adam: p -= lr / (1-b1^t) * m / (sqrt(v) / sqrt(1-b2^t) + eps).

    Not `optax.adam`: that forms 1 - b2^t as a float32 power, off by ~1e-5 relative at
    small t (0.999 is inexact in float32); torch uses Python floats. weight_decay is
    torch's L2 term added to the gradient.
    """
    def update_fn(grads, state, params=None):
        if weight_decay:
            if params is None:
                raise ValueError("torch_adam with weight_decay needs params in update()")
            grads = jax.tree.map(lambda g, p: g + weight_decay * p, grads, params)
        state = _update_moments(grads, state, beta1, beta2)
        t = state.count.astype(jnp.float32)
        bc1, sqrt_bc2 = one_minus_pow(beta1, t), jnp.sqrt(one_minus_pow(beta2, t))
        upd = jax.tree.map(lambda m, v: (-learning_rate / bc1) * m / (jnp.sqrt(v) / sqrt_bc2 + eps),
                           state.mu, state.nu)
        return upd, state

    return optax.GradientTransformation(_init_moments, update_fn)


# ---------------------------------------------------------------------------------------
# Lookahead with the slow weights in the optimizer state
# ---------------------------------------------------------------------------------------
class LookaheadInStateState(NamedTuple):
    inner: optax.LookaheadState
    slow: Any


def lookahead_in_state(fast: optax.GradientTransformation, sync_period: int,
                       slow_step_size: float) -> optax.GradientTransformation:
    """`optax.lookahead` on plain params: the slow copy lives in the optimizer state.

    Every `sync_period` steps: slow += alpha * (fast - slow); fast = slow (official
    Ranger, `state['step'] % k == 0`). Slow weights start equal to the initial params.
    """
    la = optax.lookahead(fast, sync_period, slow_step_size)

    def init_fn(params):
        return LookaheadInStateState(la.init(optax.LookaheadParams.init_synced(params)),
                                     jax.tree.map(jnp.asarray, params))

    def update_fn(grads, state, params):
        both = optax.LookaheadParams(fast=params, slow=state.slow)
        updates, inner = la.update(grads, state.inner, both)
        slow = optax.apply_updates(state.slow, updates.slow)
        return updates.fast, LookaheadInStateState(inner, slow)

    return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------------------
# Public constructors
# ---------------------------------------------------------------------------------------
def ranger(learning_rate: float, *, alpha: float = 0.5, k: int = 6,
           n_sma_threshold: float = 5.0, beta1: float = 0.95, beta2: float = 0.999,
           eps: float = 1e-5, weight_decay: float = 0.0, use_gc: bool = True,
           gc_conv_only: bool = False,
           out_axis_fn: Callable[[tuple, Any], int] = torch_out_axis
           ) -> optax.GradientTransformation:
    """The official Ranger: Lookahead(k, alpha) over RAdam with gradient centralization."""
    inner = official_radam(learning_rate, beta1, beta2, eps, n_sma_threshold, weight_decay)
    if use_gc:
        inner = optax.chain(centralize_gradients(4 if gc_conv_only else 2, out_axis_fn), inner)
    return lookahead_in_state(inner, k, alpha)


def make_optimizer(cfg) -> optax.GradientTransformation:
    """Optimizer from the `config.optim` block: name 'ranger' (default) or 'adam'."""
    name = str(cfg.name).lower()
    if name == "ranger":
        return ranger(cfg.lr, alpha=cfg.alpha, k=int(cfg.k), n_sma_threshold=cfg.n_sma_threshold,
                      beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps,
                      weight_decay=cfg.weight_decay, use_gc=cfg.use_gc,
                      gc_conv_only=cfg.gc_conv_only)
    if name == "adam":
        # The coach's torch.optim.Adam(params, lr): torch defaults otherwise.
        return torch_adam(cfg.lr, cfg.adam_beta1, cfg.adam_beta2, cfg.adam_eps, cfg.weight_decay)
    raise ValueError(f"config.optim.name={cfg.name!r}: expected 'ranger' or 'adam'")
