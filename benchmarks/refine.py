#!/usr/bin/env python
"""Seconds per step and per image of the refinement (`hyperstyle_jax.pivotal_tuning`):
PTI's objective (L2 + LPIPS-alex at 256x256) minimised by Adam over the offsets of every
non-toRGB conv (HyperStyle's tuned layers), on a random full-width generator, for each
size and batch size. Also the compiled step's temporaries (XLA `memory_analysis`) for the
whole batch at once and with `micro_batch=1` (one image's gradient at a time). Prints one
table with the machine and the load average.

    python benchmarks/refine.py                                # 256, batch 1 and 4
    python benchmarks/refine.py --sizes 256,1024 --batches 1,4 --steps 5
    python benchmarks/refine.py --official ~/hyperstyle      # + PTI's loop in PyTorch

--official: PTI's tuning loop (official `training/coaches/single_id_coach.py`: Adam on every
parameter of G, lr 3e-4, MSE + LPIPS-alex, the LPIPS break before each step) run on CPU
in this process on the SAME generator and image: batch 1's image 0 exported with
`pivotal_tuning.export_generator` (θ·(1+D), the point our refinement starts from) and
loaded into HyperStyle's official rosinality `Generator` (PTI's own code drives an
SG2-ADA generator; the loop is the same lines). HyperStyle's repo root is needed for
`models/stylegan2/model.py` (its CUDA ops replaced by benchmarks/official_ops/, as
compare_official.py does) and `criteria/lpips` (its AlexNet unpretrained, built here when
torchvision is missing, and its lin weights read from tests/fixtures/06_metrics: timing
only). Same steps, best of the steps'
median; the ratio is per image.

Timing: the loop runs one step per chunk (`chunk_steps=1`), so each progress call marks
a finished step; s/step is the median over the timed steps after a first (compiling) run.
s/image (PTI's 350 steps) = s/step / batch * 350: no image stops early (threshold -inf).

One run (2-core x86_64 CPU shared with other jobs, load 3.9-7, JAX 0.10.2 fp32, torch
2.13 CPU; `--sizes 256 --batches 1,4 --steps 2 --no-memory --official`): ours 3.18 s/step
at batch 1, 4.28 s/step/image at batch 4 (1113 / 1498 s per image at 350 steps); PTI's
loop 8.01 s/step (2804 s per image): 2.5x / 1.9x per image. A PTI-only run minutes
earlier at load 3.8 took 2.17 s/step, so on this loaded machine the ratio is within the
noise: rerun on a quiet one. Memory by `memory_analysis` (temporaries of one step): 256
batch 1 1.54 GiB, batch 4 6.15 GiB (2.25 GiB with micro_batch=1); 1024 batch 1 5.38 GiB
(5.41 GiB with a whole-generator jax.checkpoint); state 0.35 GiB per image.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import sys
import tempfile
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


def official_pti(repo: str, size: int, gen_vars, codes, deltas, target, steps: int,
                 work: str) -> float:
    """Seconds per step of PTI's loop (batch 1, image 0) in PyTorch on CPU; see --official."""
    import types

    import torch
    from compare_official import install_ops

    install_ops(repo)
    pt_path = os.path.join(work, "pti_start.pt")
    pt.export_generator(os.path.join(work, "pti_start"), GeneratorConfig.official(size),
                        gen_vars, [None if d is None else d[0] for d in deltas], pt_path=pt_path)
    lin = os.path.join(os.path.dirname(HERE), "tests", "fixtures", "06_metrics",
                       "lpips_v0.1_alex_lin_ORIGINAL.pth")
    torch.hub.load_state_dict_from_url = lambda *a, **k: torch.load(lin, map_location="cpu")
    sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))
    tv = sys.modules["torchvision"]
    if not hasattr(tv, "models"):  # torchvision's `alexnet().features`, unpretrained
        nn = torch.nn
        features = lambda: nn.Sequential(  # noqa: E731
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(3, 2))
        tv.models = types.SimpleNamespace(
            alexnet=lambda *a, **k: types.SimpleNamespace(features=features()))
    to = torch.nn.Module.to  # the official LPIPS calls .to("cuda"): stay on the CPU
    torch.nn.Module.to = lambda self, *a, **k: self if a[:1] == ("cuda",) else to(self, *a, **k)
    sys.path.insert(0, repo)
    from criteria.lpips.lpips import LPIPS
    from models.stylegan2.model import Generator as TorchGenerator

    g = TorchGenerator(size, 512, 8, channel_multiplier=2)
    g.load_state_dict(torch.load(pt_path, map_location="cpu")["g_ema"], strict=True)
    lpips = LPIPS(net_type="alex").eval()
    w = torch.from_numpy(np.array(codes[:1]))
    real = torch.from_numpy(np.array(target[:1].transpose(0, 3, 1, 2)))
    optimizer = torch.optim.Adam(g.parameters(), lr=3e-4)   # base_coach.configure_optimizers
    marks = [time.perf_counter()]
    for _ in range(steps + 1):                               # single_id_coach.train
        generated = g([w], input_is_latent=True, randomize_noise=False)[0]
        generated = torch.nn.functional.adaptive_avg_pool2d(generated, real.shape[-2:])
        l2 = torch.nn.functional.mse_loss(generated, real)
        loss_lpips = torch.squeeze(lpips(generated, real))
        loss = l2 + loss_lpips
        optimizer.zero_grad()
        if loss_lpips <= float("-inf"):                      # threshold off, as ours here
            break
        loss.backward()
        optimizer.step()
        marks.append(time.perf_counter())
    return float(np.median(np.diff(marks)[1:]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="256", help="generator sizes, comma-separated")
    p.add_argument("--batches", default="1,4", help="batch sizes, comma-separated")
    p.add_argument("--steps", type=int, default=4, help="timed steps per run (after a first one)")
    p.add_argument("--time", action=argparse.BooleanOptionalAction, default=True,
                   help="time the loop (--no-time: memory only, compiles alone)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="memory_analysis of the step (whole batch, and micro_batch=1)")
    p.add_argument("--official", metavar="REPO", help="HyperStyle repo root: also time PTI's "
                   "loop in PyTorch on the first size (see the docstring)")
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
    if args.official:
        size = int(args.sizes.split(",")[0])
        gen, gen_vars, codes, deltas, target = setup(size, 1)
        with tempfile.TemporaryDirectory() as work:
            s_step = official_pti(args.official, size, gen_vars, codes, deltas, target,
                                  args.steps, work)
        per_img = [r["s_per_step"] / b for sz, b, r, _, _ in rows if sz == size]
        print(f"official PTI loop (PyTorch, CPU) at {size}: {s_step:.3f} s/step/img, "
              f"{s_step * PTI_STEPS:.1f} s/img @350; official / ours per image: "
              + ", ".join(f"{s_step / v:.2f}" for v in per_img)
              + f" (batches {args.batches})")
    print(f"# load {load_str()} (end); state = offsets + gradient + Adam moments (fp32); "
          "temp = XLA temporaries of one compiled step (activations saved for backward, "
          "LPIPS, the update)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
