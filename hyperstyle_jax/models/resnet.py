"""torchvision ResNet pieces and the HyperStyle hypernetwork backbone (NHWC, Flax Linen).

* `BasicBlock` / `Bottleneck`: torchvision's blocks (ResNet-34 / ResNet-50 v1.5: the stride
  sits on the 3x3 conv). Names mirror torchvision: `conv1`, `bn1`, `conv2`, `bn2`, (`conv3`,
  `bn3`), `downsample_0` (1x1 conv) and `downsample_1` (BatchNorm).
* `ResNet50Trunk`: torchvision `resnet50` without `fc` (conv1, bn1, ReLU, max-pool,
  layer1..4, global average pool) -> [B, 2048]; block names `layer1_0`..`layer4_2`.
  Used by the MoCo loss; `__call__(x [B, H, W, 3], train=False)`.
* `HypernetBackbone`: HyperStyle's hypernet feature extractor (official
  `models/hypernetworks/hypernetwork.py` `SharedWeightsHyperNetResNet`): 6-channel
  7x7/2 conv without bias, BatchNorm, per-channel PReLU, **no max-pool**, then the
  BasicBlocks of a stage table flattened into `body_0`..`body_{N-1}` (resnet34 default:
  16 blocks, downsample on body_3, body_7, body_13). 256x256 input -> [B, 16, 16, 512].

The stem + body are built by `build_stem_and_body` / applied by `stem_and_body_forward`
so that `HyperNetwork` (hypernetwork.py) can own them at its top level, with the official
names `conv1`, `bn1`, `relu`, `body_N`, instead of nesting them one level deeper.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import flax.linen as nn
import jax

from hyperstyle_jax.models.layers import BatchNorm, PReLU, conv2d, global_avg_pool, max_pool

# (planes, blocks, stride) per stage: torchvision resnet34 layer1..layer4.
RESNET34_STAGES: Tuple[Tuple[int, int, int], ...] = (
    (64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
RESNET50_STAGES: Tuple[Tuple[int, int, int], ...] = (
    (64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))


class BasicBlock(nn.Module):
    """torchvision `BasicBlock`: conv3x3(stride)-BN-ReLU-conv3x3-BN (+ downsample) + add, ReLU.

    x: [B, H, W, C_in] -> [B, ceil(H/stride), ceil(W/stride), planes].
    """
    planes: int
    stride: int = 1
    downsample: bool = False
    precision: str = "fp32"  # 'bf16': convs on bf16 operands, fp32 accumulation (conv.flax_conv)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        pr = self.precision
        out = conv2d(self.planes, 3, self.stride, 1, use_bias=False, name="conv1", precision=pr)(x)
        out = nn.relu(BatchNorm(name="bn1")(out, train))
        out = conv2d(self.planes, 3, 1, 1, use_bias=False, name="conv2", precision=pr)(out)
        out = BatchNorm(name="bn2")(out, train)
        identity = x
        if self.downsample:
            identity = conv2d(self.planes, 1, self.stride, 0, use_bias=False, name="downsample_0",
                              precision=pr)(x)
            identity = BatchNorm(name="downsample_1")(identity, train)
        return nn.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision `Bottleneck` (v1.5): 1x1 - 3x3(stride) - 1x1(4*planes), BN after each.

    x: [B, H, W, C_in] -> [B, ceil(H/stride), ceil(W/stride), 4 * planes].
    """
    planes: int
    stride: int = 1
    downsample: bool = False
    expansion: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        out = conv2d(self.planes, 1, 1, 0, use_bias=False, name="conv1")(x)
        out = nn.relu(BatchNorm(name="bn1")(out, train))
        out = conv2d(self.planes, 3, self.stride, 1, use_bias=False, name="conv2")(out)
        out = nn.relu(BatchNorm(name="bn2")(out, train))
        out = conv2d(self.planes * self.expansion, 1, 1, 0, use_bias=False, name="conv3")(out)
        out = BatchNorm(name="bn3")(out, train)
        identity = x
        if self.downsample:
            identity = conv2d(self.planes * self.expansion, 1, self.stride, 0, use_bias=False,
                              name="downsample_0")(x)
            identity = BatchNorm(name="downsample_1")(identity, train)
        return nn.relu(out + identity)


def block_table(stages: Sequence[Sequence[int]], inplanes: int, expansion: int = 1
                ) -> list[tuple[int, int, bool]]:
    """torchvision `_make_layer` flattened: [(planes, stride, has_downsample)] per block.

    A block gets a downsample when its stride is not 1 or its input width differs from
    `planes * expansion` (torchvision's rule), which only happens on a stage's first block.
    """
    out = []
    for planes, n_blocks, stride in stages:
        for b in range(n_blocks):
            s = stride if b == 0 else 1
            out.append((planes, s, s != 1 or inplanes != planes * expansion))
            inplanes = planes * expansion
    return out


class ResNet50Trunk(nn.Module):
    """torchvision `resnet50` up to the global average pool: x [B, H, W, 3] -> [B, 2048].

    Names: `conv1`, `bn1`, `layer{1..4}_{i}/{conv1,bn1,…,downsample_0,downsample_1}`.
    No input normalization is applied (the MoCo loss feeds [-1, 1] images, official
    `criteria/moco_loss.py`).
    """
    stages: Tuple[Tuple[int, int, int], ...] = RESNET50_STAGES

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = conv2d(64, 7, 2, 3, use_bias=False, name="conv1")(x)
        x = nn.relu(BatchNorm(name="bn1")(x, train))
        x = max_pool(x, 3, 2, 1)
        table = block_table(self.stages, 64, Bottleneck.expansion)
        i = 0
        for s, (_, n_blocks, _) in enumerate(self.stages):
            for b in range(n_blocks):
                planes, stride, ds = table[i]
                x = Bottleneck(planes, stride, ds, name=f"layer{s + 1}_{b}")(x, train)
                i += 1
        return global_avg_pool(x)


# ----------------------------------------------------------------------------- hypernet backbone


def build_stem_and_body(input_nc: int, stem_width: int,
                        stages: Sequence[Sequence[int]], precision: str = "fp32") -> tuple:
    """The hypernet stem and body modules, for a `setup` to assign to `conv1`, `bn1`, `relu`,
    `body`.

    Assigning the returned list to `self.body` names the blocks `body_0`, `body_1`, …
    (the official `hypernet.body.N`). `input_nc` is kept for documentation: Flax infers
    the conv's input width from the data.
    """
    del input_nc
    conv1 = conv2d(stem_width, 7, 2, 3, use_bias=False, precision=precision)
    bn1 = BatchNorm()
    relu = PReLU()
    body = [BasicBlock(planes, stride, ds, precision)
            for planes, stride, ds in block_table(stages, stem_width)]
    return conv1, bn1, relu, body


def stem_and_body_forward(module: nn.Module, x: jax.Array, train: bool) -> jax.Array:
    """Apply `module.conv1/bn1/relu/body` (built by `build_stem_and_body`): no max-pool."""
    x = module.relu(module.bn1(module.conv1(x), train))
    for block in module.body:
        x = block(x, train)
    return x


class HypernetBackbone(nn.Module):
    """HyperStyle hypernet stem + body on its own: x [B, H, W, input_nc] -> features.

    Features are [B, ceil(H/2)/∏strides, …, stages[-1].planes]; 256x256 with the resnet34
    table gives [B, 16, 16, 512]. An empty `stages` gives the stem alone.
    """
    input_nc: int = 6
    stem_width: int = 64
    stages: Tuple[Tuple[int, int, int], ...] = RESNET34_STAGES
    precision: str = "fp32"

    def setup(self):
        self.conv1, self.bn1, self.relu, self.body = build_stem_and_body(
            self.input_nc, self.stem_width, self.stages, self.precision)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.shape[-1] != self.input_nc:
            raise ValueError(f"HypernetBackbone: expected {self.input_nc} input channels "
                             f"(NHWC), got shape {x.shape}")
        return stem_and_body_forward(self, x, train)
