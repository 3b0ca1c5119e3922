"""Multi-device / multi-process training and exact resume, in subprocesses.

* k steps on 1 process x 8 CPU devices == 2 processes x 4 devices over a loopback
  `jax.distributed` (gloo): same parameters and BatchNorm statistics, max |diff| <= 1e-6.
* A run SIGKILLed after a checkpoint, then started again on the same workdir, ends with a
  train state bit-identical to an uninterrupted run, and metrics.jsonl holds each replayed
  step once; a damaged last checkpoint is skipped for the previous good one (same final
  state); SIGTERM saves and exits 0, Ctrl-C (SIGINT) on the CLI saves and exits 130.

The micro config (8 px generator of width 8, tiny hypernet, 2 iterations) keeps each
child's compile short. The synthetic data is rendered once here and cached for them.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from helpers import ROOT, free_port, saved_train_state

MICRO_CONFIG = textwrap.dedent('''
    from hyperstyle_jax.training.config import base_config

    def micro_config(cache_dir, total_steps, ckpt_every, adversarial=False):
        c = base_config()
        c.batch_size = 8
        c.eval_batch_size = 8
        c.n_iters_per_batch = 2
        c.total_steps = total_steps
        c.log_every_steps = 1
        c.val_every_steps = 1000
        c.ckpt_every_steps = ckpt_every
        c.keep_last_checkpoints = 10
        c.num_grid_images = 0
        c.unroll_iterations = False    # one compiled iteration body: shorter compiles
        c.optim.lr = 1e-2
        c.loss.l2_lambda, c.loss.lpips_lambda = 1.0, 0.0
        c.w_code = "true_latent"
        c.data.generator = dict(size=8, style_dim=16, n_mlp=1, channels=((4, 8), (8, 8)))
        c.data.image_hw = (8, 8)
        c.data.num_train, c.data.num_eval = 32, 8
        c.data.perturb_std, c.data.perturb_mode = 0.2, "in"
        c.data.data_dir = cache_dir
        c.data.num_threads = 0
        c.model.feedback_hw = (8, 8)
        c.model.per_sample = "map"
        c.model.hypernet = dict(stem_width=8, stages=((8, 1, 1),),
                                hypernet_z_dim=8, hypernet_in_size=8, hypernet_out_size=8,
                                hyper_block_inner_c=8, refine_block_inner_c=8,
                                refine_block_out_c=8, spatial=4)  # 8 px -> stem 4
        if adversarial:  # the image discriminator from scratch, R1 every 3 steps
            c.loss.adv_lambda = 0.1
            c.discriminator.channels = ((4, 8), (8, 8))
            c.discriminator.r1_every = 3
        return c
''')

CHILD = MICRO_CONFIG + textwrap.dedent('''
    import sys
    import jax
    workdir, cache_dir, steps, ckpt_every, nproc, pid, addr, adv = sys.argv[1:9]
    if int(nproc) > 1:
        jax.distributed.initialize(addr, int(nproc), int(pid))
    from hyperstyle_jax.train import train_and_evaluate
    from hyperstyle_jax import parallel
    result = train_and_evaluate(micro_config(cache_dir, int(steps), int(ckpt_every),
                                             adv == "adv"), workdir, progress=False)
    print("RESULT", result["status"], result["step"], flush=True)
''')


def _spawn(tmp_path, workdir, steps, ckpt_every, n_devices, nproc=1, pid=0, addr="-",
           adversarial=False):
    script = tmp_path / "child.py"
    if not script.exists():
        script.write_text(CHILD)
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # Children with the same topology share compiled executables (the resume runs).
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    args = [sys.executable, str(script), str(workdir), str(tmp_path / "cache"), str(steps),
            str(ckpt_every), str(nproc), str(pid), addr, "adv" if adversarial else "-"]
    return subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=240):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """Render the synthetic data once (cache), so children only load it."""
    tmp = tmp_path_factory.mktemp("train_parallel")
    ns = {}
    exec(MICRO_CONFIG, ns)
    from hyperstyle_jax.data.synthetic import synthetic_data

    synthetic_data(ns["micro_config"](str(tmp / "cache"), 1, 1).data)
    return tmp


def test_one_process_eight_devices_equals_two_processes_four_devices(micro):
    steps = 3
    port = free_port()
    addr = f"127.0.0.1:{port}"
    single = _spawn(micro, micro / "p1x8", steps, 1, 8)
    multi = [_spawn(micro, micro / "p2x4", steps, 1, 4, nproc=2, pid=i, addr=addr)
             for i in range(2)]
    outs = [_finish(p) for p in [single] + multi]
    for out in outs:
        assert f"RESULT done {steps}" in out, out[-2000:]
    a, b = saved_train_state(micro / "p1x8", steps), saved_train_state(micro / "p2x4", steps)
    assert a.keys() == b.keys()
    params = [k for k in a if k.startswith("['params']")]
    stats = [k for k in a if k.startswith("['batch_stats']")]
    assert params and stats
    # The runs trained: parameters moved between the first and the last step.
    first = saved_train_state(micro / "p1x8", 1)
    assert max(float(np.max(np.abs(a[k] - first[k]))) for k in params) > 1e-4
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a if a[k].dtype.kind == "f")
    assert worst <= 1e-6, worst
    assert int(a["['step']"]) == int(b["['step']"]) == steps


@pytest.mark.parametrize("adversarial", [False, True], ids=["official", "image_discriminator"])
def test_sigkill_then_resume_is_bit_identical(micro, adversarial):
    steps, every = 12, 4
    tag = "_adv" if adversarial else ""
    ref = _spawn(micro, micro / f"uninterrupted{tag}", steps, every, 2, adversarial=adversarial)
    victim_dir = micro / f"killed{tag}"
    victim = _spawn(micro, victim_dir, steps, every, 2, adversarial=adversarial)
    first = victim_dir / "checkpoints" / str(every)
    deadline = time.time() + 240
    while not first.is_dir() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert first.is_dir(), "no checkpoint appeared before the child ended"
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    done = sorted(int(p) for p in os.listdir(victim_dir / "checkpoints") if p.isdigit())
    assert done and max(done) < steps, f"the child finished before the kill: {done}"

    resumed = _finish(_spawn(micro, victim_dir, steps, every, 2, adversarial=adversarial))
    assert "resuming from" in resumed and f"RESULT done {steps}" in resumed, resumed[-2000:]
    _finish(ref)
    a = saved_train_state(micro / f"uninterrupted{tag}", steps)
    b = saved_train_state(victim_dir, steps)
    assert a.keys() == b.keys()
    # The discriminator and its Adam state are in the checkpoint exactly when it is on.
    assert any(k.startswith("['disc_params']") for k in a) == adversarial
    assert any(k.startswith("['disc_opt_state']") for k in a) == adversarial
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # And the data position: both consumed exactly `steps` global batches.
    meta = [json.load(open(d / "checkpoints" / str(steps) / "data" / "metadata"))
            for d in (micro / f"uninterrupted{tag}", victim_dir)]
    assert meta[0]["iterator"]["step"] == meta[1]["iterator"]["step"] == steps
    # The steps replayed after the kill are logged once: one train row per step.
    rows = [json.loads(line) for line in open(victim_dir / "metrics.jsonl")]
    logged = [r["step"] for r in rows if r["split"] == "train"]
    assert logged == list(range(1, steps + 1)), logged


def test_damaged_last_checkpoint_resumes_from_the_previous_one(micro):
    import shutil

    steps, every = 12, 4
    src = micro / "uninterrupted"
    if not (src / "checkpoints" / str(steps)).is_dir():
        _finish(_spawn(micro, src, steps, every, 2))
    damaged = micro / "damaged"
    shutil.copytree(src, damaged)
    state_dir = damaged / "checkpoints" / str(steps) / "state"
    for root, _, files in os.walk(state_dir):   # half deleted: the array files are gone
        for f in files:
            if not f.startswith("_"):
                os.remove(os.path.join(root, f))
    out = _finish(_spawn(micro, damaged, steps, every, 2))
    assert f"checkpoint step {steps} in" in out and "cannot be read" in out, out[-3000:]
    assert f"resuming from the last good checkpoint, step {steps - every}" in out
    assert f"RESULT done {steps}" in out
    a, b = saved_train_state(src, steps), saved_train_state(damaged, steps)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_emptied_checkpoint_files_resume_quietly(micro):
    """Array files emptied in the last step: one warning, the previous step, no traceback
    (orbax's failed restore must leave no reads behind to fail into a closed event loop)."""
    import shutil

    steps, every = 12, 4
    src = micro / "uninterrupted"
    if not (src / "checkpoints" / str(steps)).is_dir():
        _finish(_spawn(micro, src, steps, every, 2))
    damaged = micro / "emptied"
    shutil.copytree(src, damaged)
    for root, _, files in os.walk(damaged / "checkpoints" / str(steps) / "state"):
        if os.path.basename(root) == "d":
            for f in files:
                open(os.path.join(root, f), "w").close()
    out = _finish(_spawn(micro, damaged, steps, every, 2))
    assert "Traceback" not in out and "Event loop is closed" not in out, out[-3000:]
    assert out.count("cannot be read") == 1, out[-3000:]
    assert f"resuming from the last good checkpoint, step {steps - every}" in out
    assert f"RESULT done {steps}" in out


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(micro):
    steps, every = 400, 4
    workdir = micro / "sigterm"
    proc = _spawn(micro, workdir, steps, every, 2)
    first = workdir / "checkpoints" / str(every)
    deadline = time.time() + 240
    while not first.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out = _finish(proc)  # exit status 0
    assert "SIGTERM: saved a checkpoint at step" in out, out[-2000:]
    stopped = int(out.split("SIGTERM: saved a checkpoint at step ")[1].split()[0])
    assert every <= stopped < steps
    assert (workdir / "checkpoints" / str(stopped)).is_dir()
    assert f"RESULT stopped {stopped}" in out


def test_ctrl_c_on_the_cli_saves_and_exits_130(micro):
    config = micro / "micro_cli_config.py"
    config.write_text(MICRO_CONFIG + textwrap.dedent(f'''
        def get_config():
            return micro_config({str(micro / "cache")!r}, 400, 4)
    '''))
    workdir = micro / "sigint"
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_COMPILATION_CACHE_DIR=str(micro / "jax_cache"))
    proc = subprocess.Popen([sys.executable, "-m", "hyperstyle_jax.train", "--config", str(config),
                             "--workdir", str(workdir), "--noprogress"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = workdir / "checkpoints" / "4"
    deadline = time.time() + 240
    while not first.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 130, out[-3000:]
    assert "SIGINT: saved a checkpoint at step" in out and "Traceback" not in out, out[-3000:]
