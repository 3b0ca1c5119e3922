"""Devices: the one place that builds a `Mesh`. The batch is sharded on its `data` axis.

Nothing here uses pmap: the step is a `jax.jit` over global arrays with `NamedSharding`s.
Parameters and optimizer state are replicated (P()); batches are split on dim 0 (P('data')).
Each process loads only its own contiguous block of the global batch (process p of P holds
rows [p*B/P, (p+1)*B/P)), and `jax.make_array_from_process_local_data` joins the blocks.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"

# Environment of a multi-host TPU VM or a SLURM job: jax.distributed finds everything there.
_AUTO_ENV = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_STEP_NUM_TASKS",
             "OMPI_COMM_WORLD_SIZE")


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """Start `jax.distributed` when this is a multi-process run; return whether it was.

    Values come from the arguments, else from `JAX_COORDINATOR_ADDRESS`,
    `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`. With none of them set, a multi-host TPU slice
    or SLURM job is still detected by jax itself (cluster auto-detection). Otherwise this
    is a single process and nothing is started. Must run before any other jax call.
    """
    addr = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    n = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    pid = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    explicit = (addr, n, pid)
    if any(v is not None for v in explicit):
        if n is not None and n > 1 and (addr is None or pid is None):
            raise ValueError(
                f"multi-process run needs all of coordinator_address ({addr!r}), "
                f"num_processes ({n!r}) and process_id ({pid!r}): set the flags "
                "--coordinator_address/--num_processes/--process_id or the JAX_* env vars")
        if n == 1 and addr is None:
            return False
        jax.distributed.initialize(coordinator_address=addr, num_processes=n, process_id=pid)
        return True
    if any(k in os.environ for k in _AUTO_ENV):
        jax.distributed.initialize()
        return True
    return False


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v in (None, ""):
        return None
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"environment variable {name}={v!r}: expected an integer") from None


def make_mesh(devices: list | None = None) -> Mesh:
    """1-D mesh named `data` over all devices, ordered by (process, id).

    The order makes each process's devices one contiguous block of the batch axis, which
    is the block of rows its data iterator reads.
    """
    devices = list(jax.devices() if devices is None else devices)
    devices.sort(key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def local_mesh(batch_size: int) -> Mesh:
    """Inference mesh of this process: every local device when they divide `batch_size`,
    else one device (a fixed-size batch is never split unevenly)."""
    devices = jax.local_devices()
    n = len(devices) if batch_size % len(devices) == 0 else 1
    return make_mesh(devices[:n])


def pad_batch(x: np.ndarray, batch_size: int) -> np.ndarray:
    """Zero-pad a last partial batch [n <= batch_size, ...] to [batch_size, ...]."""
    n = x.shape[0]
    if n > batch_size:
        raise ValueError(f"batch of {n} exceeds batch_size {batch_size}")
    if n == batch_size:
        return x
    return np.concatenate([x, np.zeros((batch_size - n,) + x.shape[1:], x.dtype)])


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh, what: str = "batch_size") -> int:
    """Return the per-process batch size, or raise naming the sizes that do not divide."""
    n_dev, n_proc = mesh.devices.size, jax.process_count()
    if global_batch_size < 1 or global_batch_size % n_dev:
        raise ValueError(
            f"config.{what}={global_batch_size} is not divisible by the {n_dev} devices of the "
            f"mesh ({n_proc} process(es) x {n_dev // n_proc} local devices): the global batch "
            f"is split evenly over devices; use a multiple of {n_dev}")
    return global_batch_size // n_proc


def global_batch(local: Any, mesh: Mesh) -> Any:
    """Per-process numpy batch (leading dim B/P) -> global jax arrays sharded on `data`."""
    sharding = batch_sharded(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                        local)


def to_host(tree: Any) -> Any:
    """Replicated global arrays -> numpy (every process holds a full copy)."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)
    return jax.tree.map(one, tree)


def gather_to_host(tree: Any) -> Any:
    """Batch-sharded global arrays -> full numpy arrays on every process."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def log_topology(mesh: Mesh) -> None:
    logging.info("process %d/%d, %d local / %d global devices (%s), mesh %s",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count(), jax.devices()[0].platform, dict(mesh.shape))
