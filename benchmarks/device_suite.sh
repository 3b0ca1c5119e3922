#!/usr/bin/env bash
# The accelerator benchmark in one go (under 8 minutes on one H100/H200): installs what it
# needs, then prints one table (benchmarks/device_suite.py has the rows).
#
#   bash benchmarks/device_suite.sh            # on the device machine, from the repo root
#   bash benchmarks/device_suite.sh --smoke    # tiny sizes on any machine (no install)
#
# Install: `pip install -e .` (this package), then jax's CUDA plugin matching the installed
# jax (`pip install "jax[cuda12]==<jax version>"`) unless jax already sees a GPU. An
# offline machine needs both from a local wheel folder: set PIP_FIND_LINKS=DIR and
# PIP_NO_INDEX=1. A failed install is reported and the suite runs on what jax finds.
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=""
for a in "$@"; do
  case "$a" in
    --smoke) SMOKE="--smoke" ;;
    *) echo "usage: $0 [--smoke]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python}
if [ -z "$SMOKE" ]; then
  $PY -m pip install -q -e . || echo "warning: pip install -e . failed; using the tree as is" >&2
  if ! $PY -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
    JV=$($PY -c "import jax; print(jax.__version__)")
    $PY -m pip install -q "jax[cuda12]==$JV" || echo "warning: jax[cuda12]==$JV not installed" >&2
  fi
  # Leave XLA's GPU allocator its default 75% preallocation: the peak column reads it.
  exec timeout 470 $PY benchmarks/device_suite.py
fi
exec $PY benchmarks/device_suite.py --smoke
