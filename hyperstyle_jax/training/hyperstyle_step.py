"""HyperStyle's jitted train and eval steps (official `training/coach_hyperstyle.py`
`Coach.train` and `Coach.perform_forward_on_batch`).

Per batch x (images NHWC in [-1, 1], sharded on the mesh's `data` axis):
  1. initial inversion without gradient: codes, y0 = initial(frozen, batch);
  2. n iterations t = 1..n; each takes the previous reconstruction y_{t-1} and accumulated
     offsets D_{t-1} as constants (the official `.detach()`), runs the hypernetwork in
     train mode (BatchNorm on batch statistics, running stats updated every iteration),
     renders y_t with D_t = D_{t-1} + Delta_t and computes loss_t(y_t, x);
  3. the gradient is sum_t d loss_t / d theta, accumulated iteration by iteration as the
     official `loss.backward()` per iteration does, which equals the gradient of
     sum_t loss_t because of (1) and the detached carries; one optimizer update.
The iterations run in one `lax.scan` whose carry starts from zero offsets
(`HyperStyle.zero_deltas`), bit-identical to the official `None` start (0 + Delta = Delta),
so the body is compiled once and only one iteration's activations are live at a time.
The model is reached by name: `HyperStyle.initial_inversion`, `.iteration`, `.invert`,
and the losses by `losses.compute_losses`.

Frozen networks (generator, W-encoder, loss networks) are an argument apart from the
train state and are never differentiated. Only `state.params` (the hypernetwork) change,
and, with the optional image-discriminator term (`training/image_discriminator.py`),
`state.disc_params` (D's own step after the hypernetwork's).
Under `jax.jit` with the batch sharded, the BatchNorm means over the batch axis are means
over the global batch.

A step whose loss or gradient norm is not finite leaves the state unchanged and reports
`finite = 0`, so the caller can stop with the last good state and checkpoint intact.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from hyperstyle_jax.losses import LossWeights, compute_losses, l2_per_image, lpips_distance
from hyperstyle_jax.models.hyperstyle import HyperStyle
from hyperstyle_jax.training.image_discriminator import Adversarial


@flax.struct.dataclass
class TrainState:
    step: jax.Array          # int32 []
    params: Any              # hypernetwork params (fp32 master weights)
    batch_stats: Any         # hypernetwork BatchNorm running stats
    opt_state: Any
    # The image discriminator of the method summary's adversarial term (config.loss.adv_lambda
    # > 0); {} when off, so the state and the step are the official ones.
    disc_params: Any = flax.struct.field(default_factory=dict)
    disc_opt_state: Any = flax.struct.field(default_factory=dict)


def cast_floats(tree: Any, dtype) -> Any:
    """Cast floating leaves to `dtype` (bf16 compute copy of fp32 master weights)."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                        tree)


def given_codes(model: HyperStyle, batch: dict, true_latent: bool) -> Optional[jax.Array]:
    """The W+ codes when they are not the encoder's: the synthetic images' true latents
    (`batch['latent']` [B, style_dim], repeated over the layers); None = use the W-encoder."""
    if not true_latent:
        return None
    g = model.config.generator
    w = batch["latent"]
    return jnp.broadcast_to(w[:, None, :], (w.shape[0], g.n_latent, g.style_dim))


def eval_terms(loss_vars: dict, y_hat: jax.Array, y: jax.Array) -> dict:
    """Per-image held-out metrics [B]: L2, and LPIPS when its network is loaded."""
    out = {"l2": l2_per_image(y_hat, y)}
    if "lpips" in loss_vars:
        out["lpips"] = lpips_distance(loss_vars["lpips"], y_hat, y)
    return out


def make_train_step(model: HyperStyle, weights: LossWeights, tx: optax.GradientTransformation,
                    n_iters: int, *, true_latent: bool = False, compute_dtype=jnp.float32,
                    unroll: bool = True, adversarial: Optional[Adversarial] = None) -> Callable:
    """train_step(state, frozen, batch) -> (new_state, metrics); jit it with shardings.

    `frozen = {'model': HyperStyle's frozen variables, 'loss': loss-network variables}`;
    `batch['image']` is x (= the target y). metrics: `loss` (sum over iterations), each
    loss term per iteration as `<term>/iter_<t>` (t = 1..n) and averaged over iterations
    as `<term>`, the initial inversion's L2 `loss_l2/iter_0`, `grad_norm`, `param_norm`,
    `finite` (1 or 0). unroll: unroll the iteration scan (measured 4x faster on CPU for the
    tiny config, where XLA's while loop blocks fusion; compiles n copies of the body).

    adversarial (the image-discriminator term, `training.image_discriminator`): adds
    `adv_lambda * loss_adv` to the last (or every) iteration's loss with D's params as
    constants, then updates D (`state.disc_params`) on x vs the last reconstruction;
    metrics `loss_adv`, `d_loss`, `d_real`, `d_fake`, `r1`. None: the official step.
    """
    if n_iters < 1:
        raise ValueError(f"n_iters_per_batch={n_iters}: must be >= 1")

    def train_step(state: TrainState, frozen, batch):
        x = batch["image"]
        # The forward is deterministic (fixed noise buffers): no per-step rng.
        codes, _, y0 = model.initial_inversion(frozen["model"], x,
                                               given_codes(model, batch, true_latent))
        codes, y0 = jax.lax.stop_gradient((codes, y0))
        x_in = x.astype(compute_dtype)

        def iteration_loss(params, bs, y_hat, deltas, adv_weight=None):
            hyper_vars = {"params": cast_floats(params, compute_dtype), "batch_stats": bs}
            _, y_t, d_t, bs_t = model.iteration(frozen["model"], hyper_vars, x_in,
                                                y_hat.astype(compute_dtype), codes, deltas,
                                                train=True)
            y_t = y_t.astype(jnp.float32)
            d_t = jax.tree.map(lambda d: d.astype(jnp.float32), d_t)
            total, terms = compute_losses(frozen["loss"], y_t, x, weights)
            if adversarial is not None:  # the method summary's image-discriminator term
                terms["loss_adv"] = adversarial.g_loss(state.disc_params, y_t)
                total = total + adv_weight * terms["loss_adv"]
                terms["loss"] = total
            return total, (y_t, d_t, bs_t, terms)

        grad_fn = jax.value_and_grad(iteration_loss, has_aux=True)

        def body(carry, t):
            grads, bs, y_hat, deltas = carry
            extra = ()
            if adversarial is not None:  # on the last iteration only, or on every one
                last = (t == n_iters - 1) | adversarial.every_iteration
                extra = (jnp.where(last, adversarial.adv_lambda, 0.0).astype(jnp.float32),)
            (total, (y_t, d_t, bs_t, terms)), g = grad_fn(
                state.params, bs, jax.lax.stop_gradient(y_hat), jax.lax.stop_gradient(deltas),
                *extra)
            grads = jax.tree.map(jnp.add, grads, g)  # the official accumulated .grad
            return (grads, bs_t, y_t, d_t), (total, terms)

        deltas0 = model.zero_deltas(x.shape[0])
        grads0 = jax.tree.map(jnp.zeros_like, state.params)
        xs = None if adversarial is None else jnp.arange(n_iters)
        (grads, batch_stats, y_last, _), (totals, terms) = jax.lax.scan(
            body, (grads0, state.batch_stats, y0, deltas0), xs, length=n_iters,
            unroll=n_iters if unroll else 1)

        loss = jnp.sum(totals)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        d_params, d_opt, d_metrics = state.disc_params, state.disc_opt_state, {}
        if adversarial is not None:  # D's step on x vs the (detached) last reconstructions
            d_params, d_opt, d_metrics = adversarial.update(d_params, d_opt, state.step, x,
                                                            y_last)
        new = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state, disc_params=d_params, disc_opt_state=d_opt)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        for v in d_metrics.values():
            finite = finite & jnp.isfinite(v)
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
        metrics.update(d_metrics)
        return new, metrics

    return train_step


def make_eval_step(model: HyperStyle, weights: LossWeights, n_iters: int, *,
                   true_latent: bool = False, with_images: bool = False,
                   unroll: bool = True) -> Callable:
    """eval_step(state, frozen, batch) -> sums over the real (unmasked) examples.

    The inversion is `model.invert` (eval mode: BatchNorm on running stats) at the
    feedback size. Returns `count`, per-image terms summed: `<term>/iter_<t>` for t = 0
    (initial inversion) .. n, and `val_loss` summed = the batch's mean-over-iterations
    weighted loss x count (the official validation `loss`, averaged over the n
    iterations). With `with_images`, also `images`: [n + 1, B, H, W, 3] (initial, then
    each iteration).
    """
    def eval_step(state: TrainState, frozen, batch):
        x = batch["image"]
        mask = batch.get("mask")
        mask = jnp.ones(x.shape[:1], jnp.float32) if mask is None else mask.astype(jnp.float32)
        hv = {"params": state.params, "batch_stats": state.batch_stats}
        out = model.invert(frozen["model"], hv, x, n_iters, resize_outputs=True,
                           codes=given_codes(model, batch, true_latent), unroll=unroll)
        ys = jnp.concatenate([out["init"][None], out["images"]], axis=0)
        sums = {"count": jnp.sum(mask)}
        val_loss = jnp.zeros((), jnp.float32)
        for t in range(n_iters + 1):
            for k, v in eval_terms(frozen["loss"], ys[t], x).items():
                sums[f"{k}/iter_{t}"] = jnp.sum(v * mask)
            if t > 0:
                total, _ = compute_losses(frozen["loss"], _masked_rows(ys[t], x, mask), x, weights)
                val_loss = val_loss + total
        # losses are batch means of per-image terms that vanish when y_hat == x, so with
        # the padded rows replaced by x, mean * B is the sum over the real rows.
        sums["val_loss"] = val_loss / n_iters * x.shape[0]
        if with_images:
            sums["images"] = ys
        return sums

    return eval_step


def _masked_rows(y_hat, x, mask):
    m = mask.reshape((-1,) + (1,) * (x.ndim - 1))
    return y_hat * m + x * (1.0 - m)


def format_eval(summary: dict, n_iters: int, w_code: str) -> str:
    """The held-out summary printed at the end of a HyperStyle run."""
    src = ("true latents of the synthetic images (no W-encoder)" if w_code == "true_latent"
           else "the frozen W-encoder")
    lines = [f"held-out L2 on {int(summary['count'])} images "
             f"(iteration 0 = initial inversion from {src}):"]
    for t in range(n_iters + 1):
        parts = [f"L2 {summary[f'l2/iter_{t}']:.6f}"]
        if f"lpips/iter_{t}" in summary:
            parts.append(f"LPIPS {summary[f'lpips/iter_{t}']:.6f}")
        lines.append(f"  iteration {t}: " + ", ".join(parts))
    return "\n".join(lines)
