"""The jitted train and eval steps (SPEC §4.1, the official `perform_forward_on_batch`).

Per batch x (images NHWC in [-1, 1], sharded on the mesh's `data` axis):
  1. initial inversion without gradient: codes, y0 = initial(frozen, batch);
  2. n iterations t = 1..n; each takes the previous reconstruction y_{t-1} and accumulated
     offsets D_{t-1} as constants (the official `.detach()`), runs the hypernetwork in
     train mode (BatchNorm on batch statistics, running stats updated every iteration),
     renders y_t with D_t = D_{t-1} + Delta_t and computes loss_t(y_t, x);
  3. the gradient is sum_t d loss_t / d theta, accumulated iteration by iteration as the
     official `loss.backward()` per iteration does, which equals the gradient of
     sum_t loss_t because of (1) and the detached carries; one optimizer update.
The iterations run in one `lax.scan` whose carry starts from zero offsets, bit-identical
to the official `None` start (0 + Delta = Delta), so the body is compiled once and only
one iteration's activations are live at a time.

Frozen networks (generator, W-encoder, loss networks) are an argument apart from the
train state and are never differentiated. Only `state.params` (the hypernetwork) change.
Under `jax.jit` with the batch sharded, the BatchNorm means over the batch axis are means
over the global batch.

A step whose loss or gradient norm is not finite leaves the state unchanged and reports
`finite = 0`, so the caller can stop with the last good state and checkpoint intact.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

# Callables that bind the model; see `hyperstyle_jax.train.build_model_fns`.
#   initial(frozen, batch) -> (codes, y0_pooled)
#   iterate(frozen, hyper_vars, x, y_hat, codes, deltas, train) -> (y_pooled, deltas, batch_stats)
#   losses(loss_vars, y_hat, y) -> (total, {'loss_l2': ..., ...})
#   eval_terms(loss_vars, y_hat, y) -> {'l2': [B], ...}   per-image held-out metrics


@dataclasses.dataclass(frozen=True)
class ModelFns:
    initial: Callable
    iterate: Callable
    losses: Callable
    eval_terms: Callable


@flax.struct.dataclass
class TrainState:
    step: jax.Array          # int32 []
    params: Any              # hypernetwork params (fp32 master weights)
    batch_stats: Any         # hypernetwork BatchNorm running stats
    opt_state: Any
    rng: jax.Array           # uint32 [2] base key; the step's key is fold_in(rng, step)


def cast_floats(tree: Any, dtype) -> Any:
    """Cast floating leaves to `dtype` (bf16 compute copy of fp32 master weights)."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                        tree)


def zero_deltas(iterate: Callable, frozen, hyper_vars, x, y_hat, codes) -> Any:
    """Zeros shaped like the offsets the first iteration returns (its `None` start)."""
    shapes = jax.eval_shape(lambda: iterate(frozen, hyper_vars, x, y_hat, codes, None, False)[1])
    return jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)


def make_train_step(fns: ModelFns, tx: optax.GradientTransformation, n_iters: int,
                    compute_dtype=jnp.float32, unroll: bool = True) -> Callable:
    """train_step(state, frozen, batch) -> (new_state, metrics); jit it with shardings.

    `frozen = {'model': ..., 'loss': ...}`; `batch['image']` is x (= the target y).
    metrics: `loss` (sum over iterations), each loss term per iteration as
    `<term>/iter_<t>` (t = 1..n) and averaged over iterations as `<term>`, the initial
    inversion's L2 `loss_l2/iter_0`, `grad_norm`, `param_norm`, `finite` (1 or 0).
    unroll: unroll the iteration scan (measured 4x faster on CPU for the tiny config, where
    XLA's while loop blocks fusion; compiles n copies of the body). False keeps one copy.
    """
    if n_iters < 1:
        raise ValueError(f"n_iters_per_batch={n_iters}: must be >= 1")

    def train_step(state: TrainState, frozen, batch):
        x = batch["image"]
        rng = jax.random.fold_in(state.rng, state.step)
        del rng  # the forward is deterministic (fixed noise buffers); kept for resumes.
        codes, y0 = fns.initial(frozen["model"], batch)
        codes, y0 = jax.lax.stop_gradient((codes, y0))
        x_in = x.astype(compute_dtype)

        def hyper_vars(params, bs):
            return {"params": cast_floats(params, compute_dtype), "batch_stats": bs}

        def iteration_loss(params, bs, y_hat, deltas):
            y_t, d_t, bs_t = fns.iterate(frozen["model"], hyper_vars(params, bs), x_in,
                                         y_hat.astype(compute_dtype), codes, deltas, True)
            y_t = y_t.astype(jnp.float32)
            d_t = jax.tree.map(lambda d: d.astype(jnp.float32), d_t)
            total, terms = fns.losses(frozen["loss"], y_t, x)
            return total, (y_t, d_t, bs_t, terms)

        grad_fn = jax.value_and_grad(iteration_loss, has_aux=True)

        def body(carry, _):
            grads, bs, y_hat, deltas = carry
            (total, (y_t, d_t, bs_t, terms)), g = grad_fn(
                state.params, bs, jax.lax.stop_gradient(y_hat), jax.lax.stop_gradient(deltas))
            grads = jax.tree.map(jnp.add, grads, g)  # the official accumulated .grad
            return (grads, bs_t, y_t, d_t), (total, terms)

        deltas0 = zero_deltas(fns.iterate, frozen["model"], hyper_vars(state.params, state.batch_stats),
                              x_in, y0.astype(compute_dtype), codes)
        grads0 = jax.tree.map(jnp.zeros_like, state.params)
        (grads, batch_stats, _, _), (totals, terms) = jax.lax.scan(
            body, (grads0, state.batch_stats, y0, deltas0), None, length=n_iters,
            unroll=n_iters if unroll else 1)

        loss = jnp.sum(totals)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state, rng=state.rng)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # Non-finite: keep the old state (but count the step) so the caller can stop cleanly.
        kept = state.replace(step=state.step + 1)
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, kept)

        metrics = {"loss": loss, "grad_norm": grad_norm,
                   "param_norm": optax.tree.norm(params), "finite": finite.astype(jnp.float32),
                   "loss_l2/iter_0": jnp.mean(jnp.square(y0 - x))}
        for k, v in terms.items():
            if k == "loss":
                continue
            metrics[k] = jnp.mean(v)
            for t in range(n_iters):
                metrics[f"{k}/iter_{t + 1}"] = v[t]
        return new, metrics

    return train_step


def make_eval_step(fns: ModelFns, n_iters: int, with_images: bool = False,
                   unroll: bool = True) -> Callable:
    """eval_step(state, frozen, batch) -> sums over the real (unmasked) examples.

    Hypernetwork BatchNorm in eval mode (running stats). Returns `count`, per-image terms
    summed: `<term>/iter_<t>` for t = 0 (initial inversion) .. n, and `val_loss` summed
    = the batch's mean-over-iterations weighted loss x count (the official validation
    `loss`, averaged over the n iterations). With `with_images`, also `images`:
    [n + 1, B, H, W, 3] (initial, then each iteration).
    """
    def eval_step(state: TrainState, frozen, batch):
        x = batch["image"]
        mask = batch.get("mask")
        mask = jnp.ones(x.shape[:1], jnp.float32) if mask is None else mask.astype(jnp.float32)
        codes, y0 = fns.initial(frozen["model"], batch)
        hv = {"params": state.params, "batch_stats": state.batch_stats}

        def body(carry, _):
            y_hat, deltas = carry
            y_t, d_t, _ = fns.iterate(frozen["model"], hv, x, y_hat, codes, deltas, False)
            return (y_t, d_t), y_t

        deltas0 = zero_deltas(fns.iterate, frozen["model"], hv, x, y0, codes)
        _, ys = jax.lax.scan(body, (y0, deltas0), None, length=n_iters,
                             unroll=n_iters if unroll else 1)
        out = {"count": jnp.sum(mask)}
        val_loss = jnp.zeros((), jnp.float32)
        for t in range(n_iters + 1):
            y_t = y0 if t == 0 else ys[t - 1]
            for k, v in fns.eval_terms(frozen["loss"], y_t, x).items():
                out[f"{k}/iter_{t}"] = jnp.sum(v * mask)
            if t > 0:
                total, _ = fns.losses(frozen["loss"], _masked_rows(y_t, x, mask), x)
                val_loss = val_loss + total
        # losses() are batch means of per-image terms that vanish when y_hat == x, so with
        # the padded rows replaced by x, mean * B is the sum over the real rows.
        out["val_loss"] = val_loss / n_iters * x.shape[0]
        if with_images:
            out["images"] = jnp.concatenate([y0[None], ys], axis=0)
        return out

    return eval_step


def _masked_rows(y_hat, x, mask):
    m = mask.reshape((-1,) + (1,) * (x.ndim - 1))
    return y_hat * m + x * (1.0 - m)
