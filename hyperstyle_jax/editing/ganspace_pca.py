"""GANSpace components for any converted generator (so a new domain gets directions).

    python -m hyperstyle_jax.editing.ganspace_pca --generator ckpt/stylegan2_cars \\
        --out cars_pca.pt [--n_samples 1000000 --n_components 80 --batch_size 10000]

Samples z ~ N(0, I), maps it to W with the generator's mapping network (jitted, in
batches on the default device) and runs PCA on W: the covariance is accumulated in float64
on the host from per-batch float32 sums, then diagonalised with numpy. Writes the official
`cars_pca.pt` structure {'mean': (1, D), 'std': (K,), 'comp': (K, 1, D)} (float32):
comp rows are orthonormal principal directions by decreasing variance, std the square
root of their variance (sklearn's `explained_variance_`, n - 1 normalised); each row's
sign makes its largest-magnitude entry positive (sklearn's convention). `.pt` needs
torch; `.npz` holds the same keys. --generator: a converted `stylegan2` or `hyperstyle`
folder. n_samples is rounded up to a whole number of batches.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from hyperstyle_jax import checkpoints
from hyperstyle_jax.convert.editing_files import save_tensor_dict
from hyperstyle_jax.models.stylegan2 import Generator
from hyperstyle_jax.utils import cli
from hyperstyle_jax.utils.paths import atomic_write


def compute_pca(config, params: dict, n_samples: int = 1_000_000, n_components: int = 80,
                batch_size: int = 10_000, seed: int = 0, log=None) -> dict:
    """(GeneratorConfig, generator params) -> {'mean', 'std', 'comp'} float32 numpy."""
    d = config.style_dim
    if not 1 <= n_components <= d:
        raise cli.UserError(f"--n_components must be in 1..{d} (the code width), "
                            f"got {n_components}")
    n_batches = -(-n_samples // batch_size)
    if n_batches * batch_size < 2:
        raise cli.UserError("need at least 2 samples")
    gen = Generator(config)
    key = jax.random.key(seed)
    variables = {"params": jax.device_put(params)}

    def w_of(variables, i):
        z = jax.random.normal(jax.random.fold_in(key, i), (batch_size, d), jnp.float32)
        return gen.apply(variables, z, method=Generator.mapping)

    @jax.jit
    def moments(variables, i, shift):
        # Shifted by a first-batch mean so that float32 sums do not cancel.
        wc = w_of(variables, i) - shift
        return jnp.sum(wc, 0), jnp.matmul(wc.T, wc, precision=jax.lax.Precision.HIGHEST)

    shift = jnp.mean(jax.jit(w_of)(variables, jnp.int32(0)), 0)
    s1 = np.zeros(d, np.float64)
    s2 = np.zeros((d, d), np.float64)
    t0 = time.perf_counter()
    for i in range(n_batches):
        a, b = jax.device_get(moments(variables, jnp.int32(i), shift))
        s1 += a
        s2 += b
        if log and (i + 1) % max(1, n_batches // 10) == 0:
            log(f"  {(i + 1) * batch_size} / {n_batches * batch_size} samples, "
                f"{time.perf_counter() - t0:.1f} s")
    n = n_batches * batch_size
    mean_c = s1 / n
    cov = (s2 - n * np.outer(mean_c, mean_c)) / (n - 1)
    evals, evecs = np.linalg.eigh((cov + cov.T) / 2)
    order = np.argsort(evals)[::-1][:n_components]
    comp = evecs[:, order].T  # [K, D], orthonormal rows
    sign = np.sign(comp[np.arange(len(comp)), np.argmax(np.abs(comp), axis=1)])
    comp = comp * np.where(sign == 0, 1.0, sign)[:, None]
    std = np.sqrt(np.maximum(evals[order], 0.0))
    mean = np.asarray(shift, np.float64) + mean_c
    return {"mean": mean[None].astype(np.float32), "std": std.astype(np.float32),
            "comp": comp[:, None, :].astype(np.float32), "n_samples": n}


def load_generator_any(path: str):
    """A converted `stylegan2` or `hyperstyle` folder -> (GeneratorConfig, params)."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            kind = json.load(f).get("kind")
    except (OSError, ValueError):
        kind = None
    if kind == checkpoints.KIND_HYPERSTYLE:
        cfgs, tree = checkpoints.load_hyperstyle(path)
        return cfgs["generator"], tree["generator"]["params"]
    config, variables = checkpoints.load_generator(path)
    return config, variables["params"]


def save_pca(path: str, pca: dict) -> None:
    arrays = {k: pca[k] for k in ("mean", "std", "comp")}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.lower().endswith(".npz"):
        with atomic_write(path) as f:
            np.savez(f, **arrays)
    else:
        save_tensor_dict(path, arrays)


def main(argv=None) -> int:
    """The command line; a bad file or value is one line on stderr and exit status 1."""
    return cli.run(_main, argv, user_error_code=1)


def _main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m hyperstyle_jax.editing.ganspace_pca",
                                description=__doc__, formatter_class=cli.HelpFormatter)
    p.add_argument("--generator", required=True,
                   help="converted stylegan2 or hyperstyle folder")
    p.add_argument("--out", required=True, help="output .pt (official format) or .npz")
    p.add_argument("--n_samples", type=int, default=1_000_000, help="z samples")
    p.add_argument("--n_components", type=int, default=80,
                   help="principal components kept (80 in cars_pca.pt)")
    p.add_argument("--batch_size", type=int, default=10_000, help="samples per mapping batch")
    p.add_argument("--seed", type=int, default=0, help="seed of the z samples")
    args = p.parse_args(argv)
    if args.n_samples < 2 or args.batch_size < 1:
        p.error("--n_samples must be >= 2 and --batch_size >= 1")
    t0 = time.perf_counter()
    config, params = load_generator_any(args.generator)
    pca = compute_pca(config, params, args.n_samples, args.n_components, args.batch_size,
                      args.seed, log=print)
    save_pca(args.out, pca)
    print(f"wrote {args.out}: {args.n_components} components of W ({config.style_dim} wide) from "
          f"{pca['n_samples']} samples; std {pca['std'][0]:.3g} .. {pca['std'][-1]:.3g}; "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
