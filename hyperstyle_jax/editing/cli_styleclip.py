"""`python -m hyperstyle_jax.edit styleclip`: StyleCLIP global directions (the math is
`editing.styleclip`, as official `editing/styleclip/edit.py`; contract in `editing.cli`).

    python -m hyperstyle_jax.edit styleclip --checkpoint CKPT --inversion inv/ --out out/ \\
        --neutral "a face" --target "a smiling face" --alphas -5,0,5 --betas 0.11,0.13,0.16 \\
        --clip ckpt/clip_vit_b32 --fs3 fs3.npy --s_stats S_mean_std

Per image: s = the StyleSpace of its codes; per β the direction Δs (`styleclip.get_delta_s`
from Δi = CLIP text direction neutral -> target); per α the render of s + α·Δs with the
image's own deltas. Keys `styleclip_b<β>_a<α>`; one grid row per β (input |
reconstruction | one column per α). `--delta_i FILE.npy` gives Δi directly (no CLIP).
The official edit.py uses β = linspace(0.11, 0.16, 5) and α = linspace(-5, 5, 11).
"""
from __future__ import annotations

import numpy as np

from hyperstyle_jax.clip import ClipEncoder
from hyperstyle_jax.editing import EditError, styleclip
from hyperstyle_jax.editing.cli import common_parser, number_label, parse_numbers
from hyperstyle_jax.models import stylespace
from hyperstyle_jax.utils.cli import HelpFormatter


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "styleclip", parents=[common_parser()], formatter_class=HelpFormatter,
        help="text-driven edits: StyleCLIP global directions in StyleSpace",
        description="s + alpha * delta_s(neutral -> target, beta) in StyleSpace, rendered with "
                    "each image's own weight offsets. One grid row per beta: input | "
                    "reconstruction | one column per alpha.")
    p.add_argument("--neutral", default="a face", help="neutral prompt")
    p.add_argument("--target", default="a smiling face", help="target prompt")
    p.add_argument("--alphas", default="-5,0,5", help="comma-separated edit strengths")
    p.add_argument("--betas", default="0.11,0.13,0.16",
                   help="comma-separated disentanglement thresholds (channels with "
                        "|fs3 @ delta_i| < beta are not edited)")
    p.add_argument("--clip", metavar="DIR",
                   help="converted CLIP folder (tools/convert_weights.py clip)")
    p.add_argument("--delta_i", metavar="FILE",
                   help="instead of --clip: the CLIP text direction, a .npy vector")
    p.add_argument("--fs3", required=True, metavar="FILE",
                   help="fs3.npy: per-channel CLIP directions (StyleCLIP's, or "
                        "tools/styleclip_stats.py)")
    p.add_argument("--s_stats", required=True, metavar="FILE",
                   help="S_mean_std: StyleSpace statistics (only the stds are used)")
    p.add_argument("--templates", metavar="FILE",
                   help="prompt templates, one per line with '{}' (default: StyleCLIP's 79)")
    p.set_defaults(run=run)


def text_direction(args) -> np.ndarray:
    """Δi from --delta_i or from CLIP (--clip) and the prompts."""
    if (args.clip is None) == (args.delta_i is None):
        raise EditError("give exactly one of --clip DIR and --delta_i FILE")
    if args.delta_i:
        try:
            d = np.load(args.delta_i, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise EditError(f"{args.delta_i}: not a readable .npy array ({e})") from None
        if d.ndim != 1 or not np.all(np.isfinite(d)) or not np.linalg.norm(d) > 0:
            raise EditError(f"{args.delta_i}: expected a finite non-zero vector, got shape "
                            f"{d.shape}")
        return np.asarray(d, np.float32)
    templates = None
    if args.templates:
        try:
            with open(args.templates) as f:
                templates = f.readlines()  # as the official: newlines kept
        except OSError as e:
            raise EditError(f"{args.templates}: {e}") from None
        if not templates or any("{}" not in t for t in templates):
            raise EditError(f"{args.templates}: every template needs a '{{}}'")
    if args.neutral.strip().lower() == args.target.strip().lower():
        raise EditError(f"--neutral and --target are the same prompt ({args.neutral!r})")
    return ClipEncoder.from_folder(args.clip, templates).delta_i(args.target, args.neutral)


def run(args, ctx) -> None:
    alphas = parse_numbers(args.alphas, "--alphas")
    betas = parse_numbers(args.betas, "--betas")
    if any(b < 0 for b in betas):
        raise EditError(f"--betas {args.betas!r}: thresholds must be >= 0")
    config = ctx.inverter.generator_config
    lay = stylespace.layout(config)
    fs3 = styleclip.load_fs3(args.fs3)
    _, s_std = styleclip.load_s_mean_std(args.s_stats)
    styleclip.check_files(fs3, s_std, lay)  # before CLIP is loaded: fail early
    delta_i = text_direction(args)
    directions = [styleclip.get_delta_s(fs3, delta_i, s_std, b, lay) for b in betas]
    renderer = styleclip.StyleSpaceRenderer(ctx.inverter, args.batch_size)
    params = ctx.inverter.frozen["generator"]["params"]

    for item in ctx.progress(ctx.items, "styleclip"):
        s = [np.asarray(x)[0] for x in stylespace.styles_from_w(params, config, item.codes[None])]
        edited = [styleclip.apply(s, d, alphas) for d in directions]    # per β: per layer [A, C]
        styles = [np.concatenate([e[j] for e in edited]) for j in range(lay.n_layers)]
        images = renderer(styles, item.deltas)                          # [β·α, H, W, 3]
        reconstruction = ctx.render(item.codes[None], item.deltas)[0]
        rows = []
        for bi, b in enumerate(betas):
            bl = number_label(b)
            rows.append([(f"styleclip_b{bl}_a{number_label(a)}",
                          f"b {bl} a {number_label(a)}", images[bi * len(alphas) + ai])
                         for ai, a in enumerate(alphas)])
        ctx.write_standard(item, reconstruction, rows)
