"""ID / MoCo similarity terms, and running a frozen network once on several batches.

`similarity_terms` is the official ID/MoCo loss bookkeeping shared by `id_loss` and `moco`;
`interleave`/`deinterleave` (also used by `lpips`) batch the network calls: the losses
embed y_hat and y (and x) with one network call. Stacking them on a new axis 1 and
merging it into the batch axis interleaves the rows (y_hat_0, y_0, y_hat_1, y_1, ...), so
the rows of a batch shard stay on their device under a batch-sharded `jit`; a plain
`concatenate` would move half of every shard to another device.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def interleave(*xs: jnp.ndarray) -> jnp.ndarray:
    """k arrays [B, ...] -> [B * k, ...] with rows x0[0], x1[0], ..., x0[1], x1[1], ..."""
    return jnp.stack(xs, axis=1).reshape((-1,) + xs[0].shape[1:])


def deinterleave(y: jnp.ndarray, k: int) -> list[jnp.ndarray]:
    """Inverse of `interleave` on the network's output: [B * k, ...] -> k arrays [B, ...]."""
    y = y.reshape((-1, k) + y.shape[1:])
    return [y[:, i] for i in range(k)]


def similarity_terms(embed, variables, y_hat: jnp.ndarray, y: jnp.ndarray,
                     x: jnp.ndarray | None = None) -> dict:
    """The official ID / MoCo loss bookkeeping for a normalized embedding `embed(v, imgs)`.

    One network pass over the interleaved batch; target features under `stop_gradient`;
    `x` (the encoder input) defaults to `y`, as in HyperStyle's datasets (source = target).
    Returns {'loss': mean(1 - <f(y_hat), f(y)>), 'improve', 'diff_target' [B],
    'diff_input' [B], 'diff_views' [B]}.
    """
    batch = [y_hat, y] if x is None else [y_hat, y, x]
    e = deinterleave(embed(variables, interleave(*batch)), len(batch))
    f_hat, f_y = e[0], jax.lax.stop_gradient(e[1])
    f_x = f_y if x is None else e[2]
    diff_target = jnp.sum(f_hat * f_y, axis=1)
    diff_input = jnp.sum(f_hat * f_x, axis=1)
    diff_views = jnp.sum(f_y * f_x, axis=1)
    return {"loss": jnp.mean(1.0 - diff_target),
            "improve": jax.lax.stop_gradient(jnp.mean(diff_target - diff_views)),
            "diff_target": diff_target, "diff_input": diff_input, "diff_views": diff_views}
