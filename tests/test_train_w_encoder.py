"""W-encoder training (config.task='w_encoder') and the embedded pipeline (hyperstyle_jax.demo).

* The W-mean term and the latent discriminator change the step's gradients exactly as
  their closed forms say: d/dw lambda ||w - avg||^2 = 2 lambda (w - avg); for a linear D
  (a = its weight) the non-saturating D loss has gradient mean(-sigmoid(-D(w_r)) w_r) +
  mean(sigmoid(D(w_f)) w_f), R1 = ||a||^2 with gradient 2a (scaled gamma/2 * r1_every), and
  the encoder's adversarial gradient w.r.t. w is -sigmoid(-D(w)) a / B.
* A run with both terms on, SIGKILLed after a checkpoint and restarted, ends bit-identical
  to an uninterrupted run (one subprocess pair; the reference runs in this process).
* The demo (quick mode) trains a W-encoder whose held-out L2 is far below the mean
  latent's, then HyperStyle on its codes, whose last iteration is below the W-encoder's
  L2; its exports are accepted by `invert` and `edit` (the demo runs both CLIs on them).
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import ROOT, saved_train_state


def _capture_sgd():
    """A transform that keeps the gradient it receives as its state, then SGD(1)."""
    capture = optax.GradientTransformation(
        lambda p: jax.tree.map(jnp.zeros_like, p), lambda g, s, p=None: (g, g))
    return optax.chain(capture, optax.sgd(1.0))


@pytest.fixture(scope="module")
def micro():
    """An 8 px generator (style_dim 16), a narrowed W-encoder, a linear D, one batch."""
    from hyperstyle_jax.losses import LossWeights
    from hyperstyle_jax.models.irse import WEncoder, get_block
    from hyperstyle_jax.models.latent_discriminator import LatentDiscriminator
    from hyperstyle_jax.models.stylegan2 import Generator, GeneratorConfig, random_init
    from hyperstyle_jax.training.w_encoder_step import WEncoderModel

    gcfg = GeneratorConfig(size=8, style_dim=16, n_mlp=1, channels=((4, 8), (8, 8)))
    gvars = random_init(gcfg, 3)
    enc = WEncoder(gcfg.n_latent, gcfg.style_dim, tuple(get_block(8, 16, 1)), input_width=8)
    model = WEncoderModel(enc, Generator(gcfg, per_sample="map"), (8, 8), False,
                          LatentDiscriminator(gcfg.style_dim, n_layers=1))  # linear D
    avg = np.asarray(jax.random.normal(jax.random.key(5), (gcfg.style_dim,)), np.float32) * 0.3
    frozen = {"model": {"generator": gvars,
                        "latent_avg": jnp.broadcast_to(jnp.asarray(avg), (gcfg.n_latent, 16))},
              "loss": {}}
    x = jax.random.uniform(jax.random.key(7), (4, 8, 8, 3), minval=-1, maxval=1)
    enc_vars = model.init_encoder(jax.random.key(1))
    d_params = jax.jit(model.discriminator.init)(jax.random.key(2), jnp.zeros((1, 16)))["params"]
    return dict(model=model, frozen=frozen, batch={"image": x}, enc=enc_vars, d=d_params,
                weights=LossWeights(l2=1.0), avg=avg)


def _state(m, tx, disc_tx, with_disc):
    from hyperstyle_jax.training.w_encoder_step import WEncoderTrainState

    d = m["d"] if with_disc else {}
    return WEncoderTrainState(step=jnp.zeros((), jnp.int32), params=m["enc"]["params"],
                              batch_stats=m["enc"]["batch_stats"],
                              opt_state=tx.init(m["enc"]["params"]), disc_params=d,
                              disc_opt_state=disc_tx.init(d) if with_disc else {})


def test_w_norm_and_discriminator_gradients_follow_their_closed_forms(micro):
    from hyperstyle_jax.training import w_encoder_losses as wl
    from hyperstyle_jax.training.w_encoder_step import ExtraTerms, make_w_encoder_train_step

    m = micro
    model, frozen, batch = m["model"], m["frozen"], m["batch"]
    lam_w, lam_d, gamma, every, seed = 0.3, 0.5, 4.0, 2, 11
    tx, dtx = _capture_sgd(), _capture_sgd()
    base = jax.jit(make_w_encoder_train_step(model, m["weights"], ExtraTerms(), tx))
    full = jax.jit(make_w_encoder_train_step(
        model, m["weights"], ExtraTerms(lam_w, lam_d, gamma, every), tx, dtx, seed=seed))
    s0, s1 = _state(m, tx, dtx, False), _state(m, tx, dtx, True)
    new0, _ = base(s0, frozen, batch)
    new1, met = full(s1, frozen, batch)
    g_base, g_full = new0.opt_state[0], new1.opt_state[0]

    # The encoder's code w (one row; all rows are equal) and its vjp.
    def w_of(params):
        w, _ = model.encode({"params": params, "batch_stats": m["enc"]["batch_stats"]},
                            batch["image"], True)
        return w[:, 0]
    w_delta, vjp = jax.vjp(w_of, m["enc"]["params"])
    w = w_delta + m["avg"]
    B = w.shape[0]

    # --- the discriminator: main update, then R1 (step 0 % every == 0), both closed form.
    a0, b0 = (np.asarray(m["d"]["mlp_0"][k]) for k in ("kernel", "bias"))  # [16, 1], [1]
    w_real = model.real_codes(frozen["model"], jax.random.fold_in(jax.random.PRNGKey(seed), 0),
                              B)
    sig = jax.nn.sigmoid
    g_a = (jnp.mean(-sig(-(w_real @ a0 + b0)) * w_real, 0)
           + jnp.mean(sig(w @ a0 + b0) * w, 0))[:, None]
    a1 = a0 - g_a
    g_r1 = gamma / 2 * every * 2 * a1           # d/da of gamma/2 * every * ||a||^2
    np.testing.assert_allclose(float(met["r1"]), float(np.sum(a1 ** 2)), rtol=1e-5)
    np.testing.assert_allclose(new1.disc_opt_state[0]["mlp_0"]["kernel"], g_r1, rtol=1e-5,
                               atol=1e-6)  # the capture holds the last (R1) gradient
    a2 = a1 - g_r1
    np.testing.assert_allclose(new1.disc_params["mlp_0"]["kernel"], a2, rtol=1e-5, atol=1e-6)
    # R1 has no bias gradient: the bias moved by the main update only.
    g_b = jnp.mean(-sig(-(w_real @ a0 + b0))) + jnp.mean(sig(w @ a0 + b0))
    np.testing.assert_allclose(new1.disc_params["mlp_0"]["bias"], b0 - g_b, rtol=1e-5, atol=1e-6)
    # And the helper alone: R1 of a linear D is ||a||^2 at any codes.
    lin = lambda v: (v @ a0 + b0)[:, 0]  # noqa: E731
    np.testing.assert_allclose(float(wl.r1_penalty(lin, w_real)), float(np.sum(a0 ** 2)),
                               rtol=1e-6)

    # --- the encoder: extra gradient = J^T (2 lam_w (w - avg) / B - lam_d sigmoid(-D2(w)) a2 / B)
    b2 = np.asarray(new1.disc_params["mlp_0"]["bias"])
    dw = 2 * lam_w * w_delta / B - lam_d * sig(-(w @ a2 + b2)) * a2[:, 0] / B
    (want,) = vjp(dw)
    for path_want, got_full, got_base in zip(jax.tree_util.tree_leaves_with_path(want),
                                             jax.tree.leaves(g_full), jax.tree.leaves(g_base)):
        path, want_leaf = path_want
        np.testing.assert_allclose(got_full - got_base, want_leaf, rtol=2e-4,
                                   atol=1e-5 * float(np.max(np.abs(want_leaf))) + 1e-7,
                                   err_msg=jax.tree_util.keystr(path))
    # The terms themselves, as reported.
    np.testing.assert_allclose(float(met["loss_w_norm"]),
                               float(jnp.mean(jnp.sum(w_delta ** 2, -1))), rtol=1e-5)
    np.testing.assert_allclose(float(met["loss_adv"]),
                               float(jnp.mean(jax.nn.softplus(-(w @ a2 + b2)))), rtol=1e-5)
    assert float(met["finite"]) == 1.0


# ----------------------------------------------------------------------------- resume

MICRO_CONFIG = textwrap.dedent('''
    from hyperstyle_jax.training.config import base_config

    def micro_config(cache_dir, total_steps, ckpt_every):
        c = base_config()
        c.task = "w_encoder"
        c.batch_size = c.eval_batch_size = 4
        c.total_steps = total_steps
        c.log_every_steps = 1
        c.val_every_steps = 1000
        c.ckpt_every_steps = ckpt_every
        c.keep_last_checkpoints = 20
        c.num_grid_images = 0
        c.optim.lr = 1e-2
        c.loss.l2_lambda, c.loss.lpips_lambda = 1.0, 0.0
        c.w_encoder.input_width, c.w_encoder.stages = 8, ((16, 1),)
        c.w_encoder.w_norm_lambda = 0.1
        c.w_encoder.disc_lambda, c.w_encoder.disc_lr = 0.1, 1e-3
        c.w_encoder.disc_layers, c.w_encoder.r1_every = 2, 3
        c.data.generator = dict(size=8, style_dim=16, n_mlp=1, channels=((4, 8), (8, 8)))
        c.data.num_train, c.data.num_eval = 32, 4
        c.data.perturb_std, c.data.perturb_mode = 0.2, "in"
        c.data.data_dir = cache_dir
        c.data.num_threads = 0
        c.model.feedback_hw = (8, 8)
        c.model.per_sample = "map"
        return c
''')

CHILD = MICRO_CONFIG + textwrap.dedent('''
    import sys
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py
    workdir, cache_dir, steps, every = sys.argv[1:5]
    from hyperstyle_jax.train import train_and_evaluate
    result = train_and_evaluate(micro_config(cache_dir, int(steps), int(every)), workdir,
                                progress=False)
    print("RESULT", result["status"], result["step"], flush=True)
''')


def test_sigkill_then_resume_with_w_norm_and_discriminator_is_bit_identical(tmp_path):
    steps, every = 45, 3
    cache = str(tmp_path / "cache")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("XLA_FLAGS", None)  # one CPU device, as this process

    def spawn(workdir):
        return subprocess.Popen([sys.executable, str(script), str(workdir), cache, str(steps),
                                 str(every)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    ns = {}
    exec(MICRO_CONFIG, ns)
    from hyperstyle_jax.data.synthetic import synthetic_data

    synthetic_data(ns["micro_config"](cache, steps, every).data)  # render and cache once
    victim_dir = tmp_path / "killed"
    victim = spawn(victim_dir)
    first = victim_dir / "checkpoints" / str(every)
    deadline = time.time() + 300
    while not first.is_dir() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert first.is_dir(), "no checkpoint appeared before the child ended"
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    done = sorted(int(p) for p in os.listdir(victim_dir / "checkpoints") if p.isdigit())
    assert done and max(done) < steps, f"the child finished before the kill: {done}"

    resumed = spawn(victim_dir)
    # The uninterrupted reference runs here meanwhile (same config, one device).
    from hyperstyle_jax.train import train_and_evaluate

    ref = train_and_evaluate(ns["micro_config"](cache, steps, every), str(tmp_path / "ref"),
                             progress=False)
    assert ref["status"] == "done"
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-4000:]
    assert "resuming from" in out and f"RESULT done {steps}" in out, out[-2000:]
    a, b = saved_train_state(tmp_path / "ref", steps), saved_train_state(victim_dir, steps)
    assert a.keys() == b.keys()
    assert any(k.startswith("['disc_params']") for k in a)
    assert any(k.startswith("['disc_opt_state']") for k in a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    meta = [json.load(open(d / "checkpoints" / str(steps) / "data" / "metadata"))
            for d in (tmp_path / "ref", victim_dir)]
    assert meta[0]["iterator"]["step"] == meta[1]["iterator"]["step"] == steps
    # The export is a converted w_encoder folder the loader accepts.
    from hyperstyle_jax.checkpoints import load_w_encoder

    cfg, _ = load_w_encoder(str(tmp_path / "ref" / "export"))
    assert (cfg["n_styles"], cfg["style_dim"]) == (4, 16)


# ----------------------------------------------------------------------------- the demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory, xla_optimized):  # training: computes more than it compiles
    from hyperstyle_jax import demo as demo_mod

    return demo_mod.run(str(tmp_path_factory.mktemp("demo")), quick=True, progress=False)


def test_demo_w_encoder_beats_the_mean_latent_and_hyperstyle_beats_the_w_encoder(demo):
    w, h = demo["w_encoder"], demo["hyperstyle"]
    print(f"held-out L2: mean latent {w['l2/mean_latent']:.5f}, W-encoder {w['l2/iter_0']:.5f}, "
          f"HyperStyle " + ", ".join(f"iter {t} {h[f'l2/iter_{t}']:.5f}" for t in range(1, 4)))
    assert w["l2/iter_0"] < 0.6 * w["l2/mean_latent"]
    # Stage 2's iteration 0 is the exported encoder's reconstruction, the same numbers.
    np.testing.assert_allclose(h["l2/iter_0"], w["l2/iter_0"], rtol=1e-5)
    assert h["l2/iter_3"] < h["l2/iter_0"]
    # The invert CLI on the PNGs: the last iteration also beats the encoder alone.
    inv = demo["invert_l2"]
    print("invert CLI L2 per iteration:", inv)
    assert inv[-1] < inv[0]


def test_demo_exports_are_converted_folders_invert_and_edit_accept(demo):
    from hyperstyle_jax.inference import load_inverter

    p = demo["paths"]
    inv = load_inverter(os.path.join(p["export"], "hyperstyle"),
                        os.path.join(p["export"], "w_encoder"))
    assert inv.input_hw == (16, 16)
    stems = sorted(os.listdir(os.path.join(p["inversions"], "final")))
    assert len(stems) == 8
    for sub in ("grids", "iterations/0", "iterations/3", "deltas"):
        assert os.listdir(os.path.join(p["inversions"], sub)), sub
    for edit, key in (("interpolate", "alpha_0.5"), ("ganspace", "pc0_0-6_2")):
        assert os.listdir(os.path.join(p["edits"], edit, "grids")), edit
        assert os.listdir(os.path.join(p["edits"], edit, "edits", key)), key
    assert os.path.isfile(p["summary"]) and os.path.isfile(p["pca"])


def test_backbone_init_is_a_strict_merge_and_config_checks_name_the_key(tmp_path):
    """ArcFace IR-SE-50 -> the W-encoder body (every leaf but the W head); a missing or
    misshaped leaf is named. Shapes only (eval_shape), no compile."""
    from hyperstyle_jax.models.irse import Backbone, WEncoder
    from hyperstyle_jax.training.config import base_config, check_config
    from hyperstyle_jax.training.w_encoder_task import _merge_backbone

    def zeros(f):
        return jax.tree.map(lambda s: np.full(s.shape, 1.0, s.dtype), dict(jax.eval_shape(f)))
    arc = zeros(lambda: Backbone(112, 50, "ir_se").init(jax.random.key(0),
                                                         jnp.zeros((1, 112, 112, 3))))
    enc = jax.tree.map(np.zeros_like, zeros(lambda: WEncoder(18).init(
        jax.random.key(0), jnp.zeros((1, 64, 64, 3)))))
    out = _merge_backbone(enc, arc, "arcface")
    assert np.all(out["params"]["body_23"]["res_layer_1"]["kernel"] == 1.0)
    assert np.all(out["params"]["linear"]["weight"] == 0.0)  # the W head stays fresh
    del arc["params"]["body_3"]
    arc["params"]["input_layer_0"]["kernel"] = np.zeros((3, 3, 3, 32), np.float32)
    with pytest.raises(ValueError) as err:
        _merge_backbone(enc, arc, "arcface")
    assert "params/body_3/res_layer_1/kernel: missing" in str(err.value)
    assert "params/input_layer_0/kernel: (3, 3, 3, 32) vs (3, 3, 3, 64)" in str(err.value)

    c = base_config()
    c.task, c.data.source, c.loss.lpips_lambda = "w_encoder", "synthetic", 0.0
    check_config(c)  # no W-encoder checkpoint needed to train one
    c.w_encoder.stages = ((8, 1),)
    with pytest.raises(ValueError, match=r"config.w_encoder.stages"):
        check_config(c)
    c.w_encoder.stages, c.w_encoder.disc_lambda = (), -1.0
    with pytest.raises(ValueError, match=r"config.w_encoder.disc_lambda"):
        check_config(c)
    c.w_encoder.disc_lambda, c.task = 0.0, "w_encodr"
    with pytest.raises(ValueError, match=r"config.task='w_encodr'"):
        check_config(c)
