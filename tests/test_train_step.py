"""The train step against the official procedure, written out plainly here.

Reference (official `training/coach_hyperstyle.py` `Coach.perform_forward_on_batch`):
initial inversion without gradient; for t = 1..n, the hypernet in train mode on cat[x,
y_{t-1}] with y_{t-1} and the accumulated offsets as constants, loss_t from the losses
module (`compute_losses`), `loss_t.backward()` accumulating into the gradient; one update.
With SGD(lr=1) the update is exactly minus the accumulated gradient, so params_before -
params_after must equal the reference's summed per-iteration gradients.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import ROOT

from hyperstyle_jax.losses import LossWeights, compute_losses

N_ITERS = 2


def _config(tmp):
    from hyperstyle_jax.checkpoints import save_converted
    from hyperstyle_jax.losses.lpips import init_lpips
    from hyperstyle_jax.training.config import base_config

    lpips_dir = os.path.join(tmp, "lpips")
    save_converted(lpips_dir, init_lpips("alex", 32, seed=3), {"net": "alex"}, kind="lpips")
    c = base_config()
    c.batch_size = c.eval_batch_size = 4
    c.n_iters_per_batch = N_ITERS
    c.loss.l2_lambda, c.loss.lpips_lambda = 1.0, 0.8
    c.checkpoints.lpips = lpips_dir
    c.w_code = "true_latent"
    c.data.generator = dict(size=16, style_dim=16, n_mlp=1, channels=((4, 8), (8, 8), (16, 8)))
    c.data.image_hw = (32, 32)          # pooled up from 16 px: LPIPS's AlexNet needs >= 32
    c.data.num_train, c.data.num_eval = 8, 4
    c.data.perturb_std, c.data.perturb_mode = 0.3, "in"
    c.data.num_threads = 0
    c.model.feedback_hw = (32, 32)
    c.model.per_sample = "map"
    c.model.hypernet = dict(stem_width=8, stages=((8, 1, 2),), hypernet_z_dim=8,
                            hypernet_in_size=8, hypernet_out_size=8, hyper_block_inner_c=8,
                            refine_block_inner_c=8, refine_block_out_c=8, spatial=8)
    return c


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from hyperstyle_jax.data import make_train_iterator
    from hyperstyle_jax.training import hyperstyle_task
    from hyperstyle_jax.training.config import check_config
    from hyperstyle_jax.training.hyperstyle_step import TrainState, make_train_step

    c = _config(str(tmp_path_factory.mktemp("train_step")))
    check_config(c)
    built = hyperstyle_task.build(c)
    it = make_train_iterator(c.data, global_batch_size=c.batch_size)
    batch = jax.tree.map(jnp.asarray, next(it))
    it.close()
    frozen = jax.tree.map(jnp.asarray, {"model": built.frozen_model, "loss": built.frozen_loss})
    hyper = built.model.init_hypernet(jax.random.PRNGKey(0))
    # Scale the refinement outputs down (random blocks give |Δ| of 30-600).
    hyper = jax.tree_util.tree_map_with_path(
        lambda p, x: x * 1e-2 if "shared_weight_hypernet" in jax.tree_util.keystr(p) else x, hyper)
    # The first transform keeps the gradient it receives as its state (to compare it
    # exactly); then plain SGD with lr 1 applies it.
    capture = optax.GradientTransformation(
        lambda p: jax.tree.map(jnp.zeros_like, p), lambda g, s, p=None: (g, g))
    tx = optax.chain(capture, optax.sgd(1.0))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=hyper["params"],
                       batch_stats=hyper["batch_stats"], opt_state=tx.init(hyper["params"]))
    before = jax.tree.map(np.asarray, state)
    frozen_before = jax.tree.map(np.asarray, frozen)
    step = jax.jit(make_train_step(built.model, built.weights, tx, N_ITERS,
                                   true_latent=built.true_latent, unroll=False))
    new_state, metrics = step(state, frozen, batch)
    return dict(c=c, built=built, batch=batch, frozen=frozen, before=before,
                frozen_before=frozen_before, new=jax.tree.map(np.asarray, new_state),
                metrics={k: float(v) for k, v in metrics.items()}, step=step)


def _initial(setup):
    """Codes (the true latents, repeated) and y0 = pool(G(codes)) without offsets."""
    model, batch = setup["built"].model, setup["batch"]
    w = batch["latent"]
    codes = jnp.broadcast_to(w[:, None], (w.shape[0], model.config.generator.n_latent, w.shape[1]))
    codes, _, y0 = model.initial_inversion(setup["frozen"]["model"], batch["image"], codes)
    return codes, y0


@pytest.fixture(scope="module")
def reference(setup):
    """The official loop, one backward per iteration, gradients accumulated on the host."""
    model, frozen, batch, before = (setup["built"].model, setup["frozen"], setup["batch"],
                                    setup["before"])
    weights = LossWeights.from_config(setup["c"].loss)
    x = batch["image"]
    codes, y_hat = _initial(setup)

    def loss_fn(p, bs, y_hat, deltas):
        _, y, d, new_bs = model.iteration(frozen["model"], {"params": p, "batch_stats": bs}, x,
                                          y_hat, codes, deltas, train=True)
        total, terms = compute_losses(frozen["loss"], y, x, weights)
        return total, (y, d, new_bs, terms)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    first, later = jax.jit(lambda p, bs, y: grad_fn(p, bs, y, None)), jax.jit(grad_fn)
    deltas, bs = None, before.batch_stats
    grads = jax.tree.map(np.zeros_like, before.params)
    terms_per_iter = []
    for t in range(N_ITERS):   # official: weights_deltas is None at the first iteration
        out = first(before.params, bs, y_hat) if t == 0 else later(before.params, bs, y_hat, deltas)
        (_, (y_hat, deltas, bs, terms)), g = out
        grads = jax.tree.map(lambda a, b: a + np.asarray(b), grads, g)
        terms_per_iter.append({k: float(v) for k, v in terms.items()})
    return terms_per_iter, grads, jax.tree.map(np.asarray, bs)


def test_loss_terms_equal_the_losses_module(setup, reference):
    terms, _, _ = reference
    m = setup["metrics"]
    for t, ref in enumerate(terms, start=1):
        for name in ("loss_l2", "loss_lpips"):
            np.testing.assert_allclose(m[f"{name}/iter_{t}"], ref[name], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(m["loss"], sum(r["loss"] for r in terms), rtol=1e-5)
    # Iteration 0 is the initial inversion, no offsets: L2 of the plain render.
    codes, y0 = _initial(setup)
    np.testing.assert_allclose(m["loss_l2/iter_0"],
                               float(jnp.mean((y0 - setup["batch"]["image"]) ** 2)), rtol=1e-6)
    assert m["finite"] == 1.0


def test_update_is_the_accumulated_gradient_and_only_hypernet_changes(setup, reference):
    _, grads, bs = reference
    before, new = setup["before"], setup["new"]
    # The step's gradient (kept by the capture transform) is the accumulated one.
    flat_g = jax.tree_util.tree_leaves_with_path(grads)
    got_g = jax.tree.leaves(new.opt_state[0])
    for (path, want), got in zip(flat_g, got_g):
        np.testing.assert_allclose(got, want, rtol=1e-4,
                                   atol=1e-5 * float(np.max(np.abs(want))) + 1e-30,
                                   err_msg=jax.tree_util.keystr(path))
    # SGD(1): params_after = params_before - gradient, up to float32 rounding of params.
    flat_b, flat_a = jax.tree.leaves(before.params), jax.tree.leaves(new.params)
    moved = 0
    for (path, g), b, a in zip(flat_g, flat_b, flat_a):
        ulp = float(np.max(np.spacing(np.abs(b))))
        np.testing.assert_allclose(b - a, g, rtol=1e-4,
                                   atol=1e-5 * float(np.max(np.abs(g))) + 2 * ulp,
                                   err_msg=jax.tree_util.keystr(path))
        moved += bool(np.any(a != b))
    assert moved >= 10, f"only {moved}/{len(flat_a)} hypernet leaves moved"
    # BatchNorm running stats: updated once per iteration, in train mode.
    for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(bs),
                                 jax.tree.leaves(new.batch_stats)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7,
                                   err_msg=jax.tree_util.keystr(path))
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before.batch_stats),
                                                         jax.tree.leaves(new.batch_stats)))
    # Frozen networks (generator, latent_avg, LPIPS) are bit-for-bit untouched.
    for a, b in zip(jax.tree.leaves(setup["frozen_before"]),
                    jax.tree.leaves(jax.tree.map(np.asarray, setup["frozen"]))):
        np.testing.assert_array_equal(a, b)
    assert int(new.step) == 1


def test_non_finite_batch_leaves_the_state_unchanged(setup):
    from hyperstyle_jax.training.hyperstyle_step import TrainState

    before = setup["before"]
    state = jax.tree.map(jnp.asarray, before)
    bad = dict(setup["batch"])
    bad["image"] = bad["image"].at[0, 0, 0, 0].set(jnp.nan)
    new, metrics = setup["step"](TrainState(**{k: getattr(state, k) for k in
                                               ("step", "params", "batch_stats", "opt_state")}),
                                 setup["frozen"], bad)
    assert float(metrics["finite"]) == 0.0
    for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(new.params)):
        np.testing.assert_array_equal(a, np.asarray(b))
    for a, b in zip(jax.tree.leaves(before.batch_stats), jax.tree.leaves(new.batch_stats)):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_batch_not_divisible_by_devices_is_a_clear_error():
    from hyperstyle_jax.parallel import check_batch_size

    class FakeMesh:
        class devices:
            size = 3
    with pytest.raises(ValueError, match=r"config.batch_size=8 is not divisible by the 3 devices"):
        check_batch_size(8, FakeMesh())


@pytest.mark.parametrize("override, message", [
    ("--config.bacth_size=4", "bacth_size"),
    ("--config.batch_size=abc", "batch_size"),
])
def test_cli_rejects_unknown_keys_and_wrong_types(tmp_path, override, message):
    out = subprocess.run([sys.executable, "-m", "hyperstyle_jax.train", "--config",
                          os.path.join(ROOT, "configs", "tiny.py"), "--workdir",
                          str(tmp_path / "w"), override],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "w").exists()


def test_config_checks_name_the_key():
    from hyperstyle_jax.training.config import base_config, check_config

    c = base_config()
    c.w_code = "true_latent"
    c.data.source = "tfds"
    with pytest.raises(ValueError, match="w_code='true_latent' needs config.data.source"):
        check_config(c)
    c = base_config()
    c.data.source = "synthetic"
    c.w_code = "encoder"
    with pytest.raises(ValueError, match=r"config.checkpoints.w_encoder"):
        check_config(c)
    c.compute_dtype = "float16"
    with pytest.raises(ValueError, match="compute_dtype='float16'"):
        check_config(c)


def test_metrics_writer_jsonl_tensorboard_and_grid(tmp_path):
    import json

    from hyperstyle_jax.training.metrics_log import MetricsWriter
    from hyperstyle_jax.utils.images import make_grid

    w = MetricsWriter(str(tmp_path))
    w.scalars(3, {"loss": np.float32(0.5), "loss_l2/iter_1": 0.25})
    grid = make_grid([[np.zeros((4, 4, 3), np.float32), np.ones((4, 4, 3), np.float32)]])
    w.image(3, "val/input|initial|iterations", grid)
    w.close()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows[0]["step"] == 3 and rows[0]["loss"] == 0.5 and rows[0]["loss_l2/iter_1"] == 0.25
    assert rows[1]["split"] == "image" and os.path.isfile(rows[1]["path"])
    assert os.listdir(tmp_path / "tensorboard")
    assert not MetricsWriter(str(tmp_path / "other"), enabled=False).enabled
    assert not (tmp_path / "other").exists()  # processes other than 0 write nothing
