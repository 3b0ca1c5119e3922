#!/usr/bin/env python
"""Generator speed: ms per image, without and with per-sample offsets on every conv.

  python benchmarks/generator.py                   # 256 and 1024, batch 1 and 8, all forms
  python benchmarks/generator.py --quick           # 256 at 1/4 width, one repeat (a smoke run)
  python benchmarks/generator.py --sizes 1024 --batches 8 --forms map --repeats 1

Rows: 'none' = no offsets (the cheap modulated conv: scale the input, one shared conv,
demodulate the output; the per-sample form does not matter there), then one row per
per-sample form ('grouped', 'map', 'loop'; see hyperstyle_jax/models/ops.py) with offsets
[B, out, in, k, k] on every conv and toRGB (what HyperStyle does with all layers tuned).
--grad times forward + backward to the deltas instead (what the trainer runs).
Each configuration is jitted once (compile time shown separately); the time is the median
of --repeats calls after one warm-up call. Random weights at the official channel widths
(divided by --width_div); W+ input; constant noise. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hyperstyle_jax.models.conv import PER_SAMPLE_FORMS, resolve_per_sample  # noqa: E402
from hyperstyle_jax.models.stylegan2 import (  # noqa: E402
    Generator,
    GeneratorConfig,
    official_channels,
    random_init,
)


def make_config(size: int, width_div: int) -> GeneratorConfig:
    chans = tuple((r, max(4, c // width_div)) for r, c in official_channels(size))
    return GeneratorConfig(size=size, channels=chans)


def time_one(config, variables, batch, form, repeats, seed=0, grad=False):
    """(compile_s, median seconds per call) for one configuration; with grad, the call is
    forward + backward to the deltas (what the trainer runs), else forward only."""
    gen = Generator(config, per_sample="map" if form == "none" else form)
    rng = np.random.RandomState(seed)
    w = jnp.asarray(rng.randn(batch, config.n_latent, config.style_dim).astype(np.float32))
    deltas = None
    if form != "none":
        deltas = [jnp.asarray((0.05 * rng.randn(batch, *s)).astype(np.float32))
                  for s in config.delta_shapes()]

    def forward(d, v, w):
        return gen.apply(v, w, input_space="w+", weights_deltas=d)[0]

    if grad:
        fn = jax.jit(jax.grad(lambda d, v, w: jnp.mean(forward(d, v, w) ** 2)))
    else:
        fn = jax.jit(forward)

    t0 = time.perf_counter()
    fn.lower(deltas, variables, w).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(fn(deltas, variables, w))  # warm-up (allocations, caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(deltas, variables, w))
        times.append(time.perf_counter() - t0)
    return compile_s, statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--forms", nargs="+", default=["none", *PER_SAMPLE_FORMS],
                   choices=["none", *PER_SAMPLE_FORMS])
    p.add_argument("--repeats", type=int, default=3, help="timed calls per row (median)")
    p.add_argument("--repeats_1024", type=int, default=1, help="timed calls for 1024 rows")
    p.add_argument("--width_div", type=int, default=1, help="divide every channel width")
    p.add_argument("--skip", nargs="*", default=[], metavar="SIZExBATCH:FORM",
                   help="rows to skip, e.g. 1024x8:grouped (too slow to be worth it)")
    p.add_argument("--grad", action="store_true",
                   help="time forward + backward to the deltas (rows with offsets only)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: size 256 at 1/4 width, one repeat")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.width_div, args.repeats = [256], 4, 1

    print(f"# backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"{os.cpu_count()} CPUs, jax {jax.__version__}; 'auto' here = "
          f"{resolve_per_sample('auto')}; width / {args.width_div}"
          f"{'; forward + backward to the deltas' if args.grad else ''}", flush=True)
    print("| size | batch | offsets / form | ms per image | ms per batch | compile s |")
    print("|---:|---:|---|---:|---:|---:|", flush=True)
    for size in args.sizes:
        config = make_config(size, args.width_div)
        variables = random_init(config, 0)
        reps = args.repeats_1024 if size >= 1024 else args.repeats
        for batch in args.batches:
            for form in args.forms:
                if f"{size}x{batch}:{form}" in args.skip:
                    print(f"| {size} | {batch} | {form} | skipped | | |", flush=True)
                    continue
                if args.grad and form == "none":
                    continue
                c, t = time_one(config, variables, batch, form, reps, grad=args.grad)
                label = "none" if form == "none" else f"every conv, {form}"
                print(f"| {size} | {batch} | {label} | {1e3 * t / batch:.0f} | {1e3 * t:.0f} | "
                      f"{c:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
