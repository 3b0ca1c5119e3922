"""`python -m hyperstyle_jax.edit interfacegan`: InterFaceGAN directions (the math is
`editing.interfacegan`; the subcommand contract is in `editing.cli`).

Keys `<direction>_<factor>`; one grid row per direction: input | reconstruction | one
column per factor.
"""
from __future__ import annotations

import os

import numpy as np

from hyperstyle_jax.editing.cli import common_parser, number_label, parse_numbers
from hyperstyle_jax.editing.interfacegan import apply, check_direction, load_direction
from hyperstyle_jax.utils.cli import HelpFormatter


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "interfacegan", parents=[common_parser()], formatter_class=HelpFormatter,
        help="move codes along InterFaceGAN directions (age, smile, pose, ...)",
        description="codes + f * direction for each factor f, rendered with each image's own "
                    "weight offsets. One grid row per direction: input | reconstruction | "
                    "one column per factor.")
    p.add_argument("--direction", action="append", required=True, metavar="FILE",
                   help="direction file, .pt (official format) or .npy, (1, D) or "
                        "(1, n_styles, D); repeat for several")
    p.add_argument("--factors", default="-3,0,3",
                   help="comma-separated factors (the official script uses -5..4)")
    p.set_defaults(run=run)


def run(args, ctx) -> None:
    factors = parse_numbers(args.factors, "--factors")
    names, directions = [], []
    for path in args.direction:
        name = os.path.splitext(os.path.basename(path))[0]
        while name in names:  # age.pt and age.npy: keep keys apart
            name += "_"
        names.append(name)
        directions.append(check_direction(load_direction(path), ctx.n_styles, ctx.style_dim, path))
    for item in ctx.progress(ctx.items, "interfacegan"):
        codes = [item.codes[None]]
        for d in directions:
            codes.append(apply(item.codes, item.deltas, d, factors)[0])
        images = ctx.render(np.concatenate(codes), item.deltas)  # one shared-delta batch
        rows, k = [], 1
        for name in names:
            rows.append([(f"{name}_{number_label(f)}", f"{name} {number_label(f)}",
                          images[k + i]) for i, f in enumerate(factors)])
            k += len(factors)
        ctx.write_standard(item, images[0], rows)
