"""Edit real images on the HyperStyle-tuned generator.

    python -m hyperstyle_jax.edit interfacegan --checkpoint CKPT --w_encoder WENC \\
        --images photos/ --out out/ --direction age.pt --direction smile.pt --factors -3,0,3
    python -m hyperstyle_jax.edit ganspace --checkpoint CKPT --inversion inv/ --out out/ \\
        --pca cars_pca.pt --edit "Pose I" --edit Color
    python -m hyperstyle_jax.edit interpolate --checkpoint CKPT --inversion inv/ --out out/ \\
        --pair a b --alphas 0.25,0.5,0.75 --frames 30 --animation out/a_b.gif

Input: --images (inverted first with --checkpoint --w_encoder --n_iters --batch_size;
--align aligns faces first, as `invert --align`) or
--inversion DIR (an `invert` output written with --save_latents --save_deltas; only
--checkpoint is needed then). Outputs under --out: edits/<key>/<stem>.png, labelled
grids/<stem>.png, with --save_npy arrays/<stem>.npz (float32 un-clipped [H, W, 3] per key
and 'reconstruction'). `python -m hyperstyle_jax.edit <subcommand> --help` for each one.

Subcommands are plugins: each module in SUBCOMMANDS (`editing/cli_<edit>.py`, beside the
edit's math module `editing/<edit>.py`) defines `register(subparsers)` and `run(args, ctx)`;
the contract and the shared parts are in `hyperstyle_jax.editing.cli`.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys

from hyperstyle_jax.editing.cli import run_subcommand
from hyperstyle_jax.utils import cli

SUBCOMMANDS = (
    "hyperstyle_jax.editing.cli_interfacegan",  # interfacegan
    "hyperstyle_jax.editing.cli_ganspace",      # ganspace
    "hyperstyle_jax.editing.cli_interpolate",   # interpolate
    "hyperstyle_jax.editing.cli_domain",        # domain
    "hyperstyle_jax.editing.cli_styleclip",     # styleclip
)

_NEGATIVE_VALUE = re.compile(r"^-[\d.]")


def _join_negative_values(argv: list) -> list:
    """['--factors', '-3,0,3'] -> ['--factors=-3,0,3']: argparse would read '-3,0,3' as an
    option (it only accepts plain negative numbers as values)."""
    out, i = [], 0
    while i < len(argv):
        tok = argv[i]
        if (tok.startswith("--") and "=" not in tok and i + 1 < len(argv)
                and _NEGATIVE_VALUE.match(argv[i + 1])):
            out.append(f"{tok}={argv[i + 1]}")
            i += 2
        else:
            out.append(tok)
            i += 1
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hyperstyle_jax.edit", description=__doc__,
                                formatter_class=cli.HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(sub)
    return p


def main(argv=None) -> int:
    """The command line; an editing error is one line on stderr and exit status 1."""
    return cli.run(_main, argv, user_error_code=1)


def _main(argv) -> int:
    return run_subcommand(build_parser().parse_args(_join_negative_values(list(argv))))


if __name__ == "__main__":
    sys.exit(main())
