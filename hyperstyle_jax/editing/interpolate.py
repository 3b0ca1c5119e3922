"""Interpolation between two inversions (SPEC §7.5, §14.4; the notebook's
`get_result_from_vecs` / `interpolate_weight_deltas`): codes AND every weight offset
move linearly, b·α + a·(1 − α), so α = 0 is image A's reconstruction and α = 1 image B's.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from hyperstyle_jax.editing import EditError


def parse_alphas(spec: str) -> list:
    try:
        alphas = [float(a) for a in spec.split(",") if a.strip()]
    except ValueError:
        raise EditError(f"--alphas {spec!r}: expected comma-separated numbers") from None
    if not alphas:
        raise EditError(f"--alphas {spec!r}: no values")
    return alphas


def frame_alphas(n_frames: int) -> np.ndarray:
    """Evenly spaced α from 0 to 1 inclusive, for an animation of n_frames."""
    if n_frames < 2:
        raise EditError(f"--frames must be >= 2, got {n_frames}")
    return np.linspace(0.0, 1.0, n_frames)


def apply(codes: np.ndarray, deltas: Sequence[Optional[np.ndarray]], alphas: Sequence[float]):
    """codes [2, n_styles, D] (A, B) and deltas (None, or [2, out, in, k, k] per layer)
    -> (codes' [K, n_styles, D], deltas' None or [K, out, in, k, k]) for K alphas."""
    codes = np.asarray(codes, np.float32)
    if codes.shape[0] != 2:
        raise EditError(f"interpolation needs a pair of codes, got {codes.shape[0]}")
    a64 = np.asarray(alphas, np.float64)
    # The notebook's alpha is a Python float: 1 - alpha is formed before the float32 product.
    wb, wa = a64.astype(np.float32), (1.0 - a64).astype(np.float32)

    def mix(x):
        x = np.asarray(x, np.float32)
        shape = (-1,) + (1,) * (x.ndim - 1)
        return (x[1][None] * wb.reshape(shape) + x[0][None] * wa.reshape(shape)).astype(np.float32)

    return mix(codes), [None if d is None else mix(d) for d in deltas]


def alpha_key(alpha: float) -> str:
    """0.25 -> 'alpha_0.25', 1.0 -> 'alpha_1' (the npz key / edits folder name)."""
    return f"alpha_{float(alpha):g}"


def save_gif(path: str, frames: Sequence[np.ndarray], fps: float = 15.0) -> None:
    """uint8 [H, W, 3] frames -> a looping GIF (PIL; MP4 would need a video encoder)."""
    from PIL import Image

    ims = [Image.fromarray(f) for f in frames]
    ims[0].save(path, save_all=True, append_images=ims[1:], loop=0,
                duration=max(1, int(round(1000.0 / fps))), optimize=False)


# ----------------------------------------------------------------------------- CLI
# `python -m hyperstyle_jax.edit interpolate` (contract: hyperstyle_jax.editing.cli)


def register(subparsers) -> None:
    from hyperstyle_jax.editing import cli

    p = subparsers.add_parser(
        "interpolate", parents=[cli.common_parser()], formatter_class=cli.HelpFormatter,
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
    p.set_defaults(run=run)


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
    import os

    from hyperstyle_jax.utils import images as imio

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
    for a, b in ctx.progress(todo, "interpolate"):
        stem = f"{a.stem}__{b.stem}"
        images = _render_alphas(ctx, a, b, [0.0, 1.0] + list(alphas))
        recon_a, recon_b, mixed = images[0], images[1], images[2:]
        keys = [alpha_key(x) for x in alphas]
        for k, im in zip(keys, mixed):
            ctx.write_edit(k, stem, im)
        ctx.write_grid(stem, [[("input A", a.image), (a.stem, recon_a)]
                              + [(f"alpha {x:g}", im) for x, im in zip(alphas, mixed)]
                              + [(b.stem, recon_b), ("input B", b.image)]])
        ctx.write_arrays(stem, dict(zip(keys, mixed)))
        if n_frames:
            frames = _render_alphas(ctx, a, b, list(frames_alphas))
            path = args.animation or os.path.join(ctx.out, "animations", f"{stem}.gif")
            if args.animation and len(todo) > 1:
                root, ext = os.path.splitext(path)
                path = f"{root}_{stem}{ext}"
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            save_gif(path, [imio.to_uint8(f) for f in frames], args.fps)
