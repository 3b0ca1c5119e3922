"""The StyleGAN2 image discriminator (residual D with minibatch stddev), NHWC.

One Linen module for both checkpoint families: rosinality's `Discriminator` (key `d` of its
.pt files) and NVIDIA's stylegan2-ada-pytorch `training/networks.py` `Discriminator`
(key `D` of its pickles: architecture 'resnet', or 'orig' as its `cifar` config trains).
Their math is the same; NVIDIA adds an optional label projection (`c_dim > 0`),
`conv_clamp` and the 'orig' blocks (no residual skip). Names follow NVIDIA's state dict
(`b{res}/fromrgb|conv0|conv1|skip`, `b4/conv|fc|out`, `mapping/embed|fc{i}`), so its table is
the engine's default and rosinality's is one rename per layer (`convert/discriminator.py`).

`Discriminator(config)(images [B, size, size, 3], labels=None [B, c_dim]) -> logits [B]`:
pure, jittable and differentiable (a train step calls it on reals and reconstructions).
The batch must be a multiple of min(mbstd_group_size, B).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from hyperstyle_jax.models import ops
from hyperstyle_jax.models.stylegan2 import official_channels

Array = Any
FAMILIES = ("rosinality", "stylegan2_ada")


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    """Architecture of a StyleGAN2 residual discriminator (what config.json stores).

    channels: ((4, c4), (8, c8), ..., (size, c_size)); block `b{res}` maps c_res -> c_{res/2}.
    c_dim / cmap_dim / mapping_layers: NVIDIA's conditional projection (0 = unconditional).
    mbstd_group_size: None = the whole batch. conv_clamp: None = off. architecture: 'resnet'
    (rosinality's and NVIDIA's default) or 'orig' (NVIDIA's `cifar` config: no skip path).
    """
    size: int
    channels: tuple = ()
    mbstd_group_size: Optional[int] = 4
    mbstd_num_channels: int = 1
    conv_clamp: Optional[float] = None
    c_dim: int = 0
    cmap_dim: int = 0
    mapping_layers: int = 8
    mapping_lr: float = 0.01
    blur_kernel: tuple = (1, 3, 3, 1)
    architecture: str = "resnet"
    family: str = "rosinality"

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size < 8 or self.size & (self.size - 1):
            raise ValueError(f"discriminator size must be a power of 2 >= 8, got {self.size!r}")
        chans = (tuple((int(r), int(c)) for r, c in self.channels) if self.channels
                 else official_channels(self.size))
        object.__setattr__(self, "channels", chans)
        object.__setattr__(self, "blur_kernel", tuple(self.blur_kernel))
        want = [2 ** i for i in range(2, int(math.log2(self.size)) + 1)]
        if [r for r, _ in chans] != want:
            raise ValueError(f"DiscriminatorConfig: channels must list resolutions {want} in "
                             f"order, got {[r for r, _ in chans]}")
        if self.family not in FAMILIES:
            raise ValueError(f"DiscriminatorConfig: family must be one of {FAMILIES}, "
                             f"got {self.family!r}")
        if (self.c_dim > 0) != (self.cmap_dim > 0):
            raise ValueError("DiscriminatorConfig: c_dim and cmap_dim are both 0 or both > 0")
        if self.architecture not in ("resnet", "orig"):
            raise ValueError(f"DiscriminatorConfig: architecture must be 'resnet' or 'orig', "
                             f"got {self.architecture!r}")
        if self.mbstd_num_channels < 1:
            raise ValueError("DiscriminatorConfig: mbstd_num_channels must be >= 1")

    @classmethod
    def official(cls, size: int, channel_multiplier: int = 2) -> "DiscriminatorConfig":
        """rosinality's D (the channel table of its generator, group 4, no clamp)."""
        return cls(size=size, channels=official_channels(size, channel_multiplier))

    def channel(self, res: int) -> int:
        return dict(self.channels)[res]

    @property
    def block_resolutions(self) -> list:
        """size, size/2, ..., 8 (NVIDIA's `b{res}` blocks, rosinality's `convs.1..`)."""
        return [2 ** i for i in range(int(math.log2(self.size)), 2, -1)]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["channels"] = [list(p) for p in self.channels]
        d["blur_kernel"] = list(self.blur_kernel)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DiscriminatorConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(tuple(p) for p in v) if k == "channels" else v)
                      for k, v in d.items() if k in known})


class ConvLayer(nn.Module):
    """NVIDIA `Conv2dLayer` (= rosinality `ConvLayer`): equalized conv, bias, activation.

    Params `weight` [k, k, in, out] (raw; scaled by 1/sqrt(in*k*k) at run time) and `bias`
    [out]. down=2: blur (pads from the filter and k), then a stride-2 conv. The output is
    multiplied by `gain` (and by sqrt(2) for lrelu), then clipped to conv_clamp * gain.
    """
    in_channels: int
    out_channels: int
    kernel_size: int
    bias: bool = True
    activation: str = "lrelu"
    down: int = 1
    conv_clamp: Optional[float] = None
    blur_kernel: Sequence = (1, 3, 3, 1)

    @nn.compact
    def __call__(self, x: Array, gain: float = 1.0) -> Array:
        k = self.kernel_size
        w = self.param("weight", nn.initializers.normal(1.0),
                       (k, k, self.in_channels, self.out_channels))
        w = w * (1.0 / math.sqrt(self.in_channels * k * k))
        if self.down == 2:
            p = len(self.blur_kernel) - 2 + (k - 1)
            x = ops.blur(x, self.blur_kernel, pad=((p + 1) // 2, p // 2))
            x = lax.conv_general_dilated(x, w, (2, 2), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        else:
            p = k // 2
            x = lax.conv_general_dilated(x, w, (1, 1), ((p, p), (p, p)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        b = self.param("bias", nn.initializers.zeros, (self.out_channels,)) if self.bias else None
        if self.activation == "lrelu":
            x = ops.fused_leaky_relu(x, b) * gain
        else:
            x = (x if b is None else x + b) * gain
        if self.conv_clamp is not None:
            x = jnp.clip(x, -self.conv_clamp * gain, self.conv_clamp * gain)
        return x


def minibatch_stddev(x: Array, group_size: Optional[int], num_channels: int = 1) -> Array:
    """NVIDIA `MinibatchStdLayer` on NHWC: append F = num_channels stddev feature maps.

    Groups are the samples {m, m + N/G, m + 2N/G, ...} (G = min(group_size, N)); each
    group's per-pixel std over its G members (+1e-8 under the root) is averaged over H, W
    and the C/F channels of each feature. [N, H, W, C] -> [N, H, W, C + F].
    """
    n, h, w, c = x.shape
    g = n if group_size is None else min(group_size, n)
    if n % g:
        raise ValueError(f"minibatch_stddev: batch {n} is not a multiple of the group {g}")
    f = num_channels
    y = x.astype(jnp.float32).reshape(g, n // g, h, w, f, c // f)
    y = y - jnp.mean(y, axis=0)
    y = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + 1e-8)    # [n/G, H, W, F, c]
    y = jnp.mean(y, axis=(1, 2, 4))                          # [n/G, F]
    y = jnp.tile(y, (g, 1))                                   # [N, F] (sample g*n/G + m <- m)
    y = jnp.broadcast_to(y[:, None, None, :], (n, h, w, f)).astype(x.dtype)
    return jnp.concatenate([x, y], axis=-1)


class LabelMapping(nn.Module):
    """NVIDIA `MappingNetwork(z_dim=0, ...)` of a conditional D: label -> cmap [B, cmap_dim]."""
    c_dim: int
    cmap_dim: int
    num_layers: int = 8
    lr_mul: float = 0.01

    @nn.compact
    def __call__(self, labels: Array) -> Array:
        x = ops.pixel_norm(ops.EqualLinear(self.c_dim, self.cmap_dim, name="embed")(labels))
        for i in range(self.num_layers):
            x = ops.EqualLinear(self.cmap_dim, self.cmap_dim, lr_mul=self.lr_mul,
                                activation="fused_lrelu", name=f"fc{i}")(x)
        return x


class Epilogue(nn.Module):
    """NVIDIA `DiscriminatorEpilogue` (rosinality's final_conv / final_linear), 4x4 input."""
    in_channels: int
    cmap_dim: int = 0
    mbstd_group_size: Optional[int] = 4
    mbstd_num_channels: int = 1
    conv_clamp: Optional[float] = None

    @nn.compact
    def __call__(self, x: Array, cmap: Optional[Array] = None) -> Array:
        c = self.in_channels
        x = minibatch_stddev(x, self.mbstd_group_size, self.mbstd_num_channels)
        x = ConvLayer(c + self.mbstd_num_channels, c, 3, conv_clamp=self.conv_clamp,
                      name="conv")(x)
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # PyTorch's NCHW flatten
        x = ops.EqualLinear(c * 16, c, activation="fused_lrelu", name="fc")(x)
        x = ops.EqualLinear(c, self.cmap_dim or 1, name="out")(x)
        if self.cmap_dim:
            x = jnp.sum(x * cmap, axis=1, keepdims=True) * (1.0 / math.sqrt(self.cmap_dim))
        return x[:, 0]


class Block(nn.Module):
    """NVIDIA `DiscriminatorBlock` (rosinality `ResBlock`, plus fromrgb in the first block).

    'resnet': (skip(x) + conv1(conv0(x))) / sqrt(2), the 1/sqrt(2) folded into the gains as
    NVIDIA does (so conv1's clamp is conv_clamp / sqrt(2)); 'orig': conv1(conv0(x)).
    """
    tmp_channels: int
    out_channels: int
    first: bool
    conv_clamp: Optional[float] = None
    blur_kernel: Sequence = (1, 3, 3, 1)
    architecture: str = "resnet"

    @nn.compact
    def __call__(self, x: Optional[Array], img: Array) -> Array:
        t, cc, bk = self.tmp_channels, self.conv_clamp, self.blur_kernel
        if self.first:
            x = ConvLayer(img.shape[-1], t, 1, conv_clamp=cc, name="fromrgb")(img)
        if self.architecture == "orig":
            x = ConvLayer(t, t, 3, conv_clamp=cc, name="conv0")(x)
            return ConvLayer(t, self.out_channels, 3, down=2, conv_clamp=cc, blur_kernel=bk,
                             name="conv1")(x)
        g = math.sqrt(0.5)
        y = ConvLayer(t, self.out_channels, 1, bias=False, activation="linear", down=2,
                      blur_kernel=bk, name="skip")(x, gain=g)
        x = ConvLayer(t, t, 3, conv_clamp=cc, name="conv0")(x)
        x = ConvLayer(t, self.out_channels, 3, down=2, conv_clamp=cc, blur_kernel=bk,
                      name="conv1")(x, gain=g)
        return y + x


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator: images [B, size, size, 3] in [-1, 1] -> logits [B].

    labels: [B, c_dim] for a conditional (NVIDIA) D, else None.
    """
    config: DiscriminatorConfig

    @nn.compact
    def __call__(self, images: Array, labels: Optional[Array] = None) -> Array:
        cfg = self.config
        if images.ndim != 4 or images.shape[1:3] != (cfg.size, cfg.size):
            raise ValueError(f"Discriminator: images have shape {images.shape}; expected "
                             f"[B, {cfg.size}, {cfg.size}, C]")
        if (labels is None) != (cfg.c_dim == 0):
            raise ValueError(f"Discriminator: c_dim is {cfg.c_dim}: labels "
                             f"{'[B, c_dim] are needed' if cfg.c_dim else 'must be None'}")
        x = None
        for res in cfg.block_resolutions:
            x = Block(cfg.channel(res), cfg.channel(res // 2), first=res == cfg.size,
                      conv_clamp=cfg.conv_clamp, blur_kernel=cfg.blur_kernel,
                      architecture=cfg.architecture, name=f"b{res}")(x, images)
        cmap = None
        if cfg.c_dim:
            cmap = LabelMapping(cfg.c_dim, cfg.cmap_dim, cfg.mapping_layers, cfg.mapping_lr,
                                name="mapping")(jnp.asarray(labels, jnp.float32))
        return Epilogue(cfg.channel(4), cfg.cmap_dim, cfg.mbstd_group_size,
                        cfg.mbstd_num_channels, cfg.conv_clamp, name="b4")(x, cmap)


def init_shapes(config: DiscriminatorConfig) -> dict:
    """`jax.eval_shape` of `Discriminator(config).init`: {'params': ...}."""
    images = jax.ShapeDtypeStruct((1, config.size, config.size, 3), jnp.float32)
    labels = (jax.ShapeDtypeStruct((1, config.c_dim), jnp.float32) if config.c_dim else None)
    return jax.eval_shape(lambda k, x, c: Discriminator(config).init(k, x, c),
                          jax.random.key(0), images, labels)
