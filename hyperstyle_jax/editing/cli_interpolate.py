"""`python -m hyperstyle_jax.edit interpolate`: from image A to image B (the math is
`editing.interpolate`; the subcommand contract is in `editing.cli`).

Writes edits/alpha_<a>/<A>__<B>.png, grids/<A>__<B>.png (input A | A | alphas | B |
input B), with --save_npy arrays/<A>__<B>.npz, and with --frames a looping GIF. With
several processes the pairs are shared out (each process inverts or reads every image).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image

from hyperstyle_jax import parallel
from hyperstyle_jax.editing import EditError
from hyperstyle_jax.editing.cli import common_parser
from hyperstyle_jax.editing.interpolate import apply, frame_alphas
from hyperstyle_jax.utils.cli import HelpFormatter
from hyperstyle_jax.utils.images import to_uint8
from hyperstyle_jax.utils.paths import atomic_write


def parse_alphas(spec: str) -> list:
    try:
        alphas = [float(a) for a in spec.split(",") if a.strip()]
    except ValueError:
        raise EditError(f"--alphas {spec!r}: expected comma-separated numbers") from None
    if not alphas:
        raise EditError(f"--alphas {spec!r}: no values")
    return alphas


def alpha_key(alpha: float) -> str:
    """0.25 -> 'alpha_0.25', 1.0 -> 'alpha_1' (the npz key / edits folder name)."""
    return f"alpha_{float(alpha):g}"


def save_gif(path: str, frames: Sequence[np.ndarray], fps: float = 15.0) -> None:
    """uint8 [H, W, 3] frames -> a looping GIF (PIL; MP4 would need a video encoder)."""
    ims = [Image.fromarray(f) for f in frames]
    with atomic_write(path) as f:
        ims[0].save(f, format="GIF", save_all=True, append_images=ims[1:], loop=0,
                    duration=max(1, int(round(1000.0 / fps))), optimize=False)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "interpolate", parents=[common_parser()], formatter_class=HelpFormatter,
        help="interpolate codes and weight offsets between two inverted images",
        description="Linear interpolation of codes and of every weight offset from image A "
                    "(alpha 0) to image B (alpha 1). Writes edits/alpha_<a>/<A>__<B>.png, "
                    "grids/<A>__<B>.png (input A | A | alphas | B | input B) and, with "
                    "--save_npy, arrays/<A>__<B>.npz with keys alpha_<a>.")
    p.add_argument("--pair", nargs=2, action="append", metavar=("A", "B"),
                   help="stems of the two images (repeatable; default: the only two inputs)")
    p.add_argument("--alphas", default="0.25,0.5,0.75", help="comma-separated alphas")
    p.add_argument("--frames", type=int, default=0,
                   help="animation frames from alpha 0 to 1 (0: no animation, or 30 with "
                        "--animation)")
    p.add_argument("--animation", metavar="FILE.gif",
                   help="GIF path (default OUT/animations/<A>__<B>.gif when --frames is set); "
                        "with several pairs, the pair's stems are added to the name")
    p.add_argument("--fps", type=float, default=15.0, help="animation frame rate")
    # A pair may join any two inputs: with several processes each holds every image and
    # renders its block of the pairs.
    p.set_defaults(run=run, split="pairs")


def _render_alphas(ctx, a, b, alphas) -> np.ndarray:
    """Chunked so that only batch_size interpolated offsets exist at a time."""
    pair_codes = np.stack([a.codes, b.codes])
    pair_deltas = [None if d is None else np.stack([d, b.deltas[j]])
                   for j, d in enumerate(a.deltas)]
    out, bs = [], ctx.renderer.batch_size
    for s in range(0, len(alphas), bs):
        codes, deltas = apply(pair_codes, pair_deltas, alphas[s:s + bs])
        out.append(ctx.render(codes, deltas))
    return np.concatenate(out)


def run(args, ctx) -> None:
    alphas = parse_alphas(args.alphas)
    n_frames = args.frames or (30 if args.animation else 0)
    if n_frames:
        frames_alphas = frame_alphas(n_frames)
    if args.animation and not args.animation.lower().endswith(".gif"):
        raise EditError(f"--animation {args.animation}: only GIF is written (no video encoder "
                        f"is a dependency); use a .gif name")
    pairs = args.pair
    if not pairs:
        if len(ctx.items) != 2:
            raise EditError(f"--pair A B is needed with {len(ctx.items)} inputs")
        pairs = [[ctx.items[0].stem, ctx.items[1].stem]]
    todo = [(ctx.item(x), ctx.item(y)) for x, y in pairs]  # fail on a bad stem before work
    n_pairs = len(todo)
    for a, b in ctx.progress(parallel.process_shard(todo), "interpolate"):
        stem = f"{a.stem}__{b.stem}"
        images = _render_alphas(ctx, a, b, [0.0, 1.0] + list(alphas))
        recon_a, recon_b, mixed = images[0], images[1], images[2:]
        keys = [alpha_key(x) for x in alphas]
        for k, im in zip(keys, mixed):
            ctx.write_edit(k, stem, im, source=a.stem)  # --paste_back: into A's photo
        ctx.write_grid(stem, [[("input A", a.image), (a.stem, recon_a)]
                              + [(f"alpha {x:g}", im) for x, im in zip(alphas, mixed)]
                              + [(b.stem, recon_b), ("input B", b.image)]])
        ctx.write_arrays(stem, dict(zip(keys, mixed)))
        if n_frames:
            frames = _render_alphas(ctx, a, b, list(frames_alphas))
            path = args.animation or os.path.join(ctx.out, "animations", f"{stem}.gif")
            if args.animation and n_pairs > 1:
                root, ext = os.path.splitext(path)
                path = f"{root}_{stem}{ext}"
            save_gif(path, [to_uint8(f) for f in frames], args.fps)
