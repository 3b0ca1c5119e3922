"""Test setup: fp32 matmuls everywhere (GPUs default to TF32, TPUs to bf16 passes), and
the session fixtures shared by the test files."""
import atexit
import os
import shutil
import tempfile

# One persistent compilation cache per run, shared by both xdist workers and the CLIs'
# subprocesses (they inherit the variable): the same fixture models' programs are compiled
# by many tests, through `compile_for_batch`'s ahead-of-time compiles, which the in-memory
# jit cache does not share. Fresh per run (a clean clone's time is the time measured) and
# removed by the process that made it; a test that sets its own cache keeps it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="hsjax_tests_jit_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)

# Most programs here are tiny and compiled once, so LLVM's optimisation dominates their
# time: compile with XLA's backend at -O0 (same HLO passes, so the same arithmetic up to
# fp32 rounding), 1/3 less time for compile-bound files. Files that compute for long
# (training, refinement) take the `xla_optimized` fixture instead, single fixtures
# `helpers.xla_optimized_compiles`. Inherited by the CLIs' subprocesses; elsewhere an
# explicit JAX_DISABLE_MOST_OPTIMIZATIONS (e.g. 0) wins.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402  (after the cache directory and the optimisation level are set)
import pytest
from helpers import E2E, FIXTURES, quiet, xla_optimized_compiles

from hyperstyle_jax.convert.hyperstyle import convert_hyperstyle, convert_w_encoder

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def fixtures_dir():
    return FIXTURES


@pytest.fixture(scope="module")
def xla_optimized():
    """XLA's full backend optimisation for the rest of a test file (and its subprocesses):
    for files whose tests compute more than they compile (see the -O0 default above)."""
    with xla_optimized_compiles():
        yield


class ConvertedE2E:
    """Fixture 05_e2e's checkpoints, each converted on first use into a folder under `root`.

    The folders are shared by every test of a worker: read them, never write into them.
    """

    def __init__(self, root):
        self.root = str(root)

    def _converted(self, name: str, convert, source: str) -> str:
        out = os.path.join(self.root, name)
        if not os.path.isdir(out):
            convert(os.path.join(E2E, source), out, log=quiet)
        return out

    def hyperstyle(self, variant: str = "default") -> str:
        """The converted HyperStyle checkpoint 'default' or 'separable' (its folder)."""
        return self._converted(f"hyperstyle_{variant}", convert_hyperstyle,
                               f"hyperstyle_e2e_{variant}.pt")

    def w_encoder(self) -> str:
        """The converted W-encoder (pSp, narrow) checkpoint folder."""
        return self._converted("w_encoder", convert_w_encoder, "w_encoder_narrow_psp.pt")


@pytest.fixture(scope="session")
def e2e_checkpoints(tmp_path_factory) -> ConvertedE2E:
    """05_e2e's checkpoints converted once per test worker (see `ConvertedE2E`)."""
    return ConvertedE2E(tmp_path_factory.mktemp("e2e_checkpoints"))
