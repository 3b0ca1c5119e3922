"""python -m hyperstyle_jax.align: see hyperstyle_jax/align/cli.py."""
import sys

from hyperstyle_jax.align.cli import main

if __name__ == "__main__":
    sys.exit(main())
