"""torchvision VGG-16 `features`, up to relu5_3: the LPIPS 'vgg' trunk.

Parameter names mirror the state-dict indices of `vgg16().features` (`features.{0,2,5,...,28}`
-> `layers_0`, `layers_2`, ...), as the official LPIPS port stores them under `net.layers.*`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# torchvision cfg 'D': conv widths per stage; every conv is 3x3, padding 1, then ReLU;
# stages are separated by MaxPool2d(2, 2).
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
VGG16_CHANNELS = tuple(s[-1] for s in VGG16_STAGES)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


def vgg16_conv_indices() -> list[tuple[int, int]]:
    """[(index in `features`, out channels)] for the 13 convs."""
    out, idx = [], 0
    for stage in VGG16_STAGES:
        for ch in stage:
            out.append((idx, ch))
            idx += 2  # conv, relu
        idx += 1      # max pool
    return out


class VGG16Features(nn.Module):
    """x: [B, H, W, 3] (already z-scored) -> the five stage-final ReLU outputs."""
    precision: Any = None

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> list[jnp.ndarray]:
        taps = []
        convs = iter(vgg16_conv_indices())
        for s, stage in enumerate(VGG16_STAGES):
            if s > 0:
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            for _ in stage:
                idx, ch = next(convs)
                x = nn.relu(nn.Conv(ch, (3, 3), padding=((1, 1), (1, 1)),
                                    precision=self.precision, name=f"layers_{idx}")(x))
            taps.append(x)
        return taps
