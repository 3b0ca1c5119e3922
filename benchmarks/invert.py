"""Milliseconds per image of the full HyperStyle inversion (W-encoder + n hypernet
iterations + generator), at full width with random weights.

    python benchmarks/invert.py                      # 256 and 1024 outputs, batch 1 and 8
    python benchmarks/invert.py --sizes 256 --batches 1 --repeats 2

Compilation is excluded (ahead-of-time compile, then one warm-up call); the time is the
median over --repeats calls, divided by the batch size. Prints a markdown table.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def build(size: int):
    from hyperstyle_jax.models.hypernetwork import HyperNetConfig
    from hyperstyle_jax.models.hyperstyle import HyperStyle, HyperStyleConfig
    from hyperstyle_jax.models.irse import get_blocks
    from hyperstyle_jax.models.stylegan2 import GeneratorConfig, random_init

    gen = GeneratorConfig.official(size)
    wcfg = {"n_styles": gen.n_latent, "style_dim": 512, "units": [list(u) for u in get_blocks(50)],
            "input_width": 64, "mode": "ir_se"}
    model = HyperStyle(HyperStyleConfig(gen, HyperNetConfig.for_generator(gen), wcfg))
    x = jnp.zeros((1, 256, 256, 3), jnp.float32)
    k = jax.random.key(0)
    hyper = jax.jit(model.hypernet.init)(k, jnp.zeros((1, 256, 256, 6)))
    # Realistic offsets (|Δ| ~ 0.05) rather than the huge ones of untrained blocks.
    hyper = jax.tree_util.tree_map(lambda a: a * 1e-3 if a.ndim == 1 else a, hyper)
    frozen = {"generator": random_init(gen, 0),
              "w_encoder": jax.jit(model.w_encoder.init)(k, x),
              "latent_avg": jnp.zeros((gen.n_latent, 512), jnp.float32)}
    return model, frozen, hyper


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="256,1024")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--n_iters", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        model, frozen, hyper = build(size)
        for b in [int(s) for s in args.batches.split(",")]:
            fn = jax.jit(lambda f, h, x: model.invert(f, h, x, args.n_iters))
            x = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (b, 256, 256, 3)), jnp.float32)
            t0 = time.perf_counter()
            compiled = fn.lower(frozen, hyper, x).compile()
            t_compile = time.perf_counter() - t0
            jax.block_until_ready(compiled(frozen, hyper, x))
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(compiled(frozen, hyper, x))
                times.append(time.perf_counter() - t0)
            ms = 1000 * float(np.median(times)) / b
            rows.append((size, b, args.n_iters, ms, t_compile))
            print(f"size {size} batch {b}: {ms:.0f} ms/image", flush=True)
    dev = jax.devices()[0]
    print(f"\nHyperStyle inversion, {args.n_iters} iterations, full width, random weights, "
          f"{jax.default_backend()} ({dev.device_kind}, {jax.device_count()} device(s))\n")
    print("| output | batch | iterations | ms / image | compile s |")
    print("|---|---|---|---|---|")
    for size, b, n, ms, tc in rows:
        print(f"| {size} | {b} | {n} | {ms:.0f} | {tc:.0f} |")


if __name__ == "__main__":
    main()
