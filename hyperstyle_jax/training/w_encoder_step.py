"""The jitted W-encoder train and eval steps (`config.task = 'w_encoder'`).

Per batch x (NHWC in [-1, 1] at the feedback size, sharded on the mesh's `data` axis):
    w      = E(x) + latent_avg                (E in train mode: BatchNorm on batch statistics)
    y_hat  = pool(crop(G(w)))                 (frozen generator, fixed noise buffers)
    loss   = compute_losses(y_hat, x)         (L2 + LPIPS + ID or MoCo, as HyperStyle's)
           + w_norm_lambda * ||w - latent_avg||^2                    (optional, off by default)
           + disc_lambda * softplus(-D(w))                           (optional, off by default)
The latent discriminator D (e4e) is updated first in each step, on real codes
w_real = mapping(z), z ~ N(0, I) from `fold_in(seed, step)`, and the encoder's codes as
constants, with its own optimizer; every `r1_every` steps (step % r1_every == 0, as e4e's
global_step) a second D update applies the lazy R1 penalty r1_gamma / 2 * R1 * r1_every.
The encoder's adversarial term then uses the updated D. D's params and optimizer state are
in the train state, so a resumed run replays exactly.

Differences from e4e, on purpose: the D update's fake codes come from a forward whose
BatchNorm updates are dropped (e4e's no-grad forward in train mode updates the running
statistics a second time per step); e4e's `w_pool` of past codes is not kept (it draws
from Python's random module, which a resumed run could not replay).

A step whose loss, D loss or gradient norm is not finite leaves the state unchanged and
reports `finite = 0`, as the HyperStyle step does.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hyperstyle_jax.losses import LossWeights, compute_losses
from hyperstyle_jax.models.irse import WEncoder
from hyperstyle_jax.models.latent_discriminator import LatentDiscriminator
from hyperstyle_jax.models.pooling import adaptive_avg_pool2d
from hyperstyle_jax.models.stylegan2 import Generator
from hyperstyle_jax.training import w_encoder_losses
from hyperstyle_jax.training.hyperstyle_step import _masked_rows, eval_terms


@flax.struct.dataclass
class WEncoderTrainState:
    step: jax.Array          # int32 []
    params: Any              # W-encoder params
    batch_stats: Any         # W-encoder BatchNorm running stats
    opt_state: Any
    disc_params: Any         # latent discriminator params ({} when disc_lambda == 0)
    disc_opt_state: Any      # its optimizer state ({} when off)


@dataclasses.dataclass(frozen=True)
class ExtraTerms:
    """The optional terms (static: they decide what is compiled)."""
    w_norm_lambda: float = 0.0
    disc_lambda: float = 0.0
    r1_gamma: float = 10.0
    r1_every: int = 16

    @property
    def adversarial(self) -> bool:
        return self.disc_lambda > 0


class WEncoderModel:
    """W-encoder + frozen generator + optional latent discriminator, as pure functions.

    frozen = {'generator': {'params', 'noises'}, 'latent_avg': [n_styles, D]}.
    class_label: a conditional generator's one-hot class [c_dim] (its mapping's label for
    the latent discriminator's real codes), else None.
    """

    def __init__(self, encoder: WEncoder, generator: Generator, feedback_hw, cars_crop: bool,
                 discriminator: Optional[LatentDiscriminator] = None, class_label=None):
        self.encoder, self.generator, self.discriminator = encoder, generator, discriminator
        self.class_label = None if class_label is None else np.asarray(class_label, np.float32)
        self.feedback_hw = tuple(int(v) for v in feedback_hw)
        self.cars_crop = bool(cars_crop)

    def init_encoder(self, rng: jax.Array) -> dict:
        v = self.encoder.init(rng, jnp.zeros((1, *self.feedback_hw, 3)), False)
        return {"params": v["params"], "batch_stats": v.get("batch_stats", {})}

    def encode(self, enc_vars: dict, x: jax.Array, train: bool):
        """-> (w - latent_avg [B, n_styles, D], new batch_stats or None)."""
        if train:
            w, upd = self.encoder.apply(enc_vars, x, True, mutable=["batch_stats"])
            return w, upd["batch_stats"]
        return self.encoder.apply(enc_vars, x, False), None

    def render(self, frozen: dict, codes: jax.Array) -> jax.Array:
        """codes [B, n_styles, D] -> pool(crop(G(codes))) at the feedback size."""
        img, _ = self.generator.apply(frozen["generator"], codes, input_space="w+",
                                      randomize_noise=False)
        if self.cars_crop:
            s = img.shape[1]
            img = img[:, s // 8: s - s // 8]
        return adaptive_avg_pool2d(img, self.feedback_hw)

    def real_codes(self, frozen: dict, rng: jax.Array, batch: int) -> jax.Array:
        """w = mapping(z), z ~ N(0, I): [B, D] (e4e `sample_real_latents`)."""
        z = jax.random.normal(rng, (batch, self.generator.config.style_dim), jnp.float32)
        labels = None
        if self.class_label is not None:  # a conditional generator: config.data.class_index
            labels = jnp.broadcast_to(jnp.asarray(self.class_label),
                                      (batch,) + self.class_label.shape)
        return self.generator.apply({"params": frozen["generator"]["params"]}, z, labels,
                                    method=Generator.mapping)


def make_w_encoder_train_step(model: WEncoderModel, weights: LossWeights, extra: ExtraTerms,
                              tx: optax.GradientTransformation,
                              disc_tx: Optional[optax.GradientTransformation] = None, *,
                              seed: int = 0) -> Callable:
    """train_step(state, frozen, batch) -> (new_state, metrics); jit it with shardings.

    `frozen = {'model': {'generator', 'latent_avg'}, 'loss': loss-network variables}`.
    metrics: `loss` (the encoder's total), each image term (`loss_l2`, ...), `loss_w_norm`
    and `loss_adv` when on, `d_loss`, `d_real`/`d_fake` (mean logits) and `r1` (0 on steps
    without the penalty) with the discriminator, `grad_norm`, `param_norm`, `finite`.
    (The mean-latent baseline is in the eval step: one more render per step costs.)
    """
    if extra.adversarial and (disc_tx is None or model.discriminator is None):
        raise ValueError("disc_lambda > 0 needs a discriminator and its optimizer")
    base_rng = jax.random.PRNGKey(seed)
    D = model.discriminator

    def d_apply(p, w):
        return D.apply({"params": p}, w)

    def train_step(state: WEncoderTrainState, frozen, batch):
        x = batch["image"]
        fm = frozen["model"]
        avg = fm["latent_avg"]
        metrics = {}
        d_params, d_opt = state.disc_params, state.disc_opt_state
        d_finite = jnp.array(True)

        # ---- 1. the latent discriminator (e4e: before the encoder, on its current codes)
        if extra.adversarial:
            rng = jax.random.fold_in(base_rng, state.step)
            w_real = model.real_codes(fm, rng, x.shape[0])
            w_enc, _ = model.encode({"params": state.params, "batch_stats": state.batch_stats},
                                    x, True)  # running-stat updates dropped (see docstring)
            w_fake = jax.lax.stop_gradient(w_enc[:, 0] + avg[0])

            def d_loss_fn(p):
                real, fake = d_apply(p, w_real), d_apply(p, w_fake)
                d_loss = w_encoder_losses.d_loss_nonsaturating(real, fake)
                return d_loss, (jnp.mean(real), jnp.mean(fake))

            (d_loss, (d_real, d_fake)), g = jax.value_and_grad(d_loss_fn, has_aux=True)(d_params)
            upd, d_opt = disc_tx.update(g, d_opt, d_params)
            d_params = optax.apply_updates(d_params, upd)

            def r1_update(args):  # e4e: r1 / 2 * R1 * d_reg_every, its own optimizer step
                p, o = args
                r1, g = jax.value_and_grad(
                    lambda p: w_encoder_losses.r1_penalty(lambda w: d_apply(p, w), w_real))(p)
                g = jax.tree.map(lambda t: t * (extra.r1_gamma / 2 * extra.r1_every), g)
                u, o = disc_tx.update(g, o, p)
                return optax.apply_updates(p, u), o, r1

            def no_r1(args):
                return args[0], args[1], jnp.zeros((), jnp.float32)

            d_params, d_opt, r1 = jax.lax.cond(state.step % extra.r1_every == 0, r1_update,
                                               no_r1, (d_params, d_opt))
            d_finite = jnp.isfinite(d_loss) & jnp.isfinite(r1)
            metrics.update(d_loss=d_loss, d_real=d_real, d_fake=d_fake, r1=r1)

        # ---- 2. the encoder
        def loss_fn(params):
            w_delta, new_bs = model.encode({"params": params, "batch_stats": state.batch_stats},
                                           x, True)
            y_hat = model.render(fm, w_delta + avg)
            total, terms = compute_losses(frozen["loss"], y_hat, x, weights)
            terms = dict(terms)
            if extra.w_norm_lambda > 0:
                terms["loss_w_norm"] = w_encoder_losses.w_norm(w_delta[:, 0])
                total = total + extra.w_norm_lambda * terms["loss_w_norm"]
            if extra.adversarial:
                terms["loss_adv"] = w_encoder_losses.g_loss_nonsaturating(d_apply(d_params,
                                                                    w_delta[:, 0] + avg[0]))
                total = total + extra.disc_lambda * terms["loss_adv"]
            terms["loss"] = total
            return total, (terms, new_bs)

        (loss, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = WEncoderTrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                                 opt_state=opt_state, disc_params=d_params,
                                 disc_opt_state=d_opt)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & d_finite
        kept = state.replace(step=state.step + 1)
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, kept)

        metrics.update(terms)
        metrics.update(grad_norm=grad_norm, param_norm=optax.tree.norm(params),
                       finite=finite.astype(jnp.float32))
        return new, metrics

    return train_step


def make_w_encoder_eval_step(model: WEncoderModel, weights: LossWeights, *,
                             with_images: bool = False) -> Callable:
    """eval_step(state, frozen, batch) -> sums over the real (unmasked) examples.

    `count`; per-image held-out metrics summed: `<term>/iter_0` for the encoder's
    reconstruction (eval mode, running statistics) and `<term>/mean_latent` for the image
    of latent_avg alone (the baseline); `val_loss` (the weighted image loss, the best-
    checkpoint criterion) x count. With `with_images`, `images` [1, B, H, W, 3].
    """
    def eval_step(state: WEncoderTrainState, frozen, batch):
        x = batch["image"]
        mask = batch.get("mask")
        mask = jnp.ones(x.shape[:1], jnp.float32) if mask is None else mask.astype(jnp.float32)
        fm = frozen["model"]
        w_delta, _ = model.encode({"params": state.params, "batch_stats": state.batch_stats},
                                  x, False)
        y_hat = model.render(fm, w_delta + fm["latent_avg"])
        y_avg = jnp.broadcast_to(model.render(fm, fm["latent_avg"][None]), x.shape)
        sums = {"count": jnp.sum(mask)}
        for name, y in (("iter_0", y_hat), ("mean_latent", y_avg)):
            for k, v in eval_terms(frozen["loss"], y, x).items():
                sums[f"{k}/{name}"] = jnp.sum(v * mask)
        total, _ = compute_losses(frozen["loss"], _masked_rows(y_hat, x, mask), x, weights)
        sums["val_loss"] = total * x.shape[0]  # see hyperstyle_step.make_eval_step: mean * B = sum
        if with_images:
            sums["images"] = y_hat[None]
        return sums

    return eval_step


def format_w_encoder_eval(summary: dict) -> str:
    lines = [f"held-out reconstruction on {int(summary['count'])} images:"]
    for name, label in (("mean_latent", "mean latent (G(latent_avg), the baseline)"),
                        ("iter_0", "W-encoder (G(E(x) + latent_avg))")):
        parts = [f"L2 {summary[f'l2/{name}']:.6f}"]
        if f"lpips/{name}" in summary:
            parts.append(f"LPIPS {summary[f'lpips/{name}']:.6f}")
        lines.append(f"  {label}: " + ", ".join(parts))
    return "\n".join(lines)
