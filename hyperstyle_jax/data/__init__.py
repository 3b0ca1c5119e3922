"""Data: TFDS array_record datasets read through grain, and a synthetic source.

Contract with the trainer (also in docs/CONTRACTS.md, "Data"):

    default_data_config() -> ml_collections.ConfigDict   # every field, documented there

    make_train_iterator(data_config, *, global_batch_size, process_index=0,
                        process_count=1, seed=None, num_epochs=None) -> DataIterator
    make_eval_iterator(data_config, *, global_batch_size, process_index=0,
                       process_count=1, seed=None, num_epochs=1,
                       drop_remainder=False) -> DataIterator

Each `next(it)` is a dict of NumPy arrays with leading dim L = global_batch_size /
process_count (ValueError naming both numbers if it does not divide):
    'image'  float32 [L, H, W, 3] in [-1, 1], (H, W) = data_config.image_hw
    'index'  int32 [L], the record index in the split
    'mask'   bool [L] (eval only): False on padding of the last partial batch
    synthetic source only:
    'latent' float32 [L, style_dim], the true W code
    'deltas' {str(j): float32 [L, out, in]} ([L, 1, in] with perturb_mode 'in') per
             perturbed generator layer j (only when perturb_std > 0): the true offsets,
             constant over k x k
             (`synthetic.expand_deltas` gives the generator's [L, out, in, k, k] list)

Global batch s is identical for every process count (one seeded permutation per epoch,
process p takes the p-th contiguous block), and `it.get_state()` (a JSON-serialisable dict,
`state['step']` = global batches returned so far) restored with `it.set_state(state)` —
under any process count — resumes at exactly the next batch. `it.steps_per_epoch`,
`it.num_steps` (None = forever), `it.num_records`, `it.local_batch_size` are exposed.

Build datasets with `python -m hyperstyle_jax.data.build --help`. No TensorFlow is imported
when building or reading.
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
