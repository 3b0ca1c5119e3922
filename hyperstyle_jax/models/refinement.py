"""HyperStyle's refinement blocks and the shared-weights hypernetwork
(official `models/hypernetworks/refinement_blocks.py`, `shared_weights_hypernet.py`).

Each block maps the backbone features [B, 16, 16, C] to a weight offset Δ for one
generator layer, in the official layout [B, out, in, k, k]. Names mirror
`models/hypernetworks/refinement_blocks.py` with the `Sequential` indices kept
(`convs_0`, `convs_2`, …: the LeakyReLUs sit at the odd indices; `output_0`/`output_1`).

* `RefinementBlock` (non-shared layers): strided convs down to 2x2 (1x1 for toRGB), then
  a 1x1 conv to in*out values: one value per (out, in) pair repeated over k x k, or, for
  toRGB layers, the 1x1 kernel directly.
* `HyperRefinementBlock` (the nine 3x3 512->512 layers): convs down to 1x1, EqualLinear,
  then the ONE `SharedWeightsHypernet` used by every such block. In Flax the shared
  hypernet is passed in as a module attribute (owned by the parent, so its params exist
  once); `HyperNetwork` instead calls it once on all blocks' codes (`code()`).
* `SharedWeightsHypernet`: z @ w2 + b2 -> (B, in, z) -> @ w1 + b1 -> (B, out, in, f, f),
  with exactly the official row-major reshapes.
* `SeparableBlock`, `RefinementBlockSeparable`: the separable ablation.
"""
from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperstyle_jax.models.conv import compute_dtype
from hyperstyle_jax.models.layers import check_1x1, conv2d, leaky_relu
from hyperstyle_jax.models.ops import EqualLinear, KernelDelta


def _n_pools(spatial: int) -> int:
    n = int(math.log2(spatial))
    if 2 ** n != spatial:
        raise ValueError(f"spatial must be a power of two (the features' size), got {spatial}")
    return n


def strided_convs(x: jax.Array, widths: list[int], first_stride: int,
                  precision: str = "fp32") -> jax.Array:
    """`Sequential(Conv3x3(s, p1), LeakyReLU, …)` as modules `convs_0`, `convs_2`, …

    Call from a compact method. The first conv has stride `first_stride`, the rest 2.
    """
    for i, w in enumerate(widths):
        x = conv2d(w, 3, first_stride if i == 0 else 2, 1, name=f"convs_{2 * i}",
                   precision=precision)(x)
        x = leaky_relu(x)
    return x


class RefinementBlock(nn.Module):
    """Non-shared refinement block for one generator layer with kernel (k, in, out).

    features [B, 16, 16, n_channels] -> Δ [B, out, in, k, k]. For 3x3 layers the stride-2
    convs end at 2x2, then average pool + 1x1 conv (`output_1`) give in*out values, viewed
    (out, in) and repeated over the k x k taps. toRGB layers: one more conv to 1x1, then
    the 1x1 conv `output_0` gives the kernel directly. Official widths: inner_c 256, out_c 512.
    """
    kernel_size: int
    in_channels: int
    out_channels: int
    is_to_rgb: bool
    inner_c: int = 256
    out_c: int = 512
    spatial: int = 16
    precision: str = "fp32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, cin, cout = self.kernel_size, self.in_channels, self.out_channels
        num_pools = _n_pools(self.spatial) - 1 - (1 if k == 3 else 0)
        x = strided_convs(x, [self.inner_c] * num_pools + [self.out_c], 2, self.precision)
        b = x.shape[0]
        if self.is_to_rgb:
            check_1x1(x, "RefinementBlock (toRGB)")
            x = conv2d(cin * cout, 1, name="output_0", precision=self.precision)(x)
            return x.reshape(b, cout, cin, k, k)
        x = jnp.mean(x, axis=(1, 2), keepdims=True)  # AdaptiveAvgPool2d(1)
        x = conv2d(cin * cout, 1, name="output_1", precision=self.precision)(x)
        x = x.reshape(b, cout, cin, 1, 1)
        return jnp.broadcast_to(x, (b, cout, cin, k, k))


class SharedWeightsHypernet(nn.Module):
    """Official `SharedWeightsHypernet(f_size, z_dim, out_size, in_size)`, mode None.

    Params `w1` [z_dim, out*f*f], `b1`, `w2` [z_dim, in*z_dim], `b2`, init
    fmod(N(0,1)/40, 2) as the official. z [N, z_dim] -> kernel [N, out, in, f, f]:
        h_in    = (z @ w2 + b2).reshape(N, in, z_dim)
        h_final = h_in @ w1 + b1                 # [N, in, out*f*f]
        kernel  = h_final.reshape(N, out, in, f, f)   # plain row-major reshape, as `view`
    (the axis called `in` in h_in is not the kernel's `in` axis; the reshape mixes them
    exactly as the official does). N may stack several blocks' codes: one matmul with w2.
    precision 'bf16': both products on bf16 operands (w1/w2 may already be stored in bf16)
    with fp32 accumulation and fp32 results; the biases are added in fp32.
    """
    f_size: int = 3
    z_dim: int = 512
    out_size: int = 512
    in_size: int = 512
    precision: str = "fp32"

    @nn.compact
    def __call__(self, z: jax.Array, kernel_layout: bool = False) -> jax.Array:
        """kernel_layout: return the same kernels as [N, f, f, in, out] (`KernelDelta`'s
        layout). With in_size == out_size h_in's rows are the kernel's out channels and w1's
        columns its (in, kh, kw), so all codes' kernels come out of ONE GEMM, w1 (columns
        reordered to (kh, kw, in))^T @ [h_in[0]^T | h_in[1]^T | ...], as [(kh, kw, in), N,
        out], whose move of N to the front rides along with the accumulation that follows.
        No transpose of the kernels themselves and no stack of per-code products: a whole
        bf16 inversion on CPU 2.28 / 2.31 vs 2.39 / 2.41 s/image at batch 3 against one GEMM
        per code, fp32 the same (docs/benchmarks.md)."""
        def init(key, shape):
            return jnp.fmod(jax.random.normal(key, shape, jnp.float32) / 40, 2)

        f, zd, o, i = self.f_size, self.z_dim, self.out_size, self.in_size
        w1 = self.param("w1", init, (zd, o * f * f))
        b1 = self.param("b1", init, (o * f * f,))
        w2 = self.param("w2", init, (zd, i * zd))
        b2 = self.param("b2", init, (i * zd,))
        if z.ndim != 2 or z.shape[1] != zd:
            raise ValueError(f"SharedWeightsHypernet: expected codes [N, {zd}], got {z.shape}")
        n = z.shape[0]
        dt = compute_dtype(self.precision)

        def mm(a, b):
            if self.precision == "fp32":
                return a @ b
            return jnp.matmul(a.astype(dt), b.astype(dt), preferred_element_type=jnp.float32)
        h_in = (mm(z, w2) + b2).reshape(n, i, zd)
        if not (kernel_layout and i == o):
            h_final = mm(h_in, w1) + b1
            kernel = h_final.reshape(n, o, i, f, f)
            return KernelDelta.from_official(kernel).value if kernel_layout else kernel
        w1k = jnp.transpose(w1.reshape(zd, i, f, f), (2, 3, 1, 0)).reshape(f * f * i, zd)
        b1k = jnp.transpose(b1.reshape(i, f, f), (1, 2, 0)).reshape(f * f * i, 1, 1)
        h_t = jnp.transpose(h_in, (2, 0, 1)).reshape(zd, n * o)   # [z, (N, out)]: small
        g = mm(w1k, h_t).reshape(f * f * i, n, o) + b1k           # [(f, f, in), N, out]
        return jnp.moveaxis(g, 1, 0).reshape(n, f, f, i, o)


class HyperRefinementBlock(nn.Module):
    """Refinement block of a shared layer: features -> code -> shared hypernet -> Δ.

    convs: conv3x3 s1 (`convs_0`) then stride-2 convs to 1x1 (`convs_2`…`convs_8` for 16x16),
    widths inner_c … inner_c, out_c; `code.view(-1, out_c)`; `linear` = EqualLinear(out_c, out_c).
    `hypernet`: the shared `SharedWeightsHypernet` module (owned by the parent). Official
    widths: inner_c 128, out_c 512 (= the hypernet's z_dim).
    """
    inner_c: int = 128
    out_c: int = 512
    spatial: int = 16
    hypernet: Optional[nn.Module] = None
    precision: str = "fp32"

    @nn.compact
    def code(self, x: jax.Array) -> jax.Array:
        """features [B, 16, 16, n_channels] -> code [B, out_c] (the hypernet's input z)."""
        num_pools = _n_pools(self.spatial)
        x = strided_convs(x, [self.inner_c] * num_pools + [self.out_c], 1, self.precision)
        check_1x1(x, "HyperRefinementBlock")
        return EqualLinear(self.out_c, self.out_c, name="linear")(x.reshape(x.shape[0], self.out_c))

    def __call__(self, x: jax.Array) -> jax.Array:
        """features -> Δ [B, out, in, f, f] through `self.hypernet`."""
        if self.hypernet is None:
            raise ValueError("HyperRefinementBlock: no shared hypernet given; use .code() and "
                             "apply the shared hypernet in the parent")
        return self.hypernet(self.code(x))


class SeparableBlock(nn.Module):
    """Official `SeparableBlock(input_size, kernel_channels_in, kernel_channels_out, kernel_size)`.

    features [B, 1, 1, input_size] (or [B, input_size]) -> kernel [B, out, in, k, k]:
      kin  = make_kernel_in(f).view(B, k, k, 1, in)
      kout = make_kernel_out(f).view(B, k, k, out, 1)
      K    = kout @ kin                                            # [B, k, k, out, in]
      K    = kernel_linear_in(K).permute(0, 1, 2, 4, 3)            # [B, k, k, in, out]
      K    = kernel_linear_out(K).permute(0, 4, 3, 1, 2)           # [B, out, in, k, k]
    """
    input_size: int
    kernel_channels_in: int
    kernel_channels_out: int
    kernel_size: int

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        k, ci, co = self.kernel_size, self.kernel_channels_in, self.kernel_channels_out
        if features.ndim == 4:
            check_1x1(features, "SeparableBlock")
        f = features.reshape(-1, self.input_size)
        kin = nn.Dense(k * k * ci, name="make_kernel_in")(f).reshape(-1, k, k, 1, ci)
        kout = nn.Dense(k * k * co, name="make_kernel_out")(f).reshape(-1, k, k, co, 1)
        kernel = kout @ kin
        kernel = jnp.swapaxes(nn.Dense(ci, name="kernel_linear_in")(kernel), 3, 4)
        kernel = nn.Dense(co, name="kernel_linear_out")(kernel)
        return jnp.transpose(kernel, (0, 4, 3, 1, 2))


class RefinementBlockSeparable(nn.Module):
    """Separable-variant block: stride-2 convs from 16x16 to 1x1 (`convs_0`…`convs_6`), then
    `output_0` = a 1x1 conv (toRGB layers, viewed (out, in, k, k)) or a `SeparableBlock`.
    features [B, 16, 16, n_channels] -> Δ [B, out, in, k, k]. Official: inner_c 256, out_c 512.
    """
    kernel_size: int
    in_channels: int
    out_channels: int
    is_to_rgb: bool
    inner_c: int = 256
    out_c: int = 512
    spatial: int = 16
    precision: str = "fp32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, cin, cout = self.kernel_size, self.in_channels, self.out_channels
        num_pools = _n_pools(self.spatial) - 1
        x = strided_convs(x, [self.inner_c] * num_pools + [self.out_c], 2, self.precision)
        check_1x1(x, "RefinementBlockSeparable")
        if self.is_to_rgb:
            x = conv2d(cin * cout, 1, name="output_0", precision=self.precision)(x)
            return x.reshape(x.shape[0], cout, cin, k, k)
        return SeparableBlock(self.out_c, cin, cout, k, name="output_0")(x)
