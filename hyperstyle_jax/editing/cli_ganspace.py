"""`python -m hyperstyle_jax.edit ganspace`: GANSpace PCA edits (the math is
`editing.ganspace`; the subcommand contract is in `editing.cli`).

Named official cars edits (`--edit 'Pose I'`) and/or a custom component; keys are the
edit names (`pose_i`) or `pc<i>_<start>-<end>_<strength>`; one grid row: input |
reconstruction | one column per edit.
"""
from __future__ import annotations

import numpy as np

from hyperstyle_jax.editing import EditError
from hyperstyle_jax.editing.cli import common_parser, number_label, parse_numbers
from hyperstyle_jax.editing.ganspace import (
    CROP_ROWS,
    OFFICIAL_LABELS,
    apply,
    check_direction,
    check_pca,
    edit_key,
    load_pca,
    named_direction,
    official_crop,
)
from hyperstyle_jax.utils.cli import HelpFormatter


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ganspace", parents=[common_parser()], formatter_class=HelpFormatter,
        help="edit along GANSpace PCA components (official cars edits by name)",
        description="GANSpace edits: --edit NAME (official cars: Pose I, Pose II, Cube, Color, "
                    "Grass; repeatable) and/or --component I --start S --end E --strength X[,X..]. "
                    "PCA files in the official cars_pca.pt structure (.pt or .npz); make one for "
                    "any generator with python -m hyperstyle_jax.editing.ganspace_pca.")
    p.add_argument("--pca", required=True, metavar="FILE", help="PCA file (.pt or .npz)")
    p.add_argument("--edit", action="append", default=[], metavar="NAME",
                   help="an official named edit, e.g. 'Pose II' or pose_ii; repeatable")
    p.add_argument("--component", type=int, help="PCA component index")
    p.add_argument("--start", type=int, help="first W+ row edited")
    p.add_argument("--end", type=int, help="W+ rows [start, end) are edited")
    p.add_argument("--strength", help="target coordinate(s), comma-separated")
    p.add_argument("--crop", choices=("auto", "official", "none"), default="auto",
                   help="official: rows [64:448] as the official cars editor (always); "
                        "auto: official for a cars checkpoint, else none")
    p.set_defaults(run=run)


def directions_from_args(args) -> list:
    """-> [(key, label, (component, start, end, strength))]."""
    out = [(edit_key(n), OFFICIAL_LABELS[edit_key(n)], named_direction(n)) for n in args.edit]
    custom = (args.component, args.start, args.end, args.strength)
    if any(v is not None for v in custom):
        if any(v is None for v in custom):
            raise EditError("a custom GANSpace edit needs all of --component, --start, --end, "
                            "--strength")
        for x in parse_numbers(args.strength, "--strength"):
            s = number_label(x)
            out.append((f"pc{args.component}_{args.start}-{args.end}_{s}",
                        f"PC{args.component} [{args.start},{args.end}) {s}",
                        (args.component, args.start, args.end, x)))
    if not out:
        raise EditError("ganspace needs --edit NAME or --component/--start/--end/--strength")
    return out


def run(args, ctx) -> None:
    pca = check_pca(load_pca(args.pca), ctx.style_dim, args.pca)
    edits = directions_from_args(args)
    dirs = [check_direction(pca, d, ctx.n_styles, args.pca) for _, _, d in edits]
    crop = args.crop == "official" or (args.crop == "auto" and ctx.cars_crop)
    if crop and ctx.size <= CROP_ROWS[0]:
        raise EditError(f"--crop official keeps rows {CROP_ROWS[0]}:{CROP_ROWS[1]}, but the "
                        f"generator renders {ctx.size} rows")
    for item in ctx.progress(ctx.items, "ganspace"):
        codes = np.concatenate([item.codes[None], apply(item.codes, item.deltas, pca, dirs)[0]])
        images = ctx.render(codes, item.deltas)  # [unedited, edits...], official order
        if crop:
            images = official_crop(images)
        ctx.write_standard(item, images[0], [[(k, lab, images[1 + i])
                                              for i, (k, lab, _) in enumerate(edits)]])
