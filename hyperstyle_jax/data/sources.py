"""Record sources of the input pipeline: record i -> one example (a dict).

`TfdsSource` reads one split of a dataset built by `hyperstyle_jax.data.build` (image left
encoded); `ArraySource` indexes in-memory arrays (the synthetic data). Both have
`len()`, `[i]` and `describe()`; `pipeline` decides which records each process reads.
"""
from __future__ import annotations

import glob
import os
from typing import Any

import jax
import numpy as np


def find_tfds_dataset(name: str, data_dir: str) -> str:
    """Check that `name` was built under `data_dir`; returns its newest version dir."""
    root = os.path.join(os.path.expanduser(data_dir), name)
    infos = sorted(glob.glob(os.path.join(root, "*", "dataset_info.json")))
    if not infos:
        raise FileNotFoundError(
            f"dataset {name!r} not found in data_dir {data_dir!r} (no {root}/<version>/"
            f"dataset_info.json); build it with: python -m hyperstyle_jax.data.build "
            f"--dataset {name} --source <folder> --data_dir {data_dir}")
    return os.path.dirname(infos[-1])


class TfdsSource:
    """One split of a built dataset: record i -> {'image': encoded bytes, 'file_name': str}.

    Read through `tfds.data_source` (array_record + grain-style random access), with the
    image left encoded (`SkipDecoding`): `transforms` decodes it. No TensorFlow is imported.
    """

    def __init__(self, name: str, split: str, data_dir: str):
        import tensorflow_datasets as tfds  # noqa: PLC0415  optional extra, for tfds data only

        data_dir = os.path.expanduser(data_dir or os.environ.get(
            "TFDS_DATA_DIR", os.path.join("~", "tensorflow_datasets")))
        find_tfds_dataset(name, data_dir)
        self.name, self.split, self.data_dir = name, split, data_dir
        tfds.disable_progress_bar()
        splits = tfds.data_source(name, split=None, data_dir=data_dir, download=False,
                                  decoders={"image": tfds.decode.SkipDecoding()})
        if split not in splits:
            raise ValueError(f"dataset {name!r} in {data_dir!r} has no split {split!r}; "
                             f"it has: {', '.join(sorted(map(str, splits)))}")
        self._ds = splits[split]
        features = self._ds.dataset_info.features
        if "image" not in features:
            raise ValueError(f"dataset {name!r} in {data_dir!r} has no 'image' feature (it has "
                             f"{', '.join(features.keys())}); build it with "
                             "python -m hyperstyle_jax.data.build")

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self._ds[i]
        name = rec.get("file_name", b"")
        return {"image": rec["image"],
                "file_name": name.decode() if isinstance(name, bytes) else str(name)}

    def describe(self) -> str:
        return f"tfds:{self.name}/{self.split}"


class ArraySource:
    """In-memory examples (the synthetic source): record i -> {key: array[i]} (nested)."""

    def __init__(self, arrays: dict[str, Any], description: str):
        self._arrays = arrays
        lens = {np.shape(x)[0] for x in jax.tree.leaves(arrays)}
        if len(lens) != 1:
            raise ValueError(f"{description}: arrays of unequal lengths {sorted(lens)}")
        self._len = lens.pop()
        self._desc = description

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, Any]:
        return jax.tree.map(lambda x: x[i], self._arrays)

    def describe(self) -> str:
        return self._desc
