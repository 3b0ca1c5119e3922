"""Test setup: fp32 matmuls everywhere (GPUs default to TF32, TPUs to bf16 passes)."""
import os

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


@pytest.fixture(scope="session")
def fixtures_dir():
    return FIXTURES


def saved_train_state(workdir, step):
    """The saved train state (numpy leaves, by key path) of checkpoint `step` in `workdir`."""
    import numpy as np
    import orbax.checkpoint as ocp

    path = os.path.join(str(workdir), "checkpoints", str(step), "state")
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        meta = getattr(meta, "item_metadata", meta)
        # Host numpy targets: the checkpoint was written from other device layouts.
        target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta)
        tree = ckptr.restore(path, target)
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}
