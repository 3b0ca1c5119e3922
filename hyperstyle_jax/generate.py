"""Render images with a converted StyleGAN2 generator.

  python -m hyperstyle_jax.generate --checkpoint ckpt/stylegan2_ffhq --seeds 0-7 --out out/gen
  python -m hyperstyle_jax.generate --checkpoint ckpt/stylegan2_ffhq --latents codes.npy \\
      --input_space w+ --out out/gen --save_npy
  python -m hyperstyle_jax.generate --random_init 64 --seeds 0-7 --out out/random

Seeds: image for seed s uses z = numpy.random.RandomState(s).randn(style_dim) (float32),
so a seed gives the same image whatever the batch size or the other seeds.

Latents: a .npy of z or W [N, style_dim], or W+ [N, n_latent, style_dim].

Truncation pulls W toward the checkpoint's latent_avg (or, if it has none, the mean of
W over 4096 fixed z). Noise: 'const' uses the checkpoint's noise buffers; 'random' draws
noise for image i from fold_in(PRNGKey(--noise_seed), i) (seed s for --seeds).

Output: one PNG per image (seedNNNN.png or NNNNNN.png), grid.png, info.json, and with
--save_npy the float32 un-clipped image [H, W, 3] as .npy beside each PNG.

--random_init SIZE renders a seeded, randomly initialised narrow generator: its images
are meaningless texture, useful only to check an install without any weights.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from hyperstyle_jax.checkpoints import CheckpointError, load_generator_with_latent_avg
from hyperstyle_jax.models.stylegan2 import Generator, GeneratorConfig, random_init
from hyperstyle_jax.utils import cli
from hyperstyle_jax.utils.images import make_grid, save_image, to_uint8
from hyperstyle_jax.utils.paths import atomic_write, parse_index_ranges


class GenerateError(ValueError):
    """Bad input to generate; the message names the file or option."""


def random_config(size: int):
    """A small generator for --random_init: widths 32 up to 32 px, then halving to >= 8."""
    chans, c = [], 32
    for i in range(2, int(math.log2(size)) + 1):
        r = 2 ** i
        if r > 32:
            c = max(8, c // 2)
        chans.append((r, c))
    return GeneratorConfig(size=size, style_dim=64, n_mlp=4, channels=tuple(chans))


def seed_z(seeds, style_dim: int) -> np.ndarray:
    """[N, style_dim] float32: numpy.random.RandomState(seed).randn(style_dim) per seed."""
    return np.stack([np.random.RandomState(s).randn(style_dim) for s in seeds]).astype(np.float32)


def load_latents(path: str, config, input_space: str | None):
    """(latents [N, ...] float32, input_space) from a .npy; errors name the file."""
    if not os.path.isfile(path):
        raise GenerateError(f"{path}: no such file")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise GenerateError(f"{path}: not a readable .npy array ({e})") from None
    if not np.issubdtype(arr.dtype, np.floating):
        raise GenerateError(f"{path}: latents must be floating point, got {arr.dtype}")
    d, n_lat = config.style_dim, config.n_latent
    if arr.ndim == 1:
        arr = arr[None]
    if input_space is None:
        input_space = "w+" if arr.ndim == 3 else "w"
    want = f"[N, {n_lat}, {d}]" if input_space == "w+" else f"[N, {d}]"
    ok = (arr.ndim == 3 and arr.shape[1:] == (n_lat, d)) if input_space == "w+" else \
        (arr.ndim == 2 and arr.shape[1] == d)
    if not ok or arr.shape[0] == 0:
        raise GenerateError(f"{path}: latents have shape {arr.shape}; --input_space "
                            f"{input_space} needs {want} for this {config.size}px generator")
    if not np.isfinite(arr).all():
        raise GenerateError(f"{path}: latents contain NaN or inf")
    return arr.astype(np.float32), input_space


@functools.lru_cache(maxsize=8)
def _renderer(config, per_sample: str, space: str, truncation: float):
    """A jitted (variables, styles, noise, truncation_latent, labels=None [B, c_dim]) -> images
    [B, H, W, 3] (labels: a conditional generator's one-hot classes, z input); cached so
    that repeated runs in one process (tests, notebooks) compile once."""
    gen = Generator(config, per_sample=per_sample)

    @jax.jit
    def render(variables, styles, noise, t_latent, labels=None):
        img, _ = gen.apply(variables, styles, input_space=space, truncation=truncation,
                           truncation_latent=t_latent, noise=noise, labels=labels)
        return img
    return render


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hyperstyle_jax.generate", description=__doc__,
                                formatter_class=cli.HelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="folder from tools/convert_weights.py stylegan2")
    src.add_argument("--random_init", type=int, metavar="SIZE",
                     help="no checkpoint: a seeded random narrow generator of this output size "
                          "(power of 2, 8..1024); images are meaningless, for install checks")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--seeds", help="seeds for z, e.g. '0-7' or '1,5,9-12'")
    what.add_argument("--latents", metavar="FILE.npy", help="z / W [N, style_dim] or W+ "
                                                             "[N, n_latent, style_dim]")
    p.add_argument("--input_space", choices=("z", "w", "w+"), default=None,
                   help="what --latents holds (default: w+ for 3-D arrays, else w); "
                        "--seeds always means z")
    p.add_argument("--truncation", type=float, default=1.0,
                   help="psi in (0, 1]: W <- avg + psi * (W - avg) (default 1: none)")
    p.add_argument("--class", dest="class_index", type=int, default=None, metavar="K",
                   help="class of a conditional (StyleGAN2-ADA) generator: one-hot label K "
                        "for its mapping (needed there, refused for an unconditional one)")
    p.add_argument("--noise", choices=("const", "random"), default="const",
                   help="checkpoint noise buffers (const) or seeded random noise")
    p.add_argument("--noise_seed", type=int, default=0, help="seed of --noise random")
    p.add_argument("--init_seed", type=int, default=0, help="seed of --random_init weights")
    p.add_argument("--batch_size", type=int, default=4, help="images per forward pass")
    p.add_argument("--per_sample", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--out", required=True, help="output folder (created; existing files with "
                                                "the same names are overwritten)")
    p.add_argument("--save_npy", action="store_true",
                   help="also save each float32 un-clipped image [H, W, 3] as .npy")
    p.add_argument("--grid_cols", type=int, default=8, help="images per row of grid.png")
    return p


def main(argv=None) -> int:
    """The command line; bad input is one line on stderr and exit status 2 (`cli.run`)."""
    return cli.run(lambda args: run(build_parser().parse_args(args)), argv)


def run(args) -> int:
    cli.out_dir(args.out)
    if args.batch_size < 1:
        raise GenerateError(f"--batch_size must be >= 1, got {args.batch_size}")
    if not 0.0 < args.truncation <= 1.0:
        raise GenerateError(f"--truncation must be in (0, 1], got {args.truncation}")
    if args.grid_cols < 1:
        raise GenerateError(f"--grid_cols must be >= 1, got {args.grid_cols}")

    # ---- generator
    if args.checkpoint:
        try:
            config, variables, latent_avg = load_generator_with_latent_avg(args.checkpoint)
        except CheckpointError as e:
            raise GenerateError(str(e)) from None
        source = os.path.abspath(args.checkpoint)
    else:
        try:
            config = random_config(args.random_init)
        except ValueError as e:
            raise GenerateError(f"--random_init: {e}") from None
        variables, latent_avg = random_init(config, args.init_seed), None
        source = f"RANDOM INIT (seed {args.init_seed}): not a trained generator"
        print(f"note: --random_init renders a randomly initialised {config.size}px generator "
              "(no checkpoint): the images are meaningless texture", file=sys.stderr)
    gen = Generator(config, per_sample=args.per_sample)
    label = None                       # one-hot [c_dim] of a conditional generator's class
    if config.c_dim:
        if args.class_index is None:
            raise GenerateError(f"this generator is conditional ({config.c_dim} classes): "
                                f"pass --class K with K in [0, {config.c_dim})")
        if not 0 <= args.class_index < config.c_dim:
            raise GenerateError(f"--class {args.class_index}: out of range; this generator has "
                                f"{config.c_dim} classes, [0, {config.c_dim})")
        label = np.eye(config.c_dim, dtype=np.float32)[args.class_index]
    elif args.class_index is not None:
        raise GenerateError(f"--class {args.class_index}: this generator is unconditional "
                            "(no classes)")

    # ---- inputs
    if args.seeds is not None:
        if args.input_space not in (None, "z"):
            raise GenerateError(f"--seeds gives z codes; --input_space {args.input_space} "
                                "applies only to --latents")
        try:
            seeds = parse_index_ranges(args.seeds)
        except ValueError as e:
            raise GenerateError(f"--seeds {args.seeds!r}: {e}") from None
        if min(seeds) < 0 or max(seeds) >= 2 ** 32:
            raise GenerateError(f"--seeds {args.seeds!r}: seeds must be in [0, 2**32)")
        latents, space = seed_z(seeds, config.style_dim), "z"
        names = [f"seed{s:04d}" for s in seeds]
        noise_ids = seeds
    else:
        latents, space = load_latents(args.latents, config, args.input_space)
        names = [f"{i:06d}" for i in range(len(latents))]
        noise_ids = list(range(len(latents)))

    trunc_latent = None
    if args.truncation < 1.0:
        if latent_avg is None:
            print("note: no latent_avg in the checkpoint: truncating toward the mean W of 4096 "
                  "fixed z (PRNGKey(0))", file=sys.stderr)
            trunc_latent = jax.jit(lambda v: gen.apply(
                v, 4096, jax.random.key(0), None if label is None else jnp.asarray(label),
                method=Generator.mean_latent))(variables)
        else:
            trunc_latent = jnp.asarray(latent_avg)

    def noise_for(ids):
        """Per-image noise lists (batch-size independent): [num_layers] of [B, H, W, 1]."""
        keys = [jax.random.split(jax.random.fold_in(jax.random.key(args.noise_seed), i),
                                 config.num_layers) for i in ids]
        return [jnp.stack([jax.random.normal(k[layer], s[1:]) for k in keys])
                for layer, s in enumerate(config.noise_shapes())]

    render = _renderer(config, args.per_sample, space, args.truncation)

    # ---- render, writing each batch as soon as it is done
    bs = min(args.batch_size, len(latents))
    thumbs = []
    starts = range(0, len(latents), bs)
    for start in (cli.progress(starts, desc="generate", unit="batch") if len(latents) > bs
                  else starts):
        chunk = latents[start:start + bs]
        ids = noise_ids[start:start + bs]
        n = len(chunk)
        if n < bs:  # pad the last batch: one compiled shape for all batches
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - n, axis=0)])
            ids = ids + [ids[-1]] * (bs - n)
        noise = noise_for(ids) if args.noise == "random" else None
        labels = (None if label is None or space != "z"
                  else jnp.broadcast_to(jnp.asarray(label), (bs, config.c_dim)))
        imgs = np.asarray(render(variables, jnp.asarray(chunk), noise, trunc_latent, labels))[:n]
        for name, img in zip(names[start:start + n], imgs):
            save_image(os.path.join(args.out, name + ".png"), to_uint8(img))
            if args.save_npy:
                with atomic_write(os.path.join(args.out, name + ".npy")) as f:
                    np.save(f, img.astype(np.float32))
            thumbs.append(to_uint8(img))
    rows = [thumbs[i:i + args.grid_cols] for i in range(0, len(thumbs), args.grid_cols)]
    cell = min(config.size, 256)
    save_image(os.path.join(args.out, "grid.png"), make_grid(rows, cell_hw=(cell, cell)))
    with atomic_write(os.path.join(args.out, "info.json"), "w") as f:
        json.dump({"generator": source, "config": config.to_dict(), "images": names,
                   "input": args.latents or f"seeds {args.seeds}", "input_space": space,
                   "truncation": args.truncation, "noise": args.noise,
                   "class": args.class_index,
                   "noise_seed": args.noise_seed if args.noise == "random" else None},
                  f, indent=1)
    print(f"wrote {len(names)} images, grid.png and info.json to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
