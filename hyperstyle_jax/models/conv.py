"""How the generator's convolutions run: shared or per-sample kernels, NHWC / HWIO.

`shared_conv(x, w, mode, k)` is one kernel for the whole batch; `per_sample_conv(x, w,
mode, k, form)` a different kernel per sample (HyperStyle's offsets), run in one of
`PER_SAMPLE_FORMS`. mode 'same' (stride 1), 'up' (PyTorch conv_transpose2d stride 2,
computed polyphase on the input grid) or 'down' (stride 2). `conv_s1` is the stride-1
conv with a hand-written backward pass that both the shared up-conv and every per-sample
conv go through. `ops.modulated_conv2d` says what is convolved; this module how.

Precision: operands in bfloat16 are convolved with fp32 accumulation and fp32 outputs
(`preferred_element_type`); on CPU a bf16 dot or conv with a bf16 result runs 2-5x slower
than with an fp32 one. `flax_conv(precision)` is the same rule for Flax `nn.Conv` layers.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = Any

_NHWC = ("NHWC", "HWIO", "NHWC")


# ----------------------------------------------------------------------------- forms

# How a batch of different kernels (one per sample) is convolved:
#   'grouped': one conv with feature_group_count=B (what vmap of a conv lowers to);
#   'map':     lax.map (a scan) over the batch, one ordinary conv per sample;
#   'loop':    an unrolled Python loop over the (static) batch;
#   'matmul':  a sum of kh*kw shifted (batched) matmuls, one per tap (`shifted_matmul_conv`),
#              also used for shared kernels when chosen;
#   'winograd': 3x3 kernels as Winograd F(2x2, 3x3) (`winograd_conv3x3`): 16 (batched) GEMMs
#              on transformed 4x4 input tiles, 2.25x fewer multiplies; other kernel sizes
#              (the up-conv's polyphase taps) take 'matmul'. Also used for shared kernels.
# 'auto' picks per backend; the numbers behind the choice are in docs/benchmarks.md. On CPU
# 'loop': a whole fp32 inversion 7-9 % faster than 'map' at batch 4 and 8 (XLA overlaps the
# independent convs and slices statically) for 17-22 % more compile time.
PER_SAMPLE_FORMS = ("grouped", "map", "loop", "matmul", "winograd")
AUTO_PER_SAMPLE = {"cpu": "loop", "gpu": "grouped", "cuda": "grouped", "rocm": "grouped",
                   "tpu": "grouped"}
# bf16 operands on CPU: at >= this many input channels convs take the shifted-matmul form,
# which runs on the bf16 GEMM path (AMX / AVX-512 BF16; XLA's CPU conv computes bf16 at its
# fp32 rate). With few channels the per-tap matmuls are memory bound and the conv wins.
# 128 beat 512 and 0 on whole networks (generator, hypernetwork; docs/benchmarks.md).
AUTO_MATMUL_MIN_CHANNELS_BF16 = {"cpu": 128}
# 1x1 Flax convs in bf16? On CPU no: they are memory bound (the refinement blocks' 512 ->
# in*out heads), so casting their large fp32 weights costs more than bf16 saves (the
# hypernetwork forward measured 268 ms/image with them in bf16, 237-242 ms in fp32).
BF16_1X1_CONVS = {"cpu": False}
# The shifted-matmul form's nine fp32 partial products are each as large as the output;
# streamed through memory they cost more than the GEMMs (bf16, batch 3, 64 px 512 -> 512:
# 110 ms, of which ~30 are GEMM). Computed per sample and block of output rows whose fp32
# output is about this size (a core's L2), they stay in cache: 74-78 ms there, 170 -> 106
# ms at 128 px 256 -> 256 and 340 -> 168 ms at 256 px 128 -> 128 (XLA's conv: 219), bit-
# identical (docs/benchmarks.md).
MATMUL_BLOCK_BYTES = 2 << 20

PRECISIONS = ("fp32", "bf16")


def compute_dtype(precision: str):
    """'fp32' -> float32, 'bf16' -> bfloat16 (the dtype convs and large matmuls run in)."""
    if precision == "fp32":
        return jnp.float32
    if precision == "bf16":
        return jnp.bfloat16
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def _acc(*xs):
    """preferred_element_type: fp32 results for low-precision operands, else the default."""
    return jnp.float32 if any(x.dtype == jnp.bfloat16 for x in xs) else None


def resolve_per_sample(form: str, dtype=None, channels: Optional[int] = None) -> str:
    """'auto' -> the measured choice for `jax.default_backend()` (and, for bf16 operands,
    their input channel count); others are checked."""
    if form == "auto":
        backend = jax.default_backend()
        lim = AUTO_MATMUL_MIN_CHANNELS_BF16.get(backend)
        if (lim is not None and dtype is not None and jnp.dtype(dtype) == jnp.bfloat16
                and channels is not None and channels >= lim):
            return "matmul"
        return AUTO_PER_SAMPLE.get(backend, "grouped")
    if form not in PER_SAMPLE_FORMS:
        raise ValueError(f"per_sample must be 'auto' or one of {PER_SAMPLE_FORMS}, got {form!r}")
    return form


def shifted_matmul_conv(x: Array, w: Array, pad: tuple, stride: int = 1) -> Array:
    """Conv as a sum over taps of (shifted input) @ w[tap]: one GEMM (per-sample: batched
    GEMM) per tap, accumulated in fp32 for bf16 operands. Where the fp32 output exceeds
    MATMUL_BLOCK_BYTES it is computed per sample and block of output rows
    (`_blocked_shifted_matmul`).

    x: [B, H, W, I]; w: [kh, kw, I, O] shared or [B, kh, kw, I, O] per sample;
    pad: ((top, bottom), (left, right)), negative crops. -> [B, H', W', O].
    """
    kh, kw = w.shape[-4], w.shape[-3]
    (pt, pb), (pl, pr) = pad
    ho = (x.shape[1] + pt + pb - kh) // stride + 1
    wo = (x.shape[2] + pl + pr - kw) // stride + 1
    b, o = x.shape[0], w.shape[-1]
    rows = max(1, MATMUL_BLOCK_BYTES // (wo * o * 4))
    if b * ho * wo * o * 4 > MATMUL_BLOCK_BYTES and (b > 1 or rows < ho):
        return _blocked_shifted_matmul(x, w, pad, stride, ho, wo, rows)
    xp = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)])
    return _tap_sum(xp, w, ho, wo, stride)


def _tap_sum(xp: Array, w: Array, ho: int, wo: int, stride: int) -> Array:
    """sum over taps of xp[:, ky::stride, kx::stride] (ho x wo) @ w[..., ky, kx, :, :]."""
    kh, kw = w.shape[-4], w.shape[-3]
    spec = "bhwi,bio->bhwo" if w.ndim == 5 else "bhwi,io->bhwo"
    acc = _acc(xp, w)
    out = None
    for ky in range(kh):
        for kx in range(kw):
            sl = xp[:, ky:ky + (ho - 1) * stride + 1:stride, kx:kx + (wo - 1) * stride + 1:stride]
            t = jnp.einsum(spec, sl, w[..., ky, kx, :, :], preferred_element_type=acc)
            out = t if out is None else out + t
    return out


def _blocked_shifted_matmul(x: Array, w: Array, pad: tuple, stride: int, ho: int, wo: int,
                            rows: int) -> Array:
    """`shifted_matmul_conv` as a loop over (sample, block of `rows` output rows): each
    step's partial products fit in cache. Rows are spread evenly over the blocks; the input
    gets extra zero rows at the bottom if the blocks overshoot, their outputs are cropped.
    bf16 operands enter the loop as their bits (`_blocked_bits`)."""
    if x.dtype == jnp.bfloat16 and w.dtype == jnp.bfloat16:
        return _blocked_bits(x, w, pad, stride, ho, wo, rows)
    return _blocked_loop(x, w, pad, stride, ho, wo, rows, lambda a: a)


def _blocked_loop(x: Array, w: Array, pad: tuple, stride: int, ho: int, wo: int, rows: int,
                  view: Callable) -> Array:
    """The loop of `_blocked_shifted_matmul`; `view` turns each block's slices of x and w
    into the GEMM operands."""
    kh = w.shape[-4]
    b, i = x.shape[0], x.shape[-1]
    n = -(-ho // min(rows, ho))
    rows = -(-ho // n)
    (pt, pb), (pl, pr) = pad
    extra = (n * rows - ho) * stride
    xp = lax.pad(x, jnp.zeros((), x.dtype),
                 [(0, 0, 0), (pt, pb + extra, 0), (pl, pr, 0), (0, 0, 0)])
    win = (rows - 1) * stride + kh

    def block(a):
        s, r = a // n, a % n
        xs = lax.dynamic_slice(xp, (s, r * rows * stride, 0, 0), (1, win, xp.shape[2], i))
        ws = lax.dynamic_index_in_dim(w, s, 0, keepdims=True) if w.ndim == 5 else w
        return _tap_sum(view(xs), view(ws), rows, wo, stride)[0]

    out = lax.map(block, jnp.arange(b * n))              # [b * n, rows, wo, O]
    return out.reshape(b, n * rows, wo, -1)[:, :ho]


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5, 6))
def _blocked_bits(x: Array, w: Array, pad: tuple, stride: int, ho: int, wo: int,
                  rows: int) -> Array:
    """The blocked loop on bf16 operands, carried as their bits (uint16). XLA's CPU backend
    computes a bf16 dynamic-slice in fp32, so with bf16 operands the padded input and all
    per-sample kernels were converted to fp32 before the loop and each block converted its
    slices back; as uint16 each tap is read straight from the padded input and the kernels:
    10-17 % less time per conv (batch 3, 64-256 px), a whole bf16 inversion 7 % faster,
    bit-identical (docs/benchmarks.md). Bitcasts have no derivative, so the tangents (the
    conv is bilinear) run through the loop on fp32 copies viewed as bf16 per block: the
    same products, with the cotangents of x and w summed over blocks in fp32."""
    bits = lambda a: lax.bitcast_convert_type(a, jnp.uint16)  # noqa: E731
    view = lambda a: lax.bitcast_convert_type(a, jnp.bfloat16)  # noqa: E731
    return _blocked_loop(bits(x), bits(w), pad, stride, ho, wo, rows, view)


@_blocked_bits.defjvp
def _blocked_bits_jvp(pad, stride, ho, wo, rows, primals, tangents):
    (x, w), (dx, dw) = primals, tangents
    f32 = lambda a: a.astype(jnp.float32)  # noqa: E731

    def loop(a, c):
        return _blocked_loop(f32(a), f32(c), pad, stride, ho, wo, rows,
                             lambda t: t.astype(jnp.bfloat16))
    return _blocked_bits(x, w, pad, stride, ho, wo, rows), loop(dx, w) + loop(x, dw)


# Winograd F(2x2, 3x3) (Lavin & Gray 2016): Y = A^T [(G g G^T) * (B^T d B)] A per 2x2
# output tile of a 4x4 input tile d. B^T and A^T hold only 0/+-1 (additions); G holds 1/2s.
_WINO_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)


def _wino_in(d: list) -> list:
    """B^T applied along one axis to the four tile rows d0..d3."""
    return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _wino_out(m: list) -> list:
    """A^T applied along one axis to the four products m0..m3."""
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def winograd_conv3x3(x: Array, w: Array, pad: tuple) -> Array:
    """Stride-1 3x3 conv as Winograd F(2x2, 3x3). x: [B, H, W, I]; w: [3, 3, I, O] shared
    or [B, 3, 3, I, O] per sample; pad: ((top, bottom), (left, right)). -> [B, H', W', O].

    The input tiles (stride 2, taken as 16 strided slices) and the kernel are transformed,
    then each of the 16 tile positions is one GEMM [tiles, I] x [I, O] (batched over
    samples for per-sample kernels), accumulated in fp32 for bf16 operands, and the output
    transform interleaves the 2x2 results. The kernel transform runs in fp32 and is cast to
    the operands' dtype. Odd output sizes compute one extra row/column, then crop.
    """
    (pt, pb), (pl, pr) = pad
    b, h, wd, _ = x.shape
    ho, wo = h + pt + pb - 2, wd + pl + pr - 2
    nh, nw = (ho + 1) // 2, (wo + 1) // 2
    xp = lax.pad(x, jnp.zeros((), x.dtype),
                 [(0, 0, 0), (pt, pb + ho % 2, 0), (pl, pr + wo % 2, 0), (0, 0, 0)])
    rows = _wino_in([xp[:, u:u + 2 * nh - 1:2] for u in range(4)])       # [B, nh, Wp, I]
    v = jnp.stack([t for r in rows
                   for t in _wino_in([r[:, :, u:u + 2 * nw - 1:2] for u in range(4)])])
    g = jnp.einsum("ak,...klio,bl->...abio", _WINO_G, w.astype(jnp.float32), _WINO_G,
                   precision=lax.Precision.HIGHEST)
    acc = _acc(x, w)
    if w.ndim == 5:   # per sample: [B, 4, 4, I, O] -> [16, B, I, O]
        u = jnp.moveaxis(g.reshape(b, 16, *g.shape[-2:]), 1, 0).astype(x.dtype)
        m = jnp.einsum("pbhwi,pbio->pbhwo", v, u, preferred_element_type=acc)
    else:
        u = g.reshape(16, *g.shape[-2:]).astype(x.dtype)
        m = jnp.einsum("pbhwi,pio->pbhwo", v, u, preferred_element_type=acc)
    m = m.reshape(4, 4, *m.shape[1:])
    y = [_wino_out([m[a, c] for c in range(4)]) for a in range(4)]     # y[a][px]
    y = [[t for t in _wino_out([y[a][px] for a in range(4)])] for px in range(2)]  # y[px][py]
    out = jnp.stack([jnp.stack([y[px][py] for px in range(2)], axis=3) for py in range(2)],
                    axis=2)                                             # [B, nh, 2, nw, 2, O]
    return out.reshape(b, 2 * nh, 2 * nw, -1)[:, :ho, :wo]


def shared_conv(x: Array, w: Array, mode: str, k: int, form: str = "map") -> Array:
    """One shared-weight conv. x: [B, H, W, I], w: [k, k, I, O] (HWIO).

    mode 'same': stride 1, pad k//2. mode 'up': PyTorch conv_transpose2d(stride 2, pad 0)
    with the same weight read as [in, out] -> [B, 2H+k-2, 2W+k-2, O] (see `conv_up`).
    mode 'down': stride 2, pad 0. form 'matmul': `shifted_matmul_conv`; any other: XLA's conv.
    """
    acc = _acc(x, w)
    if mode == "same":
        p = k // 2
        if k == 1:  # toRGB: one GEMM (XLA's CPU conv with 3 outputs: 65 vs 6 ms at 256 px)
            return jnp.einsum("bhwi,io->bhwo", x, w[0, 0], preferred_element_type=acc)
        if form in ("matmul", "winograd"):
            return conv_s1(x, w, ((p, p), (p, p)), form)
        return lax.conv_general_dilated(x, w, (1, 1), ((p, p), (p, p)), dimension_numbers=_NHWC,
                                        preferred_element_type=acc)
    if mode == "up":
        return conv_up(x, w, lambda xx, ww, pad: conv_s1(xx, ww, pad, form))
    if mode == "down":
        if form in ("matmul", "winograd"):
            return shifted_matmul_conv(x, w, ((0, 0), (0, 0)), 2)
        return lax.conv_general_dilated(x, w, (2, 2), "VALID", dimension_numbers=_NHWC,
                                        preferred_element_type=acc)
    raise ValueError(mode)


@functools.lru_cache(maxsize=None)
def flax_conv(precision: str) -> Optional[Callable]:
    """A `lax.conv_general_dilated` stand-in for Flax `nn.Conv(conv_general_dilated=...)`:
    None for 'fp32' (XLA's conv, unchanged); for 'bf16' the operands are cast to bf16 and
    convolved with fp32 accumulation and an fp32 result, as the shifted-matmul form where
    it is measured faster (plain NHWC/HWIO convs with >= AUTO_MATMUL_MIN_CHANNELS_BF16
    input channels and a spatial kernel), else as XLA's conv; 1x1 convs stay in their
    operands' dtype where BF16_1X1_CONVS says so."""
    if precision == "fp32":
        return None
    dt = compute_dtype(precision)

    def conv_fn(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count=1, precision=None):
        s = tuple(window_strides)
        dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        if (all(rhs.shape[d] == 1 for d in dn.rhs_spec[2:])
                and not BF16_1X1_CONVS.get(jax.default_backend(), True)):
            return lax.conv_general_dilated(lhs, rhs, s, padding, lhs_dilation, rhs_dilation,
                                            dimension_numbers, feature_group_count,
                                            precision=precision)
        lhs, rhs = lhs.astype(dt), rhs.astype(dt)
        plain = (feature_group_count == 1 and not isinstance(padding, str)
                 and all(d == 1 for d in (lhs_dilation or (1, 1)))
                 and all(d == 1 for d in (rhs_dilation or (1, 1))) and s[0] == s[1]
                 and rhs.ndim == 4 and rhs.shape[0] * rhs.shape[1] > 1
                 and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
                 == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
        if plain and resolve_per_sample("auto", dt, rhs.shape[2]) == "matmul":
            return shifted_matmul_conv(lhs, rhs, tuple(tuple(p) for p in padding), s[0])
        return lax.conv_general_dilated(lhs, rhs, s, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count,
                                        precision=precision, preferred_element_type=jnp.float32)

    return conv_fn


def conv_up(x: Array, w: Array, conv: Callable) -> Array:
    """Stride-2 transposed conv, computed on the input grid ("polyphase").

    Output pixel (2m+py, 2n+px) only meets taps ky = py + 2a, kx = px + 2b, so each of the
    four phases is an ordinary small conv of the input (2x2, 2x1, 1x2, 1x1 taps for k=3)
    and interleaving them is a reshape: 9 multiply-adds per (in, out, input pixel), where
    a conv over the zero-dilated input does 36 (XLA's CPU backend measured ~1.3x slower).
    x: [B, H, W, I]; w: [..., k, k, I, O] (leading dims passed through to `conv`);
    conv(x, kernel [..., ty, tx, I, O], padding) -> [B, H', W', O].
    Returns [B, 2H+k-2, 2W+k-2, O].
    """
    k = w.shape[-4]
    h, wd = x.shape[1], x.shape[2]
    pb = (k - 1) // 2  # bottom/right pad: every phase then yields H+pb rows
    rows = []
    for py in range(2):
        ty = (k - py + 1) // 2
        kys = np.array([py + 2 * (ty - 1 - d) for d in range(ty)])
        cols = []
        for px in range(2):
            tx = (k - px + 1) // 2
            kxs = np.array([px + 2 * (tx - 1 - d) for d in range(tx)])
            if ty == 0 or tx == 0:  # k=1: odd output rows/columns meet no tap
                cols.append(jnp.zeros((x.shape[0], h + pb, wd + pb, w.shape[-1]), x.dtype))
                continue
            kern = jnp.take(jnp.take(w, kys, axis=-4), kxs, axis=-3)
            cols.append(conv(x, kern, ((ty - 1, pb), (tx - 1, pb))))
        rows.append(jnp.stack(cols, axis=3))      # [B, H+pb, W+pb, 2 (px), O]
    y = jnp.stack(rows, axis=2)                   # [B, H+pb, 2 (py), W+pb, 2 (px), O]
    b, hp, _, wp, _, o = y.shape
    return y.reshape(b, 2 * hp, 2 * wp, o)[:, :2 * h + k - 2, :2 * wd + k - 2]


# ----------------------------------------------------------------------------- per-sample convs


def _conv_s1_impl(x: Array, w: Array, pad: tuple, form: str) -> Array:
    """Stride-1 conv. x: [B, H, W, I]; w: [kh, kw, I, O] shared or [B, kh, kw, I, O] per
    sample (run in `form`); pad: ((top, bottom), (left, right)). -> [B, H', W', O]."""
    acc = _acc(x, w)
    if form == "winograd":
        if w.shape[-4:-2] == (3, 3):
            return winograd_conv3x3(x, w, pad)
        form = "matmul"
    if form == "matmul":
        return shifted_matmul_conv(x, w, pad)
    if w.ndim == 4:
        return lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=_NHWC,
                                        preferred_element_type=acc)
    b, h, wd, i = x.shape
    kh, kw, _, o = w.shape[1:]
    if kh == 1 and kw == 1 and pad == ((0, 0), (0, 0)):
        # 1x1 (toRGB): a batched matmul
        return jnp.einsum("bhwi,bio->bhwo", x, w[:, 0, 0], preferred_element_type=acc)
    if form == "map":
        return lax.map(_single_sample_conv(pad), (x, w))
    if form == "loop":
        return jnp.concatenate([_conv_s1_impl(x[j:j + 1], w[j], pad, form) for j in range(b)], 0)
    # grouped: samples become channel groups of one conv.
    xg = jnp.transpose(x, (1, 2, 0, 3)).reshape(1, h, wd, b * i)
    wg = jnp.transpose(w, (1, 2, 3, 0, 4)).reshape(kh, kw, i, b * o)
    y = lax.conv_general_dilated(xg, wg, (1, 1), pad, dimension_numbers=_NHWC,
                                 feature_group_count=b, preferred_element_type=acc)
    _, ho, wo, _ = y.shape
    return jnp.transpose(y.reshape(ho, wo, b, o), (2, 0, 1, 3))


@functools.lru_cache(maxsize=None)
def _single_sample_conv(pad: tuple) -> Callable:
    """(x [H, W, I], w [kh, kw, I, O]) -> [H', W', O]; one stable function per padding so
    that repeated eager calls of lax.map hit JAX's trace cache."""
    def f(xw):
        return lax.conv_general_dilated(xw[0][None], xw[1], (1, 1), pad,
                                        dimension_numbers=_NHWC,
                                        preferred_element_type=_acc(*xw))[0]
    return f


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_s1(x: Array, w: Array, pad: tuple, form: str = "map") -> Array:
    """Stride-1 conv with a hand-written backward pass (see `_conv_s1_impl` for shapes).

    XLA's own weight gradient is pathological on CPU in the two places HyperStyle needs it:
    inside `lax.map` (per-sample weights) and for the small asymmetric-padded kernels of
    the polyphase up-conv, both ~100x slower than the forward conv (9.8 s and 13.7 s vs
    0.1 s at [2, 64, 64, 256]). Here dW is kh*kw GEMMs over pixels (input patch x output
    gradient) and dx is the same kind of conv as the forward, with the flipped kernel.
    Reverse mode only (no jvp), which is all the trainer needs.
    """
    return _conv_s1_impl(x, w, pad, form)


def _conv_s1_fwd(x, w, pad, form):
    return _conv_s1_impl(x, w, pad, form), (x, w)


def _conv_s1_bwd(pad, form, res, g):
    x, w = res
    kh, kw = w.shape[-4], w.shape[-3]
    (pt, pb), (pl, pr) = pad
    ho, wo = g.shape[1], g.shape[2]
    # dx: full correlation of g with the flipped, in/out-swapped kernel. Negative pads crop
    # g first; the rest goes into the conv's own padding (XLA's CPU conv on a pre-padded
    # input with VALID padding measured 3x slower).
    q = (kh - 1 - pt, kh - 1 - pb, kw - 1 - pl, kw - 1 - pr)
    g_in = g[:, max(-q[0], 0):g.shape[1] - max(-q[1], 0), max(-q[2], 0):g.shape[2] - max(-q[3], 0)]
    wt = jnp.swapaxes(jnp.flip(w, axis=(-4, -3)), -1, -2)
    # bf16 operands: g (fp32, the forward's output dtype) is cast to the operands' dtype,
    # products accumulate in fp32, and each gradient comes back in its primal's dtype.
    g = g.astype(x.dtype)
    g_in = g_in.astype(x.dtype)
    gx = _conv_s1_impl(g_in, wt, ((max(q[0], 0), max(q[1], 0)), (max(q[2], 0), max(q[3], 0))), form)
    # dW[ky, kx] = sum over pixels of (padded input shifted by (ky, kx)) x g.
    xp = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)])
    spec = "bhwi,bhwo->bio" if w.ndim == 5 else "bhwi,bhwo->io"
    acc = _acc(x, g)
    gw = jnp.stack([jnp.stack([jnp.einsum(spec, xp[:, ky:ky + ho, kx:kx + wo], g,
                                          preferred_element_type=acc)
                               for kx in range(kw)], axis=-3) for ky in range(kh)], axis=-4)
    return gx.astype(x.dtype), gw.astype(w.dtype)


conv_s1.defvjp(_conv_s1_fwd, _conv_s1_bwd)


def per_sample_conv(x: Array, w: Array, mode: str, k: int, form: str) -> Array:
    """A different kernel per sample. x: [B, H, W, I], w: [B, k, k, I, O] -> [B, H', W', O]."""
    if mode == "same":
        p = k // 2
        return conv_s1(x, w, ((p, p), (p, p)), form)
    if mode == "up":
        return conv_up(x, w, lambda xx, ww, pad: conv_s1(xx, ww, pad, form))
    if mode == "down":  # not used by the generator; XLA's own gradient
        return _conv_down_per_sample(x, w, form)
    raise ValueError(mode)


def _conv_down_per_sample(x: Array, w: Array, form: str) -> Array:
    """Stride-2 VALID conv with per-sample w [B, k, k, I, O]."""
    def one(xw):
        return lax.conv_general_dilated(xw[0][None], xw[1], (2, 2), "VALID",
                                        dimension_numbers=_NHWC,
                                        preferred_element_type=_acc(*xw))[0]
    if form in ("matmul", "winograd"):
        return shifted_matmul_conv(x, w, ((0, 0), (0, 0)), 2)
    if form == "map":
        return lax.map(one, (x, w))
    if form == "loop":
        return jnp.stack([one((x[j], w[j])) for j in range(x.shape[0])])
    b, h, wd, i = x.shape
    kh, kw, _, o = w.shape[1:]
    xg = jnp.transpose(x, (1, 2, 0, 3)).reshape(1, h, wd, b * i)
    wg = jnp.transpose(w, (1, 2, 3, 0, 4)).reshape(kh, kw, i, b * o)
    y = lax.conv_general_dilated(xg, wg, (2, 2), "VALID", dimension_numbers=_NHWC,
                                 feature_group_count=b, preferred_element_type=_acc(x, w))
    _, ho, wo, _ = y.shape
    return jnp.transpose(y.reshape(ho, wo, b, o), (2, 0, 1, 3))
