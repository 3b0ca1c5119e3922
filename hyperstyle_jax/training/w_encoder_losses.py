"""The W-encoder's optional terms: the W-mean regulariser and e4e's latent discriminator.

    w_norm(w_delta)                        mean_b ||w_b - latent_avg||^2, given w - latent_avg
    d_loss_nonsaturating(real, fake)       e4e `discriminator_loss`:
                                           softplus(-D(real)) + softplus(D(fake))
    g_loss_nonsaturating(fake)             e4e `adv_loss`: softplus(-D(fake))
    r1_penalty(d_fn, w_real)               mean_b ||dD(w_b)/dw_b||^2 (e4e `discriminator_r1_loss`)

Logits are [B]; codes [B, D]. The trainer applies the weights: lambda_w_norm * w_norm,
disc_lambda * g_loss, and e4e's lazy R1 `r1_gamma / 2 * r1 * r1_every` every r1_every steps.
The W-mean regulariser is squared (gradient 2 lambda (w - avg)), a quadratic penalty on
the distance to the mean of W; pSp's `criteria/w_norm.py` `WNormLoss` is the unsquared
norm. The discriminator terms are e4e's `training/coach.py` `Coach` ones.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def w_norm(w_delta: jax.Array) -> jax.Array:
    """w_delta = w - latent_avg [B, D] -> mean over the batch of the squared distance."""
    return jnp.mean(jnp.sum(jnp.square(w_delta), axis=-1))


def d_loss_nonsaturating(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def g_loss_nonsaturating(fake_logits: jax.Array) -> jax.Array:
    return jnp.mean(jax.nn.softplus(-fake_logits))


def r1_penalty(d_fn: Callable[[jax.Array], jax.Array], w_real: jax.Array) -> jax.Array:
    """mean_b ||grad_w D(w_b)||^2; d_fn maps codes [B, D] -> logits [B] (per-row
    independent, so the gradient of the sum gives each row's own gradient)."""
    g = jax.grad(lambda w: jnp.sum(d_fn(w)))(w_real)
    return jnp.mean(jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1))
