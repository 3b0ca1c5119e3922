#!/usr/bin/env python
"""Convert official PyTorch checkpoints into hyperstyle_jax folders (orbax + config.json).

  python tools/convert_weights.py stylegan2  stylegan2-ffhq-config-f.pt  ckpt/stylegan2_ffhq
  python tools/convert_weights.py hyperstyle hyperstyle_ffhq.pt          ckpt/hyperstyle_ffhq
  python tools/convert_weights.py w_encoder  faces_w_encoder.pt          ckpt/w_encoder_faces
  python tools/convert_weights.py --help     (every kind, with its options)

Files are read with torch.load(weights_only=True): nothing pickled is ever executed.
Needs torch (pip install 'hyperstyle_jax[convert]').
"""
import argparse
import importlib
import os
import sys

# The repository's package, also when this script is run without installing it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hyperstyle_jax.convert import FAMILIES  # noqa: E402
from hyperstyle_jax.utils import cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=cli.HelpFormatter,
        epilog="Each KIND has its own options and notes: python tools/convert_weights.py "
               "KIND --help")
    sub = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    for name in FAMILIES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    """The command line; an unreadable or unexpected file is one line on stderr and exit
    status 2 (`cli.run`)."""
    return cli.run(_main, argv)


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
