"""Build what the trainer needs from a config: frozen networks, the hypernetwork, ModelFns.

The forward is `models.hyperstyle.HyperStyle` (SPEC §0, §3.1):
  initial:  codes = W-encoder(x) + latent_avg (eval mode), or the synthetic data's true
            latent (`w_code='true_latent'`, no encoder); y0 = pool(G(codes)).
  iterate:  Δ_t = hypernet(cat[x, y_{t-1}]); D_t = D_{t-1} + Δ_t; y_t = pool(G(codes, D_t)).
Only the pooled (feedback-size) outputs are used by the losses, as the official coach.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from hyperstyle_jax.training.step import ModelFns


@dataclasses.dataclass
class BuiltModel:
    fns: ModelFns
    frozen_model: Any            # host tree: generator (+ W-encoder) variables, latent_avg
    frozen_loss: Any             # host tree: loss-network variables
    init_hyper: Callable         # rng -> {'params', 'batch_stats'} (jittable)
    init_override: Any | None    # host {'params', 'batch_stats'} from init_from / resnet34
    export: Callable             # host hyper vars -> (config, tree) for save_converted
    description: list


def _hypernet_config(gen_config, config):
    from hyperstyle_jax.models.hypernetwork import HyperNetConfig

    overrides = dict(config.model.hypernet)
    for key in ("stages",):
        if key in overrides:
            overrides[key] = tuple(tuple(s) for s in overrides[key])
    try:
        return HyperNetConfig.for_generator(gen_config, encoder_type=config.model.encoder_type,
                                            layers_to_tune=config.model.layers_to_tune,
                                            **overrides)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.model: {e}") from None


def build(config):
    """-> BuiltModel for `config` (already checked by `check_config`)."""
    from hyperstyle_jax.losses import (LossNets, LossWeights, compute_losses, l2_per_image,
                                       lpips_distance)
    from hyperstyle_jax import checkpoints as loading
    from hyperstyle_jax.checkpoints import load_generator_with_latent_avg
    from hyperstyle_jax.models.hyperstyle import HyperStyle, HyperStyleConfig

    lines = []
    ck = config.checkpoints
    synthetic = config.data.source == "synthetic"

    # ---- generator (frozen) and latent_avg
    init_tree = None
    if config.init_from:
        cfgs, init_tree = loading.load_hyperstyle(config.init_from)
        lines.append(f"init_from: {config.init_from} (the hypernetwork is fine-tuned from it)")
    if config.w_code == "true_latent" and ck.generator and (
            os.path.abspath(ck.generator) != os.path.abspath(config.data.generator_dir or "")):
        raise ValueError(f"config.w_code='true_latent' needs the generator that rendered the "
                         f"synthetic data: config.checkpoints.generator={ck.generator!r} must be "
                         f"empty or equal config.data.generator_dir={config.data.generator_dir!r}")
    if ck.generator:
        gcfg, gvars, latent_avg = load_generator_with_latent_avg(ck.generator)
        lines.append(f"generator: {ck.generator} ({gcfg.size} px)")
    elif synthetic:  # exactly the generator that rendered the data
        from hyperstyle_jax.data.synthetic import synthetic_generator

        sg = synthetic_generator(config.data)
        gcfg, gvars, latent_avg = sg.config, sg.variables, sg.latent_avg
        lines.append(f"generator: the synthetic data's {sg.description}, {gcfg.size} px")
    elif init_tree is not None:
        gcfg, gvars, latent_avg = cfgs["generator"], init_tree["generator"], init_tree["latent_avg"]
        lines.append(f"generator: the one in {config.init_from}")
    else:
        raise ValueError("no generator: set config.checkpoints.generator (a converted "
                         "stylegan2 folder) or config.init_from")
    if latent_avg is None:
        raise ValueError(f"{ck.generator}: the generator checkpoint has no latent_avg "
                         "(the official code then estimates it with mean_latent(1e5))")
    latent_avg = np.broadcast_to(np.asarray(latent_avg, np.float32).reshape(-1, gcfg.style_dim),
                                 (gcfg.n_latent, gcfg.style_dim)).copy()

    # ---- hypernetwork config and the feedback resize
    hcfg = _hypernet_config(gcfg, config)
    if init_tree is not None and cfgs["hypernet"] != hcfg:
        raise ValueError(f"config.init_from={config.init_from!r} holds a hypernetwork "
                         f"{cfgs['hypernet'].to_dict()} but config.model gives "
                         f"{hcfg.to_dict()}: set config.model to match")
    fb_hw = tuple(int(v) for v in config.model.feedback_hw)
    if tuple(config.data.image_hw) != fb_hw:
        raise ValueError(f"config.data.image_hw={tuple(config.data.image_hw)} must equal "
                         f"config.model.feedback_hw={fb_hw}: the hypernet sees cat[x, y_hat]")
    # ---- W code and the model
    frozen_model = {"generator": {"params": gvars["params"], "noises": gvars["noises"]},
                    "latent_avg": latent_avg}
    wcfg = None
    if config.w_code == "encoder":
        wcfg, wvars = loading.load_w_encoder(ck.w_encoder)
        if wcfg["n_styles"] != gcfg.n_latent or wcfg["style_dim"] != gcfg.style_dim:
            raise ValueError(f"config.checkpoints.w_encoder={ck.w_encoder!r} gives "
                             f"{wcfg['n_styles']} x {wcfg['style_dim']} codes; the generator "
                             f"needs {gcfg.n_latent} x {gcfg.style_dim}")
        frozen_model["w_encoder"] = wvars
        lines.append(f"W code: the frozen W-encoder {ck.w_encoder}")
    else:
        lines.append("W code: the TRUE LATENTS of the synthetic images (no W-encoder in this "
                     "run); the hypernetwork learns to undo the per-image weight offsets")
    model = HyperStyle(HyperStyleConfig(generator=gcfg, hypernet=hcfg, w_encoder=wcfg,
                                        feedback_hw=fb_hw, cars_crop=config.model.cars_crop),
                       per_sample=config.model.per_sample)

    def initial(frozen, batch):
        codes = None
        if config.w_code == "true_latent":
            w = batch["latent"]
            codes = jnp.broadcast_to(w[:, None, :], (w.shape[0], gcfg.n_latent, gcfg.style_dim))
        codes, _, y0 = model.initial_inversion(frozen, batch["image"], codes)
        return codes, y0

    def iterate(frozen, hyper_vars, x, y_hat, codes, deltas, train_mode):
        _, y, new, stats = model.iteration(frozen, hyper_vars, x, y_hat, codes, deltas,
                                           train_mode)
        return y, new, (stats if train_mode else hyper_vars["batch_stats"])

    # ---- losses
    weights = LossWeights.from_config(config.loss)
    nets = LossNets.load(lpips=ck.lpips or None, id=ck.arcface or None, moco=ck.moco or None)
    nets.check(weights)
    frozen_loss = {k: v for k, v in nets.variables.items() if k in weights.networks()}
    lines.append("losses: " + ", ".join(f"{n} x {getattr(weights, n)}" for n in weights.active()))

    def losses(loss_vars, y_hat, y):
        return compute_losses(loss_vars, y_hat, y, weights)

    def eval_terms(loss_vars, y_hat, y):
        out = {"l2": l2_per_image(y_hat, y)}
        if "lpips" in loss_vars:
            out["lpips"] = lpips_distance(loss_vars["lpips"], y_hat, y)
        return out

    # ---- hypernetwork init
    def init_hyper(rng):
        v = model.hypernet.init(rng, jnp.zeros((1, *fb_hw, hcfg.input_nc), jnp.float32), False)
        return {"params": v["params"], "batch_stats": v.get("batch_stats", {})}

    init_override = None
    if init_tree is not None:
        init_override = init_tree["hypernet"]
    elif ck.resnet34:
        _, backbone = loading.load_hypernet_backbone_init(ck.resnet34)
        fresh = jax.tree.map(np.asarray, jax.jit(init_hyper)(
            jax.random.split(jax.random.PRNGKey(config.seed))[0]))
        init_override = loading.merge_backbone_init(fresh, backbone, ck.resnet34)
        lines.append(f"hypernetwork stem and body from ImageNet ResNet-34: {ck.resnet34}")

    def export(hyper_host):
        cfg = {"generator": gcfg.to_dict(), "hypernet": hcfg.to_dict(),
               "opts": {"trained_with": "hyperstyle_jax.train", "w_code": config.w_code,
                        "feedback_hw": list(fb_hw), "cars_crop": bool(config.model.cars_crop),
                        "n_iters_per_batch": int(config.n_iters_per_batch)}}
        tree = {"hypernet": hyper_host, "generator": jax.tree.map(np.asarray, gvars),
                "latent_avg": latent_avg}
        return cfg, tree

    n_tuned = len(hcfg.tuned_layers)
    lines.append(f"hypernetwork: {hcfg.encoder_type}, {n_tuned} tuned layers "
                 f"({hcfg.layers_to_tune or 'all'}), feedback {fb_hw[0]}x{fb_hw[1]}")
    fns = ModelFns(initial=initial, iterate=iterate, losses=losses, eval_terms=eval_terms)
    return BuiltModel(fns=fns, frozen_model=frozen_model, frozen_loss=frozen_loss,
                      init_hyper=init_hyper, init_override=init_override, export=export,
                      description=lines)
