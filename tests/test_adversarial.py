"""The image-discriminator (adversarial) term of HyperStyle training.

* With a linear D(y) = <a, y> + b, every gradient is known in closed form: the hypernet's
  extra gradient is the vjp of the last reconstruction with cotangent
  -adv_lambda * sigmoid(-D(y_b)) a / B; D's step on reals vs reconstructions and its lazy
  R1 (||a||^2, gradient r1_gamma * r1_every * a) are checked the same way.
* adv_lambda = 0: the task's state has no D and its step is bit-identical to the step as
  it was before the term existed (that file read from git history, run here).
* The real StyleGAN2 D from scratch trains in the task: D's params move, metrics finite.
"""
import importlib.util
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import ROOT

from hyperstyle_jax.losses import LossWeights, compute_losses
from hyperstyle_jax.training import hyperstyle_task
from hyperstyle_jax.training.config import base_config, check_config
from hyperstyle_jax.training.hyperstyle_step import TrainState, make_train_step
from hyperstyle_jax.training.image_discriminator import Adversarial

N_ITERS = 2
ADV_LAMBDA = 0.5
R1_GAMMA, R1_EVERY = 0.01, 4
BEFORE_THE_TERM = "2ba06ec"   # the commit whose hyperstyle_step.py is "today's step"


def _config():
    c = base_config()
    c.batch_size = c.eval_batch_size = 4
    c.n_iters_per_batch = N_ITERS
    c.loss.l2_lambda, c.loss.lpips_lambda = 1.0, 0.0
    c.w_code = "true_latent"
    c.data.generator = dict(size=16, style_dim=16, n_mlp=1, channels=((4, 8), (8, 8), (16, 8)))
    c.data.image_hw = (16, 16)
    c.data.num_train, c.data.num_eval = 8, 4
    c.data.perturb_std, c.data.perturb_mode = 0.3, "in"
    c.data.num_threads = 0
    c.model.feedback_hw = (16, 16)
    c.model.per_sample = "map"
    c.model.hypernet = dict(stem_width=8, stages=((8, 1, 1),), hypernet_z_dim=8,
                            hypernet_in_size=8, hypernet_out_size=8, hyper_block_inner_c=8,
                            refine_block_inner_c=8, refine_block_out_c=8, spatial=8)
    return c


def _capture_sgd():
    """Keeps the gradient it receives as its state, then SGD(1) applies it."""
    capture = optax.GradientTransformation(
        lambda p: jax.tree.map(jnp.zeros_like, p), lambda g, s, p=None: (g, g))
    return optax.chain(capture, optax.sgd(1.0))


def _linear_d(p, images, labels=None):
    return jnp.sum(images * p["a"], axis=(1, 2, 3)) + p["b"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from hyperstyle_jax.data import make_train_iterator

    c = _config()
    c.data.data_dir = str(tmp_path_factory.mktemp("adv_data"))
    check_config(c)
    built = hyperstyle_task.build(c)
    it = make_train_iterator(c.data, global_batch_size=c.batch_size)
    batch = jax.tree.map(jnp.asarray, next(it))
    it.close()
    frozen = jax.tree.map(jnp.asarray, {"model": built.frozen_model, "loss": built.frozen_loss})
    hyper = built.model.init_hypernet(jax.random.PRNGKey(0))
    hyper = jax.tree_util.tree_map_with_path(
        lambda p, x: x * 1e-2 if "shared_weight_hypernet" in jax.tree_util.keystr(p) else x, hyper)
    return dict(c=c, built=built, batch=batch, frozen=frozen, hyper=hyper)


def test_linear_discriminator_gradients_match_the_closed_form(setup):
    model, frozen, batch, hyper = (setup["built"].model, setup["frozen"], setup["batch"],
                                   setup["hyper"])
    x = batch["image"]
    rng = np.random.default_rng(0)
    d0 = {"a": jnp.asarray(rng.normal(size=x.shape[1:]) * 0.05, jnp.float32),
          "b": jnp.asarray(0.3, jnp.float32)}
    tx, d_tx = _capture_sgd(), _capture_sgd()
    adv = Adversarial(apply=_linear_d, tx=d_tx, adv_lambda=ADV_LAMBDA, every_iteration=False,
                      r1_gamma=R1_GAMMA, r1_every=R1_EVERY)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=hyper["params"],
                       batch_stats=hyper["batch_stats"], opt_state=tx.init(hyper["params"]),
                       disc_params=d0, disc_opt_state=d_tx.init(d0))
    step = jax.jit(make_train_step(model, setup["built"].weights, tx, N_ITERS,
                                   true_latent=True, unroll=False, adversarial=adv))
    new, metrics = step(state, frozen, batch)

    # The reference: the official loop, plus at the last iteration the closed-form vjp
    # (as the gradient of <cotangent, y>). Jitted pieces: op by op it took longer.
    weights = LossWeights.from_config(setup["c"].loss)
    w = batch["latent"]
    g = model.config.generator
    codes = jnp.broadcast_to(w[:, None], (w.shape[0], g.n_latent, g.style_dim))
    codes, _, y_hat = model.initial_inversion(frozen["model"], x, codes)
    deltas, bs = model.zero_deltas(x.shape[0]), hyper["batch_stats"]
    grads = jax.tree.map(jnp.zeros_like, hyper["params"])

    def render(p, bs, y_hat, deltas):
        _, y, d, nbs = model.iteration(frozen["model"], {"params": p, "batch_stats": bs},
                                       x, y_hat, codes, deltas, train=True)
        return y, (d, nbs)

    @jax.jit
    def rec_grad_and_render(p, bs, y_hat, deltas):
        def rec(q):
            y, aux = render(q, bs, y_hat, deltas)
            return compute_losses(frozen["loss"], y, x, weights)[0], (y, aux)
        return jax.grad(rec, has_aux=True)(p)  # (gradient, the render it came from)

    adv_grad = jax.jit(lambda p, bs, y_hat, deltas, cot: jax.grad(
        lambda q: jnp.sum(render(q, bs, y_hat, deltas)[0] * cot))(p))
    for t in range(N_ITERS):
        g_rec, (y, (next_deltas, next_bs)) = rec_grad_and_render(hyper["params"], bs, y_hat,
                                                                 deltas)
        grads = jax.tree.map(jnp.add, grads, g_rec)
        if t == N_ITERS - 1:
            logit = np.asarray(_linear_d(d0, y))
            s = 1.0 / (1.0 + np.exp(logit))                       # sigmoid(-D(y_b))
            cot = -ADV_LAMBDA * s[:, None, None, None] * np.asarray(d0["a"])[None] / x.shape[0]
            g_adv = adv_grad(hyper["params"], bs, y_hat, deltas, jnp.asarray(cot, jnp.float32))
            grads = jax.tree.map(jnp.add, grads, g_adv)
            np.testing.assert_allclose(metrics[f"loss_adv/iter_{N_ITERS}"],
                                       np.mean(np.log1p(np.exp(-logit))), rtol=1e-5)
        y_hat, deltas, bs = y, next_deltas, next_bs
    got = new.opt_state[0]
    for (path, want), have in zip(jax.tree_util.tree_leaves_with_path(grads),
                                  jax.tree.leaves(got)):
        np.testing.assert_allclose(have, want, rtol=1e-4,
                                   atol=1e-5 * float(np.max(np.abs(want))) + 1e-30,
                                   err_msg=jax.tree_util.keystr(path))

    # D: the non-saturating loss's gradient, then (step 0 % r1_every == 0) lazy R1.
    real, fake = np.asarray(x, np.float64), np.asarray(y_hat, np.float64)
    a, b = np.asarray(d0["a"], np.float64), float(d0["b"])
    lr_, lf = np.sum(real * a, axis=(1, 2, 3)) + b, np.sum(fake * a, axis=(1, 2, 3)) + b
    sf, sr = 1 / (1 + np.exp(-lf)), 1 / (1 + np.exp(lr_))     # sigmoid(D(fake)), sigmoid(-D(real))
    ga = np.mean(sf[:, None, None, None] * fake, 0) - np.mean(sr[:, None, None, None] * real, 0)
    gb = np.mean(sf) - np.mean(sr)
    np.testing.assert_allclose(metrics["d_loss"], np.mean(np.log1p(np.exp(lf)))
                               + np.mean(np.log1p(np.exp(-lr_))), rtol=1e-5)
    a1, b1 = a - ga, b - gb
    np.testing.assert_allclose(metrics["r1"], np.sum(a1 ** 2), rtol=1e-5)
    factor = 1 - R1_GAMMA * R1_EVERY           # a -= r1_gamma / 2 * r1_every * 2 a
    np.testing.assert_allclose(new.disc_params["a"], a1 * factor, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(new.disc_params["b"], b1, rtol=1e-5, atol=1e-7)
    r1_grad = R1_GAMMA * R1_EVERY * a1  # a1 = a - ga cancels: fp32 rounding of a's scale
    np.testing.assert_allclose(new.disc_opt_state[0]["a"], r1_grad, rtol=1e-4,
                               atol=1e-5 * float(np.max(np.abs(r1_grad))))
    assert float(metrics["finite"]) == 1.0

    # Off the R1 steps (step 1), D's update is the loss gradient alone.
    new1, m1 = step(state.replace(step=jnp.ones((), jnp.int32)), frozen, batch)
    assert float(m1["r1"]) == 0.0
    np.testing.assert_allclose(new1.disc_opt_state[0]["a"], ga, rtol=1e-4,
                               atol=1e-5 * float(np.max(np.abs(ga))))


def _step_before_the_term(tmp_path):
    """hyperstyle_step.py as committed before the adversarial term (git history)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    proc = subprocess.run(["git", "show", f"{BEFORE_THE_TERM}:hyperstyle_jax/training/"
                           "hyperstyle_step.py"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"commit {BEFORE_THE_TERM} is not in this checkout's history")
    path = tmp_path / "hyperstyle_step_before.py"
    path.write_text(proc.stdout)
    spec = importlib.util.spec_from_file_location("hyperstyle_step_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_adv_lambda_zero_is_bit_identical_to_the_step_before_the_term(setup, tmp_path):
    old = _step_before_the_term(tmp_path)
    c = _config()
    c.data.data_dir = setup["c"].data.data_dir
    c.optim.name, c.optim.lr = "adam", 1e-2
    assert c.loss.adv_lambda == 0
    from hyperstyle_jax.training.optim import make_optimizer

    tx = make_optimizer(c.optim)
    task = hyperstyle_task.build_task(c, tx)
    assert task.init_inputs is None                      # no D at all
    state = jax.jit(task.make_state)(jax.random.PRNGKey(1), None)
    assert state.disc_params == {} and state.disc_opt_state == {}
    built = setup["built"]
    old_state = old.TrainState(step=state.step, params=state.params,
                               batch_stats=state.batch_stats, opt_state=state.opt_state)
    old_step = jax.jit(old.make_train_step(built.model, built.weights, tx, N_ITERS,
                                           true_latent=True, unroll=True))
    new_step = jax.jit(task.train_step)
    frozen = jax.tree.map(jnp.asarray, task.frozen)
    for _ in range(2):
        state, m_new = new_step(state, frozen, setup["batch"])
        old_state, m_old = old_step(old_state, frozen, setup["batch"])
        assert m_new.keys() == m_old.keys()
        for k in m_new:
            np.testing.assert_array_equal(m_new[k], m_old[k], err_msg=k)
        for name in ("step", "params", "batch_stats", "opt_state"):
            for x, y in zip(jax.tree.leaves(getattr(state, name)),
                            jax.tree.leaves(getattr(old_state, name)), strict=True):
                np.testing.assert_array_equal(x, y, err_msg=name)


def test_the_task_trains_a_stylegan2_discriminator_from_scratch(setup):
    c = _config()
    c.data.data_dir = setup["c"].data.data_dir
    c.optim.name = "adam"
    c.loss.adv_lambda, c.loss.adv_iterations = 0.1, "every"
    c.discriminator.channels = ((4, 8), (8, 8), (16, 8))
    c.discriminator.r1_every = 2
    check_config(c)
    from hyperstyle_jax.training.optim import make_optimizer

    tx = make_optimizer(c.optim)
    task = hyperstyle_task.build_task(c, tx)
    assert any("image discriminator" in line for line in task.description)
    state = jax.jit(task.make_state)(jax.random.PRNGKey(1), task.init_inputs)
    d_before = jax.tree.map(np.asarray, state.disc_params)
    step = jax.jit(task.train_step)
    frozen = jax.tree.map(jnp.asarray, task.frozen)
    for _ in range(2):
        state, metrics = step(state, frozen, setup["batch"])
        assert float(metrics["finite"]) == 1.0
        for k in ("loss_adv/iter_1", "loss_adv/iter_2", "d_loss", "r1"):
            assert np.isfinite(float(metrics[k])), k
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(d_before),
                                                       jax.tree.leaves(state.disc_params))]
    assert all(moved)
    assert int(state.step) == 2


def test_bad_adversarial_config_is_one_line():
    c = _config()
    c.loss.adv_iterations = "first"
    with pytest.raises(ValueError, match="adv_iterations"):
        check_config(c)
    c = _config()
    c.loss.adv_lambda = 1.0
    c.discriminator.init = "/no/such/folder"
    with pytest.raises(ValueError, match="config.discriminator.init"):
        check_config(c)
