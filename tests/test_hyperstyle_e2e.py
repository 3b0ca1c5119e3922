"""End-to-end parity with the official `run_inversion` (fixture 05_e2e), through our
converters and `load_inverter`: codes, y_0, every fed-back y_hat, the final full-resolution
image and the accumulated deltas, for the default and the separable hypernet."""
import os

import jax
import numpy as np
import pytest
from helpers import E2E, nhwc

from hyperstyle_jax.inference import load_inverter

N_ITERS = 3  # the fixture's n_iters_per_batch


@pytest.mark.parametrize("variant", ["default", "separable"])
def test_run_inversion_parity(variant, e2e_checkpoints):
    inv = load_inverter(e2e_checkpoints.hyperstyle(variant), e2e_checkpoints.w_encoder())
    ref = np.load(os.path.join(E2E, f"e2e_{variant}_io.npz"))
    assert inv.input_hw == (64, 64)  # the fixture's narrowed face_pool

    # One compile: full-resolution outputs; the fed-back images are their pools.
    fn = jax.jit(lambda f, h, x: inv.model.invert(f, h, x, N_ITERS))
    out = jax.device_get(fn(inv.frozen, inv.hyper_vars, nhwc(ref["x"])))
    pool = lambda a: np.asarray(inv.model.pool(a))  # noqa: E731
    np.testing.assert_allclose(out["codes"], ref["codes"], atol=1e-5)
    if "y_init_full" in ref:
        np.testing.assert_allclose(out["init"], nhwc(ref["y_init_full"]), atol=2e-4)
    np.testing.assert_allclose(pool(out["init"]), nhwc(ref["y_init_pooled"]), atol=2e-4)
    for t in range(N_ITERS):
        np.testing.assert_allclose(pool(out["images"][t]), nhwc(ref[f"y_hat_pooled_iter{t}"]),
                                   atol=2e-4)
    np.testing.assert_allclose(out["pooled_final"], nhwc(ref["y_hat_final_pooled"]), atol=2e-4)
    np.testing.assert_allclose(out["images"][-1], nhwc(ref["y_hat_full_iter2"]), atol=2e-4)

    tuned = {int(k.split("layer")[1]) for k in ref if k.startswith("deltas_acc_iter2")}
    assert tuned == {j for j, d in enumerate(out["deltas"]) if d is not None}
    for j in tuned:
        np.testing.assert_allclose(out["deltas"][j], ref[f"deltas_acc_iter2_layer{j:02d}"],
                                   atol=2e-5, err_msg=f"layer {j}")
