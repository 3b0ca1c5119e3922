#!/usr/bin/env python
"""Where the time of a HyperStyle inversion goes: every component compiled on its own,
with its FLOPs (XLA's cost analysis), its time and the achieved GFLOP/s.

    python benchmarks/profile_inversion.py                         # 256, batch 1 and 8
    python benchmarks/profile_inversion.py --sizes 256,1024 --batches 1,8 --precisions fp32,bf16

Components (full width, random weights with realistic offsets, `benchmarks/invert.py`'s
build): the W-encoder, the initial render (one shared kernel per layer), and per iteration
the hypernetwork's backbone (ResNet-34 on cat[x, y_hat]), its refinement heads (the
non-shared blocks and the shared blocks' codes), the shared hypernet (codes -> kernels)
and the render with per-sample offsets. "whole" is the full 5-iteration inversion as
`Inverter` compiles it; "sum" adds the parts as a 5-iteration run uses them (encoder +
initial render + 5 x (backbone + heads + shared hypernet + offset render)).

FLOPs are counted by XLA on the same component compiled in fp32 with the per-sample form
'loop' (cost analysis counts a while loop's body once, so 'map' and the bf16 GEMM form's
row blocks would be undercounted); time is the best of --repeats calls after a warm-up.
Prints one markdown table per precision with the machine and the load average.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from compare_official import load_str  # noqa: E402
from invert import build  # noqa: E402

from hyperstyle_jax.inference import make_inverter  # noqa: E402
from hyperstyle_jax.models.hyperstyle import HyperStyle  # noqa: E402


def flops_of(compiled) -> float:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0]
    return float(ca.get("flops", float("nan"))) if ca else float("nan")


def components(model: HyperStyle, n_iters: int):
    """name -> (fn(frozen, hyper, x, codes, y_hat, feats, hcodes, deltas), per-inversion count)."""
    hn = model.hypernet
    cfg = model.config.hypernet
    shared = [j for j in cfg.tuned_layers if cfg.block_kind(j) == "shared"]
    own = [j for j in cfg.tuned_layers if cfg.block_kind(j) != "shared"]

    def heads(m, f):
        outs = [m.refinement_blocks[j](f) for j in own]
        codes = [m.refinement_blocks[j].code(f) for j in shared]
        return outs, codes

    return {
        "W-encoder": (lambda fr, hv, x, c, y, f, hc, d: model.encode(fr, x), 1),
        "initial render": (lambda fr, hv, x, c, y, f, hc, d:
                           model.render(fr["generator"], c, None)[1], 1),
        "backbone": (lambda fr, hv, x, c, y, f, hc, d: hn.apply(
            hv, jnp.concatenate([x, y], -1), method=lambda m, t: m.features(t)), n_iters),
        "refinement heads": (lambda fr, hv, x, c, y, f, hc, d: hn.apply(
            hv, f, method=heads), n_iters),
        # in the kernel layout, as an inversion asks for it
        "shared hypernet": (lambda fr, hv, x, c, y, f, hc, d: hn.apply(
            hv, hc, method=lambda m, z: m.shared_weight_hypernet(z, True)), n_iters),
        "render with offsets": (lambda fr, hv, x, c, y, f, hc, d:
                                model.render(fr["generator"], c, d)[1], n_iters),
    }


def time_call(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def profile(size: int, batch: int, precision: str, n_iters: int, repeats: int, only=None):
    base, frozen, hyper = build(size)
    inverter = make_inverter(base.config, frozen, hyper, precision=precision)
    model, hv = inverter.model, inverter.hyper_vars
    # XLA's cost analysis counts a loop's body once: FLOPs are counted on an fp32 model with
    # unrolled per-sample convs and XLA's convs (the bf16 GEMM form's row blocks are a
    # lax.map); the arithmetic is the same in every form and precision.
    counting = HyperStyle(base.config, per_sample="loop", precision="fp32")
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.uniform(-1, 1, (batch, 256, 256, 3)), jnp.float32)
    codes = jax.jit(model.encode)(frozen, x)
    y = jax.jit(lambda fr, c: model.render(fr["generator"], c, None)[1])(frozen, codes)
    feats = jax.jit(lambda hv, t: model.hypernet.apply(hv, t, method=lambda m, u: m.features(u)))(
        hv, jnp.concatenate([x, y], -1))
    cfg = model.config.hypernet
    shared = [j for j in cfg.tuned_layers if cfg.block_kind(j) == "shared"]
    hcodes = jnp.asarray(rng.randn(len(shared) * batch, cfg.hypernet_z_dim), jnp.float32)
    deltas = jax.jit(lambda hv, x, y: model.hypernet.apply(hv, jnp.concatenate([x, y], -1)))(
        hv, x, y)
    args = (frozen, hv, x, codes, y, feats, hcodes, deltas)
    rows = []
    comps = components(model, n_iters)
    counted = components(counting, n_iters)
    for name, (fn, count) in comps.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile()
        tc = time.perf_counter() - t0
        fl = flops_of(jax.jit(counted[name][0]).lower(*args).compile())
        dt = time_call(compiled, args, repeats)
        rows.append((name, count, fl, dt, tc))
        print(f"  {size} b{batch} {precision} {name}: {1e3 * dt / batch:.0f} ms/image, "
              f"{fl / batch / 1e9:.1f} GFLOP/image, {fl / dt / 1e9:.0f} GFLOP/s "
              f"(load {load_str()})", flush=True)
    if not only or "whole" in only:
        whole = jax.jit(lambda fr, hv, x: model.invert(fr, hv, x, n_iters))
        compiled = whole.lower(frozen, hv, x).compile()
        dt = time_call(compiled, (frozen, hv, x), repeats)
        fl = sum(r[1] * r[2] for r in rows)
        rows.append(("whole", 1, fl, dt, 0.0))
        print(f"  {size} b{batch} {precision} whole: {1e3 * dt / batch:.0f} ms/image "
              f"(load {load_str()})", flush=True)
    return rows


def table(size, batch, precision, n_iters, rows) -> str:
    out = [f"\n**{size} px, batch {batch}, {precision}, {n_iters} iterations** "
           f"(load {load_str()})\n",
           "| component | per inversion | GFLOP / image (each) | ms / image (each) "
           "| GFLOP/s | share of sum |",
           "|---|---|---|---|---|---|"]
    parts = [r for r in rows if r[0] != "whole"]
    total = sum(c * t for _, c, _, t, _ in parts)
    for name, count, fl, dt, _ in rows:
        share = "" if name == "whole" else f"{100 * count * dt / total:.0f} %"
        cnt = "" if name == "whole" else f"x{count}"
        out.append(f"| {name} | {cnt} | {fl / batch / 1e9:.1f} | {1e3 * dt / batch:.0f} | "
                   f"{fl / dt / 1e9:.0f} | {share} |")
    tf = sum(c * f for _, c, f, _, _ in parts)
    out.append(f"| sum | | {tf / batch / 1e9:.1f} | {1e3 * total / batch:.0f} | "
               f"{tf / total / 1e9:.0f} | 100 % |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="256", help="generator sizes, comma-separated")
    p.add_argument("--batches", default="1,8", help="batch sizes, comma-separated")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--n_iters", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2, help="timed calls (best of)")
    p.add_argument("--only", help="comma-separated component names (default: all + whole)")
    args = p.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"jax {jax.__version__} ({jax.default_backend()}); load {load_str()}", flush=True)
    tables = []
    for size in [int(s) for s in args.sizes.split(",")]:
        for batch in [int(s) for s in args.batches.split(",")]:
            for pr in args.precisions.split(","):
                rows = profile(size, batch, pr, args.n_iters, args.repeats, only)
                tables.append(table(size, batch, pr, args.n_iters, rows))
    print("\n".join(tables))


if __name__ == "__main__":
    main()
