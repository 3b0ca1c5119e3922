"""Helpers shared by the test files: fixture paths, layout conversion, quiet logging, the
reader of a saved train state, and XLA's full optimisation for code that computes long."""
import contextlib
import os
import socket

import jax
import numpy as np
import orbax.checkpoint as ocp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
E2E = os.path.join(FIXTURES, "05_e2e")  # the official run_inversion fixture (narrow nets)


def nhwc(a) -> np.ndarray:
    """[B, C, H, W] (a NumPy array or a CPU torch tensor) -> NumPy [B, H, W, C]."""
    return np.transpose(np.asarray(a), (0, 2, 3, 1))


def nchw(a) -> np.ndarray:
    """[B, H, W, C] -> NumPy [B, C, H, W]."""
    return np.transpose(np.asarray(a), (0, 3, 1, 2))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quiet(*args) -> None:
    """A `log=` for the converters that prints nothing."""


def saved_train_state(workdir, step):
    """The saved train state (numpy leaves, by key path) of checkpoint `step` in `workdir`."""
    path = os.path.join(str(workdir), "checkpoints", str(step), "state")
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        meta = getattr(meta, "item_metadata", meta)
        # Host numpy targets: the checkpoint was written from other device layouts.
        target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta)
        tree = ckptr.restore(path, target)
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


@contextlib.contextmanager
def xla_optimized_compiles():
    """XLA's full backend optimisation for what compiles inside (also in subprocesses
    started inside), where the suite compiles at -O0 (conftest.py): for code that computes
    more than it compiles."""
    key = "JAX_DISABLE_MOST_OPTIMIZATIONS"
    env, flag = os.environ.get(key), jax.config.values["jax_disable_most_optimizations"]
    os.environ[key] = "0"
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", flag)
        if env is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = env
