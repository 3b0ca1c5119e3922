"""Fields shared by every training config, with the official defaults, and checks.

The defaults are the official `options/train_options.py` `TrainOptions` and
`training/coach_hyperstyle.py` `Coach`'s. Each `configs/<name>.py` calls `base_config()`
and changes what its recipe needs. Every field the trainer reads is here, so a typo in an
override (`--config.bacth_size=4`) or a wrong type (`--config.batch_size=abc`) is rejected
by the locked ConfigDict. `write_config_json` keeps the run's config in its workdir;
`config_lines` lists every key with its value (for `train --help`).
"""
import os
import time

import ml_collections
from absl import logging

from hyperstyle_jax.data.config import check_data_config, default_data_config
from hyperstyle_jax.losses import LossWeights
from hyperstyle_jax.models.hypernetwork import DEFAULT_LAYERS_TO_TUNE
from hyperstyle_jax.training.optim import ADAM_DEFAULTS, RANGER_DEFAULTS
from hyperstyle_jax.utils.paths import atomic_write


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # What is trained: 'hyperstyle' (the hypernetwork, official) or 'w_encoder' (the
    # W-encoder HyperStyle starts from; the official repo needs e4e's for this).
    c.task = "hyperstyle"

    # --- batch and schedule (official names in comments)
    c.batch_size = 8                # --batch_size (global, over all devices of all hosts)
    c.eval_batch_size = 8           # --test_batch_size
    c.n_iters_per_batch = 5         # --n_iters_per_batch
    c.total_steps = 500_000         # --max_steps
    c.log_every_steps = 50          # --board_interval
    c.val_every_steps = 5_000       # --val_interval (also validates at the end)
    c.max_val_batches = 150         # --max_val_batches (0 = the whole eval split)
    c.ckpt_every_steps = 10_000     # --save_interval (also saves at the end and on SIGTERM)
    c.keep_last_checkpoints = 3
    c.keep_best_checkpoints = 1     # lowest validation loss (the official best_model.pt)
    c.num_grid_images = 4           # rows in the validation image grid

    # --- optimizer (official training/ranger.py defaults; --learning_rate 1e-4)
    c.optim = ml_collections.ConfigDict(dict(
        name="ranger", lr=1e-4, **RANGER_DEFAULTS,
        **{f"adam_{k}": v for k, v in ADAM_DEFAULTS.items()}))  # name='adam': torch defaults

    # --- losses (official lambdas; paper faces command: l2 1, lpips 0.8, id 0.1)
    c.loss = ml_collections.ConfigDict(dict(
        l2_lambda=1.0, lpips_lambda=0.8, id_lambda=0.0, moco_lambda=0.0,
        # The method summary's image discriminator (not in the official code): weight of
        # softplus(-D(y_hat)) on the 'last' or 'every' iteration; 0 = off, no D at all.
        adv_lambda=0.0, adv_iterations="last"))

    # --- the image discriminator D of the adversarial term (HyperStyle, adv_lambda > 0);
    # StyleGAN2's D optimizer and lazy R1 (rosinality train.py / NVIDIA training/loss.py)
    c.discriminator = ml_collections.ConfigDict(dict(
        init="",                    # a converted discriminator folder; '' = from scratch:
        size=0,                     #   its input size (0 = config.data.image_hw)
        channels=(),                #   ((4, c4), ..., (size, c)); () = the official widths
        mbstd_group_size=4,         #   minibatch-stddev group (0 = the whole batch)
        lr=0.002, beta1=0.0, beta2=0.99, eps=1e-8,  # Adam (x lazy-R1 ratio, as StyleGAN2)
        r1_gamma=10.0,              # R1 weight on reals (0 = none)
        r1_every=16,                # lazy R1: every r1_every steps, scaled by r1_every
    ))

    # --- model
    c.model = ml_collections.ConfigDict(dict(
        encoder_type="SharedWeightsHyperNetResNet",  # or '...Separable'
        layers_to_tune=DEFAULT_LAYERS_TO_TUNE,
        feedback_hw=(256, 256),     # hypernet input size ((192, 256) for cars)
        cars_crop=False,            # crop the 512x512 cars output to 384 rows
        per_sample="auto",          # generator per-sample conv form: auto|grouped|map|loop
        hypernet=ml_collections.ConfigDict(),  # HyperNetConfig overrides (widths); {} = official
    ))
    # Where the initial W code comes from: 'encoder' (the frozen W-encoder, official) or
    # 'true_latent' (synthetic data only: the latent each image was rendered from).
    c.w_code = "encoder"
    c.unroll_iterations = True      # unroll the n iterations in the step (faster on CPU,
                                    # longer compiles); False: one lax.scan body
    c.compute_dtype = "float32"     # or 'bfloat16': hypernet forward in bf16, fp32 master
                                    # weights, generator (and its demodulation) in fp32

    # --- converted checkpoints (folders written by tools/convert_weights.py)
    c.checkpoints = ml_collections.ConfigDict(dict(
        generator="",               # stylegan2; '' with synthetic data = its seeded generator
        w_encoder="",               # w_encoder (needed with w_code='encoder')
        resnet34="",                # resnet34 ImageNet weights for the hypernet body ('' = random)
        lpips="",                   # lpips (lpips_lambda > 0)
        arcface="",                 # arcface (id_lambda > 0)
        moco="",                    # moco (moco_lambda > 0)
    ))
    c.init_from = ""                # a converted HyperStyle checkpoint: fine-tune from it

    # --- W-encoder training (task='w_encoder'; e4e's names in comments). The encoder sees
    # x at model.feedback_hw; the losses (config.loss) compare pool(G(E(x) + latent_avg)) to x.
    c.w_encoder = ml_collections.ConfigDict(dict(
        num_layers=50,              # IR-SE depth of the official WEncoder (50 | 100 | 152)
        stages=(),                  # or a narrowed body ((depth, n_units), ...); () = num_layers
        input_width=64,             # input_layer width
        mode="ir_se",               # 'ir_se' | 'ir'
        backbone_init="",           # converted arcface folder: the IR-SE body init (pSp/e4e)
        init_from="",               # converted w_encoder folder: fine-tune from it
        w_norm_lambda=0.0,          # the method summary's W-mean regulariser,
                                    # lambda * ||w - latent_avg||^2
        disc_lambda=0.0,            # --w_discriminator_lambda (e4e: 0.1); 0 = no discriminator
        disc_lr=2e-5,               # --w_discriminator_lr (Adam)
        disc_layers=4,              # LatentCodesDiscriminator(512, 4)
        r1_gamma=10.0,              # --r1
        r1_every=16,                # --d_reg_every (lazy R1)
    ))

    c.data = default_data_config()
    # One size, one name: the data are read at the hypernet's input size.
    c.data.image_hw = c.model.get_ref("feedback_hw")
    return c


# ---------------------------------------------------------------------------------------
# Checks (each error names the config key and its value)
# ---------------------------------------------------------------------------------------
COMPUTE_DTYPES = ("float32", "bfloat16")
W_CODES = ("encoder", "true_latent")
TASKS = ("hyperstyle", "w_encoder")


def check_config(c) -> None:
    """Raise ValueError naming the first invalid field (beyond the ConfigDict type locks)."""
    def positive(key, allow_zero=False):
        v = c[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if allow_zero else 1):
            raise ValueError(f"config.{key}={v!r}: expected an int >= {0 if allow_zero else 1}")

    for key in ("batch_size", "eval_batch_size", "n_iters_per_batch", "total_steps",
                "log_every_steps", "val_every_steps", "ckpt_every_steps", "keep_last_checkpoints"):
        positive(key)
    for key in ("max_val_batches", "keep_best_checkpoints",
                "num_grid_images", "seed"):
        positive(key, allow_zero=True)
    if c.task not in TASKS:
        raise ValueError(f"config.task={c.task!r}: use one of {TASKS}")
    w_task = c.task == "w_encoder"
    if w_task:
        _check_w_encoder(c.w_encoder)
        if c.compute_dtype != "float32":
            raise ValueError(f"config.compute_dtype={c.compute_dtype!r}: task='w_encoder' "
                             "trains in float32 only")
    if c.compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"config.compute_dtype={c.compute_dtype!r}: use one of {COMPUTE_DTYPES}")
    if c.w_code not in W_CODES:
        raise ValueError(f"config.w_code={c.w_code!r}: use one of {W_CODES}")
    if c.optim.name not in ("ranger", "adam"):
        raise ValueError(f"config.optim.name={c.optim.name!r}: use 'ranger' or 'adam'")
    if not c.optim.lr > 0:
        raise ValueError(f"config.optim.lr={c.optim.lr!r}: must be > 0")
    if c.optim.name == "ranger" and c.optim.n_sma_threshold < 4:
        raise ValueError(f"config.optim.n_sma_threshold={c.optim.n_sma_threshold!r}: must be >= 4")
    try:
        weights = LossWeights.from_config(c.loss)
    except ValueError as e:
        raise ValueError(f"config.loss: {e}") from None
    check_data_config(c.data)
    _check_discriminator(c)

    synthetic = c.data.source == "synthetic"
    if c.w_code == "true_latent" and not synthetic and not w_task:
        raise ValueError("config.w_code='true_latent' needs config.data.source='synthetic' "
                         f"(got {c.data.source!r}): real images have no true latent")
    needed = []
    if not c.checkpoints.generator and not synthetic and not c.init_from:
        needed.append(("generator", "stylegan2"))
    if c.w_code == "encoder" and not w_task:
        needed.append(("w_encoder", "w_encoder"))
    for net, key in (("lpips", "lpips"), ("id", "arcface"), ("moco", "moco")):
        if net in weights.networks():
            needed.append((key, key))
    missing = [f"config.checkpoints.{k} (tools/convert_weights.py {kind})"
               for k, kind in needed if not c.checkpoints[k]]
    if missing:
        raise ValueError("converted checkpoints needed by this config but not set: "
                         + "; ".join(missing))
    for key in ("generator", "w_encoder", "resnet34", "lpips", "arcface", "moco"):
        path = c.checkpoints[key]
        if path and not os.path.isdir(path):
            raise ValueError(f"config.checkpoints.{key}={path!r}: no such folder")
    if c.init_from and not os.path.isdir(c.init_from):
        raise ValueError(f"config.init_from={c.init_from!r}: no such folder")
    if w_task and c.init_from:
        raise ValueError("config.init_from is a HyperStyle checkpoint; with task='w_encoder' "
                         "use config.w_encoder.init_from (a converted w_encoder folder)")
    for key in ("backbone_init", "init_from"):
        path = c.w_encoder[key]
        if w_task and path and not os.path.isdir(path):
            raise ValueError(f"config.w_encoder.{key}={path!r}: no such folder")


def _check_discriminator(c) -> None:
    adv, d = c.loss.adv_lambda, c.discriminator
    if not adv >= 0:
        raise ValueError(f"config.loss.adv_lambda={adv!r}: must be >= 0")
    if adv > 0 and c.task != "hyperstyle":
        raise ValueError("config.loss.adv_lambda > 0 is HyperStyle's image discriminator; "
                         "the W-encoder has its latent one (config.w_encoder.disc_lambda)")
    if c.loss.adv_iterations not in ("last", "every"):
        raise ValueError(f"config.loss.adv_iterations={c.loss.adv_iterations!r}: use 'last' "
                         "or 'every'")
    if adv > 0:
        for key in ("lr", "r1_every"):
            if not d[key] > 0:
                raise ValueError(f"config.discriminator.{key}={d[key]!r}: must be > 0")
        if not d.r1_gamma >= 0:
            raise ValueError(f"config.discriminator.r1_gamma={d.r1_gamma!r}: must be >= 0")
        if d.init and not os.path.isdir(d.init):
            raise ValueError(f"config.discriminator.init={d.init!r}: no such folder")


def _check_w_encoder(w) -> None:
    if not w.stages and w.num_layers not in (50, 100, 152):
        raise ValueError(f"config.w_encoder.num_layers={w.num_layers!r}: use 50, 100 or 152 "
                         "(or a narrowed config.w_encoder.stages)")
    for s in w.stages:
        if len(s) != 2 or any(not isinstance(v, int) or v < 1 for v in s):
            raise ValueError(f"config.w_encoder.stages={w.stages!r}: expected "
                             "((depth, n_units), ...) of positive ints")
    if w.mode not in ("ir", "ir_se"):
        raise ValueError(f"config.w_encoder.mode={w.mode!r}: use 'ir_se' or 'ir'")
    if w.mode == "ir_se" and any(d < 16 for d, _ in w.stages):
        raise ValueError(f"config.w_encoder.stages={w.stages!r}: IR-SE units need depth >= 16 "
                         "(the SE module divides by 16)")
    for key in ("w_norm_lambda", "disc_lambda", "r1_gamma"):
        if not w[key] >= 0:
            raise ValueError(f"config.w_encoder.{key}={w[key]!r}: must be >= 0")
    if w.disc_lambda > 0 and not w.disc_lr > 0:
        raise ValueError(f"config.w_encoder.disc_lr={w.disc_lr!r}: must be > 0")
    for key in ("disc_layers", "r1_every", "input_width"):
        if not isinstance(w[key], int) or w[key] < 1:
            raise ValueError(f"config.w_encoder.{key}={w[key]!r}: expected an int >= 1")
    if w.backbone_init and w.init_from:
        raise ValueError("config.w_encoder: set backbone_init or init_from, not both")


# ---------------------------------------------------------------------------------------
# The run's config as a file, and as lines
# ---------------------------------------------------------------------------------------
def write_config_json(config, workdir: str) -> None:
    """<workdir>/config.json; a different one already there is kept as config.<time>.json."""
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
    with atomic_write(path, "w") as f:
        f.write(text)


def config_lines(config, prefix: str = "config.") -> list:
    """Every leaf key with its value, `config.a.b = value`, sorted."""
    lines = []
    for key in sorted(config.keys()):
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict):
            lines += config_lines(value, f"{prefix}{key}.")
        else:
            lines.append(f"{prefix}{key} = {value!r}")
    return lines
