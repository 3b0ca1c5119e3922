"""How the generator's convolutions run: shared or per-sample kernels, NHWC / HWIO.

`shared_conv(x, w, mode, k)` is one kernel for the whole batch; `per_sample_conv(x, w,
mode, k, form)` a different kernel per sample (HyperStyle's offsets), run in one of
`PER_SAMPLE_FORMS`. mode 'same' (stride 1), 'up' (PyTorch conv_transpose2d stride 2,
computed polyphase on the input grid) or 'down' (stride 2). `conv_s1` is the stride-1
conv with a hand-written backward pass that both the shared up-conv and every per-sample
conv go through. `ops.modulated_conv2d` says what is convolved; this module how.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

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
#   'loop':    an unrolled Python loop over the (static) batch.
# 'auto' picks per backend; the numbers behind the choice are in docs/benchmarks.md.
PER_SAMPLE_FORMS = ("grouped", "map", "loop")
AUTO_PER_SAMPLE = {"cpu": "map", "gpu": "grouped", "cuda": "grouped", "rocm": "grouped",
                   "tpu": "grouped"}


def resolve_per_sample(form: str) -> str:
    """'auto' -> the measured choice for `jax.default_backend()`; others are checked."""
    if form == "auto":
        return AUTO_PER_SAMPLE.get(jax.default_backend(), "grouped")
    if form not in PER_SAMPLE_FORMS:
        raise ValueError(f"per_sample must be 'auto' or one of {PER_SAMPLE_FORMS}, got {form!r}")
    return form


def shared_conv(x: Array, w: Array, mode: str, k: int) -> Array:
    """One shared-weight conv. x: [B, H, W, I], w: [k, k, I, O] (HWIO).

    mode 'same': stride 1, pad k//2. mode 'up': PyTorch conv_transpose2d(stride 2, pad 0)
    with the same weight read as [in, out] -> [B, 2H+k-2, 2W+k-2, O] (see `conv_up`).
    mode 'down': stride 2, pad 0.
    """
    if mode == "same":
        p = k // 2
        return lax.conv_general_dilated(x, w, (1, 1), ((p, p), (p, p)), dimension_numbers=_NHWC)
    if mode == "up":
        return conv_up(x, w, lambda xx, ww, pad: conv_s1(xx, ww, pad))
    if mode == "down":
        return lax.conv_general_dilated(x, w, (2, 2), "VALID", dimension_numbers=_NHWC)
    raise ValueError(mode)


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
    if w.ndim == 4:
        return lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=_NHWC)
    b, h, wd, i = x.shape
    kh, kw, _, o = w.shape[1:]
    if kh == 1 and kw == 1 and pad == ((0, 0), (0, 0)):
        return jnp.einsum("bhwi,bio->bhwo", x, w[:, 0, 0])  # 1x1 (toRGB): a batched matmul
    if form == "map":
        return lax.map(_single_sample_conv(pad), (x, w))
    if form == "loop":
        return jnp.concatenate([_conv_s1_impl(x[j:j + 1], w[j], pad, form) for j in range(b)], 0)
    # grouped: samples become channel groups of one conv.
    xg = jnp.transpose(x, (1, 2, 0, 3)).reshape(1, h, wd, b * i)
    wg = jnp.transpose(w, (1, 2, 3, 0, 4)).reshape(kh, kw, i, b * o)
    y = lax.conv_general_dilated(xg, wg, (1, 1), pad, dimension_numbers=_NHWC,
                                 feature_group_count=b)
    _, ho, wo, _ = y.shape
    return jnp.transpose(y.reshape(ho, wo, b, o), (2, 0, 1, 3))


@functools.lru_cache(maxsize=None)
def _single_sample_conv(pad: tuple) -> Callable:
    """(x [H, W, I], w [kh, kw, I, O]) -> [H', W', O]; one stable function per padding so
    that repeated eager calls of lax.map hit JAX's trace cache."""
    def f(xw):
        return lax.conv_general_dilated(xw[0][None], xw[1], (1, 1), pad,
                                        dimension_numbers=_NHWC)[0]
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
    gx = _conv_s1_impl(g_in, wt, ((max(q[0], 0), max(q[1], 0)), (max(q[2], 0), max(q[3], 0))), form)
    # dW[ky, kx] = sum over pixels of (padded input shifted by (ky, kx)) x g.
    xp = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)])
    spec = "bhwi,bhwo->bio" if w.ndim == 5 else "bhwi,bhwo->io"
    gw = jnp.stack([jnp.stack([jnp.einsum(spec, xp[:, ky:ky + ho, kx:kx + wo], g)
                               for kx in range(kw)], axis=-3) for ky in range(kh)], axis=-4)
    return gx, gw.astype(w.dtype)


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
                                        dimension_numbers=_NHWC)[0]
    if form == "map":
        return lax.map(one, (x, w))
    if form == "loop":
        return jnp.stack([one((x[j], w[j])) for j in range(x.shape[0])])
    b, h, wd, i = x.shape
    kh, kw, _, o = w.shape[1:]
    xg = jnp.transpose(x, (1, 2, 0, 3)).reshape(1, h, wd, b * i)
    wg = jnp.transpose(w, (1, 2, 3, 0, 4)).reshape(kh, kw, i, b * o)
    y = lax.conv_general_dilated(xg, wg, (2, 2), "VALID", dimension_numbers=_NHWC,
                                 feature_group_count=b)
    _, ho, wo, _ = y.shape
    return jnp.transpose(y.reshape(ho, wo, b, o), (2, 0, 1, 3))
