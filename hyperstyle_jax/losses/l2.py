"""L2 as in the official code: `F.mse_loss` (coach) and `nn.MSELoss` per image (metric)."""
from __future__ import annotations

import jax.numpy as jnp


def l2_loss(y_hat: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Scalar mean of (y_hat - y)^2 over every element of the batch ([-1, 1] images)."""
    return jnp.mean(jnp.square(y_hat - y))


def l2_per_image(y_hat: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """[B] mean squared error of each image (= `MSELoss()(y_hat[i:i+1], y[i:i+1])`)."""
    return jnp.mean(jnp.square(y_hat - y), axis=tuple(range(1, y.ndim)))
