"""Input pipeline: grain over TFDS array_record (no TensorFlow) or the synthetic arrays.

Global order (what makes the data independent of the process count):
  epoch e has one seeded permutation `perm_e` of the split's N records (identity when not
  shuffling); global step s of the epoch is `perm_e[s*G:(s+1)*G]`; process p of P decodes
  only the contiguous block `[p*L:(p+1)*L]` of it, L = G / P. The P shards of an epoch are
  disjoint and together cover `steps_per_epoch * G` records (all N when G divides N or
  when the last batch is padded). The flip of an example depends on (seed, epoch,
  position in the epoch), never on p or P.

Iterator state is the global step, so a checkpoint written with P processes resumes with
any other P at exactly the next global batch.
"""
from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, Callable

import grain
import numpy as np

from hyperstyle_jax.data import synthetic, transforms
from hyperstyle_jax.data.config import check_data_config
from hyperstyle_jax.data.sources import ArraySource, TfdsSource

# ------------------------------------------------------------------------------- order


@dataclasses.dataclass(frozen=True)
class GlobalOrder:
    """Which record process `process_index` reads for each of its local elements."""

    num_records: int
    global_batch_size: int
    process_index: int
    process_count: int
    seed: int
    shuffle: bool
    drop_remainder: bool
    num_epochs: int | None  # None: forever

    def __post_init__(self):
        g, p = self.global_batch_size, self.process_count
        if p < 1 or not 0 <= self.process_index < p:
            raise ValueError(f"process_index={self.process_index} must be in [0, "
                             f"process_count={p})")
        if g < 1 or g % p:
            raise ValueError(f"global_batch_size={g} is not divisible by process_count={p}")
        if self.num_records < 1:
            raise ValueError("the split is empty (num_records=0)")
        if self.drop_remainder and self.num_records < g:
            raise ValueError(f"global_batch_size={g} is larger than the split "
                             f"({self.num_records} records) and drop_remainder is set: "
                             "no batch at all")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs={self.num_epochs} must be >= 1 or None")

    @property
    def local_batch_size(self) -> int:
        return self.global_batch_size // self.process_count

    @property
    def steps_per_epoch(self) -> int:
        n, g = self.num_records, self.global_batch_size
        return n // g if self.drop_remainder else -(-n // g)

    @property
    def num_steps(self) -> int | None:
        return None if self.num_epochs is None else self.steps_per_epoch * self.num_epochs

    @functools.lru_cache(maxsize=4)
    def permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_records)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_records)

    def locate(self, k: int) -> tuple[int, int, int, bool]:
        """Local element k -> (record index, epoch, position in the epoch, not padding)."""
        step, j = divmod(k, self.local_batch_size)
        epoch, b = divmod(step, self.steps_per_epoch)
        pos = b * self.global_batch_size + self.process_index * self.local_batch_size + j
        valid = pos < self.num_records
        # Padding of a last partial batch repeats the epoch's first records, masked out.
        index = int(self.permutation(epoch)[pos % self.num_records])
        return index, epoch, pos, valid


# ---------------------------------------------------------------------------- examples


def _tfds_example(source: TfdsSource, order: GlobalOrder, hw, flip: bool,
                  with_mask: bool, k: int) -> dict[str, np.ndarray]:
    index, epoch, pos, valid = order.locate(k)
    rec = source[index]
    img = transforms.decode_and_resize(
        rec["image"], hw, f"{source.describe()}[{index}] ({rec['file_name']})")
    do_flip = flip and transforms.flip_decision(order.seed, epoch, pos)
    out = {"image": transforms.finish(img, do_flip), "index": np.int32(index)}
    if with_mask:
        out["mask"] = np.bool_(valid)
    return out


def _array_example(source: ArraySource, order: GlobalOrder, with_mask: bool,
                   k: int) -> dict[str, Any]:
    index, _, _, valid = order.locate(k)
    out = dict(source[index])
    out["index"] = np.int32(index)
    if with_mask:
        out["mask"] = np.bool_(valid)
    return out


# ---------------------------------------------------------------------------- iterator


class DataIterator(grain.DatasetIterator):
    """Batches `{'image': float32 [L, H, W, 3] in [-1, 1], 'index': int32 [L], ...}`.

    `get_state()` -> a JSON-serialisable dict whose `step` is the number of global batches
    already returned; `set_state(state)` resumes at exactly the next one, with any process
    count. Being a `grain.DatasetIterator`, it also works with grain's orbax handlers.
    """

    def __init__(self, inner: grain.DatasetIterator, order: GlobalOrder, description: str):
        super().__init__(inner)
        self.order = order
        self.description = description
        self._meta = {"data": description, "num_records": order.num_records,
                      "global_batch_size": order.global_batch_size, "seed": order.seed,
                      "shuffle": order.shuffle, "drop_remainder": order.drop_remainder}

    # -- facts the trainer may want
    @property
    def local_batch_size(self) -> int:
        return self.order.local_batch_size

    @property
    def steps_per_epoch(self) -> int:
        return self.order.steps_per_epoch

    @property
    def num_steps(self) -> int | None:
        return self.order.num_steps

    @property
    def num_records(self) -> int:
        return self.order.num_records

    def __next__(self) -> dict[str, Any]:
        return next(self._parent)

    def get_state(self) -> dict[str, Any]:
        inner = self._parent.get_state()
        if set(inner) != {"next_index"}:  # our grain graph has one index; guard upgrades
            raise RuntimeError(f"unexpected grain iterator state {inner!r}")
        return {"step": int(inner["next_index"]), **self._meta}

    def set_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError(f"not a data iterator state (no 'step'): {state!r}")
        for key, want in self._meta.items():
            if key in state and state[key] != want:
                raise ValueError(f"data iterator state has {key}={state[key]!r} but this "
                                 f"iterator has {key}={want!r}; it belongs to other data")
        step = int(state["step"])
        if step < 0 or (self.num_steps is not None and step > self.num_steps):
            raise ValueError(f"data iterator state step={step} outside [0, {self.num_steps}]")
        self._parent.set_state({"next_index": step})

    def close(self) -> None:
        closer = getattr(self._parent, "close", None)
        if closer is not None:
            closer()


def _local_batches(fn: Callable[[int], Any], order: GlobalOrder, data_config,
                   description: str) -> DataIterator:
    lb = order.local_batch_size
    n_elems = (order.num_steps * lb if order.num_steps is not None
               else (sys.maxsize // lb) * lb)
    ds = grain.MapDataset.range(n_elems).map(fn).batch(lb, drop_remainder=True)
    threads = int(data_config.get("num_threads", 2))
    prefetch = int(data_config.get("prefetch", 4))
    inner = ds.to_iter_dataset(grain.ReadOptions(
        num_threads=threads, prefetch_buffer_size=prefetch if threads else 0)).__iter__()
    return DataIterator(inner, order, description)


def _make(data_config, *, train: bool, global_batch_size: int, process_index: int,
          process_count: int, seed: int | None, num_epochs: int | None,
          drop_remainder: bool) -> DataIterator:
    check_data_config(data_config)
    seed = int(data_config.get("shuffle_seed", 0) if seed is None else seed)
    if seed < 0:
        raise ValueError(f"seed={seed} must be >= 0")
    flip = data_config.get("flip", None)
    if data_config.source == "tfds":
        name = data_config.name if train else (data_config.get("eval_name") or data_config.name)
        split = data_config.train_split if train else data_config.eval_split
        source = TfdsSource(name, split, data_config.get("data_dir", ""))
        flip = train and (True if flip is None else bool(flip))
        hw = tuple(int(v) for v in data_config.image_hw)
    else:
        source = synthetic.synthetic_source(data_config, "train" if train else "eval")
    order = GlobalOrder(num_records=len(source), global_batch_size=int(global_batch_size),
                        process_index=int(process_index), process_count=int(process_count),
                        seed=seed, shuffle=train, drop_remainder=drop_remainder,
                        num_epochs=num_epochs)
    if isinstance(source, TfdsSource):
        fn = functools.partial(_tfds_example, source, order, hw, flip, not train)
    else:
        fn = functools.partial(_array_example, source, order, not train)
    return _local_batches(fn, order, data_config, source.describe())


def make_train_iterator(data_config, *, global_batch_size: int, process_index: int = 0,
                        process_count: int = 1, seed: int | None = None,
                        num_epochs: int | None = None) -> DataIterator:
    """Training batches: per-epoch seeded shuffle, flip p=0.5 (tfds), drop_remainder.

    Yields `{'image': float32 [L, H, W, 3] in [-1, 1], 'index': int32 [L]}` (+ 'latent',
    'deltas' for the synthetic source), L = global_batch_size / process_count.
    seed None -> `data_config.shuffle_seed`. num_epochs None -> forever.
    """
    return _make(data_config, train=True, global_batch_size=global_batch_size,
                 process_index=process_index, process_count=process_count, seed=seed,
                 num_epochs=num_epochs, drop_remainder=True)


def make_eval_iterator(data_config, *, global_batch_size: int, process_index: int = 0,
                       process_count: int = 1, seed: int | None = None,
                       num_epochs: int | None = 1, drop_remainder: bool = False) -> DataIterator:
    """Eval batches in the stored order, no flip; one pass by default.

    With drop_remainder=False the last global batch is padded (with the first records)
    to the full size and `batch['mask']` (bool [L]) marks the real examples; every process
    then gets the same number of batches. `seed` is accepted for symmetry and unused.
    """
    del seed
    return _make(data_config, train=False, global_batch_size=global_batch_size,
                 process_index=process_index, process_count=process_count, seed=0,
                 num_epochs=num_epochs, drop_remainder=drop_remainder)
