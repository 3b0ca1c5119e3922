#!/usr/bin/env python
"""Seconds per step and per image of the refinement (`hyperstyle_jax.pivotal_tuning`):
PTI's objective (L2 + LPIPS-alex at 256x256) minimised by Adam over the offsets of every
non-toRGB conv (HyperStyle's tuned layers), on a random full-width generator, for each
size and batch size. Also the compiled step's temporaries (XLA `memory_analysis`) for the
whole batch at once and with `micro_batch=1` (one image's gradient at a time). Prints one
table with the machine and the load average.

    python benchmarks/refine.py                                # 256, batch 1 and 4
    python benchmarks/refine.py --sizes 256,1024 --batches 1,4 --steps 5

Timing: the loop runs one step per chunk (`chunk_steps=1`), so each progress call marks
a finished step; s/step is the median over the timed steps after a first (compiling) run.
s/image (PTI's 350 steps) = s/step / batch * 350: no image stops early (threshold -inf).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from compare_official import inputs, load_str  # noqa: E402

from hyperstyle_jax import pivotal_tuning as pt  # noqa: E402
from hyperstyle_jax.losses.lpips import init_lpips  # noqa: E402
from hyperstyle_jax.models.stylegan2 import Generator, GeneratorConfig, random_init  # noqa: E402

PTI_STEPS = 350


def setup(size: int, batch: int, seed: int = 0):
    """Random generator, HyperStyle-like codes (one W repeated) and offsets (std 0.05 on
    every non-toRGB conv), a smooth 256x256 target."""
    config = GeneratorConfig.official(size)
    gen = Generator(config)
    gen_vars = random_init(config, seed)
    z = jax.random.normal(jax.random.key(seed + 1), (batch, config.style_dim))
    w = gen.apply(gen_vars, z, method=Generator.mapping)
    codes = np.asarray(jnp.broadcast_to(w[:, None], (batch, config.n_latent, config.style_dim)))
    rng = np.random.RandomState(seed)
    deltas = [None if name.startswith("to_rgb") else
              (0.05 * rng.randn(batch, *shape)).astype(np.float32)
              for name, shape in zip(config.layer_names(), config.delta_shapes())]
    return gen, gen_vars, codes, deltas, inputs(batch, 256, seed)


def memory(gen, gen_vars, lpips_vars, config, codes, deltas, target) -> dict:
    """memory_analysis of one compiled step (bytes): arguments, temporaries, outputs."""
    params, fixed = pt.make_params(gen.config, config, jnp.asarray(target), jnp.asarray(codes),
                                   deltas)
    state = pt.init_state(config, params, jnp.ones((codes.shape[0],), bool))
    fn = jax.jit(functools.partial(pt.run_steps, gen, config), donate_argnums=(3,))
    t = time.perf_counter()
    m = fn.lower(gen_vars, lpips_vars, fixed, state, np.int32(1)).compile().memory_analysis()
    return {"args": m.argument_size_in_bytes, "temp": m.temp_size_in_bytes,
            "out": m.output_size_in_bytes, "compile_s": time.perf_counter() - t}


def timed(gen, gen_vars, lpips_vars, config, codes, deltas, target, steps: int) -> dict:
    run = pt.compile_refiner(gen, gen_vars, codes.shape[0], config, lpips=lpips_vars,
                             chunk_steps=1)
    t = time.perf_counter()
    run(target, codes, deltas, steps=1)          # compiles init, steps, evaluate
    first = time.perf_counter() - t
    marks = []
    t0 = time.perf_counter()
    run(target, codes, deltas, steps=steps, progress=lambda *a: marks.append(time.perf_counter()))
    total = time.perf_counter() - t0
    per_step = float(np.median(np.diff([t0] + marks)[1:])) if steps > 1 else marks[0] - t0
    return {"first_s": first, "s_per_step": per_step, "total_s": total}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="256", help="generator sizes, comma-separated")
    p.add_argument("--batches", default="1,4", help="batch sizes, comma-separated")
    p.add_argument("--steps", type=int, default=4, help="timed steps per run (after a first one)")
    p.add_argument("--time", action=argparse.BooleanOptionalAction, default=True,
                   help="time the loop (--no-time: memory only, compiles alone)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="memory_analysis of the step (whole batch, and micro_batch=1)")
    args = p.parse_args(argv)
    config_kw = dict(lpips_threshold=float("-inf"))
    lpips_vars = init_lpips("alex", hw=64)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, load {load_str()} (start)")
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for b in (int(s) for s in args.batches.split(",")):
            gen, gen_vars, codes, deltas, target = setup(size, b)
            config = pt.RefineConfig(**config_kw)
            r = (timed(gen, gen_vars, lpips_vars, config, codes, deltas, target, args.steps)
                 if args.time else {"first_s": float("nan"), "s_per_step": float("nan")})
            mem = {}
            for m in ((None, 1) if b > 1 else (None,)) if args.memory else ():
                cfg = dataclasses.replace(config, micro_batch=m)
                mem[m] = memory(gen, gen_vars, lpips_vars, cfg, codes, deltas, target)
            state = pt.state_bytes(gen.config, [j for j, d in enumerate(deltas) if d is not None],
                                   b)
            rows.append((size, b, r, mem, state))
            print(f"  done {size}px batch {b}: {r}, load {load_str()}", flush=True)

    gib = 2.0 ** 30
    print(f"\n{'size':>5} {'batch':>5} {'first run s':>11} {'s/step':>8} "
          f"{'s/step/img':>10} {'s/img @350':>10} {'state GiB':>9} "
          f"{'temp GiB (batch / micro 1)':>26}")
    for size, b, r, mem, state in rows:
        temp = " / ".join(f"{v['temp'] / gib:.2f}" for v in mem.values()) or "-"
        print(f"{size:>5} {b:>5} {r['first_s']:>11.1f} {r['s_per_step']:>8.3f} "
              f"{r['s_per_step'] / b:>10.3f} {r['s_per_step'] / b * PTI_STEPS:>10.1f} "
              f"{state / gib:>9.2f} {temp:>26}")
    print(f"# load {load_str()} (end); state = offsets + gradient + Adam moments (fp32); "
          "temp = XLA temporaries of one compiled step (activations saved for backward, "
          "LPIPS, the update)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
