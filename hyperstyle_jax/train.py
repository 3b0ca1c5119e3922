r"""Train HyperStyle's hypernetwork or its W-encoder, data-parallel over every device and host.

    python -m hyperstyle_jax.train --config configs/tiny.py --workdir /tmp/hyperstyle_tiny
    python -m hyperstyle_jax.train --config configs/ffhq.py --workdir /ckpt/ffhq \
        --config.checkpoints.generator=... --config.batch_size=32
    python -m hyperstyle_jax.train --config configs/w_encoder_ffhq.py --workdir /ckpt/w_enc

`config.task` selects what is trained: 'hyperstyle' (the hypernetwork) or 'w_encoder'
(the W-encoder); both export a converted folder (<workdir>/export) that `invert` reads.
`--config` defaults to configs/tiny.py (a 3-6 minute CPU demo); `--config.a.b=value`
overrides a field. A workdir that holds a checkpoint resumes from it. Multi-host:
`--coordinator_address`, `--num_processes`, `--process_id` (or JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID); automatic on a TPU pod slice. See docs/training.md.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from hyperstyle_jax import parallel
from hyperstyle_jax.data import make_eval_iterator, make_train_iterator
from hyperstyle_jax.training import command_line, hyperstyle_task, w_encoder_task
from hyperstyle_jax.training.checkpointing import Checkpointer, abstract_like
from hyperstyle_jax.training.config import check_config, write_config_json
from hyperstyle_jax.training.metrics_log import MetricsWriter, grid_labels
from hyperstyle_jax.training.optim import make_optimizer
from hyperstyle_jax.training.stop_signal import StopSignal
from hyperstyle_jax.utils import cli
from hyperstyle_jax.utils.images import make_grid

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "tiny.py")
TASKS = {"hyperstyle": hyperstyle_task.build_task, "w_encoder": w_encoder_task.build_task}


class TrainingError(cli.UserError):
    """Training stopped on a condition the user must see (non-finite loss, bad resume)."""


def put_replicated(tree: Any, mesh) -> Any:
    """Host arrays (equal on every process) -> global arrays replicated over the mesh."""
    sharding = parallel.replicated(mesh)

    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
    return jax.tree.map(one, tree)


def train_and_evaluate(config, workdir: str, *, progress: bool = True) -> dict:
    """Train (resuming from `workdir` if it holds a checkpoint); return the final eval.

    Returns {'status': 'done'|'stopped', 'step', 'eval', 'signal'}: eval holds the held-out
    per-iteration means (`l2/iter_t`, ...) and `val_loss`.
    """
    check_config(config)
    is_main = jax.process_index() == 0
    workdir = os.path.abspath(workdir)
    if is_main:
        os.makedirs(workdir, exist_ok=True)
        write_config_json(config, workdir)

    def say(message: str) -> None:  # the user's lines: process 0, stdout
        if is_main:
            print(message, flush=True)

    # -- Mesh --------------------------------------------------------------------------------
    mesh = parallel.make_mesh()
    parallel.log_topology(mesh)
    parallel.check_batch_size(config.batch_size, mesh, "batch_size")
    parallel.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    replicated = parallel.replicated(mesh)
    batch_sharded = parallel.batch_sharded(mesh)

    # -- Model, frozen networks, optimizer (the task: config.task) ---------------------------
    tx = make_optimizer(config.optim)
    task = TASKS[config.task](config, tx)
    for line in task.description:
        logging.info("%s", line)
        say(line)
    frozen = put_replicated(task.frozen, mesh)

    # -- Train state, created sharded --------------------------------------------------------
    init_rng = jax.random.split(jax.random.PRNGKey(config.seed))[0]
    init_inputs = None if task.init_inputs is None else put_replicated(task.init_inputs, mesh)
    abstract = jax.eval_shape(task.make_state, init_rng, init_inputs)
    state_shardings = jax.tree.map(lambda _: replicated, abstract)
    state = jax.jit(task.make_state, out_shardings=state_shardings)(init_rng, init_inputs)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
    logging.info("%s: %d trainable parameters", task.name, n_params)

    # -- Steps: train (donates the old state) and eval (with or without images) --------------
    frozen_shardings = jax.tree.map(lambda _: replicated, frozen)
    in_shardings = (state_shardings, frozen_shardings, batch_sharded)
    train_step = jax.jit(task.train_step, in_shardings=in_shardings,
                         out_shardings=(state_shardings, replicated), donate_argnums=(0,))
    eval_steps = {images: jax.jit(task.eval_step(images), in_shardings=in_shardings,
                                  out_shardings=None if images else replicated)
                  for images in (False, True)}  # the images stay batch-sharded

    # -- Input: each process reads its block of every global batch ---------------------------
    train_iter = make_train_iterator(config.data, global_batch_size=config.batch_size,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count(), seed=config.seed)

    # -- Checkpoint and resume ---------------------------------------------------------------
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                                keep_last=config.keep_last_checkpoints,
                                keep_best=config.keep_best_checkpoints)
    try:
        restored = checkpointer.restore_latest(abstract_like(state), log=say)
    except RuntimeError as e:
        raise TrainingError(str(e)) from None
    start = 0
    if restored is not None:
        latest, state, data_state = restored
        train_iter.set_state(data_state["iterator"])
        start = int(parallel.to_host(state.step))
        if start != latest:
            raise TrainingError(f"{checkpointer.directory}: checkpoint {latest} holds step {start}")
        say(f"resuming from {checkpointer.directory} at step {start}")

    # Finiteness is read at log steps and before every save, not every step (a host read
    # per step would serialise the host's input work with the device's step).
    unchecked = []   # (step, device scalar `finite`) since the last check

    def check_finite(step: int) -> None:
        if not unchecked:
            return
        finite = np.asarray(jax.device_get(jnp.stack([f for _, f in unchecked])))
        bad = [s for (s, _), f in zip(unchecked, finite) if f != 1.0]
        unchecked.clear()
        if bad:
            good = checkpointer.latest_step()
            raise TrainingError(
                f"non-finite loss or gradient at step {bad[0]}; its update was not applied and "
                f"training stopped at step {step}. Last good checkpoint: "
                f"{'none' if good is None else f'step {good} in {checkpointer.directory}'}. "
                "Lower config.optim.lr or check the data.")

    def save(step: int, val_loss: float | None = None) -> None:
        check_finite(step)
        checkpointer.save(step, state, {"iterator": train_iter.get_state(), "step": step,
                                        "workdir": workdir}, val_loss)

    # -- Evaluation: held-out means, the image grid ------------------------------------------
    writer = MetricsWriter(workdir, enabled=is_main, resume_step=start if start else None)

    def evaluate(step: int, log: bool = True) -> dict:
        eval_iter = make_eval_iterator(config.data, global_batch_size=config.eval_batch_size,
                                       process_index=jax.process_index(),
                                       process_count=jax.process_count())
        sums, grid_rows = {}, []
        try:
            for index, local in enumerate(eval_iter):
                if config.max_val_batches and index >= config.max_val_batches:
                    break
                batch = parallel.global_batch(local, mesh)
                with_images = log and index == 0 and config.num_grid_images > 0
                out = eval_steps[with_images](state, frozen, batch)
                if with_images:
                    images = parallel.gather_to_host(out.pop("images"))
                    x = parallel.gather_to_host(batch["image"])
                    for i in range(min(config.num_grid_images, x.shape[0])):
                        grid_rows.append([x[i]] + list(images[:, i]))
                for key, value in parallel.to_host(out).items():
                    sums[key] = sums.get(key, 0.0) + float(value)
        finally:
            eval_iter.close()
        count = max(sums.get("count", 0.0), 1.0)
        summary = {k: (v if k == "count" else v / count) for k, v in sums.items()}
        if log:
            writer.scalars(step, {k: v for k, v in summary.items() if k != "count"}, split="val")
        if grid_rows:
            grid = make_grid(grid_rows, labels=grid_labels(task.grid_tag, grid_rows))
            writer.image(step, task.grid_tag, grid)
        writer.flush()
        return summary

    # -- Loop --------------------------------------------------------------------------------
    stopper = StopSignal()
    status, last_val, bar = "done", None, None
    if is_main and progress:  # a bar on a terminal; in a log, a plain line per log step
        bar = cli.progress_bar(config.total_steps, desc="train", unit="step",
                               every=config.log_every_steps * 5, initial=start)
    window_start, window_steps = time.perf_counter(), 0   # throughput, validation excluded
    try:
        for step in range(start + 1, config.total_steps + 1):
            batch = parallel.global_batch(next(train_iter), mesh)
            state, metrics = train_step(state, frozen, batch)
            unchecked.append((step, metrics["finite"]))
            window_steps += 1
            last = step == config.total_steps
            if step % config.log_every_steps == 0 or last:
                check_finite(step)
                seconds = max(time.perf_counter() - window_start, 1e-9)
                scalars = {k: float(v) for k, v in parallel.to_host(metrics).items()
                           if k != "finite"}
                scalars.update(lr=config.optim.lr, steps_per_sec=window_steps / seconds,
                               images_per_sec=window_steps * config.batch_size / seconds)
                writer.scalars(step, scalars)
                if bar is not None:
                    bar.set_postfix(loss=f"{scalars['loss']:.4f}",
                                    img_s=f"{scalars['images_per_sec']:.1f}")
                window_start, window_steps = time.perf_counter(), 0
            if bar is not None:
                bar.update(1)
            val_loss = None
            if step % config.val_every_steps == 0 or last:
                last_val = evaluate(step)
                val_loss = last_val["val_loss"]
                logging.info("step %d: val %s", step, last_val)
            if step % config.ckpt_every_steps == 0 or last or val_loss is not None:
                save(step, val_loss)
            if val_loss is not None:
                window_start, window_steps = time.perf_counter(), 0
            if stopper.should_stop(step):
                save(step)
                status = "stopped"
                message = (f"{stopper.received}: saved a checkpoint at step {step} in "
                           f"{checkpointer.directory}; run the same command to resume")
                logging.warning(message)
                say("\n" + message)
                break
    finally:
        if bar is not None:
            bar.close()
        stopper.restore()
        checkpointer.wait()  # the last asynchronous save lands even if the loop raised
        train_iter.close()

    # -- Summary and export ------------------------------------------------------------------
    final_step = int(parallel.to_host(state.step))
    if status == "done" and last_val is None:
        # Resumed after the last step: the run already logged this evaluation.
        last_val = evaluate(final_step, log=False)
    writer.close()
    best_step, best_loss = checkpointer.best()
    checkpointer.close()
    if status == "done":
        say(task.format_eval(last_val))
        say(f"checkpoints: {checkpointer.directory} (best val_loss {best_loss} at step "
            f"{best_step})")
        if jax.process_count() == 1:  # orbax writes collectively; one process alone exports
            export_dir = os.path.join(workdir, "export")
            task.export(parallel.to_host({"params": state.params,
                                          "batch_stats": state.batch_stats}), export_dir)
            say(f"inference folder (converted {task.export_kind} format): {export_dir}")
        else:
            say("multi-process run: no export/ folder; write it by running the same command "
                "once in a single process (it resumes at the last step and only exports)")
    return {"status": status, "step": final_step, "eval": last_val, "signal": stopper.received}


# -- Command line ----------------------------------------------------------------------------
_CONFIG = config_flags.DEFINE_config_file(
    "config", DEFAULT_CONFIG, "Training config file (configs/<name>.py or <file>.py:<stage>); "
    "override fields with --config.a.b=value.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output folder: checkpoints/, tensorboard/, metrics.jsonl, config.json, "
    "images/, export/. A workdir that holds a checkpoint resumes from it.", required=True)
_PROCESS = parallel.define_process_flags()  # shared with invert and edit
_PROGRESS = flags.DEFINE_bool(
    "progress", True, "Show progress (process 0): a bar on a terminal, plain lines in a log.")
_DEBUG = flags.DEFINE_bool("debug", False, "Tracebacks instead of one-line errors.")
FLAG_NAMES = ("config", "workdir", *_PROCESS, "progress", "debug")


def main(argv: list) -> int:
    """Train with the flags' config; exit 1 on a failed run, 130 after Ctrl-C."""
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    parallel.initialize_distributed(**{name: f.value for name, f in _PROCESS.items()})
    try:
        result = train_and_evaluate(_CONFIG.value, _WORKDIR.value, progress=_PROGRESS.value)
    except (ValueError, OSError) as e:  # a config value or a file the user named: one line
        raise cli.UserError(str(e)) from e
    return cli.EXIT_INTERRUPTED if result.get("signal") == "SIGINT" else 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(cli.run(main, ["--debug"] * _DEBUG.value)),
            flags_parser=lambda argv: command_line.parse_flags(argv, __doc__, FLAG_NAMES))
