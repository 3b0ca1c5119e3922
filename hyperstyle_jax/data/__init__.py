"""Data: TFDS array_record datasets read through grain, and a synthetic source.

`make_train_iterator` / `make_eval_iterator(data_config, *, global_batch_size, ...)` yield
dicts of NumPy arrays with leading dim global_batch_size / process_count ('image' float32
[L, H, W, 3] in [-1, 1], 'index', and 'mask' / 'latent' / 'deltas' where they apply). A
global batch is the same under any process count, and `get_state()` / `set_state()`
resume at exactly the next one. No TensorFlow is imported. Contract: docs/CONTRACTS.md,
"Data"; build datasets with `python -m hyperstyle_jax.data.build --help`.
"""
from hyperstyle_jax.data.config import check_data_config, default_data_config
from hyperstyle_jax.data.pipeline import (
                                          DataIterator,
                                          GlobalOrder,
                                          make_eval_iterator,
                                          make_train_iterator,
)

__all__ = ["default_data_config", "check_data_config", "make_train_iterator",
           "make_eval_iterator", "DataIterator", "GlobalOrder"]
