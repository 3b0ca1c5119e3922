"""Running a frozen network once on several image batches, sharding-friendly.

The losses embed y_hat and y (and x) with one network call. Stacking them on a new axis 1
and merging it into the batch axis interleaves the rows (y_hat_0, y_0, y_hat_1, y_1, ...),
so the rows of a batch shard stay on their device under a batch-sharded `jit`; a plain
`concatenate` would move half of every shard to another device.
"""
from __future__ import annotations

import jax.numpy as jnp


def interleave(*xs: jnp.ndarray) -> jnp.ndarray:
    """k arrays [B, ...] -> [B * k, ...] with rows x0[0], x1[0], ..., x0[1], x1[1], ..."""
    return jnp.stack(xs, axis=1).reshape((-1,) + xs[0].shape[1:])


def deinterleave(y: jnp.ndarray, k: int) -> list[jnp.ndarray]:
    """Inverse of `interleave` on the network's output: [B * k, ...] -> k arrays [B, ...]."""
    y = y.reshape((-1, k) + y.shape[1:])
    return [y[:, i] for i in range(k)]
