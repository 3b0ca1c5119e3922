"""Devices: the one place that builds a `Mesh`. The batch is sharded on its `data` axis.

Nothing here uses pmap: the step is a `jax.jit` over global arrays with `NamedSharding`s.
Parameters and optimizer state are replicated (P()); batches are split on dim 0 (P('data')).
Each process loads only its own contiguous block of the global batch (process p of P holds
rows [p*B/P, (p+1)*B/P)), and `jax.make_array_from_process_local_data` joins the blocks.

Inference (invert, edit, video) splits the input list instead: each process takes its
contiguous block (`process_shard`) and runs it on its own devices (`local_mesh`); the
process flags (`PROCESS_FLAGS`) and their checks (`DistributedConfigError`) are shared by
every command line.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import numpy as np
from absl import flags, logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"

# Environment of a multi-host TPU VM or a SLURM job: jax.distributed finds everything there.
_AUTO_ENV = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_STEP_NUM_TASKS",
             "OMPI_COMM_WORLD_SIZE")

# The process flags of every command line (train's absl flags, invert's and edit's argparse
# options): (name, type, help).
PROCESS_FLAGS = (
    ("coordinator_address", str, "host:port of process 0 for a run over several processes or "
     "hosts (or JAX_COORDINATOR_ADDRESS); not needed on TPU pods or under SLURM"),
    ("num_processes", int, "number of processes (or JAX_NUM_PROCESSES)"),
    ("process_id", int, "this process's index, 0 .. num_processes-1 (or JAX_PROCESS_ID)"),
    ("cpu_devices", int, "split this host's CPU into this many JAX devices, each running its "
     "share of every batch (invert and edit run a batch that is no multiple of it on one "
     "device; train needs a multiple); measured on a 2-core CPU in docs/benchmarks.md; "
     "default: one device"),
)


class DistributedConfigError(ValueError):
    """Process flags (or JAX_* variables) that do not fit together; one line naming them."""


def add_process_arguments(parser) -> None:
    """The process flags as argparse options (invert, edit), in their own help group."""
    g = parser.add_argument_group("several processes or hosts (each takes a share of the "
                                  "inputs; README 'Several processes or hosts')")
    for name, kind, text in PROCESS_FLAGS:
        g.add_argument(f"--{name}", type=kind, default=None, help=text)


def define_process_flags() -> dict:
    """The process flags as absl flags (train); returns {name: FlagHolder}."""
    define = {str: flags.DEFINE_string, int: flags.DEFINE_integer}
    return {name: define[kind](name, None, text[0].upper() + text[1:] + ".")
            for name, kind, text in PROCESS_FLAGS}


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           cpu_devices: int | None = None) -> bool:
    """Start `jax.distributed` when this is a multi-process run; return whether it was.
    `cpu_devices`: see `use_cpu_devices`.

    Values come from the arguments, else from `JAX_COORDINATOR_ADDRESS`,
    `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`. With none of them set, a multi-host TPU slice
    or SLURM job is still detected by jax itself (cluster auto-detection). Otherwise this
    is a single process and nothing is started. Must run before any other jax call.
    Values that do not fit together raise `DistributedConfigError` before anything starts;
    the same values again in the same Python process (a second command) are accepted.
    """
    use_cpu_devices(cpu_devices)
    addr = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    n = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    pid = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    if any(v is not None for v in (addr, n, pid)):
        check_process_config(addr, n, pid)
        if (n is None or n == 1) and addr is None:
            return False
        if jax.distributed.is_initialized():  # a second command in the same process (API)
            if (n, pid) != (jax.process_count(), jax.process_index()):
                raise DistributedConfigError(
                    f"--num_processes {n} --process_id {pid}: this Python process already "
                    f"runs as process {jax.process_index()} of {jax.process_count()}")
            return True
        jax.distributed.initialize(coordinator_address=addr, num_processes=n, process_id=pid)
        return True
    if any(k in os.environ for k in _AUTO_ENV):
        if not jax.distributed.is_initialized():
            jax.distributed.initialize()
        return True
    return False


def use_cpu_devices(n: int | None) -> None:
    """Split this host's CPU into n JAX devices (None: leave jax's default). The inference
    layer runs each device's share of a batch as its own program (`shard_map`), so on a CPU
    the shares run side by side; a 2-core CPU used its second core better this way than
    with one device's intra-op threads (docs/benchmarks.md). Must run before any JAX
    operation; the same n again (a second command in one process) is accepted."""
    if n is None:
        return
    if n < 1:
        raise DistributedConfigError(f"--cpu_devices {n}: must be >= 1")
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # backends already started
        have = len(jax.devices("cpu"))
        if have != n:
            raise DistributedConfigError(
                f"--cpu_devices {n}: JAX already runs with {have} CPU device(s) in this "
                f"process; give it before any JAX work (on the command line)") from None


def check_process_config(addr: str | None, n: int | None, pid: int | None) -> None:
    """Raise `DistributedConfigError` (one line) unless the values describe one process
    of a run: num_processes >= 1 (and given whenever the others are), 0 <= process_id <
    num_processes, and a coordinator address and a process id when there are several."""
    if n is None and (addr is not None or pid is not None):
        given = "--coordinator_address" if addr is not None else f"--process_id {pid}"
        raise DistributedConfigError(f"{given} needs --num_processes (or JAX_NUM_PROCESSES)")
    if n is not None and n < 1:
        raise DistributedConfigError(f"--num_processes {n}: must be >= 1")
    if pid is not None and not 0 <= pid < n:
        raise DistributedConfigError(f"--process_id {pid}: must be in 0 .. {n - 1} "
                                     f"(--num_processes {n})")
    if n is not None and n > 1 and (addr is None or pid is None):
        raise DistributedConfigError(
            f"--num_processes {n} needs --coordinator_address HOST:PORT (process 0's; got "
            f"{addr!r}) and --process_id (got {pid!r}), or the JAX_* environment variables")
    if addr is not None and ":" not in addr:
        raise DistributedConfigError(f"--coordinator_address {addr!r}: expected HOST:PORT")


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v in (None, ""):
        return None
    try:
        return int(v)
    except ValueError:
        raise DistributedConfigError(
            f"environment variable {name}={v!r}: expected an integer") from None


# -- Processes: each takes a contiguous block of a list of independent inputs ---------------


def process_block(n: int, index: int, count: int) -> tuple[int, int]:
    """(start, stop) of process `index` of `count` in a list of n items: contiguous blocks
    in process order whose sizes differ by at most one (the first n % count get one more),
    so joining the blocks in process order gives the list back."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"process index {index} is not in 0 .. {count - 1}")
    base, extra = divmod(n, count)
    start = index * base + min(index, extra)
    return start, start + base + (index < extra)


def process_shard(items: Sequence, index: int | None = None,
                  count: int | None = None) -> list:
    """This process's block of `items` (`process_block`); index and count default to
    jax's process index and count. The whole list in a single-process run."""
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    start, stop = process_block(len(items), index, count)
    return list(items[start:stop])


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (the same name everywhere);
    nothing with one process."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def global_offset(n_local: int) -> tuple[int, int]:
    """(items held by the processes before this one, items held by all) when each process
    holds n_local: a local position plus the offset is the position in a one-process run.
    A collective: every process calls it at the same point."""
    if jax.process_count() == 1:
        return 0, int(n_local)
    counts = np.asarray(multihost_utils.process_allgather(np.int64(n_local))).reshape(-1)
    return int(counts[:jax.process_index()].sum()), int(counts.sum())


def make_mesh(devices: list | None = None) -> Mesh:
    """1-D mesh named `data` over all devices, ordered by (process, id).

    The order makes each process's devices one contiguous block of the batch axis, which
    is the block of rows its data iterator reads.
    """
    devices = list(jax.devices() if devices is None else devices)
    devices.sort(key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def local_mesh(batch_size: int, max_devices: int | None = None) -> Mesh:
    """Inference mesh of this process: every local device (at most `max_devices`) when
    they divide `batch_size`, else one device (a fixed-size batch is never split
    unevenly)."""
    devices = jax.local_devices()[:max_devices]
    n = len(devices) if batch_size % len(devices) == 0 else 1
    return make_mesh(devices[:n])


def batch_spec(axis: int | None) -> P:
    """PartitionSpec of an array whose batch axis is `axis` on the data axis (None: not
    split)."""
    return P() if axis is None else P(*([None] * axis), DATA_AXIS)


def per_device(fn, mesh: Mesh, in_specs, out_specs):
    """`fn` run on each device's share as its own program (`shard_map`), for functions of
    independent samples: no collectives, so the partitioner cannot replicate work. A jit
    over the sharded batch replicated the per-sample row-block loops of the bf16 convs
    (`lax.map` over sample x block): 2 CPU devices ran an inversion 1.3x slower than one."""
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                         check_vma=False)


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
    return NamedSharding(mesh, batch_spec(0))


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
