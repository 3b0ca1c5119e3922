"""The optional image-discriminator (adversarial) term of HyperStyle training.

The HyperStyle paper's method summary (arXiv 2111.15666) adds to the reconstruction losses a
discriminator that tells real images from reconstructions; the official code has none.
Here it is off by default (`config.loss.adv_lambda = 0`: no discriminator in the train
state, the step is the official one). On:

  hypernetwork loss  += adv_lambda * mean_b softplus(-D(y_hat_t))   (non-saturating, on the
                        last iteration, or on every one with config.loss.adv_iterations)
  D loss              = mean softplus(D(y_hat_n)) + mean softplus(-D(x))    (each step, on
                        the detached reconstructions of the last iteration)
  lazy R1             = r1_gamma / 2 * mean_b ||dD(x)/dx_b||^2 * r1_every, a second D update
                        on steps with step % r1_every == 0 (StyleGAN2's `D_reg` phase)

D (`models.discriminator.Discriminator`, StyleGAN2's residual D) has its own Adam with
StyleGAN2's lazy-regularisation correction: lr * c, betas ** c, c = r1_every / (r1_every + 1).
It sees images at its own size (reals and reconstructions are resized when it differs).
`Adversarial.apply(params, images, labels) -> logits [B]` is any such function (the tests
use a linear D whose gradients are known in closed form).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from hyperstyle_jax import checkpoints
from hyperstyle_jax.models.discriminator import Discriminator, DiscriminatorConfig
from hyperstyle_jax.training.optim import torch_adam
from hyperstyle_jax.training.w_encoder_losses import (
    d_loss_nonsaturating,
    g_loss_nonsaturating,
    r1_penalty,
)

ADV_ITERATIONS = ("last", "every")


@dataclasses.dataclass(frozen=True)
class Adversarial:
    """What the train step needs for the image-discriminator term."""
    apply: Callable          # (d_params, images [B, H, W, 3], labels or None) -> logits [B]
    tx: optax.GradientTransformation
    adv_lambda: float
    every_iteration: bool    # the term on every iteration's reconstruction (else the last)
    r1_gamma: float
    r1_every: int
    size: Optional[int] = None   # D's input size (None: the images' own)

    def logits(self, d_params, images, labels=None):
        if self.size is not None and images.shape[1:3] != (self.size, self.size):
            images = jax.image.resize(images, images.shape[:1] + (self.size, self.size)
                                      + images.shape[3:], "bilinear", antialias=True)
        return self.apply(d_params, images, labels)

    def g_loss(self, d_params, y_hat, labels=None):
        """The hypernetwork's non-saturating term softplus(-D(y_hat)) (unweighted)."""
        return g_loss_nonsaturating(self.logits(d_params, y_hat, labels))

    def update(self, d_params, d_opt, step, real, fake, labels=None):
        """One D step on reals vs detached fakes, then lazy R1 when step % r1_every == 0.
        -> (d_params, d_opt, metrics {d_loss, d_real, d_fake, r1})."""
        fake = jax.lax.stop_gradient(fake)

        def d_loss_fn(p):
            real_logits = self.logits(p, real, labels)
            fake_logits = self.logits(p, fake, labels)
            return (d_loss_nonsaturating(real_logits, fake_logits),
                    (jnp.mean(real_logits), jnp.mean(fake_logits)))

        (d_loss, (d_real, d_fake)), g = jax.value_and_grad(d_loss_fn, has_aux=True)(d_params)
        upd, d_opt = self.tx.update(g, d_opt, d_params)
        d_params = optax.apply_updates(d_params, upd)

        def r1_update(args):  # StyleGAN2: r1_gamma / 2 * R1 * r1_every, its own optimizer step
            p, o = args
            r1, g = jax.value_and_grad(
                lambda q: r1_penalty(lambda x: self.logits(q, x, labels), real))(p)
            g = jax.tree.map(lambda t: t * (self.r1_gamma / 2 * self.r1_every), g)
            u, o = self.tx.update(g, o, p)
            return optax.apply_updates(p, u), o, r1

        def no_r1(args):
            return args[0], args[1], jnp.zeros((), jnp.float32)

        if self.r1_gamma > 0:
            d_params, d_opt, r1 = jax.lax.cond(step % self.r1_every == 0, r1_update, no_r1,
                                               (d_params, d_opt))
        else:
            r1 = jnp.zeros((), jnp.float32)
        return d_params, d_opt, {"d_loss": d_loss, "d_real": d_real, "d_fake": d_fake, "r1": r1}


def discriminator_tx(dc) -> optax.GradientTransformation:
    """D's Adam from `config.discriminator` with StyleGAN2's lazy-R1 ratio on lr and betas."""
    c = dc.r1_every / (dc.r1_every + 1) if dc.r1_gamma > 0 else 1.0
    return torch_adam(dc.lr * c, dc.beta1 ** c, dc.beta2 ** c, dc.eps)


def build(config, image_hw) -> tuple[Optional[Adversarial], Any, Optional[DiscriminatorConfig],
                                      list]:
    """-> (Adversarial or None when adv_lambda == 0, converted D variables or None (then
    `init_params` makes fresh ones), its DiscriminatorConfig, description lines)."""
    if not config.loss.adv_lambda > 0:
        return None, None, None, []
    dc = config.discriminator
    if dc.init:
        dcfg, variables = checkpoints.load_discriminator(dc.init)
        where = f"converted from {dc.init}"
    else:
        size = dc.size or int(image_hw[0])
        try:
            dcfg = DiscriminatorConfig(size=size, channels=tuple(tuple(p) for p in dc.channels),
                                       mbstd_group_size=dc.mbstd_group_size or None)
        except ValueError as e:
            raise ValueError(f"config.discriminator: {e}") from None
        variables, where = None, "from scratch"
    if dcfg.c_dim:
        raise ValueError(f"config.discriminator.init={dc.init!r} is a conditional D "
                         f"(c_dim {dcfg.c_dim}); the image-discriminator term supports "
                         "unconditional discriminators only")
    module = Discriminator(dcfg)
    adv = Adversarial(apply=lambda p, x, c: module.apply(p, x, c), tx=discriminator_tx(dc),
                      adv_lambda=float(config.loss.adv_lambda),
                      every_iteration=config.loss.adv_iterations == "every",
                      r1_gamma=float(dc.r1_gamma), r1_every=int(dc.r1_every), size=dcfg.size)
    line = (f"image discriminator (adversarial term) x {adv.adv_lambda} on the "
            f"{config.loss.adv_iterations} iteration(s): {dcfg.size} px, {where}; R1 "
            f"{adv.r1_gamma} every {adv.r1_every} steps, Adam lr {dc.lr}")
    return adv, variables, dcfg, [line]


def init_params(dcfg: DiscriminatorConfig, rng) -> dict:
    """Fresh D variables {'params'} (StyleGAN2's N(0, 1) weights, zero biases)."""
    x = jnp.zeros((1, dcfg.size, dcfg.size, 3), jnp.float32)
    return Discriminator(dcfg).init(rng, x)
