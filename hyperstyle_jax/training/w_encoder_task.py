"""The W-encoder training task (`config.task = 'w_encoder'`): model, frozen parts, export.

    task = build_task(config, tx)        # a hyperstyle_task.Task for the loop in train.py

The encoder is the official `WEncoder` (IR-SE body + the W head; `config.w_encoder`:
`num_layers` 50 or a narrowed `stages` table, `input_width`, `mode`). Its first params:
`config.w_encoder.init_from` (a converted `w_encoder` folder, fine-tuning), else the
IR-SE body of `config.w_encoder.backbone_init` (a converted `arcface` folder: pSp/e4e
start from `model_ir_se50.pth`, official pSp `models/encoders/psp_encoders.py`
`Encoder4Editing.__init__` / `pSp.load_weights`; a strict merge: every encoder param but the
W head must be there with its shape), else a fresh init. The generator is frozen and is
the one HyperStyle will later use (`config.checkpoints.generator`, or the synthetic data's).

The export is a converted `w_encoder` folder (`save_converted(..., kind='w_encoder')`),
the layout `tools/convert_weights.py w_encoder` writes, so `invert --w_encoder` and
HyperStyle training (`config.checkpoints.w_encoder`) use it exactly like the official one.
Its `latent_avg` is the generator's (a W-encoder folder holds none: as officially,
HyperStyle adds its own checkpoint's latent_avg).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hyperstyle_jax import checkpoints
from hyperstyle_jax.data.synthetic import class_labels
from hyperstyle_jax.losses import LossNets, LossWeights
from hyperstyle_jax.models.irse import WEncoder, get_block, get_blocks
from hyperstyle_jax.models.latent_discriminator import LatentDiscriminator, init_discriminator
from hyperstyle_jax.models.stylegan2 import Generator
from hyperstyle_jax.training import hyperstyle_task
from hyperstyle_jax.training.optim import torch_adam
from hyperstyle_jax.training.w_encoder_step import (
    ExtraTerms,
    WEncoderModel,
    WEncoderTrainState,
    format_w_encoder_eval,
    make_w_encoder_eval_step,
    make_w_encoder_train_step,
)
from hyperstyle_jax.utils.trees import leaves_with_paths, set_path


def encoder_units(wc) -> tuple:
    """The unit table: official IR-SE-`num_layers`, or `stages` ((depth, n_units), ...)
    with the first unit of each stage strided as `get_block` does."""
    if not wc.stages:
        return get_blocks(int(wc.num_layers))
    units, cin = [], int(wc.input_width)
    for depth, n in wc.stages:
        units += get_block(cin, int(depth), int(n))
        cin = int(depth)
    return tuple(units)


def encoder_config(config, gen_config) -> dict:
    """The converted-folder config of the encoder this config trains (what the loader reads)."""
    wc = config.w_encoder
    return {"n_styles": int(gen_config.n_latent), "style_dim": int(gen_config.style_dim),
            "units": [list(u) for u in encoder_units(wc)], "input_width": int(wc.input_width),
            "mode": str(wc.mode)}


def _merge_backbone(fresh: dict, backbone: dict, origin: str) -> dict:
    """Strict: every encoder leaf except the W head (`linear`) comes from `backbone` with
    the same shape; the ArcFace output layer is the only part of `backbone` left out."""
    src = {c: dict(leaves_with_paths(backbone.get(c, {}))) for c in ("params", "batch_stats")}
    out = {c: {} for c in fresh}
    bad, used = [], set()
    for c, tree in fresh.items():
        for path, leaf in leaves_with_paths(tree):
            if path[0] == "linear":
                set_path(out[c], path, leaf)
                continue
            got = src.get(c, {}).get(path)
            if got is None:
                bad.append(f"{c}/{'/'.join(path)}: missing")
            elif tuple(got.shape) != tuple(leaf.shape):
                bad.append(f"{c}/{'/'.join(path)}: {tuple(got.shape)} vs {tuple(leaf.shape)}")
            else:
                set_path(out[c], path, np.asarray(got))
                used.add((c, path))
    extra = sorted(f"{c}/{'/'.join(p)}" for c, t in src.items() for p in t
                   if (c, p) not in used and not p[0].startswith("output_layer"))
    if extra:
        bad.append("unexpected: " + ", ".join(extra))
    if bad:
        raise ValueError(f"config.w_encoder.backbone_init={origin!r} does not fit the encoder "
                         f"body: " + "; ".join(bad))
    return out


def build_task(config, tx) -> hyperstyle_task.Task:
    lines = ["task: W-encoder training (IR-SE + W head; codes w + latent_avg, one w for "
             "every layer)"]
    gcfg, gvars, latent_avg = hyperstyle_task.frozen_generator(config, None, None, lines)
    fb_hw = tuple(int(v) for v in config.model.feedback_hw)
    wc = config.w_encoder
    ecfg = encoder_config(config, gcfg)
    encoder = WEncoder.from_config(ecfg)
    extra = ExtraTerms(w_norm_lambda=float(wc.w_norm_lambda), disc_lambda=float(wc.disc_lambda),
                       r1_gamma=float(wc.r1_gamma), r1_every=int(wc.r1_every))
    disc = LatentDiscriminator(gcfg.style_dim, int(wc.disc_layers)) if extra.adversarial else None
    model = WEncoderModel(encoder, Generator(gcfg, per_sample=config.model.per_sample), fb_hw,
                          config.model.cars_crop, disc,
                          class_labels(gcfg, config.data.class_index))
    disc_tx = torch_adam(float(wc.disc_lr)) if extra.adversarial else None

    weights = LossWeights.from_config(config.loss)
    paths = config.checkpoints
    nets = LossNets.load(lpips=paths.lpips or None, id=paths.arcface or None,
                         moco=paths.moco or None)
    nets.check(weights)
    frozen = {"model": {"generator": {"params": gvars["params"], "noises": gvars["noises"]},
                        "latent_avg": latent_avg},
              "loss": {k: v for k, v in nets.variables.items() if k in weights.networks()}}

    init_inputs = None
    if wc.init_from:
        icfg, ivars = checkpoints.load_w_encoder(wc.init_from)
        if {k: icfg.get(k) for k in ecfg} != ecfg:
            raise ValueError(f"config.w_encoder.init_from={wc.init_from!r} holds an encoder "
                             f"{ {k: icfg.get(k) for k in ecfg} } but the config gives {ecfg}")
        init_inputs = ivars
        lines.append(f"encoder: fine-tuned from {wc.init_from}")
    elif wc.backbone_init:
        _, backbone = checkpoints.load_converted(wc.backbone_init, "arcface")
        rng = jax.random.split(jax.random.PRNGKey(config.seed))[0]
        fresh = jax.tree.map(np.asarray, jax.jit(model.init_encoder)(rng))
        init_inputs = _merge_backbone(fresh, backbone, wc.backbone_init)
        lines.append(f"encoder: IR-SE body from {wc.backbone_init}, fresh W head")
    else:
        lines.append("encoder: fresh init")
    n_units = len(ecfg["units"])
    lines.append(f"encoder: {ecfg['mode']} with {n_units} units, input {fb_hw[0]}x{fb_hw[1]}, "
                 f"-> {ecfg['n_styles']} x {ecfg['style_dim']} codes")
    lines.append("losses: " + ", ".join(f"{n} x {getattr(weights, n)}" for n in weights.active())
                 + (f", w_norm x {extra.w_norm_lambda}" if extra.w_norm_lambda > 0 else "")
                 + (f", latent discriminator x {extra.disc_lambda} (R1 {extra.r1_gamma} every "
                    f"{extra.r1_every} steps, Adam lr {wc.disc_lr})" if extra.adversarial else ""))

    def make_state(rng, enc):
        if enc is None:
            enc = model.init_encoder(rng)
        d_params, d_opt = {}, {}
        if extra.adversarial:
            d_params = init_discriminator(gcfg.style_dim, int(wc.disc_layers),
                                          jax.random.fold_in(rng, 1))
            d_opt = disc_tx.init(d_params)
        return WEncoderTrainState(step=jnp.zeros((), jnp.int32), params=enc["params"],
                                  batch_stats=enc.get("batch_stats", {}),
                                  opt_state=tx.init(enc["params"]), disc_params=d_params,
                                  disc_opt_state=d_opt)

    def export_tree(host: dict):
        cfg = dict(ecfg, opts={"trained_with": "hyperstyle_jax.train (task w_encoder)",
                               "feedback_hw": list(fb_hw),
                               "cars_crop": bool(config.model.cars_crop),
                               "generator_size": int(gcfg.size)})
        return cfg, {"params": host["params"], "batch_stats": host["batch_stats"]}

    return hyperstyle_task.Task(
        name="w_encoder", description=lines, frozen=frozen, init_inputs=init_inputs,
        make_state=make_state,
        train_step=make_w_encoder_train_step(model, weights, extra, tx, disc_tx,
                                             seed=config.seed),
        eval_step=lambda images: make_w_encoder_eval_step(model, weights, with_images=images),
        grid_tag="val/input|reconstruction", format_eval=format_w_encoder_eval,
        export_tree=export_tree, export_kind=checkpoints.KIND_W_ENCODER)
