"""The data config (`ml_collections.ConfigDict`) and its validation."""
from __future__ import annotations

import ml_collections

SOURCES = ("tfds", "synthetic")
PERTURB_MODES = ("out_in", "in")


def default_data_config() -> ml_collections.ConfigDict:
    """Every field the data layer reads, with defaults.

    The default source is the small synthetic one (a seeded random 64 px generator), so that
    a config runs anywhere; real configs set `source='tfds'` and the dataset names.
    """
    c = ml_collections.ConfigDict()
    c.source = "synthetic"          # 'tfds' | 'synthetic'

    # --- tfds (built with `python -m hyperstyle_jax.data.build`)
    c.name = "ffhq"                 # builder name of the training data
    c.eval_name = ""                # builder name of the eval data; '' = `name`
    c.data_dir = ""                 # TFDS data dir; '' = TFDS's default (~/tensorflow_datasets)
    c.train_split = "train"
    c.eval_split = "test"           # faces: name='ffhq', eval_name='celeba_hq', eval_split='test'
    c.image_hw = (256, 256)         # (192, 256) for cars
    c.flip = None                   # None: the official default (True for tfds training,
                                    # False for synthetic, whose latents a flip would break)
    c.shuffle_seed = 0              # used when the iterator's `seed` argument is None
    c.num_threads = 2               # grain reader threads per process
    c.prefetch = 4                  # batches prefetched per process

    # --- synthetic (images rendered once by a StyleGAN2 generator, then cached)
    c.generator = ml_collections.ConfigDict(dict(   # a GeneratorConfig, seeded random init
        size=64, style_dim=64, n_mlp=2,
        channels=((4, 64), (8, 64), (16, 64), (32, 32), (64, 16)),
        lr_mlp=0.01, blur_kernel=(1, 3, 3, 1)))
    c.generator_dir = ""            # a converted generator checkpoint dir; overrides `generator`
    c.class_index = -1              # a conditional generator's class (one-hot label of its
                                    # mapping); -1 = unconditional
    c.num_train = 64
    c.num_eval = 16
    c.perturb_std = 0.0             # std of the per-image multiplicative conv-weight offsets
    c.perturb_mode = "out_in"       # offsets vary per ('out', 'in') pair, or per 'in' channel
                                    # (per 'out' alone is cancelled by demodulation)
    c.perturb_layers = ""           # comma list of generator layer indices; '' = all non-toRGB
    c.truncation = 1.0              # w = w_avg + truncation * (w - w_avg)
    c.seed = 0                      # generator init, latents, offsets
    c.render_batch = 16             # images per jitted generator call while rendering
    c.cache = True                  # cache rendered arrays under <data_dir>/synthetic/
    return c


def _get(c, key, default=None):
    return c.get(key, default) if hasattr(c, "get") else getattr(c, key, default)


def check_data_config(c) -> None:
    """Raise ValueError naming the key and value of the first invalid field."""
    src = _get(c, "source")
    if src not in SOURCES:
        raise ValueError(f"data.source={src!r}: use one of {SOURCES}")
    hw = _get(c, "image_hw")
    try:
        ok = len(hw) == 2 and all(int(v) == v and v > 0 for v in hw)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"data.image_hw={hw!r}: expected two positive ints, e.g. (256, 256)")
    flip = _get(c, "flip")
    if flip not in (None, True, False):
        raise ValueError(f"data.flip={flip!r}: expected True, False or None (official default)")
    if src == "synthetic" and flip:
        raise ValueError("data.flip=True with data.source='synthetic': a flipped image no "
                         "longer matches its latent and weight offsets; set flip=False/None")
    for key in ("num_threads", "prefetch"):
        v = _get(c, key, 1)
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"data.{key}={v!r}: expected an int >= 0")
    if src == "tfds":
        for key in ("name", "train_split", "eval_split"):
            if not _get(c, key):
                raise ValueError(f"data.{key}={_get(c, key)!r}: required with source='tfds'")
    else:
        for key in ("num_train", "num_eval", "render_batch"):
            v = _get(c, key)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"data.{key}={v!r}: expected an int >= 1")
        if not _get(c, "perturb_std", 0.0) >= 0:
            raise ValueError(f"data.perturb_std={_get(c, 'perturb_std')!r}: expected >= 0")
        mode = _get(c, "perturb_mode")
        if mode == "out":
            raise ValueError("data.perturb_mode='out': a per-output-channel factor on a "
                             "demodulated conv is divided out again by the demodulation (a "
                             "no-op); use 'out_in' or 'in'")
        if mode not in PERTURB_MODES:
            raise ValueError(f"data.perturb_mode={mode!r}: use one of {PERTURB_MODES}")
