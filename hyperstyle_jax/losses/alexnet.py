"""torchvision AlexNet `features`, up to relu5: the LPIPS 'alex' trunk.

Parameter names mirror the state-dict indices of `alexnet().features`
(`features.{0,3,6,8,10}` -> `layers_0`, `layers_3`, ...), as the official LPIPS port
stores them under `net.layers.*`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# (index in `features`, out channels, kernel, stride, padding)
ALEXNET_CONVS = ((0, 64, 11, 4, 2), (3, 192, 5, 1, 2), (6, 384, 3, 1, 1),
                 (8, 256, 3, 1, 1), (10, 256, 3, 1, 1))
ALEXNET_POOL_AFTER = (0, 3)  # MaxPool2d(3, 2) follows the ReLU of these convs
ALEXNET_CHANNELS = tuple(c[1] for c in ALEXNET_CONVS)


class AlexNetFeatures(nn.Module):
    """x: [B, H, W, 3] (already z-scored) -> the five ReLU outputs relu1..relu5.

    At 256x256 the taps are 63, 31, 15, 15, 15 pixels wide (64/192/384/256/256 channels).
    """
    precision: Any = None

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> list[jnp.ndarray]:
        taps = []
        for idx, ch, k, s, p in ALEXNET_CONVS:
            x = nn.Conv(ch, (k, k), strides=(s, s), padding=((p, p), (p, p)),
                        precision=self.precision, name=f"layers_{idx}")(x)
            x = nn.relu(x)
            taps.append(x)
            if idx in ALEXNET_POOL_AFTER:
                # PyTorch MaxPool2d(3, 2): no padding, floor mode == 'VALID'.
                x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
        return taps
