"""e4e's latent discriminator: an MLP that tells a code w from real ones, w = mapping(z).

e4e's `LatentCodesDiscriminator(512, 4)`: (n_layers - 1) x [Linear(D, D), LeakyReLU(0.2)],
then Linear(D, 1). Names keep the
PyTorch `Sequential` indices (`mlp_0`, `mlp_2`, ..., the last one `mlp_{2(n-1)}`).

    LatentDiscriminator(style_dim, n_layers=4)(w [B, D]) -> logits [B]

Used by the W-encoder trainer (`training/w_encoder_step.py`) with the non-saturating loss
and the R1 penalty on real codes (`training/w_encoder_losses.py`).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class LatentDiscriminator(nn.Module):
    style_dim: int
    n_layers: int = 4

    @nn.compact
    def __call__(self, w: jax.Array) -> jax.Array:
        if w.ndim != 2 or w.shape[-1] != self.style_dim:
            raise ValueError(f"LatentDiscriminator: expected codes [B, {self.style_dim}], "
                             f"got {w.shape}")
        if self.n_layers < 1:
            raise ValueError(f"LatentDiscriminator: n_layers={self.n_layers} must be >= 1")
        x = w
        for i in range(self.n_layers - 1):
            x = nn.leaky_relu(nn.Dense(self.style_dim, name=f"mlp_{2 * i}")(x), 0.2)
        return nn.Dense(1, name=f"mlp_{2 * (self.n_layers - 1)}")(x)[:, 0]


def init_discriminator(style_dim: int, n_layers: int, rng: jax.Array) -> dict:
    """Fresh params of `LatentDiscriminator(style_dim, n_layers)`."""
    return LatentDiscriminator(style_dim, n_layers).init(
        rng, jnp.zeros((1, style_dim), jnp.float32))["params"]
