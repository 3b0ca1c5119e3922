r"""Train HyperStyle's hypernetwork or its W-encoder, data-parallel over every device and host.

    python -m hyperstyle_jax.train --config configs/tiny.py --workdir /tmp/hyperstyle_tiny
    python -m hyperstyle_jax.train --config configs/ffhq.py --workdir /ckpt/ffhq \
        --config.checkpoints.generator=... --config.batch_size=32
    python -m hyperstyle_jax.train --config configs/w_encoder_ffhq.py --workdir /ckpt/w_enc

`config.task` selects what is trained: 'hyperstyle' (the hypernetwork) or 'w_encoder'
(the W-encoder, `hyperstyle_jax.training.w_encoder_task`); both export a converted
folder (<workdir>/export) that `invert` reads.

`--config` defaults to configs/tiny.py (a 3-6 minute CPU demo). Overrides are
`--config.a.b=value`; unknown keys and wrong types are rejected. A workdir that holds a
checkpoint resumes from it by itself. Multi-host: `--coordinator_address`,
`--num_processes`, `--process_id` (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID); automatic on a TPU pod slice. See docs/training.md.

The loop reads top to bottom in sections, as big_vision's train.py: distributed and mesh,
model and frozen networks, optimizer, train state (created sharded), steps, input,
checkpoint and resume, evaluation, loop. The steps are `hyperstyle_jax.training.hyperstyle_step` and
`hyperstyle_jax.training.w_encoder_step`.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from hyperstyle_jax import parallel
from hyperstyle_jax.data import make_eval_iterator, make_train_iterator
from hyperstyle_jax.training import hyperstyle_task
from hyperstyle_jax.training.checkpointing import Checkpointer, abstract_like
from hyperstyle_jax.training.config import check_config
from hyperstyle_jax.training.metrics_log import MetricsWriter
from hyperstyle_jax.training.optim import make_optimizer
from hyperstyle_jax.utils import cli

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "tiny.py")


class TrainingError(RuntimeError):
    """Training stopped on a condition the user must see (non-finite loss, bad resume)."""


# =======================================================================================
# Helpers
# =======================================================================================
def put_replicated(tree: Any, mesh) -> Any:
    """Host arrays (equal on every process) -> global arrays replicated over the mesh."""
    sharding = parallel.replicated(mesh)

    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
    return jax.tree.map(one, tree)


def write_config_json(config, workdir: str) -> None:
    path = os.path.join(workdir, "config.json")
    text = config.to_json_best_effort(indent=1, sort_keys=True)
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        if old != text:
            keep = os.path.join(workdir, f"config.{int(time.time())}.json")
            os.replace(path, keep)
            logging.warning("config differs from the one in %s; the old one is kept as %s",
                            path, keep)
    with open(path, "w") as f:
        f.write(text)


class StopSignal:
    """SIGTERM/SIGINT -> a flag the loop polls; several processes agree on the step."""

    def __init__(self):
        self.received = None
        self._old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (e.g. a test runner): no handler
                pass

    def _handler(self, signum, frame):
        del frame
        self.received = signal.Signals(signum).name

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            # jax.distributed's preemption notifier (SIGTERM) gives every process the same step.
            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    self.received = self.received or "SIGTERM"
                    return True
            except RuntimeError:
                pass
            return False
        return self.received is not None

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)


# =======================================================================================
# Training
# =======================================================================================
def _grid_labels(tag: str, rows: list) -> list:
    """Column headers from a grid tag 'val/input|initial|iterations' (first row only)."""
    names = tag.split("/", 1)[-1].split("|")
    head = []
    for name in names:
        if name == "iterations":
            head += [f"iteration {t}" for t in range(1, len(rows[0]) - len(head) + 1)]
        else:
            head.append(name)
    return [head[:len(rows[0])]] + [[""] * len(r) for r in rows[1:]]


def train_and_evaluate(config, workdir: str, *, progress: bool = True) -> dict:
    """Train (resuming from `workdir` if it holds a checkpoint); return the final eval.

    Returns {'status': 'done'|'stopped', 'step': int, 'eval': {...}} where eval holds the
    held-out per-iteration means (`l2/iter_t`, ...) and `val_loss`.
    """
    check_config(config)
    is_main = jax.process_index() == 0
    workdir = os.path.abspath(workdir)
    if is_main:
        os.makedirs(workdir, exist_ok=True)
        write_config_json(config, workdir)

    # ---------------------------------------------------------------- mesh
    mesh = parallel.make_mesh()
    parallel.log_topology(mesh)
    parallel.check_batch_size(config.batch_size, mesh, "batch_size")
    parallel.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    repl = parallel.replicated(mesh)
    batch_sh = parallel.batch_sharded(mesh)

    # ---------------------------------------------------------------- model, frozen networks, optimizer
    # The task (config.task) gives the model, its frozen networks, the state and the steps.
    tx = make_optimizer(config.optim)
    if config.task == "w_encoder":
        from hyperstyle_jax.training import w_encoder_task

        task = w_encoder_task.build_task(config, tx)
    else:
        task = hyperstyle_task.build_task(config, tx)
    for line in task.description:
        logging.info("%s", line)
        if is_main:
            print(line, flush=True)
    frozen = put_replicated(task.frozen, mesh)

    # ---------------------------------------------------------------- train state (sharded)
    init_rng = jax.random.split(jax.random.PRNGKey(config.seed))[0]
    init_inputs = None if task.init_inputs is None else put_replicated(task.init_inputs, mesh)
    abstract = jax.eval_shape(task.make_state, init_rng, init_inputs)
    state_shardings = jax.tree.map(lambda _: repl, abstract)
    state = jax.jit(task.make_state, out_shardings=state_shardings)(init_rng, init_inputs)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
    logging.info("%s: %d trainable parameters", task.name, n_params)

    # ---------------------------------------------------------------- steps
    frozen_sh = jax.tree.map(lambda _: repl, frozen)
    train_step = jax.jit(task.train_step,
                         in_shardings=(state_shardings, frozen_sh, batch_sh),
                         out_shardings=(state_shardings, repl), donate_argnums=(0,))
    eval_steps = {  # with_images -> jitted eval step (images stay batch-sharded)
        images: jax.jit(task.eval_step(images),
                        in_shardings=(state_shardings, frozen_sh, batch_sh),
                        out_shardings=repl if not images else None)
        for images in (False, True)}

    # ---------------------------------------------------------------- input
    # Each process reads only its block of every global batch; the state is the global step.
    train_iter = make_train_iterator(config.data, global_batch_size=config.batch_size,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count(), seed=config.seed)

    # ---------------------------------------------------------------- checkpoint, resume
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"),
                        keep_last=config.keep_last_checkpoints,
                        keep_best=config.keep_best_checkpoints)
    start = 0
    say = (lambda m: print(m, flush=True)) if is_main else (lambda m: None)  # noqa: E731
    try:
        restored = ckpt.restore_latest(abstract_like(state), log=say)
    except RuntimeError as e:
        raise TrainingError(str(e)) from None
    if restored is not None:
        latest, state, data_state = restored
        train_iter.set_state(data_state["iterator"])
        start = int(parallel.to_host(state.step))
        if start != latest:
            raise TrainingError(f"{ckpt.directory}: checkpoint {latest} holds step {start}")
        msg = f"resuming from {ckpt.directory} at step {start}"
        logging.info(msg)
        if is_main:
            print(msg, flush=True)

    # Finiteness is read at log steps and before every save, not every step (a host read
    # per step would serialise the host's input work with the device's step).
    unchecked = []   # (step, device scalar `finite`) since the last check

    def check_finite() -> None:
        if not unchecked:
            return
        flags = np.asarray(jax.device_get(jnp.stack([f for _, f in unchecked])))
        bad = [s for (s, _), f in zip(unchecked, flags) if f != 1.0]
        unchecked.clear()
        if bad:
            good = ckpt.latest_step()
            raise TrainingError(
                f"non-finite loss or gradient at step {bad[0]}; its update was not applied and "
                f"training stopped at step {step}. Last good checkpoint: "
                f"{'none' if good is None else f'step {good} in {ckpt.directory}'}. "
                "Lower config.optim.lr or check the data.")

    def save(step: int, val_loss: float | None = None) -> None:
        check_finite()
        ckpt.save(step, state, {"iterator": train_iter.get_state(), "step": step,
                                "workdir": workdir}, val_loss)

    # ---------------------------------------------------------------- evaluation
    writer = MetricsWriter(workdir, enabled=is_main, resume_step=start if start else None)

    def evaluate(step: int, log_images: bool = True, log: bool = True) -> dict:
        it = make_eval_iterator(config.data, global_batch_size=config.eval_batch_size,
                                process_index=jax.process_index(),
                                process_count=jax.process_count())
        sums: dict = {}
        grid_rows = []
        try:
            for b, local in enumerate(it):
                if config.max_val_batches and b >= config.max_val_batches:
                    break
                batch = parallel.global_batch(local, mesh)
                want_images = log_images and b == 0 and config.num_grid_images > 0
                out = eval_steps[want_images](state, frozen, batch)
                if want_images:
                    imgs = parallel.gather_to_host(out.pop("images"))
                    x = parallel.gather_to_host(batch["image"])
                    for i in range(min(config.num_grid_images, x.shape[0])):
                        grid_rows.append([x[i]] + [imgs[t, i] for t in range(imgs.shape[0])])
                for k, v in parallel.to_host(out).items():
                    sums[k] = sums.get(k, 0.0) + float(v)
        finally:
            it.close()
        count = max(sums.get("count", 0.0), 1.0)
        summary = {k: (v if k == "count" else v / count) for k, v in sums.items()}
        if log:
            writer.scalars(step, {k: v for k, v in summary.items() if k != "count"}, split="val")
        if grid_rows:
            from hyperstyle_jax.utils.images import make_grid

            writer.image(step, task.grid_tag,
                         make_grid(grid_rows, labels=_grid_labels(task.grid_tag, grid_rows)))
        writer.flush()
        return summary

    # ---------------------------------------------------------------- loop
    stopper = StopSignal()
    status = "done"
    bar = None
    if is_main and progress:  # a bar on a terminal; in a log, a plain line per log step
        bar = cli.progress_bar(config.total_steps, desc="train", unit="step",
                               every=config.log_every_steps * 5, initial=start)
    t_window, n_window = time.perf_counter(), 0
    last_val = None
    try:
        for step in range(start + 1, config.total_steps + 1):
            local = next(train_iter)
            batch = parallel.global_batch(local, mesh)
            state, metrics = train_step(state, frozen, batch)
            unchecked.append((step, metrics["finite"]))
            n_window += 1
            if step % config.log_every_steps == 0 or step == config.total_steps:
                check_finite()
                m = parallel.to_host(metrics)
                dt = time.perf_counter() - t_window
                ips = n_window * config.batch_size / max(dt, 1e-9)
                scalars = {k: float(v) for k, v in m.items() if k != "finite"}
                scalars.update(lr=config.optim.lr, images_per_sec=ips,
                               steps_per_sec=n_window / max(dt, 1e-9))
                writer.scalars(step, scalars)
                if bar is not None:
                    bar.set_postfix(loss=f"{scalars['loss']:.4f}", img_s=f"{ips:.1f}")
                t_window, n_window = time.perf_counter(), 0
            if bar is not None:
                bar.update(1)

            val_loss = None
            if step % config.val_every_steps == 0 or step == config.total_steps:
                last_val = evaluate(step)
                val_loss = last_val["val_loss"]
                logging.info("step %d: val %s", step, last_val)
            if (step % config.ckpt_every_steps == 0 or step == config.total_steps
                    or val_loss is not None):
                save(step, val_loss)
            if val_loss is not None:  # keep validation time out of the images/s window
                t_window, n_window = time.perf_counter(), 0
            if stopper.should_stop(step):
                save(step)
                status = "stopped"
                msg = (f"{stopper.received}: saved a checkpoint at step {step} in "
                       f"{ckpt.directory}; run the same command to resume")
                logging.warning(msg)
                if is_main:
                    print("\n" + msg, flush=True)
                break
    finally:
        if bar is not None:
            bar.close()
        stopper.restore()
        ckpt.wait()  # the last asynchronous save lands even if the loop raised
        train_iter.close()

    final_step = int(parallel.to_host(state.step))
    if status == "done" and last_val is None:
        # Resumed after the last step: the run already logged this evaluation.
        last_val = evaluate(final_step, log_images=False, log=False)
    writer.close()
    best_step, best_loss = ckpt.best()
    ckpt.close()
    if status == "done" and is_main:
        print(task.format_eval(last_val), flush=True)
        print(f"checkpoints: {ckpt.directory} (best val_loss {best_loss} at step {best_step})",
              flush=True)
    if status == "done" and jax.process_count() == 1:
        # orbax writes collectively; one process alone can write the inference folder.
        export_dir = os.path.join(workdir, "export")
        _export(task, state, export_dir)
        print(f"inference folder (converted {task.export_kind} format): {export_dir}",
              flush=True)
    elif status == "done" and is_main:
        print("multi-process run: no export/ folder; write it by running the same command "
              "once in a single process (it resumes at the last step and only exports)",
              flush=True)
    return {"status": status, "step": final_step, "eval": last_val, "signal": stopper.received}


def _export(task: hyperstyle_task.Task, state, out_dir: str) -> None:
    """Write the trained network as a converted folder (`task.export_kind`, for inference)."""
    import shutil

    from hyperstyle_jax.checkpoints import save_converted

    trained = parallel.to_host({"params": state.params, "batch_stats": state.batch_stats})
    cfg, tree = task.export_tree(trained)
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_converted(tmp, tree, cfg, kind=task.export_kind)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


# =======================================================================================
# Command line
# =======================================================================================
_HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull")


def _define_flags() -> dict:
    """Flags are defined when the CLI runs, not on import (config_flags reads sys.argv as
    soon as it is defined, so a typo'd override would fail the import with a traceback)."""
    return {
        "config": config_flags.DEFINE_config_file(
            "config", DEFAULT_CONFIG,
            "Training config file (configs/<name>.py); override fields with "
            "--config.a.b=value.", lock_config=True),
        "workdir": flags.DEFINE_string(
            "workdir", None, "Output folder: checkpoints/, tensorboard/, metrics.jsonl, "
            "config.json, images/, export/. A workdir that holds a checkpoint resumes from it."),
        "coordinator_address": flags.DEFINE_string(
            "coordinator_address", None, "host:port of process 0 for multi-host runs "
            "(or JAX_COORDINATOR_ADDRESS); not needed on TPU pods."),
        "num_processes": flags.DEFINE_integer(
            "num_processes", None, "Number of processes (or JAX_NUM_PROCESSES)."),
        "process_id": flags.DEFINE_integer(
            "process_id", None, "This process's index (or JAX_PROCESS_ID)."),
        "progress": flags.DEFINE_bool("progress", True, "Show progress (process 0): a bar on "
                                      "a terminal, plain lines in a log."),
    }


def _config_path(argv) -> str:
    """The --config value as given (`configs/tiny.py` or `configs/tiny.py:stage`)."""
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return DEFAULT_CONFIG


def _help_text(argv) -> str:
    """The docstring, the options with defaults, and every config key with its default."""
    import importlib.util

    lines = [__doc__.strip(), "", "options:"]
    opts = [("--config", DEFAULT_CONFIG, "training config file; --config.KEY=VALUE overrides"),
            ("--workdir", "(required)", "output folder; resumes from its last checkpoint"),
            ("--coordinator_address", "None", "host:port of process 0 (multi-host)"),
            ("--num_processes", "None", "number of processes (multi-host)"),
            ("--process_id", "None", "this process's index (multi-host)"),
            ("--[no]progress", "True", "progress bar / plain progress lines"),
            ("--debug", "off", "show tracebacks instead of one-line errors")]
    lines += [f"  {n:<24} {d}  (default: {v})" for n, v, d in opts]
    path = _config_path(argv)
    file, _, arg = path.partition(":")   # config_flags' `file.py:arg` form
    try:
        spec = importlib.util.spec_from_file_location("_help_config", file)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        config = mod.get_config(arg) if arg else mod.get_config()
    except Exception as e:  # noqa: BLE001 - help should still print
        lines += ["", f"(cannot list config keys: {path}: {cli.one_line(e)})"]
        return "\n".join(lines)
    lines += ["", f"config keys of {path} (override with --config.KEY=VALUE):"]

    def walk(node, prefix):
        for k in sorted(node.keys()):
            v = node[k]
            if hasattr(v, "keys") and not isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                lines.append(f"  {prefix}{k} = {v!r}")
    walk(config, "config.")
    return "\n".join(lines)


def _flag_error(e: BaseException, argv) -> str:
    """One line for a bad command line, naming the argument and, for a typo, the near key."""
    import re

    msg = str(e)
    m = re.search(r'Did you mean "(\w+)" instead of "(\w+)"', msg)
    found = re.search(r"'([\w.]+)", msg)
    key = m.group(2) if m else (found.group(1) if found else "")
    arg = next((a for a in argv[1:] if key and (f".{key}" in a or f"--{key}" in a)), "")
    if m:
        return f"{arg or key}: no config key {key!r} (did you mean {m.group(1)!r}?)"
    if isinstance(e, (KeyError, AttributeError)):
        return f"{arg or key}: no such config key (see --help for the keys)"
    if "Failed loading config file" in msg or isinstance(e, OSError):
        reason = msg.strip().splitlines()[-1].strip()
        return f"--config {_config_path(argv)}: cannot load the config file ({reason})"
    if isinstance(e, flags.UnrecognizedFlagError):
        return f"unknown option --{key} (see --help)"
    v = re.match(r"flag (--[\w.]+=\S*): (.*)", " ".join(msg.split()))
    if v:
        what = v.group(2)
        if "invalid literal for int()" in what:
            what = "expected an integer"
        elif "could not convert string to float" in what:
            what = "expected a number"
        return f"{v.group(1)}: {what}"
    return cli.one_line(e)


def main(argv=None) -> int:
    """The command line: one-line errors, exit 1 on a failed run, 130 after Ctrl-C."""
    argv = list(sys.argv if argv is None else argv)
    debug = cli.debug_enabled(argv)
    argv = [a for a in argv if a != "--debug"]
    if any(a in _HELP_FLAGS for a in argv[1:]):
        print(_help_text(argv))
        return 0
    try:
        fl = _define_flags()
        rest = flags.FLAGS(argv)
        config = fl["config"].value
        config.keys()  # the file is loaded lazily: fail here, not inside training
    except (flags.Error, OSError, AttributeError, KeyError, TypeError, ValueError) as e:
        if debug:
            raise
        return cli.fail(_flag_error(e, argv))
    if len(rest) > 1:
        return cli.fail(f"unexpected arguments: {' '.join(rest[1:])}")
    workdir = fl["workdir"].value
    if not workdir:
        return cli.fail("--workdir is required (where checkpoints and logs go)")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        return cli.fail(f"--workdir {workdir}: is an existing file, not a folder")
    logging.use_absl_handler()
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
        parallel.initialize_distributed(fl["coordinator_address"].value,
                                        fl["num_processes"].value, fl["process_id"].value)
        result = train_and_evaluate(config, workdir, progress=fl["progress"].value)
    except KeyboardInterrupt:  # a second Ctrl-C while saving
        return cli.fail("interrupted", cli.EXIT_INTERRUPTED)
    except Exception as e:  # noqa: BLE001 - one line unless --debug
        if debug:
            raise
        known = isinstance(e, (TrainingError, ValueError, OSError))
        return cli.fail(cli.one_line(e) + ("" if known else
                                           " (run with --debug for the traceback)"), 1)
    if result.get("signal") == "SIGINT":
        return cli.EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
