"""Small layers with PyTorch semantics: BatchNorm, per-channel PReLU, torch-style convs.

Parameter names follow the PyTorch state dicts (`weight`, `bias`, `running_mean`,
`running_var`) so the converters are a plain rename; conv kernels are HWIO (Flax `kernel`).
Activations are NHWC (or [B, C] for BatchNorm on vectors).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperstyle_jax.models.conv import flax_conv

BN_EPS = 1e-5
BN_MOMENTUM = 0.1


class BatchNorm(nn.Module):
    """`torch.nn.BatchNorm{1,2}d` (eps 1e-5, momentum 0.1) over the last axis.

    x: [..., C] (NHWC or [B, C]); statistics are over every other axis.
    * eval (`train=False`): normalizes with the running statistics.
    * train: normalizes with the batch mean and the *biased* batch variance, and (unless
      initializing) updates `running_mean`/`running_var` with momentum 0.1 and the
      *unbiased* variance, as PyTorch does; the `'batch_stats'` collection must then be
      mutable. Under a data-parallel `jit` the means are over the global (sharded) batch.
    PyTorch's `num_batches_tracked` is not kept: with a fixed momentum it is never read.
    """
    eps: float = BN_EPS
    momentum: float = BN_MOMENTUM
    affine: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        running_mean = self.variable("batch_stats", "running_mean", jnp.zeros, (c,), jnp.float32)
        running_var = self.variable("batch_stats", "running_var", jnp.ones, (c,), jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            n = x.size // c
            if n < 2:
                raise ValueError(f"BatchNorm in train mode needs more than one value per channel, "
                                 f"got input shape {x.shape}")
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)  # biased: used to normalize
            if not self.is_initializing():
                m = self.momentum
                running_mean.value = (1 - m) * running_mean.value + m * mean
                running_var.value = (1 - m) * running_var.value + m * var * (n / (n - 1))
        else:
            mean, var = running_mean.value, running_var.value
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.param("weight", nn.initializers.ones, (c,), jnp.float32)
            y = y + self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        return y


class PReLU(nn.Module):
    """`torch.nn.PReLU(C)`: one learned slope per channel (last axis), initialised to 0.25."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.param("weight", nn.initializers.constant(0.25), (x.shape[-1],), jnp.float32)
        return jnp.where(x >= 0, x, w * x)


def leaky_relu(x: jax.Array) -> jax.Array:
    """`torch.nn.LeakyReLU()` (negative slope 0.01), used by the refinement blocks."""
    return jnp.where(x >= 0, x, 0.01 * x)


def conv2d(features: int, kernel_size: int, stride: int = 1, padding: int = 0,
           use_bias: bool = True, name: str | None = None, precision: str = "fp32") -> nn.Conv:
    """`torch.nn.Conv2d(…, kernel_size, stride, padding)` as an NHWC/HWIO Flax conv.

    Padding is explicit and symmetric as in PyTorch (Flax 'SAME' pads (0, 1) for even
    inputs with stride 2, which would break parity). Call it inside a compact method
    or `setup`. precision 'bf16': bf16 operands, fp32 accumulation and output
    (`models.conv.flax_conv`); params stay fp32.
    """
    return nn.Conv(features, (kernel_size, kernel_size), strides=(stride, stride),
                   padding=((padding, padding), (padding, padding)), use_bias=use_bias,
                   name=name, conv_general_dilated=flax_conv(precision))


def max_pool(x: jax.Array, kernel_size: int, stride: int, padding: int = 0) -> jax.Array:
    """`torch.nn.MaxPool2d(kernel_size, stride, padding)` on NHWC (pads with -inf)."""
    if kernel_size == 1 and padding == 0:
        return x[:, ::stride, ::stride, :]
    return nn.max_pool(x, (kernel_size, kernel_size), strides=(stride, stride),
                       padding=((padding, padding), (padding, padding)))


def global_avg_pool(x: jax.Array) -> jax.Array:
    """`AdaptiveAvgPool2d(1)` + flatten: [B, H, W, C] -> [B, C]."""
    return jnp.mean(x, axis=(1, 2))


def check_1x1(x: jax.Array, what: str) -> None:
    """Fail clearly where PyTorch's `view` would silently mix spatial positions into the batch."""
    if x.shape[1:3] != (1, 1):
        raise ValueError(f"{what}: expected a 1x1 feature map before the reshape, got shape "
                         f"{x.shape}; the input features are too large for this block's number of "
                         f"stride-2 convs (spatial size)")


__all__: Sequence[str] = ("BatchNorm", "PReLU", "leaky_relu", "conv2d", "max_pool",
                          "global_avg_pool", "check_1x1")
