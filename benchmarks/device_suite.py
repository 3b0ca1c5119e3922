#!/usr/bin/env python
"""The accelerator benchmark as one table (run by benchmarks/device_suite.sh).

Rows: HyperStyle inversion at 1024 (W-encoder + 5 iterations, full width, random
weights) for batch 1, 8, 32 in fp32 and bf16 with the backend's 'auto' per-sample form,
and at batch 8 with each per-sample form (grouped / map / matmul); the generator's render
(1024, batch 8, per-sample offsets on every tuned layer); the training step at 1024, batch
8 x 5 iterations (images/s); per row the compiled executable's memory (XLA's
memory_analysis: arguments + outputs + temporaries) and the device's peak so far.

    python benchmarks/device_suite.py              # the real sizes (an accelerator)
    python benchmarks/device_suite.py --smoke      # tiny sizes, runs anywhere in ~1 min

Rows that would not fit in --budget_s (default 450 s, inside the 8-minute slot) are
printed as skipped, cheapest first so that a slow device still fills the table's top.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def build_model(size: int, smoke: bool):
    """(HyperStyleConfig, frozen, hyper_vars) with random weights; smoke: a narrow model."""
    from hyperstyle_jax.models.hypernetwork import HyperNetConfig
    from hyperstyle_jax.models.hyperstyle import HyperStyle, HyperStyleConfig
    from hyperstyle_jax.models.irse import get_blocks
    from hyperstyle_jax.models.stylegan2 import GeneratorConfig, official_channels, random_init

    if smoke:
        gen = GeneratorConfig(size=size, style_dim=32, n_mlp=2,
                              channels=tuple((r, 16) for r, _ in official_channels(size)))
        hcfg = HyperNetConfig.for_generator(
            gen, stem_width=8, stages=((8, 1, 1), (8, 1, 2), (8, 1, 2), (16, 1, 2)),
            hypernet_z_dim=16, hypernet_in_size=16, hypernet_out_size=16,
            hyper_block_inner_c=8, refine_block_inner_c=8, refine_block_out_c=16, spatial=4)
        units = [[16, 16, 2], [16, 32, 2], [32, 32, 2]]  # SE needs >= 16 channels
        wcfg = {"n_styles": gen.n_latent, "style_dim": 32, "units": units, "input_width": 16,
                "mode": "ir_se"}
        fb = (64, 64)
    else:
        gen = GeneratorConfig.official(size)
        hcfg = HyperNetConfig.for_generator(gen)
        wcfg = {"n_styles": gen.n_latent, "style_dim": 512,
                "units": [list(u) for u in get_blocks(50)], "input_width": 64, "mode": "ir_se"}
        fb = (256, 256)
    cfg = HyperStyleConfig(gen, hcfg, wcfg, feedback_hw=fb)
    model = HyperStyle(cfg)
    k = jax.random.key(0)
    x = jnp.zeros((1, *fb, 3), jnp.float32)
    hyper = jax.jit(model.hypernet.init)(k, jnp.zeros((1, *fb, 6)))
    hyper = jax.tree_util.tree_map(lambda a: a * 1e-3 if a.ndim == 1 else a, hyper)
    frozen = {"generator": random_init(gen, 0), "w_encoder": jax.jit(model.w_encoder.init)(k, x),
              "latent_avg": jnp.zeros((gen.n_latent, gen.style_dim), jnp.float32)}
    return cfg, frozen, hyper


def mem_gb(compiled) -> str:
    try:
        m = compiled.memory_analysis()
        b = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
        return f"{b / 2 ** 30:.3f}"
    except Exception:  # not every backend reports it
        return "n/a"


def peak_gb() -> str:
    s = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in s:
        return f"{s['peak_bytes_in_use'] / 2 ** 30:.2f}"
    import resource
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} (host RSS)"


def timed(compiled, args, repeats: int) -> float:
    jax.block_until_ready(compiled(*args))  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def inversion_row(base, batch, precision, form, n_iters, repeats):
    from hyperstyle_jax.inference import stored_for_precision
    from hyperstyle_jax.models.hyperstyle import HyperStyle

    cfg, frozen, hyper = base
    model = HyperStyle(cfg, per_sample=form, precision=precision)
    hyper = stored_for_precision(hyper, precision)
    x = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (batch, *cfg.feedback_hw, 3)),
                    jnp.float32)
    t = time.perf_counter()
    c = jax.jit(lambda f, h, x: model.invert(f, h, x, n_iters)).lower(frozen, hyper, x).compile()
    tc = time.perf_counter() - t
    s = timed(c, (frozen, hyper, x), repeats)
    return {"ms/image": 1000 * s / batch, "images/s": batch / s, "compile s": tc, "mem": mem_gb(c)}


def render_row(base, batch, precision, form, repeats):
    from hyperstyle_jax.models.stylegan2 import Generator

    cfg, frozen, _ = base
    g = cfg.generator
    gen = Generator(g, per_sample=form, precision=precision)
    rng = np.random.RandomState(0)
    w = jnp.asarray(rng.randn(batch, g.n_latent, g.style_dim).astype(np.float32))
    tuned = set(cfg.hypernet.tuned_layers)
    d = [jnp.asarray((0.05 * rng.randn(batch, *s)).astype(np.float32)) if j in tuned else None
         for j, s in enumerate(g.delta_shapes())]
    fn = jax.jit(lambda v, w, d: gen.apply(v, w, input_space="w+", weights_deltas=d)[0])
    t = time.perf_counter()
    c = fn.lower(frozen["generator"], w, d).compile()
    tc = time.perf_counter() - t
    s = timed(c, (frozen["generator"], w, d), repeats)
    return {"ms/image": 1000 * s / batch, "images/s": batch / s, "compile s": tc, "mem": mem_gb(c)}


def train_row(size, batch, n_iters, precision, smoke):
    import train_step as ts_bench

    with tempfile.TemporaryDirectory() as tmp:
        if smoke:
            c = ts_bench.tiny_config()
            c.batch_size = c.eval_batch_size = batch
            c.data.num_train = c.data.num_eval = c.data.render_batch = batch
        else:
            c = ts_bench.full256_config(tmp, batch)
            from hyperstyle_jax.models.stylegan2 import GeneratorConfig
            g = GeneratorConfig.official(size).to_dict()
            c.data.generator = dict(g, channels=tuple(tuple(p) for p in g["channels"]),
                                    blur_kernel=tuple(g["blur_kernel"]))
        c.n_iters_per_batch = n_iters
        c.compute_dtype = "bfloat16" if precision == "bf16" else "float32"
        r = ts_bench.run(c, steps=2, optimizer="adam")
    if r["finite"] != 1.0:
        raise FloatingPointError("the training step's loss or gradient is not finite")
    return {"ms/image": 1000 * r["step_s"] / batch, "images/s": r["images_per_s"],
            "compile s": r["compile_s"], "mem": "n/a"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (a test of the suite)")
    p.add_argument("--budget_s", type=float, default=450)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    if args.smoke:
        size, batches, n_iters, train_b, train_it, fb8 = 16, (1, 2), 1, 2, 1, 2
        args.repeats = 1
    else:
        size, batches, n_iters, train_b, train_it, fb8 = 1024, (1, 8, 32), 5, 8, 5, 8
    base = build_model(size, args.smoke)
    auto = "auto"
    # (label, function, estimated seconds on an H100/H200 incl. compile): cheapest first.
    jobs = []
    for prec in ("fp32", "bf16"):
        jobs.append((f"render {size} b{fb8} {prec} auto", 20,
                     lambda prec=prec: render_row(base, fb8, prec, auto, args.repeats)))
    for b in batches:
        for prec in ("fp32", "bf16"):
            jobs.append((f"invert {size} b{b} {prec} auto", 30 + b,
                         lambda b=b, prec=prec: inversion_row(base, b, prec, auto, n_iters,
                                                              args.repeats)))
    for form in ("grouped", "map", "matmul"):
        for prec in ("fp32", "bf16"):
            jobs.append((f"invert {size} b{fb8} {prec} {form}", 40,
                         lambda form=form, prec=prec: inversion_row(base, fb8, prec, form,
                                                                    n_iters, args.repeats)))
    for prec in ("fp32", "bf16"):
        jobs.append((f"train {size} b{train_b} x{train_it} iters {prec}", 90,
                     lambda prec=prec: train_row(size, train_b, train_it, prec, args.smoke)))

    dev = jax.devices()[0]
    from hyperstyle_jax.models.conv import resolve_per_sample
    print(f"device: {dev.platform} / {dev.device_kind} x{jax.device_count()}; jax "
          f"{jax.__version__}; 'auto' per-sample form here: {resolve_per_sample('auto')}",
          flush=True)
    rows = []
    for label, est, fn in jobs:
        left = args.budget_s - (time.perf_counter() - t_start)
        if not args.smoke and left < est:
            rows.append((label, None, f"skipped: {left:.0f} s left of the budget"))
            continue
        try:
            r = fn()
            rows.append((label, r, ""))
        except Exception as e:  # one failing row (e.g. out of memory) must not hide the rest
            rows.append((label, None, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"))
        print(f"{label}: {rows[-1][1] or rows[-1][2]}", flush=True)
    print("\n| row | ms / image | images / s | compile s | executable GB | peak GB so far | note |")
    print("|---|---|---|---|---|---|---|")
    for label, r, note in rows:
        if r is None:
            print(f"| {label} | | | | | | {note} |")
        else:
            print(f"| {label} | {r['ms/image']:.1f} | {r['images/s']:.2f} | {r['compile s']:.0f} "
                  f"| {r['mem']} | {peak_gb()} | {note} |")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s", flush=True)
    return 0 if all(r is not None for _, r, note in rows if not note.startswith("skipped")) else 1


if __name__ == "__main__":
    sys.exit(main())
