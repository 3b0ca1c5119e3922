"""LPIPS v0.1 as the official port (`criteria/lpips/`, S-aiueo32/lpips-pytorch).

    d(x, y) = sum_l mean_hw( lin_l( (n(f_l(z(x))) - n(f_l(z(y))))^2 ) )

z: (x - shift) / scale with shift [-.030, -.088, -.188], scale [.458, .448, .450] (inputs in
[-1, 1]); f_l: the five ReLU taps of the AlexNet (or VGG-16) features; n: unit norm over
channels, x / (||x||_2 + 1e-10); lin_l: a 1x1 conv to one channel without bias. The
official `forward` sums over layers *and* batch and divides by B, i.e. the batch mean of
the per-image distances (`lpips_loss`); `calc_losses_on_images` calls it one image at a
time (`lpips_distance`).

Variables: `{'params': {'net': {'layers_0': {kernel, bias}, ...}, 'lin_0': {kernel}, ...}}`,
written by `tools/convert_weights.py lpips`.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperstyle_jax.losses.alexnet import ALEXNET_CHANNELS, AlexNetFeatures
from hyperstyle_jax.losses.similarity import deinterleave, interleave
from hyperstyle_jax.losses.vgg import VGG16_CHANNELS, VGG16Features

LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
NET_CHANNELS = {"alex": ALEXNET_CHANNELS, "vgg": VGG16_CHANNELS}


def normalize_activation(x: jnp.ndarray, eps: float = 1e-10) -> jnp.ndarray:
    """x / (sqrt(sum_c x^2) + eps) over the channel axis (last)."""
    return x / (jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)) + eps)


class LPIPS(nn.Module):
    """(x, y): [B, H, W, 3] in [-1, 1] -> per-layer distances [B, 5]."""
    net_type: str = "alex"
    precision: Any = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
        if self.net_type not in NET_CHANNELS:
            raise ValueError(f"LPIPS net_type {self.net_type!r}: expected one of "
                             f"{sorted(NET_CHANNELS)}")
        trunk = (AlexNetFeatures if self.net_type == "alex" else VGG16Features)(
            precision=self.precision, name="net")
        shift = jnp.asarray(LPIPS_SHIFT, jnp.float32)
        scale = jnp.asarray(LPIPS_SCALE, jnp.float32)
        # One trunk pass over x and y interleaved: the same per-image computation as two calls.
        feats = trunk((interleave(x, y) - shift) / scale)
        per_layer = []
        for i, f in enumerate(feats):
            fx, fy = deinterleave(normalize_activation(f), 2)
            diff = (fx - fy) ** 2
            d = nn.Conv(1, (1, 1), use_bias=False, precision=self.precision, name=f"lin_{i}")(diff)
            per_layer.append(jnp.mean(d, axis=(1, 2, 3)))
        return jnp.stack(per_layer, axis=1)


def lpips_net_type(variables: Mapping) -> str:
    """'alex' or 'vgg', read from the structure of converted LPIPS variables."""
    try:
        layers = set(variables["params"]["net"])
    except (KeyError, TypeError):
        raise ValueError("LPIPS variables must look like {'params': {'net': {...}, 'lin_0': ...}} "
                         "(convert with tools/convert_weights.py lpips)") from None
    return "vgg" if "layers_28" in layers else "alex"


def lpips_distance(variables: Mapping, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """[B] LPIPS of each pair (= the official module called on one pair at a time)."""
    per_layer = LPIPS(net_type=lpips_net_type(variables)).apply(variables, x, y)
    return jnp.sum(per_layer, axis=1)


def lpips_loss(variables: Mapping, y_hat: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Scalar: the official batch call (sum over layers and batch, / B)."""
    return jnp.mean(lpips_distance(variables, y_hat, y))


def init_lpips(net_type: str = "alex", hw: int = 64, seed: int = 0) -> dict:
    """Randomly initialised variables (for shapes and tests; real ones are converted)."""
    z = jnp.zeros((1, hw, hw, 3), jnp.float32)
    return LPIPS(net_type=net_type).init(jax.random.PRNGKey(seed), z, z)
