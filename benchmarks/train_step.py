"""Images per second of the jitted train step (one process, this machine's devices).

    python benchmarks/train_step.py --which tiny          # configs/tiny.py as is
    python benchmarks/train_step.py --which full256 --batch_size 2 --n_iters 1

`full256`: the paper architecture at output 256 with random weights: the official
256 px generator (512 wide up to 64 px, style_dim 512, 8 mapping layers), the default
SharedWeightsHyperNetResNet (ResNet-34 body, shared 512x512 hypernet, default
layers_to_tune), 256x256 feedback, Ranger, L2 + LPIPS (random AlexNet/LPIPS weights, the
same cost as converted ones). The W code is the true latent (the W-encoder's no-grad
forward is not timed) and there is no ID/MoCo term. Times exclude compilation
(reported apart) and are the median over --steps steps after one warm-up step.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config():
    spec = importlib.util.spec_from_file_location("tiny", os.path.join(ROOT, "configs", "tiny.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def full256_config(tmp: str, batch_size: int):
    from hyperstyle_jax.checkpoints import save_converted
    from hyperstyle_jax.losses.lpips import init_lpips
    from hyperstyle_jax.models.stylegan2 import GeneratorConfig
    from hyperstyle_jax.training.config import base_config

    lpips_dir = os.path.join(tmp, "lpips")
    save_converted(lpips_dir, init_lpips("alex", 64, seed=0), {"net": "alex"}, kind="lpips")
    c = base_config()
    c.batch_size = c.eval_batch_size = batch_size
    c.loss.l2_lambda, c.loss.lpips_lambda = 1.0, 0.8
    c.checkpoints.lpips = lpips_dir
    c.w_code = "true_latent"
    g = GeneratorConfig.official(256).to_dict()
    c.data.generator = dict(g, channels=tuple(tuple(p) for p in g["channels"]),
                            blur_kernel=tuple(g["blur_kernel"]))
    c.data.image_hw = (256, 256)
    c.data.num_train = c.data.num_eval = batch_size
    c.data.render_batch = batch_size
    c.data.perturb_std = 0.05
    c.data.num_threads = 0
    return c


def run(config, steps: int, optimizer: str = "ranger") -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from hyperstyle_jax import parallel
    from hyperstyle_jax.data import make_train_iterator
    from hyperstyle_jax.training import hyperstyle_task
    from hyperstyle_jax.training.hyperstyle_step import TrainState, make_train_step
    from hyperstyle_jax.training.optim import make_optimizer

    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    built = hyperstyle_task.build(config)
    if optimizer == "sgd":
        import optax

        tx = optax.sgd(config.optim.lr)
    else:
        config.optim.name = optimizer
        tx = make_optimizer(config.optim)
    hyper = jax.jit(built.model.init_hypernet)(jax.random.PRNGKey(0))
    state = jax.jit(lambda h: TrainState(jnp.zeros((), jnp.int32), h["params"], h["batch_stats"],
                                         tx.init(h["params"])))(hyper)
    frozen = jax.tree.map(jnp.asarray, {"model": built.frozen_model, "loss": built.frozen_loss})
    it = make_train_iterator(config.data, global_batch_size=config.batch_size)
    batch = parallel.global_batch(next(it), mesh)
    it.close()
    dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32
    step = jax.jit(make_train_step(built.model, built.weights, tx, config.n_iters_per_batch,
                                   true_latent=built.true_latent, compute_dtype=dtype,
                                   unroll=config.unroll_iterations), donate_argnums=(0,))
    t0 = time.perf_counter()
    compiled = step.lower(state, frozen, batch).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, frozen, batch)  # warm-up
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = compiled(state, frozen, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    return {"compile_s": compile_s, "step_s": med, "images_per_s": config.batch_size / med,
            "params": n_params, "finite": float(m["finite"])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--which", choices=("tiny", "full256"), default="tiny",
                   help="which config to time (default: tiny)")
    p.add_argument("--steps", type=int, default=5, help="timed steps after the warm-up")
    p.add_argument("--batch_size", type=int, default=None, help="override the batch size")
    p.add_argument("--n_iters", type=int, default=None, help="override n_iters_per_batch")
    p.add_argument("--bf16", action="store_true", help="compute_dtype=bfloat16")
    p.add_argument("--optimizer", choices=("ranger", "adam", "sgd"), default="ranger",
                   help="'sgd' keeps no optimizer state: the full-width config with Ranger "
                        "(params + m + v + slow weights, twice over without buffer donation "
                        "on CPU) needs > 14 GB and was OOM-killed on this 23 GB machine")
    args = p.parse_args(argv)
    import jax

    with tempfile.TemporaryDirectory() as tmp:
        if args.which == "tiny":
            c = tiny_config()
            if args.batch_size:
                c.batch_size = args.batch_size
        else:
            c = full256_config(tmp, args.batch_size or 2)
        if args.n_iters:
            c.n_iters_per_batch = args.n_iters
        if args.bf16:
            c.compute_dtype = "bfloat16"
        r = run(c, args.steps, args.optimizer)
    dev = jax.devices()[0]
    print(f"| {args.which} | {dev.platform} x{jax.device_count()} | batch {c.batch_size} | "
          f"{c.n_iters_per_batch} iters | {args.optimizer} | {c.compute_dtype} | "
          f"{r['params']:,} params | "
          f"compile {r['compile_s']:.1f} s | step {r['step_s'] * 1000:.0f} ms | "
          f"{r['images_per_s']:.2f} img/s |", flush=True)
    return 0 if r["finite"] == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
