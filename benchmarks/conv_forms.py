#!/usr/bin/env python
"""The stride-1 3x3 conv in each form, at the shapes HyperStyle runs, fp32 and bf16:
what `AUTO_FORMS` in hyperstyle_jax/models/conv.py is chosen from.

    python benchmarks/conv_forms.py                  # generator + backbone shapes, batch 3
    python benchmarks/conv_forms.py --batch 1 --repeats 5

Forms (see conv.py): 'xla' = XLA's conv (per-sample kernels through lax.map, as 'map'),
'matmul' = nine shifted GEMMs, 'winograd' = Winograd F(2x2, 3x3), and 'gemm' = not a
conv but the ceiling: one (batched) GEMM with the conv's FLOPs, [B, H*W, 9*I] @ [B, 9*I, O]
on patches built before the clock starts (`--forms xla,matmul,gemm`). Kernels 'per-sample'
(the render with offsets) or 'shared' (initial render, hypernetwork backbone). bf16 means
bf16 operands with fp32 accumulation and fp32 outputs. Each row: ms per call (best of
--repeats after a warm-up), achieved GFLOP/s counting 2*9*I*O per output pixel (the
direct conv's work, so Winograd's GFLOP/s is "effective"), and the max relative error
against an fp32 HIGHEST-precision XLA conv. Prints a markdown table and the load average.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from compare_official import load_str  # noqa: E402
from jax import lax  # noqa: E402
from profile_inversion import time_call  # noqa: E402

from hyperstyle_jax.models import conv  # noqa: E402

# (where, spatial size, in, out) of HyperStyle-256's stride-1 3x3 convs.
SHAPES = [("generator 256", 256, 128, 128), ("generator 128", 128, 256, 256),
          ("generator 64", 64, 512, 512), ("generator 32", 32, 512, 512),
          ("backbone 64", 64, 64, 64), ("backbone 32", 32, 128, 128),
          ("backbone 16", 16, 256, 256), ("backbone 8", 8, 512, 512)]


def run_form(form: str, x, w, pad):
    if form == "xla":
        if w.ndim == 5:
            return conv._conv_s1_impl(x, w, pad, "map")
        return lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=conv._NHWC,
                                        preferred_element_type=conv._acc(x, w))
    return conv._conv_s1_impl(x, w, pad, form)


def gemm_ceiling(x, w):
    """(fn, operands): one GEMM per sample (shared kernels: one for the batch) with the
    3x3 conv's FLOPs, on im2col patches built here, outside the timed call."""
    b, h, wd, i = x.shape
    p = lax.conv_general_dilated_patches(x.astype(jnp.float32), (3, 3), (1, 1),
                                         ((1, 1), (1, 1)), dimension_numbers=conv._NHWC)
    p = p.reshape(b, h * wd, 9 * i).astype(x.dtype)
    k = w.reshape(w.shape[:-4] + (9 * i, w.shape[-1]))
    spec = "bmk,bko->bmo" if k.ndim == 3 else "bmk,ko->bmo"
    fn = jax.jit(lambda a, c: jnp.einsum(spec, a, c, preferred_element_type=jnp.float32))
    return fn, (p, k)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--forms", default="xla,matmul,winograd")
    p.add_argument("--kernels", default="per-sample,shared")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--only", help="comma-separated shape names (default: all)")
    args = p.parse_args(argv)
    rng = np.random.RandomState(0)
    rows = []
    print(f"{os.cpu_count()} CPUs, jax {jax.__version__}; load {load_str()}", flush=True)
    for name, hw, i, o in SHAPES:
        if args.only and name not in args.only.split(","):
            continue
        b = args.batch
        x = jnp.asarray(rng.randn(b, hw, hw, i), jnp.float32)
        pad = ((1, 1), (1, 1))
        flops = 2 * 9 * i * o * hw * hw * b
        for kind in args.kernels.split(","):
            shape = (b, 3, 3, i, o) if kind == "per-sample" else (3, 3, i, o)
            w = jnp.asarray(rng.randn(*shape) / np.sqrt(9 * i), jnp.float32)
            ref = np.asarray(run_form("matmul", x, w, pad)) if kind == "per-sample" else \
                np.asarray(lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=conv._NHWC,
                                                    precision=lax.Precision.HIGHEST))
            for pr in args.precisions.split(","):
                dt = conv.compute_dtype(pr)
                xs, ws = x.astype(dt), w.astype(dt)
                for form in args.forms.split(","):
                    if form == "gemm":
                        fn, ops = gemm_ceiling(xs, ws)
                        t, err = time_call(fn, ops, args.repeats), float("nan")  # no conv
                    else:
                        fn = jax.jit(lambda a, k, f=form: run_form(f, a, k, pad))
                        t = time_call(fn, (xs, ws), args.repeats)
                        err = float(np.abs(np.asarray(fn(xs, ws), np.float32) - ref).max()
                                    / np.abs(ref).max())
                    rows.append((name, kind, pr, form, t, flops / t / 1e9, err))
                    print(f"{name} {kind} {pr} {form}: {1e3 * t:.1f} ms, "
                          f"{flops / t / 1e9:.0f} GFLOP/s, err {err:.1e} (load {load_str()})",
                          flush=True)
    print(f"\nStride-1 3x3 convs, batch {args.batch}, best of {args.repeats}; load {load_str()}\n")
    print("| shape | kernel | precision | form | ms | GFLOP/s (direct count) | max rel. err. |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {1e3 * r[4]:.1f} | {r[5]:.0f} | {r[6]:.1e} |")


if __name__ == "__main__":
    main()
