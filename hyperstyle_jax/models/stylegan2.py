"""The StyleGAN2 generator of HyperStyle (rosinality's, plus per-sample weight offsets).

Official code: HyperStyle `models/stylegan2/model.py` `Generator`. Module and
parameter names mirror its state dict (`style_1`, `input`, `conv1`, `to_rgb1`, `convs_N`,
`to_rgbs_N`, `modulation`, `noise`, `activate`), so the converter's table is one line per
key. Images are NHWC, un-clipped (no tanh), nominally in [-1, 1].

`GeneratorConfig.family='stylegan2_ada'` holds NVIDIA's StyleGAN2-ADA generator
(stylegan2-ada-pytorch `training/networks.py` `Generator`, architecture 'skip') in the same
module: its math is rosinality's plus a label embedding in the mapping (`c_dim > 0`) and
the `conv_clamp` clipping; `convert/stylegan2_ada.py` maps its keys onto these names.

Official layer index j (the position in `weights_deltas`, `refinement_blocks.py` `PARAMETERS`):
  0 = conv1, 1 = to_rgb1, then per block b: 2+3b = convs_{2b} (up-conv),
  3+3b = convs_{2b+1}, 4+3b = to_rgbs_{b}.
Latent index: conv1 w[:,0], to_rgb1 w[:,1]; block b: w[:,1+2b], w[:,2+2b], w[:,3+2b].
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperstyle_jax.models import ops

Array = Any


# ----------------------------------------------------------------------------- config


FAMILIES = ("rosinality", "stylegan2_ada")


def official_channels(size: int, channel_multiplier: int = 2) -> tuple:
    """rosinality's channel table (model.py:393-403) for resolutions 4..size."""
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier,
             128: 128 * channel_multiplier, 256: 64 * channel_multiplier,
             512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    _check_size(size)
    if size > 1024:
        raise ValueError(f"official channel table stops at 1024, got size {size}")
    return tuple((r, table[r]) for r in _resolutions(size))


def _check_size(size: int) -> None:
    if not isinstance(size, int) or size < 8 or size & (size - 1):
        raise ValueError(f"generator size must be a power of 2 >= 8, got {size!r}")


def _resolutions(size: int) -> list:
    return [2 ** i for i in range(2, int(math.log2(size)) + 1)]


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of a StyleGAN2 generator (what config.json stores).

    channels: ((4, c4), (8, c8), ..., (size, c_size)) widths per resolution.
    family: 'rosinality' (HyperStyle's) or 'stylegan2_ada' (NVIDIA's, where z_dim = w_dim =
    style_dim). c_dim: label size of a conditional NVIDIA generator (0 = unconditional): its
    mapping normalises z and embed(label) and maps their concatenation. conv_clamp: NVIDIA's
    clamp of every conv output to [-conv_clamp, conv_clamp] (None = off).
    """
    size: int
    style_dim: int = 512
    n_mlp: int = 8
    channels: tuple = ()
    lr_mlp: float = 0.01
    blur_kernel: tuple = (1, 3, 3, 1)
    family: str = "rosinality"
    c_dim: int = 0
    conv_clamp: Optional[float] = None

    def __post_init__(self):
        _check_size(self.size)
        if self.family not in FAMILIES:
            raise ValueError(f"GeneratorConfig: family must be one of {FAMILIES}, "
                             f"got {self.family!r}")
        if self.family == "rosinality" and (self.c_dim or self.conv_clamp is not None):
            raise ValueError("GeneratorConfig: c_dim and conv_clamp exist only in the "
                             "'stylegan2_ada' family")
        if self.c_dim < 0 or (self.conv_clamp is not None and self.conv_clamp <= 0):
            raise ValueError(f"GeneratorConfig: c_dim must be >= 0 and conv_clamp > 0 or None: "
                             f"{self}")
        chans = tuple((int(r), int(c)) for r, c in self.channels) if self.channels else \
            official_channels(self.size)
        object.__setattr__(self, "channels", chans)
        object.__setattr__(self, "blur_kernel", tuple(self.blur_kernel))
        want = _resolutions(self.size)
        if [r for r, _ in chans] != want:
            raise ValueError(f"GeneratorConfig: channels must list resolutions {want} in order, "
                             f"got {[r for r, _ in chans]}")
        if any(c < 1 for _, c in chans) or self.style_dim < 1 or self.n_mlp < 1:
            raise ValueError(
                f"GeneratorConfig: widths, style_dim and n_mlp must be positive: {self}")

    @classmethod
    def official(cls, size: int, style_dim: int = 512, n_mlp: int = 8,
                 channel_multiplier: int = 2) -> "GeneratorConfig":
        return cls(size=size, style_dim=style_dim, n_mlp=n_mlp,
                   channels=official_channels(size, channel_multiplier))

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        """Number of W+ rows: 2*log2(size) - 2 (18 at 1024)."""
        return self.log_size * 2 - 2

    @property
    def num_layers(self) -> int:
        """Number of noise buffers: 2*(log2(size) - 2) + 1 (17 at 1024)."""
        return (self.log_size - 2) * 2 + 1

    @property
    def n_convs(self) -> int:
        """Official `total_convs` = len(weights_deltas) = n_hypernet_outputs (26 at 1024)."""
        return 3 * (self.log_size - 2) + 2

    def channel(self, res: int) -> int:
        return dict(self.channels)[res]

    def noise_shapes(self) -> list:
        """[(1, H, W, 1)] per noise buffer i: H = 2**((i + 5) // 2)."""
        return [(1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2), 1) for i in range(self.num_layers)]

    def layer_names(self) -> list:
        """Official module name per layer index j ('conv1', 'to_rgb1', 'convs_0', ...)."""
        names = ["conv1", "to_rgb1"]
        for b in range(self.log_size - 2):
            names += [f"convs_{2 * b}", f"convs_{2 * b + 1}", f"to_rgbs_{b}"]
        return names

    def delta_shapes(self) -> list:
        """(out, in, k, k) of the conv weight at each official layer index j."""
        c4 = self.channel(4)
        shapes = [(c4, c4, 3, 3), (3, c4, 1, 1)]
        prev = c4
        for r in _resolutions(self.size)[1:]:
            c = self.channel(r)
            shapes += [(c, prev, 3, 3), (c, c, 3, 3), (3, c, 1, 1)]
            prev = c
        return shapes

    @classmethod
    def stylegan2_ada(cls, size: int, w_dim: int = 512, n_mlp: int = 8, channel_base: int = 32768,
                      channel_max: int = 512, c_dim: int = 0, conv_clamp: Optional[float] = None,
                      lr_mlp: float = 0.01) -> "GeneratorConfig":
        """NVIDIA's generator: widths min(channel_base // res, channel_max) (networks.py)."""
        _check_size(size)
        return cls(size=size, style_dim=w_dim, n_mlp=n_mlp, lr_mlp=lr_mlp,
                   channels=tuple((r, min(channel_base // r, channel_max))
                                  for r in _resolutions(size)),
                   family="stylegan2_ada", c_dim=c_dim, conv_clamp=conv_clamp)

    def to_dict(self) -> dict:
        d = {"size": self.size, "style_dim": self.style_dim, "n_mlp": self.n_mlp,
             "channels": [list(p) for p in self.channels], "lr_mlp": self.lr_mlp,
             "blur_kernel": list(self.blur_kernel)}
        if self.family != "rosinality":  # rosinality configs keep their old config.json
            d.update(family=self.family, c_dim=self.c_dim, conv_clamp=self.conv_clamp)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(tuple(p) for p in v) if k == "channels" else v)
                      for k, v in d.items() if k in known})


# ----------------------------------------------------------------------------- layers


class NoiseInjection(nn.Module):
    """out = x + weight * noise; `weight` is one scalar ([1], init 0)."""

    @nn.compact
    def __call__(self, x: Array, noise: Array) -> Array:
        w = self.param("weight", nn.initializers.zeros, (1,))
        return x + w * noise


class FusedLeakyReLU(nn.Module):
    """leaky_relu(x + bias, 0.2) * sqrt(2); `bias` [C] init 0."""
    channel: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return ops.fused_leaky_relu(x, self.param("bias", nn.initializers.zeros, (self.channel,)))


class StyledConv(nn.Module):
    """Modulated conv -> noise -> bias + leaky ReLU(0.2)*sqrt(2). [B,H,W,in] -> [B,H',W',out]."""
    in_channel: int
    out_channel: int
    kernel_size: int
    style_dim: int
    upsample: bool = False
    blur_kernel: Sequence = (1, 3, 3, 1)
    per_sample: str = "auto"
    precision: str = "fp32"
    conv_clamp: Optional[float] = None

    @nn.compact
    def __call__(self, x, style, noise, weights_delta=None):
        out = ops.ModulatedConv2d(self.in_channel, self.out_channel, self.kernel_size,
                                  self.style_dim, upsample=self.upsample,
                                  blur_kernel=self.blur_kernel, per_sample=self.per_sample,
                                  precision=self.precision, name="conv")(x, style, weights_delta)
        out = NoiseInjection(name="noise")(out, noise)
        return _clamp(FusedLeakyReLU(self.out_channel, name="activate")(out), self.conv_clamp)


class ToRGB(nn.Module):
    """1x1 modulated conv (no demodulation) + bias [3], plus the upsampled skip. -> [B,H,W,3]."""
    in_channel: int
    style_dim: int
    upsample: bool = True
    blur_kernel: Sequence = (1, 3, 3, 1)
    per_sample: str = "auto"
    precision: str = "fp32"
    conv_clamp: Optional[float] = None

    @nn.compact
    def __call__(self, x, style, skip=None, weights_delta=None):
        out = ops.ModulatedConv2d(self.in_channel, 3, 1, self.style_dim, demodulate=False,
                                  per_sample=self.per_sample, precision=self.precision,
                                  name="conv")(x, style, weights_delta)
        out = _clamp(out + self.param("bias", nn.initializers.zeros, (3,)), self.conv_clamp)
        if skip is not None:
            out = out + ops.upsample(skip, self.blur_kernel)
        return out


def _clamp(x: Array, conv_clamp: Optional[float]) -> Array:
    """NVIDIA `bias_act(..., clamp=conv_clamp)`: clip after the activation (None = off)."""
    return x if conv_clamp is None else jnp.clip(x, -conv_clamp, conv_clamp)


class ConstantInput(nn.Module):
    """The learned constant `input` [1, 4, 4, C], repeated over the batch."""
    channel: int

    @nn.compact
    def __call__(self, batch: int) -> Array:
        c = self.param("input", jax.nn.initializers.normal(1.0), (1, 4, 4, self.channel))
        return jnp.broadcast_to(c, (batch, 4, 4, self.channel))


# ----------------------------------------------------------------------------- generator


class Generator(nn.Module):
    """rosinality/HyperStyle StyleGAN2 generator.

    Variables: 'params' (official names) and 'noises' (`noise_i` [1, H, W, 1], the
    checkpoint's fixed noise buffers). per_sample: how per-sample offsets are convolved
    ('auto' picks by backend, see `conv.PER_SAMPLE_FORMS`). precision: 'fp32' or 'bf16'
    (the modulated convs on bf16 operands with fp32 accumulation, see `ops.modulated_conv2d`).
    """
    config: GeneratorConfig
    per_sample: str = "auto"
    precision: str = "fp32"

    def setup(self):
        cfg = self.config
        bk = cfg.blur_kernel
        # A conditional NVIDIA mapping maps [z, embed(label)] (both normalised): 2x wide input.
        in_dims = [cfg.style_dim * (2 if cfg.c_dim else 1)] + [cfg.style_dim] * (cfg.n_mlp - 1)
        self.style_layers = [ops.EqualLinear(d, cfg.style_dim, lr_mul=cfg.lr_mlp,
                                             activation="fused_lrelu", name=f"style_{i + 1}")
                             for i, d in enumerate(in_dims)]
        if cfg.c_dim:
            self.embed = ops.EqualLinear(cfg.c_dim, cfg.style_dim, name="embed")
        c4 = cfg.channel(4)
        self.input = ConstantInput(c4, name="input")
        ps, pr, cc = self.per_sample, self.precision, cfg.conv_clamp
        self.conv1 = StyledConv(c4, c4, 3, cfg.style_dim, blur_kernel=bk,
                                per_sample=ps, precision=pr, conv_clamp=cc, name="conv1")
        self.to_rgb1 = ToRGB(c4, cfg.style_dim, upsample=False, blur_kernel=bk,
                             per_sample=ps, precision=pr, conv_clamp=cc, name="to_rgb1")
        convs, to_rgbs = [], []
        prev = c4
        for b, r in enumerate(_resolutions(cfg.size)[1:]):
            c = cfg.channel(r)
            convs.append(StyledConv(prev, c, 3, cfg.style_dim, upsample=True, blur_kernel=bk,
                                    per_sample=ps, precision=pr, conv_clamp=cc,
                                    name=f"convs_{2 * b}"))
            convs.append(StyledConv(c, c, 3, cfg.style_dim, blur_kernel=bk, per_sample=ps,
                                    precision=pr, conv_clamp=cc, name=f"convs_{2 * b + 1}"))
            to_rgbs.append(ToRGB(c, cfg.style_dim, blur_kernel=bk, per_sample=ps,
                                 precision=pr, conv_clamp=cc, name=f"to_rgbs_{b}"))
            prev = c
        self.convs = convs
        self.to_rgbs = to_rgbs

    def mapping(self, z: Array, labels: Optional[Array] = None) -> Array:
        """z [..., style_dim] -> W [..., style_dim]: pixel norm + n_mlp EqualLinear (lr 0.01).

        labels: [..., c_dim] (one-hot class, NVIDIA's `c`), needed when `config.c_dim > 0`.
        """
        x = ops.pixel_norm(z)
        if self.config.c_dim:
            if labels is None:
                raise ValueError(f"Generator: this generator is conditional (c_dim "
                                 f"{self.config.c_dim}): mapping z needs labels [B, c_dim]")
            labels = jnp.asarray(labels, jnp.float32)
            if labels.shape[-1] != self.config.c_dim:
                raise ValueError(f"Generator: labels have shape {labels.shape}; expected "
                                 f"[..., {self.config.c_dim}]")
            y = ops.pixel_norm(self.embed(labels))
            x = jnp.concatenate(jnp.broadcast_arrays(x, y), axis=-1)
        elif labels is not None:
            raise ValueError("Generator: labels given to an unconditional generator (c_dim 0)")
        for layer in self.style_layers:
            x = layer(x)
        return x

    def _noise_buffers(self, need: bool) -> list:
        """The checkpoint's noise buffers (created at init from the 'params' rng)."""
        out = []
        for i, shape in enumerate(self.config.noise_shapes()):
            name = f"noise_{i}"
            if self.is_initializing():
                # Methods outside setup cannot declare variables, but can put them at init.
                value = jax.random.normal(self.make_rng("params"), shape)
                self.put_variable("noises", name, value)
            elif need:
                if not self.has_variable("noises", name):
                    raise ValueError(
                        f"Generator: variables hold no 'noises'/{name}; pass the checkpoint's "
                        "'noises' collection, or noise=[...], or randomize_noise=True")
                value = self.get_variable("noises", name)
            else:
                value = None
            out.append(value)
        return out

    def __call__(self, styles: Array, *, input_space: str = "w", truncation=1.0,
                 truncation_latent: Optional[Array] = None, noise: Optional[Sequence] = None,
                 randomize_noise: bool = False, weights_deltas: Optional[Sequence] = None,
                 return_latents: bool = False, labels: Optional[Array] = None):
        """Render images.

        styles: z or W [B, style_dim], or W+ [B, n_latent, style_dim] (for 'z', each row is
          mapped). input_space: 'z' (through the mapping network), 'w' or 'w+' (used as is).
        truncation: w <- latent + truncation * (w - latent) when truncation < 1 (a Python
          float; an array is always applied). truncation_latent: [style_dim], [1, style_dim]
          or [n_latent, style_dim].
        noise: None or a list of `num_layers` entries [B or 1, H, W, 1] (None entries draw
          random noise). With noise=None: the 'noises' buffers, or random noise from the
          'noise' rng when randomize_noise=True.
        weights_deltas: None or `n_convs` entries, each None, [B, out, in, k, k] or
          [out, in, k, k] (shared by the batch), applied as weight * (1 + Δ), or a
          per-sample `ops.KernelDelta` (what an inversion carries between its renders).
        labels: [B, c_dim] class labels for input_space 'z' of a conditional generator.
        Returns (image [B, size, size, 3], latents [B, n_latent, style_dim] or None).
        """
        cfg = self.config
        styles = jnp.asarray(styles)
        if input_space not in ("z", "w", "w+"):
            raise ValueError(
                f"Generator: input_space must be 'z', 'w' or 'w+', got {input_space!r}")
        if styles.ndim not in (2, 3) or styles.shape[-1] != cfg.style_dim or (
                styles.ndim == 3 and styles.shape[1] != cfg.n_latent):
            raise ValueError(
                f"Generator: styles has shape {styles.shape}; expected [B, {cfg.style_dim}] or "
                f"[B, {cfg.n_latent}, {cfg.style_dim}]")
        if input_space == "w+" and styles.ndim != 3:
            raise ValueError(f"Generator: input_space 'w+' needs [B, {cfg.n_latent}, "
                             f"{cfg.style_dim}], got {styles.shape}")
        if input_space == "z":
            styles = self.mapping(styles, labels)
        elif self.is_initializing():  # create its params too
            self.mapping(jnp.zeros((1, cfg.style_dim), styles.dtype),
                         jnp.zeros((1, cfg.c_dim)) if cfg.c_dim else None)
        batch = styles.shape[0]
        latent = styles if styles.ndim == 3 else jnp.broadcast_to(
            styles[:, None], (batch, cfg.n_latent, cfg.style_dim))

        if not (isinstance(truncation, (int, float)) and truncation >= 1):
            if truncation_latent is None:
                raise ValueError("Generator: truncation < 1 needs truncation_latent")
            t = jnp.asarray(truncation_latent, latent.dtype)
            if t.shape not in ((cfg.style_dim,), (1, cfg.style_dim), (cfg.n_latent, cfg.style_dim)):
                raise ValueError(f"Generator: truncation_latent has shape {t.shape}; expected "
                                 f"[{cfg.style_dim}], [1, {cfg.style_dim}] or "
                                 f"[{cfg.n_latent}, {cfg.style_dim}]")
            latent = t + truncation * (latent - t)

        deltas = self._check_deltas(weights_deltas, batch)
        noise = self._resolve_noise(noise, randomize_noise, batch)

        out = self.input(batch)
        out = self.conv1(out, latent[:, 0], noise[0], deltas[0])
        skip = self.to_rgb1(out, latent[:, 1], None, deltas[1])
        i, j = 1, 2
        for b, to_rgb in enumerate(self.to_rgbs):
            out = self.convs[2 * b](out, latent[:, i], noise[2 * b + 1], deltas[j])
            out = self.convs[2 * b + 1](out, latent[:, i + 1], noise[2 * b + 2], deltas[j + 1])
            skip = to_rgb(out, latent[:, i + 2], skip, deltas[j + 2])
            i += 2
            j += 3
        return skip, (latent if return_latents else None)

    def mean_latent(self, n_latent: int, key: Array, labels: Optional[Array] = None) -> Array:
        """rosinality `mean_latent`: mean of W over n_latent z ~ N(0, I). -> [1, style_dim].

        labels: [c_dim] or [n_latent, c_dim] for a conditional generator (whose converted
        folder also holds NVIDIA's tracked `w_avg` as latent_avg).
        """
        z = jax.random.normal(key, (n_latent, self.config.style_dim))
        if labels is not None:
            labels = jnp.broadcast_to(labels, (n_latent, self.config.c_dim))
        return jnp.mean(self.mapping(z, labels), axis=0, keepdims=True)

    def _check_deltas(self, weights_deltas, batch: int) -> list:
        cfg = self.config
        if weights_deltas is None:
            return [None] * cfg.n_convs
        weights_deltas = list(weights_deltas)
        if len(weights_deltas) != cfg.n_convs:
            raise ValueError(f"Generator: weights_deltas has {len(weights_deltas)} entries, "
                             f"expected n_convs = {cfg.n_convs} (one per official layer index)")
        names = cfg.layer_names()
        for j, (d, shape) in enumerate(zip(weights_deltas, cfg.delta_shapes())):
            if d is None:
                continue
            ds = tuple(d.official_shape if isinstance(d, ops.KernelDelta) else d.shape)
            if ds != shape and ds != (batch,) + shape:
                raise ValueError(f"Generator: weights_deltas[{j}] ({names[j]}) has shape "
                                 f"{ds}; expected {(batch,) + shape} or {shape}")
        return weights_deltas

    def _resolve_noise(self, noise, randomize_noise: bool, batch: int) -> list:
        cfg = self.config
        shapes = cfg.noise_shapes()
        buffers = self._noise_buffers(need=noise is None and not randomize_noise)
        if noise is None:
            if not randomize_noise:
                return buffers
            noise = [None] * cfg.num_layers
        noise = list(noise)
        if len(noise) != cfg.num_layers:
            raise ValueError(f"Generator: noise has {len(noise)} entries, expected "
                             f"num_layers = {cfg.num_layers}")
        out = []
        for i, (n, s) in enumerate(zip(noise, shapes)):
            if n is None:
                n = jax.random.normal(self.make_rng("noise"), (batch,) + s[1:])
            elif n.ndim != 4 or tuple(n.shape[1:]) != s[1:] or n.shape[0] not in (1, batch):
                raise ValueError(f"Generator: noise[{i}] has shape {tuple(n.shape)}; expected "
                                 f"[{batch} or 1, {s[1]}, {s[2]}, 1]")
            out.append(n)
        return out


# ----------------------------------------------------------------------------- variables


def init_shapes(config: GeneratorConfig) -> dict:
    """`jax.eval_shape` of `Generator(config).init`: {'params': ..., 'noises': ...}."""
    gen = Generator(config)
    z = jax.ShapeDtypeStruct((1, config.style_dim), jnp.float32)
    return jax.eval_shape(lambda k, s: gen.init(k, s), jax.random.key(0), z)


def random_init(config: GeneratorConfig, seed: int = 0) -> dict:
    """Randomly initialised variables ({'params', 'noises'}), rosinality's init."""
    gen = Generator(config)
    z = jnp.zeros((1, config.style_dim), jnp.float32)
    return jax.jit(gen.init)(jax.random.key(seed), z)
