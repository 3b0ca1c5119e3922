"""Training checkpoints: an orbax `CheckpointManager` under `<workdir>/checkpoints`.

Each step folder holds two items:
  state  the train state pytree (params, opt_state, batch_stats, step, rng), written
         asynchronously by every process from the global arrays;
  data   JSON: the data iterator state (the global step it resumes at) plus bookkeeping.
Kept: the last `keep_last` checkpoints and the `keep_best` with the lowest validation loss
(saved with `metrics={'val_loss': ...}`, which orbax stores beside the step).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

VAL_METRIC = "val_loss"


class Checkpointer:
    def __init__(self, directory: str, *, keep_last: int = 3, keep_best: int = 1,
                 async_save: bool = True):
        if keep_last < 1:
            raise ValueError(f"config.keep_last_checkpoints={keep_last}: must be >= 1 "
                             "(resume needs the latest checkpoint)")
        self.directory = os.path.abspath(directory)
        policies = [pp.LatestN(n=keep_last)]
        if keep_best > 0:
            # BestN keeps the *last* n of an ascending sort: reverse=True keeps the lowest.
            policies.append(pp.BestN(get_metric_fn=lambda m: m[VAL_METRIC], reverse=True,
                                     n=keep_best, keep_checkpoints_without_metrics=False))
        # best_fn only makes orbax write the metrics beside each step (it does so only
        # when tracking a best); which steps are kept is the preservation policy's call.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=pp.AnyPreservationPolicy(policies),
            best_fn=lambda m: m[VAL_METRIC], best_mode="min",
            enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data"))

    # -- queries ------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def best(self) -> tuple[int | None, float | None]:
        """(step, val_loss) of the best checkpoint still on disk, or (None, None)."""
        best = (None, None)
        for step in self.manager.all_steps():
            m = self.manager.metrics(step)
            if m and VAL_METRIC in m and (best[1] is None or m[VAL_METRIC] < best[1]):
                best = (step, float(m[VAL_METRIC]))
        return best

    # -- save / restore -----------------------------------------------------------------
    def save(self, step: int, state: Any, data_state: dict, val_loss: float | None = None) -> bool:
        """Start an asynchronous save (returns once the arrays are copied off the devices)."""
        if step in self.manager.all_steps():
            return False
        metrics = None if val_loss is None else {VAL_METRIC: float(val_loss)}
        return self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          data=ocp.args.JsonSave(data_state)),
            metrics=metrics, force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restore onto `abstract_state` (ShapeDtypeStructs with shardings) -> (state, data)."""
        try:
            with _draining_event_loops():
                out = self.manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                  data=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types: name the folder and step
            raise RuntimeError(
                f"cannot restore checkpoint step {step} from {self.directory}: "
                f"{type(e).__name__}: {e}. If the model or optimizer config changed since "
                "it was written, use a new --workdir.") from e
        return out.state, out.data

    def restore_latest(self, abstract_state: Any, log=print) -> tuple[int, Any, dict] | None:
        """Restore the newest checkpoint that reads back; None when there is none.

        A damaged step (half deleted, truncated files) is reported in one line and the
        previous one is tried, so a crash during a save never blocks a resume. Raises a
        RuntimeError naming every damaged step when none can be read.
        """
        damaged = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                state, data = self.restore(step, abstract_state)
            except RuntimeError as e:
                reason = " ".join(str(e.__cause__ or e).split())[:200]
                damaged.append(step)
                log(f"warning: checkpoint step {step} in {self.directory} cannot be read "
                    f"({reason}); trying the previous one")
                continue
            if damaged:
                log(f"resuming from the last good checkpoint, step {step} (damaged: "
                    f"{', '.join(map(str, damaged))}; they will be overwritten)")
                for bad in damaged:  # let the resumed run write those steps again
                    self.delete(bad)
            return step, state, data
        if damaged:
            raise RuntimeError(
                f"{self.directory}: no checkpoint can be read (damaged steps: "
                f"{', '.join(map(str, damaged))}). Delete that folder to start over, or use "
                "a fresh --workdir.")
        return None

    def delete(self, step: int) -> None:
        try:
            self.manager.delete(step)
        except Exception:  # noqa: BLE001 - a half-written folder orbax cannot parse
            shutil.rmtree(os.path.join(self.directory, str(step)), ignore_errors=True)
            self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class _DrainingEventLoop(asyncio.SelectorEventLoop):
    """An event loop that lets its pending tasks finish before it closes.

    orbax runs a restore in a fresh event loop and closes it as soon as the first array
    read fails (a damaged step). The reads still in flight then complete into the closed
    loop: tensorstore prints `RuntimeError: Event loop is closed` for each, and asyncio
    logs their errors again when they are collected. Drained, they end inside the loop.
    """

    def close(self) -> None:
        pending = [t for t in asyncio.all_tasks(self) if not t.done()]
        if pending and not self.is_running() and not self.is_closed():
            self.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        super().close()


class _DrainingPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return _DrainingEventLoop()


@contextlib.contextmanager
def _draining_event_loops():
    """Event loops created inside (orbax's, one per restore) drain before closing."""
    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(_DrainingPolicy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(previous)


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a tree of jax arrays."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        tree)
