"""The HyperStyle training task: the model, its frozen parts and first params from a config.

    built = build(config)
    built.model          models.hyperstyle.HyperStyle (generator + hypernet [+ W-encoder])
    built.weights        losses.LossWeights
    built.frozen_model   host tree: generator (+ W-encoder) variables, latent_avg
    built.frozen_loss    host tree: loss-network variables
    built.init_override  host {'params', 'batch_stats'} from init_from / resnet34, or None
                         (then `model.init_hypernet(rng)` makes fresh ones)
    export_tree(built, config, hyper_host) -> (config dict, tree) for a converted folder

`Task` is what the loop in `train.py` needs from a training task; `build_task(config, tx)`
makes HyperStyle's (`config.task = 'hyperstyle'`), `training.w_encoder_task.build_task`
the W-encoder's (`'w_encoder'`). `frozen_generator` serves both.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from hyperstyle_jax import checkpoints
from hyperstyle_jax.data.synthetic import class_labels, synthetic_generator
from hyperstyle_jax.losses import LossNets, LossWeights
from hyperstyle_jax.models.hypernetwork import HyperNetConfig, parse_layers_to_tune
from hyperstyle_jax.models.hyperstyle import HyperStyle, HyperStyleConfig
from hyperstyle_jax.training import image_discriminator
from hyperstyle_jax.training.hyperstyle_step import (
    TrainState,
    format_eval,
    make_eval_step,
    make_train_step,
)


@dataclasses.dataclass
class BuiltModel:
    model: HyperStyle
    weights: LossWeights
    true_latent: bool            # codes are the synthetic images' latents, not the encoder's
    frozen_model: Any
    frozen_loss: Any
    init_override: Any | None
    description: list


def _hypernet_config(gen_config, config) -> HyperNetConfig:
    overrides = dict(config.model.hypernet)
    if "stages" in overrides:
        overrides["stages"] = tuple(tuple(s) for s in overrides["stages"])
    try:
        return HyperNetConfig.for_generator(gen_config, encoder_type=config.model.encoder_type,
                                            layers_to_tune=config.model.layers_to_tune,
                                            **overrides)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.model: {e}") from None


def _layers_line(hcfg: HyperNetConfig, size: int) -> str:
    """Which of the requested layers exist at this generator size (the official parser
    drops indices past the generator's last layer)."""
    tuned = ", ".join(map(str, hcfg.tuned_layers))
    if not hcfg.layers_to_tune.strip():
        return f"all {len(hcfg.tuned_layers)} layers: {tuned}"
    requested = parse_layers_to_tune(hcfg.layers_to_tune, 1 << 30)
    if len(requested) == len(hcfg.tuned_layers):
        return f"{len(requested)} tuned layers: {tuned}"
    return (f"{len(hcfg.tuned_layers)} of the {len(requested)} requested layers exist at "
            f"{size} px: {tuned}")


def frozen_generator(config, init_tree, init_cfgs, lines):
    """(GeneratorConfig, variables, latent_avg [n_latent, D]) of the frozen generator."""
    paths = config.checkpoints
    if config.w_code == "true_latent" and paths.generator and (
            os.path.abspath(paths.generator)
            != os.path.abspath(config.data.generator_dir or "")):
        raise ValueError(f"config.w_code='true_latent' needs the generator that rendered the "
                         f"synthetic data: config.checkpoints.generator={paths.generator!r} must "
                         f"be empty or equal config.data.generator_dir="
                         f"{config.data.generator_dir!r}")
    if paths.generator:
        gcfg, gvars, latent_avg = checkpoints.load_generator_with_latent_avg(paths.generator)
        lines.append(f"generator: {paths.generator} ({gcfg.size} px)")
    elif config.data.source == "synthetic":  # exactly the generator that rendered the data
        sg = synthetic_generator(config.data)
        gcfg, gvars, latent_avg = sg.config, sg.variables, sg.latent_avg
        lines.append(f"generator: the synthetic data's {sg.description}, {gcfg.size} px")
    elif init_tree is not None:
        gcfg, gvars, latent_avg = (init_cfgs["generator"], init_tree["generator"],
                                   init_tree["latent_avg"])
        lines.append(f"generator: the one in {config.init_from}")
    else:
        raise ValueError("no generator: set config.checkpoints.generator (a converted "
                         "stylegan2 folder) or config.init_from")
    if latent_avg is None:
        raise ValueError(f"{paths.generator}: the generator checkpoint has no latent_avg "
                         "(the official code then estimates it with mean_latent(1e5))")
    class_labels(gcfg, config.data.class_index)  # a conditional generator needs its class
    latent_avg = np.broadcast_to(np.asarray(latent_avg, np.float32).reshape(-1, gcfg.style_dim),
                                 (gcfg.n_latent, gcfg.style_dim)).copy()
    return gcfg, gvars, latent_avg


def build(config) -> BuiltModel:
    """-> BuiltModel for `config` (already checked by `check_config`)."""
    lines = []
    paths = config.checkpoints
    init_cfgs = init_tree = None
    if config.init_from:
        init_cfgs, init_tree = checkpoints.load_hyperstyle(config.init_from)
        lines.append(f"init_from: {config.init_from} (the hypernetwork is fine-tuned from it)")
    gcfg, gvars, latent_avg = frozen_generator(config, init_tree, init_cfgs, lines)

    hcfg = _hypernet_config(gcfg, config)
    if init_tree is not None and init_cfgs["hypernet"] != hcfg:
        raise ValueError(f"config.init_from={config.init_from!r} holds a hypernetwork "
                         f"{init_cfgs['hypernet'].to_dict()} but config.model gives "
                         f"{hcfg.to_dict()}: set config.model to match")
    fb_hw = tuple(int(v) for v in config.model.feedback_hw)
    if tuple(config.data.image_hw) != fb_hw:
        raise ValueError(f"config.data.image_hw={tuple(config.data.image_hw)} must equal "
                         f"config.model.feedback_hw={fb_hw}: the hypernet sees cat[x, y_hat]")

    frozen_model = {"generator": {"params": gvars["params"], "noises": gvars["noises"]},
                    "latent_avg": latent_avg}
    wcfg = None
    if config.w_code == "encoder":
        wcfg, wvars = checkpoints.load_w_encoder(paths.w_encoder)
        if wcfg["n_styles"] != gcfg.n_latent or wcfg["style_dim"] != gcfg.style_dim:
            raise ValueError(f"config.checkpoints.w_encoder={paths.w_encoder!r} gives "
                             f"{wcfg['n_styles']} x {wcfg['style_dim']} codes; the generator "
                             f"needs {gcfg.n_latent} x {gcfg.style_dim}")
        frozen_model["w_encoder"] = wvars
        lines.append(f"W code: the frozen W-encoder {paths.w_encoder}")
    else:
        lines.append("W code: the TRUE LATENTS of the synthetic images (no W-encoder in this "
                     "run); the hypernetwork learns to undo the per-image weight offsets")
    model = HyperStyle(HyperStyleConfig(generator=gcfg, hypernet=hcfg, w_encoder=wcfg,
                                        feedback_hw=fb_hw, cars_crop=config.model.cars_crop),
                       per_sample=config.model.per_sample,
                       precision="bf16" if config.compute_dtype == "bfloat16" else "fp32")

    weights = LossWeights.from_config(config.loss)
    nets = LossNets.load(lpips=paths.lpips or None, id=paths.arcface or None,
                         moco=paths.moco or None)
    nets.check(weights)
    frozen_loss = {k: v for k, v in nets.variables.items() if k in weights.networks()}
    lines.append("losses: " + ", ".join(f"{n} x {getattr(weights, n)}" for n in weights.active()))

    init_override = None
    if init_tree is not None:
        init_override = init_tree["hypernet"]
    elif paths.resnet34:
        _, backbone = checkpoints.load_hypernet_backbone_init(paths.resnet34)
        fresh = jax.tree.map(np.asarray, jax.jit(model.init_hypernet)(
            jax.random.split(jax.random.PRNGKey(config.seed))[0]))
        init_override = checkpoints.merge_backbone_init(fresh, backbone, paths.resnet34)
        lines.append(f"hypernetwork stem and body from ImageNet ResNet-34: {paths.resnet34}")

    lines.append(f"hypernetwork: {hcfg.encoder_type}, {_layers_line(hcfg, gcfg.size)}; "
                 f"feedback {fb_hw[0]}x{fb_hw[1]}")
    return BuiltModel(model=model, weights=weights, true_latent=config.w_code == "true_latent",
                      frozen_model=frozen_model, frozen_loss=frozen_loss,
                      init_override=init_override, description=lines)


def export_tree(built: BuiltModel, config, hyper_host: dict) -> tuple[dict, dict]:
    """The trained hypernetwork as a converted HyperStyle folder's (config, tree)."""
    mc = built.model.config
    cfg = {"generator": mc.generator.to_dict(), "hypernet": mc.hypernet.to_dict(),
           "opts": {"trained_with": "hyperstyle_jax.train", "w_code": config.w_code,
                    "feedback_hw": list(mc.feedback_hw), "cars_crop": bool(mc.cars_crop),
                    "n_iters_per_batch": int(config.n_iters_per_batch)}}
    fm = built.frozen_model
    tree = {"hypernet": hyper_host, "generator": jax.tree.map(np.asarray, fm["generator"]),
            "latent_avg": fm["latent_avg"]}
    return cfg, tree


# ---------------------------------------------------------------------------------------
# The task interface of the loop (train.py)
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Task:
    """What `train.train_and_evaluate` needs from a training task.

    frozen       host {'model': ..., 'loss': ...}: never differentiated, replicated
    init_inputs  host tree given (replicated) to `make_state`, or None
    make_state   (rng, init_inputs) -> train state; jitted with out_shardings, so the
                 state is created already sharded
    train_step   (state, frozen, batch) -> (state, metrics with 'loss' and 'finite')
    eval_step    with_images -> (state, frozen, batch) -> per-batch sums ('count',
                 'val_loss', ...; 'images' [k, B, H, W, 3] with images)
    grid_tag     the validation image grid's name (its columns)
    format_eval  held-out summary -> the text printed at the end
    export_tree  host {'params', 'batch_stats'} -> (config, tree) of a converted folder
    export_kind  that folder's kind ('hyperstyle' | 'w_encoder')
    """
    name: str
    description: list
    frozen: Any
    init_inputs: Any
    make_state: Callable
    train_step: Callable
    eval_step: Callable
    grid_tag: str
    format_eval: Callable
    export_tree: Callable
    export_kind: str

    def export(self, trained: dict, out_dir: str) -> None:
        """Write host {'params', 'batch_stats'} as a converted `export_kind` folder."""
        cfg, tree = self.export_tree(trained)
        tmp = out_dir + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        checkpoints.save_converted(tmp, tree, cfg, kind=self.export_kind)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)


def build_task(config, tx) -> Task:
    """HyperStyle's hypernetwork training (official `training/coach_hyperstyle.py`
    `Coach.train`) as a `Task`, with the optional image-discriminator term."""
    built = build(config)
    adversarial, d_init, d_config, d_lines = image_discriminator.build(
        config, config.model.feedback_hw)
    built.description.extend(d_lines)

    def make_state(rng, inputs):
        hyper = inputs["hyper"] if adversarial is not None else inputs
        if hyper is None:  # fresh init (else init_from / resnet34)
            hyper = built.model.init_hypernet(rng)
        state = TrainState(step=jnp.zeros((), jnp.int32), params=hyper["params"],
                           batch_stats=hyper.get("batch_stats", {}),
                           opt_state=tx.init(hyper["params"]))
        if adversarial is None:
            return state
        d_params = inputs["disc"]
        if d_params is None:
            d_params = image_discriminator.init_params(d_config, jax.random.fold_in(rng, 1))
        return state.replace(disc_params=d_params, disc_opt_state=adversarial.tx.init(d_params))

    dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32
    n_iters = config.n_iters_per_batch
    common = dict(true_latent=built.true_latent, unroll=config.unroll_iterations)
    return Task(
        name="hyperstyle", description=built.description,
        frozen={"model": built.frozen_model, "loss": built.frozen_loss},
        init_inputs=(built.init_override if adversarial is None
                     else {"hyper": built.init_override, "disc": d_init}),
        make_state=make_state,
        train_step=make_train_step(built.model, built.weights, tx, n_iters,
                                   compute_dtype=dtype, adversarial=adversarial, **common),
        eval_step=lambda images: make_eval_step(built.model, built.weights, n_iters,
                                                with_images=images, **common),
        grid_tag="val/input|initial|iterations",
        format_eval=lambda summary: format_eval(summary, n_iters, config.w_code),
        export_tree=lambda hyper: export_tree(built, config, hyper),
        export_kind=checkpoints.KIND_HYPERSTYLE)
