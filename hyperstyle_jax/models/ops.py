"""StyleGAN2 building blocks (rosinality / HyperStyle semantics), NHWC and HWIO.

Functions: `make_kernel`, `upfirdn2d`, `blur`, `upsample`, `downsample`,
`fused_leaky_relu`, `pixel_norm`, `modulated_conv2d`. `KernelDelta`: offsets in the
kernel's own layout.
Modules: `EqualLinear`, `EqualConv2d`, `ModulatedConv2d`.
How the convolutions themselves run (shared or per-sample kernels, the polyphase up-conv,
the hand-written backward pass) is `models/conv.py`.

The weights are stored raw, as in PyTorch; the equalized-learning-rate scales
(`lr_mul / sqrt(fan_in)`) are applied at run time, so converted values are copied as is.

Per-sample weights (HyperStyle offsets Δ of shape [B, out, in, k, k]) make the
modulated conv a different conv for each sample; `conv.PER_SAMPLE_FORMS` lists the ways
to run it ('auto' picks one per backend from the measurements in docs/benchmarks.md).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hyperstyle_jax.models import conv

Array = Any

_NHWC = ("NHWC", "HWIO", "NHWC")
SQRT2 = math.sqrt(2.0)


# ----------------------------------------------------------------------------- FIR filters


def make_kernel(k: Sequence) -> np.ndarray:
    """rosinality `make_kernel`: 1-D taps -> outer product; normalised to sum 1. [kh, kw]."""
    k = np.asarray(k, dtype=np.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    if k.ndim != 2:
        raise ValueError(f"make_kernel: expected 1-D or 2-D taps, got shape {k.shape}")
    return (k / k.sum()).astype(np.float32)


def _pair(v) -> tuple[int, int]:
    """int or (x, y) -> (x, y)."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or an (x, y) pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def upfirdn2d(x: Array, kernel: Array, up=1, down=1, pad=(0, 0), gain: float = 1.0) -> Array:
    """Upsample (zero insertion), FIR filter, downsample: rosinality's `upfirdn2d_native`.

    x: [B, H, W, C]; kernel: [kh, kw] (any 2-D FIR, applied as a true convolution, i.e.
    flipped, exactly as the CUDA op reads it). up / down: int or (x, y).
    pad: (p0, p1) for both axes, or (x0, x1, y0, y1); negative pads crop.
    Steps: insert up-1 zeros after every sample, pad (or crop), convolve, keep every
    down-th sample. Output: [B, (H*up_y + y0 + y1 - kh) // down_y + 1, ..., C].

    The filter is a sum of shifted (strided) slices, which XLA fuses into one loop: on
    CPU a depthwise conv (feature_group_count=C) measured ~50x slower. A concrete rank-1
    kernel (every rosinality kernel) runs as two 1-D passes.
    """
    upx, upy = _pair(up)
    dnx, dny = _pair(down)
    if min(upx, upy, dnx, dny) < 1:
        raise ValueError(f"upfirdn2d: up and down must be >= 1, got up={up}, down={down}")
    if len(pad) == 2:
        px0, px1, py0, py1 = pad[0], pad[1], pad[0], pad[1]
    elif len(pad) == 4:
        px0, px1, py0, py1 = pad
    else:
        raise ValueError(f"upfirdn2d: pad must be (p0, p1) or (x0, x1, y0, y1), got {pad!r}")
    if np.ndim(kernel) != 2:
        raise ValueError(f"upfirdn2d: kernel must be 2-D, got shape {np.shape(kernel)}")
    kh, kw = np.shape(kernel)
    hp, wp = x.shape[1] * upy + py0 + py1, x.shape[2] * upx + px0 + px1
    if hp < kh or wp < kw:
        raise ValueError(f"upfirdn2d: padded input {(hp, wp)} is smaller than the kernel "
                         f"{(kh, kw)}")
    sep = _separate(kernel)
    if sep is not None:
        col, row = sep
        x = _fir_axis(x, col * gain, 1, upy, py0, py1, dny)
        return _fir_axis(x, row, 2, upx, px0, px1, dnx)
    kernel = jnp.asarray(kernel, x.dtype) * gain
    x = _zero_insert_pad(x, 1, upy, py0, py1)
    x = _zero_insert_pad(x, 2, upx, px0, px1)
    ho, wo = (x.shape[1] - kh) // dny + 1, (x.shape[2] - kw) // dnx + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            # True convolution: output (a, b) takes kernel[kh-1-i, kw-1-j] * x[a+i, b+j].
            sl = x[:, i:i + (ho - 1) * dny + 1:dny, j:j + (wo - 1) * dnx + 1:dnx]
            term = sl * kernel[kh - 1 - i, kw - 1 - j]
            out = term if out is None else out + term
    return out


def _separate(kernel) -> Optional[tuple]:
    """(col [kh], row [kw]) with kernel == outer(col, row) for a concrete rank-1 kernel."""
    try:
        k = np.asarray(kernel, dtype=np.float64)
    except (TypeError, jax.errors.TracerArrayConversionError):
        return None  # traced: use the general 2-D path
    i0, j0 = np.unravel_index(np.argmax(np.abs(k)), k.shape)
    if k[i0, j0] == 0:
        return None
    col, row = k[:, j0], k[i0, :] / k[i0, j0]
    if not np.allclose(np.outer(col, row), k, rtol=1e-6, atol=1e-7 * np.abs(k).max()):
        return None
    return col, row


def _zero_insert_pad(x: Array, axis: int, up: int, p0: int, p1: int) -> Array:
    """Insert up-1 zeros after every sample along `axis`, then pad (crop if negative).

    Interior padding inserts the zeros; the trailing up-1 zeros of the last sample go into
    the high pad, so lax.pad's cropping on negative pads matches the reference.
    """
    cfg = [(0, 0, 0)] * x.ndim
    cfg[axis] = (p0, p1 + up - 1, up - 1)
    return lax.pad(x, jnp.zeros((), x.dtype), cfg)


def _fir_axis(x: Array, taps: np.ndarray, axis: int, up: int, p0: int, p1: int,
              down: int) -> Array:
    """1-D upfirdn along `axis` with concrete taps (true convolution)."""
    x = _zero_insert_pad(x, axis, up, p0, p1)
    k = len(taps)
    n = (x.shape[axis] - k) // down + 1
    out = None
    for s in range(k):
        c = float(taps[k - 1 - s])
        if c == 0.0:
            continue
        term = lax.slice_in_dim(x, s, s + (n - 1) * down + 1, stride=down, axis=axis) * c
        out = term if out is None else out + term
    if out is None:  # an all-zero kernel
        out = jnp.zeros_like(lax.slice_in_dim(x, 0, (n - 1) * down + 1, stride=down, axis=axis))
    return out


def blur(x: Array, kernel: Sequence, pad: tuple[int, int], upsample_factor: int = 1) -> Array:
    """rosinality `Blur`: FIR with make_kernel(kernel) * upsample_factor**2, pads (p0, p1)."""
    k = make_kernel(kernel)
    if upsample_factor > 1:
        k = k * (upsample_factor ** 2)
    return upfirdn2d(x, k, pad=pad)


def upsample(x: Array, kernel: Sequence = (1, 3, 3, 1), factor: int = 2) -> Array:
    """rosinality `Upsample`: [B, H, W, C] -> [B, factor*H, factor*W, C] (the toRGB skip)."""
    k = make_kernel(kernel) * (factor ** 2)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample(x: Array, kernel: Sequence = (1, 3, 3, 1), factor: int = 2) -> Array:
    """rosinality `Downsample`: [B, H, W, C] -> [B, ~H/factor, ~W/factor, C]."""
    k = make_kernel(kernel)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, down=factor, pad=((p + 1) // 2, p // 2))


# ----------------------------------------------------------------------------- activations


def fused_leaky_relu(x: Array, bias: Optional[Array] = None, negative_slope: float = 0.2,
                     scale: float = SQRT2) -> Array:
    """leaky_relu(x + bias, 0.2) * sqrt(2); bias: [C] over the last axis of x."""
    if bias is not None:
        x = x + bias.astype(x.dtype)
    return jnp.where(x >= 0, x, x * negative_slope) * scale


def pixel_norm(x: Array, eps: float = 1e-8) -> Array:
    """x / sqrt(mean(x**2 over the last axis) + 1e-8)."""
    return x * lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


# ----------------------------------------------------------------------------- equalized lr


def _normal(stddev: float = 1.0) -> Callable:
    def init(key, shape, dtype=jnp.float32):
        return stddev * jax.random.normal(key, shape, dtype)
    return init


class EqualLinear(nn.Module):
    """rosinality `EqualLinear`: y = x @ (W * lr_mul / sqrt(in)) + b * lr_mul.

    Params: `weight` [in, out] (stored raw, init N(0, 1/lr_mul^2)), `bias` [out]
    (init `bias_init`). activation='fused_lrelu' applies `fused_leaky_relu` with the bias.
    x: [..., in] -> [..., out].
    """
    in_dim: int
    out_dim: int
    bias_init: float = 0.0
    lr_mul: float = 1.0
    activation: Optional[str] = None
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"EqualLinear {self.name}: input has {x.shape[-1]} features, "
                             f"expected {self.in_dim}")
        weight = self.param("weight", _normal(1.0 / self.lr_mul), (self.in_dim, self.out_dim))
        scale = self.lr_mul / math.sqrt(self.in_dim)
        y = jnp.matmul(x, weight * scale)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.constant(self.bias_init), (self.out_dim,))
            bias = bias * self.lr_mul
        else:
            bias = None
        if self.activation == "fused_lrelu":
            return fused_leaky_relu(y, bias)
        if self.activation is not None:
            raise ValueError(f"EqualLinear: unknown activation {self.activation!r}")
        return y if bias is None else y + bias


class EqualConv2d(nn.Module):
    """rosinality `EqualConv2d`: conv with W / sqrt(in*k*k), symmetric integer padding.

    Params: `weight` [k, k, in, out] (raw, init N(0, 1)), `bias` [out] (init 0).
    x: [B, H, W, in] -> [B, H', W', out].
    """
    in_channel: int
    out_channel: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k = self.kernel_size
        weight = self.param("weight", _normal(1.0), (k, k, self.in_channel, self.out_channel))
        scale = 1.0 / math.sqrt(self.in_channel * k * k)
        p = self.padding
        y = lax.conv_general_dilated(x, weight * scale, (self.stride, self.stride),
                                     ((p, p), (p, p)), dimension_numbers=_NHWC)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.out_channel,))
        return y


# ----------------------------------------------------------------------------- modulated conv


def modulated_conv2d(x: Array, weight: Array, style: Array, weights_delta: Optional[Array] = None,
                     *, demodulate: bool = True, upsample: bool = False, downsample: bool = False,
                     blur_kernel: Sequence = (1, 3, 3, 1), per_sample: str = "auto",
                     eps: float = 1e-8, precision: str = "fp32") -> Array:
    """rosinality/HyperStyle `ModulatedConv2d.forward` on NHWC.

    x: [B, H, W, I]; weight: [k, k, I, O] raw (HWIO of the official [1, O, I, k, k]);
    style: [B, I] (already through `modulation`); weights_delta: None, [O, I, k, k]
    (shared by the batch) or [B, O, I, k, k] (per sample), the official layout, or a
    per-sample `KernelDelta`.
    The kernel is scale * weight * (1 + Δ) * style with scale = 1/sqrt(I*k*k), then
    demodulated per (sample, out channel): * rsqrt(sum_{k,k,I} kernel^2 + 1e-8), in fp32.
    With one kernel for the whole batch (no Δ or a shared Δ) the same result comes from
    scaling the input by the style, one shared conv and demodulating the output, which is
    as cheap as a plain conv. Up: conv_transpose2d(stride 2) then Blur(pad (1,1), x4).
    precision 'bf16': the modulated, demodulated kernel is built in fp32, then the conv runs
    on bf16 operands with fp32 accumulation and an fp32 output; 'fp32' leaves it unchanged.
    Returns [B, H', W', O] (2H x 2W with upsample, about H/2 with downsample).
    """
    k, _, cin, cout = weight.shape
    b = x.shape[0]
    if style.shape != (b, cin):
        raise ValueError(f"modulated_conv2d: style has shape {style.shape}, expected {(b, cin)}")
    if upsample and downsample:
        raise ValueError("modulated_conv2d: upsample and downsample are exclusive")
    mode = "up" if upsample else ("down" if downsample else "same")
    scale = 1.0 / math.sqrt(cin * k * k)
    w = weight.astype(jnp.float32) * scale
    style = style.astype(jnp.float32)
    # Operand dtype of the conv: x's own in fp32 (unchanged behaviour), bf16 otherwise.
    dt = x.dtype if precision == "fp32" else conv.compute_dtype(precision)
    form = conv.resolve_per_sample(per_sample, dt, cin)

    if downsample:
        # Blur first (rosinality: pad ((p+1)//2, p//2), p = len(blur) - 2 + k - 1).
        p = len(blur_kernel) - 2 + (k - 1)
        x = blur(x, blur_kernel, pad=((p + 1) // 2, p // 2))

    if isinstance(weights_delta, KernelDelta):
        if tuple(weights_delta.value.shape) != (b, k, k, cin, cout):
            raise ValueError(f"modulated_conv2d: KernelDelta has shape "
                             f"{tuple(weights_delta.value.shape)}, expected {(b, k, k, cin, cout)}")
    elif weights_delta is not None and weights_delta.ndim == 4:
        _check_delta(weights_delta, (cout, cin, k, k))
        w = w * (1.0 + jnp.transpose(weights_delta, (2, 3, 1, 0)).astype(jnp.float32))
        weights_delta = None
    elif weights_delta is not None:  # per sample, official layout
        if weights_delta.ndim != 5 or weights_delta.shape[0] != b:
            raise ValueError(f"modulated_conv2d: weights_delta has shape {weights_delta.shape}, "
                             f"expected {(b, cout, cin, k, k)} or {(cout, cin, k, k)}")
        _check_delta(weights_delta[0], (cout, cin, k, k))
        weights_delta = KernelDelta.from_official(weights_delta)
    if weights_delta is None:
        out = conv.shared_conv((x * style[:, None, None, :].astype(x.dtype)).astype(dt),
                               w.astype(dt), mode, k, form)
        if demodulate:
            # sum_{k,k,I} (w * s)^2 = s^2 @ sum_{k,k} w^2   -> [B, O]
            d = lax.rsqrt(jnp.square(style) @ jnp.sum(jnp.square(w), axis=(0, 1)) + eps)
            out = out * d[:, None, None, :].astype(out.dtype)
    else:
        delta = weights_delta.value.astype(jnp.float32)  # [B, k, k, I, O]
        wb = w[None] * (1.0 + delta) * style[:, None, None, :, None]
        if demodulate:
            wb = wb * lax.rsqrt(jnp.sum(jnp.square(wb), axis=(1, 2, 3), keepdims=True) + eps)
        out = conv.per_sample_conv(x.astype(dt), wb.astype(dt), mode, k, form)

    if upsample:
        p = len(blur_kernel) - 2 - (k - 1)
        out = blur(out, blur_kernel, pad=((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2)
    return out


def _check_delta(delta: Array, expected: tuple) -> None:
    if tuple(delta.shape) != tuple(expected):
        raise ValueError(f"modulated_conv2d: weights_delta per-sample shape {tuple(delta.shape)}, "
                         f"expected (out, in, k, k) = {tuple(expected)}")


@flax.struct.dataclass
class KernelDelta:
    """Per-sample offsets Δ held as `value` [B, k, k, I, O], the layout the modulated
    kernel is built in, instead of the official [B, O, I, k, k]. Building the kernel from
    the official layout is a transposed gather on every render (46 vs 11 ms per 512x512
    layer at batch 3 on CPU, docs/benchmarks.md); an inversion that renders n times
    transposes each step's Δ once (while adding it) and the result once. `+` adds two."""
    value: Array

    @classmethod
    def from_official(cls, delta: Array) -> "KernelDelta":
        return cls(jnp.transpose(delta, (0, 3, 4, 2, 1)))

    def official(self) -> Array:
        """-> [B, O, I, k, k]."""
        return jnp.transpose(self.value, (0, 4, 3, 1, 2))

    @property
    def official_shape(self) -> tuple:
        b, kh, kw, i, o = self.value.shape
        return (b, o, i, kh, kw)

    def __add__(self, other: "KernelDelta") -> "KernelDelta":
        return KernelDelta(self.value + other.value)


class ModulatedConv2d(nn.Module):
    """rosinality `ModulatedConv2d` with HyperStyle's `weights_delta`.

    Params: `weight` [k, k, in, out] (raw, init N(0, 1)); `modulation` (EqualLinear
    style_dim -> in, bias init 1, stored as is). See `modulated_conv2d` for the math.
    x: [B, H, W, in], style: [B, style_dim] -> [B, H', W', out].
    """
    in_channel: int
    out_channel: int
    kernel_size: int
    style_dim: int
    demodulate: bool = True
    upsample: bool = False
    downsample: bool = False
    blur_kernel: Sequence = (1, 3, 3, 1)
    per_sample: str = "auto"
    precision: str = "fp32"

    @nn.compact
    def __call__(self, x: Array, style: Array, weights_delta: Optional[Array] = None) -> Array:
        k = self.kernel_size
        if x.shape[-1] != self.in_channel:
            raise ValueError(f"ModulatedConv2d {self.name}: input has {x.shape[-1]} channels, "
                             f"expected {self.in_channel}")
        weight = self.param("weight", _normal(1.0), (k, k, self.in_channel, self.out_channel))
        s = EqualLinear(self.style_dim, self.in_channel, bias_init=1.0, name="modulation")(style)
        return modulated_conv2d(x, weight, s, weights_delta, demodulate=self.demodulate,
                                upsample=self.upsample, downsample=self.downsample,
                                blur_kernel=self.blur_kernel, per_sample=self.per_sample,
                                precision=self.precision)
