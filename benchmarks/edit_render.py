"""Milliseconds per edited image: rendering only, with the image's deltas already computed
(what an interactive editing page pays per slider move), full-width random weights.

    python benchmarks/edit_render.py                     # 256 and 1024, batch 1 and 4
    python benchmarks/edit_render.py --sizes 256 --batches 1 --repeats 2

Two paths of `hyperstyle_jax.editing.render.EditRenderer`:
  shared    one image's deltas shared by every edit in the batch (InterFaceGAN, GANSpace;
            `Inverter.shared_delta_renderer`: one W·(1+Δ) per layer, shared convolution)
  per_code  one delta set per code (interpolation; `Inverter.batched_renderer`, per-sample conv)
Official generator at that size, default tuned layers, deltas ~ N(0, 0.05²). Compilation
is excluded (ahead of time, then a warm-up call); the time is the median over --repeats
calls divided by the batch. Prints a markdown table and `uptime`.
"""
import argparse
import os
import subprocess
import time

import jax
import numpy as np


def build(size: int):
    from hyperstyle_jax.editing.render import EditRenderer  # noqa: F401 (import check)
    from hyperstyle_jax.inference import Inverter
    from hyperstyle_jax.models.hypernetwork import HyperNetConfig
    from hyperstyle_jax.models.hyperstyle import HyperStyle, HyperStyleConfig
    from hyperstyle_jax.models.stylegan2 import GeneratorConfig, random_init

    gen = GeneratorConfig.official(size)
    model = HyperStyle(HyperStyleConfig(gen, HyperNetConfig.for_generator(gen), None))
    frozen = {"generator": jax.device_get(random_init(gen, 0)),
              "latent_avg": np.zeros((gen.n_latent, 512), np.float32)}
    rng = np.random.RandomState(0)
    deltas = [None if s is None else (0.05 * rng.randn(*s)).astype(np.float32)
              for s in model.tuned_delta_shapes()]
    return Inverter(model, frozen, None, {}), deltas


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="256,1024")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--paths", default="shared,per_code")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    from hyperstyle_jax.editing.render import EditRenderer

    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        inv, deltas = build(size)
        n_params = sum(int(np.prod(d.shape)) for d in deltas if d is not None)
        print(f"size {size}: {n_params / 1e6:.1f}M delta entries per image", flush=True)
        for b in [int(s) for s in args.batches.split(",")]:
            codes = np.random.RandomState(1).randn(b, inv.generator_config.n_latent, 512)
            codes = codes.astype(np.float32)
            for path in args.paths.split(","):
                ds = deltas if path == "shared" else [
                    None if d is None else np.broadcast_to(d, (b,) + d.shape) for d in deltas]
                r = EditRenderer(inv, b)
                t0 = time.perf_counter()
                r(codes, ds)  # compile + first call
                t_first = time.perf_counter() - t0
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    r(codes, ds)
                    times.append(time.perf_counter() - t0)
                ms = 1000 * float(np.median(times)) / b
                rows.append((size, path, b, ms, t_first))
                print(f"  {path} batch {b}: {ms:.0f} ms/image (first call {t_first:.1f} s)",
                      flush=True)
    dev = jax.devices()[0]
    print(f"\nEdit rendering, full width, random weights, {jax.default_backend()} "
          f"({dev.device_kind}, {jax.device_count()} device(s)), {os.cpu_count()} CPUs\n")
    print("| output | path | batch | ms / edited image | compile + first call s |")
    print("|---|---|---|---|---|")
    for size, path, b, ms, tf in rows:
        print(f"| {size} | {path} | {b} | {ms:.0f} | {tf:.0f} |")
    print("\nuptime: " + subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
