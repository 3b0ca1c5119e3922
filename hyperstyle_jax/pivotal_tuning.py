"""Refinement after HyperStyle: PTI's pivotal tuning on each image's weight offsets, batched.

    refine = batched_refiner(inv, batch_size=4, config=RefineConfig(steps=350), lpips=lp)
    res = inv.batched_inverter(4, n_iters=5)(x)
    out = refine(x, res["codes"], res["deltas"], progress=print_fn)    # compiled once
    out["deltas"], out["codes"], out["image"], out["l2"], out["lpips"], out["steps"]
    export_generator("out/gen_0", inv.generator_config, inv.frozen["generator"],
                     [None if d is None else d[0] for d in out["deltas"]])

PTI (official `training/coaches/single_id_coach.py` `SingleIDCoach.train`, `base_coach.py`
`calc_loss`, `configs/hyperparameters.py`) tunes every weight of G with Adam (lr 3e-4) on
`pt_l2_lambda`·MSE + `pt_lpips_lambda`·LPIPS-alex (1, 1) between G(w_pivot) and the image,
at most 350 steps, one image at a time, and stops an image as soon as its LPIPS (computed
before the step) is <= 0.06. HyperStyle's offsets already reparametrise the tuned conv
weights per image (θ̂ = θ·(1+D)), so here Adam runs on D, starting from HyperStyle's answer,
for a whole batch in one compiled loop: the objective is the SUM of the per-image losses,
so each image's offsets see exactly their own image's gradient and Adam (elementwise, one
step count shared by the images still running) behaves as B independent PTI runs.
Per-image early stopping is a mask: a stopped image's offsets (and moments) stay bit-equal.

Differences from PTI, by design: the parameters are the offsets D (Adam's per-element step is
lr in D, i.e. lr·|θ| in θ) and, optionally, the offsets of the untuned layers (toRGB
included) and the codes; the mapping network, biases, modulations and noise strengths stay
frozen (edits keep working on the result). The loss compares the (cars-cropped) render
average-pooled to the target's size (the inverter's input size by default, as HyperStyle's
own loss) instead of at the generator's full size. PTI's optional locality regulariser
(`criteria/localitly_regulizer.py`, off by default) is `RefineConfig.locality`: its
reference generator is the one tuning starts from (HyperStyle's offsets), as PTI's
`original_G` is the G before tuning. Without LPIPS variables the objective is L2 alone and
nothing stops early.

Memory of a batch of B images (fp32): the tuned offsets, their gradient and Adam's two
moments, 4·4·B·P bytes for P tuned weights (`state_bytes`): P = 23.6 M at 1024 for the
official tuned layers (every non-toRGB conv; 377 MB per image), 23.4 M at 256 (375 MB);
'all' adds the toRGB weights (+0.04 %), the codes add n·D. On top come one step's
temporaries (activations saved for the backward pass, LPIPS at 256, the update), by XLA's
`memory_analysis` on CPU (benchmarks/refine.py): 1.5 GiB per image at 256, 5.4 GiB per
image at 1024. They scale with the images processed at once, so `RefineConfig.micro_batch`
(m images per gradient, sequentially) bounds them at m images whatever B. A `jax.checkpoint`
of the whole generator call saves nothing (5.38 vs 5.41 GiB at 1024: the recomputed forward
keeps the same residuals); per-block rematerialisation would need `nn.remat` inside
`models/stylegan2.py`. The loop state is donated from chunk to chunk.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hyperstyle_jax import parallel
from hyperstyle_jax.checkpoints import KIND_STYLEGAN2, save_converted
from hyperstyle_jax.convert.common import torch_key
from hyperstyle_jax.losses.l2 import l2_per_image
from hyperstyle_jax.losses.lpips import lpips_distance
from hyperstyle_jax.models.ops import make_kernel
from hyperstyle_jax.models.pooling import adaptive_avg_pool2d
from hyperstyle_jax.models.stylegan2 import Generator, GeneratorConfig
from hyperstyle_jax.utils.paths import atomic_write

LAYER_CHOICES = ("tuned", "convs", "all")


@dataclasses.dataclass(frozen=True)
class RefineConfig:
    """PTI's hyperparameters (official `configs/hyperparameters.py` names in comments).

    steps: `max_pti_steps` (350); lr: `pti_learning_rate` (3e-4, Adam betas 0.9/0.999,
    eps 1e-8 as torch); l2_lambda / lpips_lambda: `pt_l2_lambda` / `pt_lpips_lambda` (1, 1);
    lpips_threshold: `LPIPS_value_threshold` (0.06; an image stops when its LPIPS <= it).
    layers: which offsets are tuned: 'tuned' (the layers HyperStyle tuned), 'convs' (also
    every other non-toRGB conv), 'all' (also the toRGB convs); untuned ones start at 0.
    tune_codes: also tune the W+ codes (PTI keeps its pivot fixed).
    locality: `use_locality_regularization` (False) with `regulizer_l2_lambda` (0.1),
    `regulizer_lpips_lambda` (0.1), `regulizer_alpha` (30), `latent_ball_num_of_samples` (1)
    and the mapping's `truncation_psi=0.5`, every step (`locality_regularization_interval`
    1); seed: its random z (step t uses fold_in(key(seed), t)).
    micro_batch: compute the gradient m images at a time (`loss_and_grad`): activation
    memory of m images instead of B, same numbers; None = the whole batch at once.
    """
    steps: int = 350
    lr: float = 3e-4
    l2_lambda: float = 1.0
    lpips_lambda: float = 1.0
    lpips_threshold: float = 0.06
    layers: str = "tuned"
    tune_codes: bool = False
    locality: bool = False
    locality_l2_lambda: float = 0.1
    locality_lpips_lambda: float = 0.1
    locality_alpha: float = 30.0
    locality_samples: int = 1
    locality_truncation: float = 0.5
    micro_batch: Optional[int] = None
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"refine steps = {self.steps!r}: must be an integer >= 0")
        if not self.lr > 0:
            raise ValueError(f"refine lr = {self.lr!r}: must be > 0")
        for name in ("l2_lambda", "lpips_lambda", "locality_l2_lambda", "locality_lpips_lambda"):
            if getattr(self, name) < 0:
                raise ValueError(f"refine {name} = {getattr(self, name)!r}: must be >= 0")
        if self.l2_lambda == 0 and self.lpips_lambda == 0:
            raise ValueError("refine: l2_lambda and lpips_lambda are both 0: nothing to minimise")
        if self.layers not in LAYER_CHOICES:
            raise ValueError(f"refine layers = {self.layers!r}: expected one of {LAYER_CHOICES}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ValueError(f"refine micro_batch = {self.micro_batch}: must be >= 1 or None")
        if self.locality_samples < 1:
            raise ValueError(f"refine locality_samples = {self.locality_samples}: must be >= 1")


# ----------------------------------------------------------------------------- the objective


def tuned_layer_indices(layers: str, present: Sequence[bool], config: GeneratorConfig) -> tuple:
    """Official layer indices j whose offsets are tuned: the present ones ('tuned'), plus
    every non-toRGB conv ('convs'), or every layer ('all')."""
    names = config.layer_names()
    if len(present) != len(names):
        raise ValueError(f"deltas has {len(present)} entries, the generator has {len(names)} "
                         "layers")
    return tuple(j for j, name in enumerate(names)
                 if present[j] or layers == "all"
                 or (layers == "convs" and not name.startswith("to_rgb")))


def state_bytes(config: GeneratorConfig, layers: Sequence[int], batch: int,
                tune_codes: bool = False) -> int:
    """Bytes of the tuned parameters, their gradient and Adam's two moments (fp32)."""
    shapes = config.delta_shapes()
    n = sum(math.prod(shapes[j]) for j in layers)
    if tune_codes:
        n += config.n_latent * config.style_dim
    return 4 * 4 * batch * n


def deltas_list(params: dict, n_layers: int) -> list:
    """The tuned parameters' offsets as the generator's list (None at untuned layers)."""
    d = params["deltas"]
    return [d.get(str(j)) for j in range(n_layers)]


def _render(generator: Generator, gen_vars, codes, deltas, crop: bool, hw, noise=None):
    """crop(G(codes, deltas)) -> (full, pooled to hw); fixed (or given) noise."""
    img, _ = generator.apply(gen_vars, codes, input_space="w+", randomize_noise=False,
                             noise=noise, weights_deltas=deltas)
    if crop:
        s = img.shape[1]
        img = img[:, s // 8: s - s // 8]
    return img, adaptive_avg_pool2d(img, tuple(hw))


def _distances(lpips_vars, y_hat, y):
    """Per-image (l2 [B], lpips [B] or zeros)."""
    l2 = l2_per_image(y_hat, y)
    lp = jnp.zeros_like(l2) if lpips_vars is None else lpips_distance(lpips_vars, y_hat, y)
    return l2, lp


def objective(generator: Generator, config: RefineConfig, gen_vars, lpips_vars, params: dict,
              fixed: dict, key: Optional[jax.Array] = None, crop: bool = False):
    """PTI's loss of each image -> (sum over the batch, {'loss', 'l2', 'lpips'} each [B]).

    params: {'deltas': {str(j): [B, out, in, k, k]}, optionally 'codes': [B, n, D]};
    fixed: {'target' [B, h, w, 3] in [-1, 1], 'codes' [B, n, D] (the pivot), and for the
    locality term 'deltas_ref' (dict like params['deltas']) and 'w_avg' [D]}.
    lpips_vars None: L2 alone. `key` draws the locality term's z (needed with locality).
    """
    n_layers = generator.config.n_convs
    codes = params.get("codes", fixed["codes"])
    target = fixed["target"]
    _, y_hat = _render(generator, gen_vars, codes, deltas_list(params, n_layers), crop,
                       target.shape[1:3])
    l2, lp = _distances(lpips_vars, y_hat, target)
    per = config.l2_lambda * l2
    if lpips_vars is not None and config.lpips_lambda > 0:
        per = per + config.lpips_lambda * lp
    if config.locality:
        per = per + _locality(generator, config, gen_vars, lpips_vars, params, fixed, key, crop)
    return jnp.sum(per), {"loss": per, "l2": l2, "lpips": lp}


def _locality(generator, config, gen_vars, lpips_vars, params, fixed, key, crop):
    """PTI's `Space_Regulizer.ball_holder_loss_lazy`, per image [B]: w from z through the
    mapping (truncation toward w_avg), moved to distance alpha from the pivot, rendered
    without noise by the tuned and the reference offsets; weighted L2 + LPIPS, sample mean."""
    cfg = generator.config
    pivot = fixed["codes"]
    b, s = pivot.shape[0], config.locality_samples
    z = jax.random.normal(key, (b * s, cfg.style_dim), pivot.dtype)
    w = generator.apply(gen_vars, z, method=Generator.mapping)
    w = fixed["w_avg"] + config.locality_truncation * (w - fixed["w_avg"])
    direction = w.reshape(b, s, 1, cfg.style_dim) - pivot[:, None]          # [B, S, n, D]
    norm = jnp.sqrt(jnp.sum(jnp.square(direction), axis=(2, 3), keepdims=True))
    ws = pivot[:, None] + config.locality_alpha * direction / norm
    zero_noise = [jnp.zeros(shape, pivot.dtype) for shape in cfg.noise_shapes()]
    new = deltas_list(params, cfg.n_convs)
    ref = deltas_list({"deltas": jax.lax.stop_gradient(fixed["deltas_ref"])}, cfg.n_convs)
    hw = fixed["target"].shape[1:3]
    total = 0.0
    for i in range(s):
        _, y_new = _render(generator, gen_vars, ws[:, i], new, crop, hw, zero_noise)
        _, y_old = _render(generator, gen_vars, ws[:, i], ref, crop, hw, zero_noise)
        l2, lp = _distances(lpips_vars, y_old, y_new)
        term = config.locality_l2_lambda * l2
        if lpips_vars is not None:
            term = term + config.locality_lpips_lambda * lp
        total = total + term
    return total / s


# ----------------------------------------------------------------------------- the loop


def optimizer(config: RefineConfig) -> optax.GradientTransformation:
    """PTI's `torch.optim.Adam(lr=pti_learning_rate)` (betas 0.9/0.999, eps 1e-8)."""
    return optax.adam(config.lr, b1=0.9, b2=0.999, eps=1e-8)


def init_state(config: RefineConfig, params: dict, valid: jax.Array) -> dict:
    """Loop state: params, Adam's state, `active` [B] (padding rows start stopped), `steps`
    [B] (updates applied per image), `step` (steps run), last per-image loss terms."""
    b = valid.shape[0]
    zeros = jnp.zeros((b,), jnp.float32)
    return {"params": params, "opt": optimizer(config).init(params), "active": valid,
            "steps": jnp.zeros((b,), jnp.int32), "step": jnp.zeros((), jnp.int32),
            "loss": zeros, "l2": zeros, "lpips": zeros}


def _where_active(active, new, old):
    """Per-image select on every leaf with the batch as leading dim (scalars take `new`)."""
    def one(n, o):
        if n.ndim == 0 or n.shape[0] != active.shape[0]:
            return n
        return jnp.where(active.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
    return jax.tree.map(one, new, old)


def loss_and_grad(generator: Generator, config: RefineConfig, gen_vars, lpips_vars,
                  params: dict, fixed: dict, key=None, crop: bool = False):
    """(per-image terms, gradient of the summed objective w.r.t. params). With
    `config.micro_batch` m < B the batch runs as B/m sequential groups (`lax.map`): the
    images are independent, so the gradient is the same and only one group's activations
    are alive at a time (the locality term's z then differs per group)."""
    def one(p, fx, k):
        (_, terms), g = jax.value_and_grad(objective, argnums=4, has_aux=True)(
            generator, config, gen_vars, lpips_vars, p, fx, k, crop)
        return terms, g

    b, m = fixed["codes"].shape[0], config.micro_batch
    if not m or m >= b:
        return one(params, fixed, key)
    if b % m:
        raise ValueError(f"refine micro_batch {m} does not divide the batch size {b}")
    batched = {k: v for k, v in fixed.items() if k != "w_avg"}
    split = lambda t: jax.tree.map(lambda a: a.reshape((b // m, m) + a.shape[1:]), t)  # noqa: E731
    merge = lambda t: jax.tree.map(lambda a: a.reshape((b,) + a.shape[2:]), t)  # noqa: E731
    keys = jnp.arange(b // m) if key is None else jax.random.split(key, b // m)

    def group(args):
        p, fx, k = args
        fx = dict(fx, **({"w_avg": fixed["w_avg"]} if "w_avg" in fixed else {}))
        return one(p, fx, None if key is None else k)

    terms, grads = jax.lax.map(group, (split(params), split(batched), keys))
    return merge(terms), merge(grads)


def train_step(generator: Generator, config: RefineConfig, gen_vars, lpips_vars, fixed: dict,
               state: dict, crop: bool = False) -> dict:
    """One PTI step for the batch: loss and gradient at the current offsets; images whose
    LPIPS is <= the threshold stop before updating (official `if loss_lpips <= ...: break`)."""
    key = jax.random.fold_in(jax.random.key(config.seed), state["step"])
    terms, grads = loss_and_grad(generator, config, gen_vars, lpips_vars, state["params"], fixed,
                                 key, crop)
    active = state["active"]
    if lpips_vars is not None and config.lpips_lambda > 0:
        active = active & (terms["lpips"] > config.lpips_threshold)
    updates, opt = optimizer(config).update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {"params": _where_active(active, params, state["params"]),
            "opt": _where_active(active, opt, state["opt"]), "active": active,
            "steps": state["steps"] + active.astype(jnp.int32), "step": state["step"] + 1,
            "loss": terms["loss"], "l2": terms["l2"], "lpips": terms["lpips"]}


def run_steps(generator: Generator, config: RefineConfig, gen_vars, lpips_vars, fixed: dict,
              state: dict, n: jax.Array, crop: bool = False) -> dict:
    """Up to `n` (traced) steps in one `while_loop`, ending early when no image is active."""
    stop = state["step"] + n

    def cond(s):
        return (s["step"] < stop) & jnp.any(s["active"])

    def body(s):
        return train_step(generator, config, gen_vars, lpips_vars, fixed, s, crop)

    return jax.lax.while_loop(cond, body, state)


def evaluate(generator: Generator, gen_vars, lpips_vars, fixed: dict, params: dict,
             crop: bool = False) -> dict:
    """Render the batch: {'image' [B, H, W, 3] (full size, cropped), 'l2', 'lpips' [B]}."""
    codes = params.get("codes", fixed["codes"])
    full, pooled = _render(generator, gen_vars, codes,
                           deltas_list(params, generator.config.n_convs), crop,
                           fixed["target"].shape[1:3])
    l2, lp = _distances(lpips_vars, pooled, fixed["target"])
    return {"image": full, "l2": l2, "lpips": lp}


def refine(generator: Generator, config: RefineConfig, gen_vars, lpips_vars, target, codes,
           deltas: Sequence, crop: bool = False, w_avg=None) -> dict:
    """The whole refinement as one pure function (jit it): (codes, deltas, x) -> deltas'.

    target [B, h, w, 3]; codes [B, n, D]; deltas: the generator's list (None or
    [B, out, in, k, k]). Returns {'deltas' (list, None at untuned layers), 'codes',
    'image', 'l2', 'lpips', 'steps'}. `batched_refiner` is the same in chunks with progress.
    """
    b = codes.shape[0]
    params, fixed = make_params(generator.config, config, target, codes, deltas, w_avg)
    state = init_state(config, params, jnp.ones((b,), bool))
    state = run_steps(generator, config, gen_vars, lpips_vars, fixed, state,
                      jnp.asarray(config.steps, jnp.int32), crop)
    out = evaluate(generator, gen_vars, lpips_vars, fixed, state["params"], crop)
    out.update(deltas=deltas_list(state["params"], generator.config.n_convs),
               codes=state["params"].get("codes", codes), steps=state["steps"])
    return out


def make_params(gen_config: GeneratorConfig, config: RefineConfig, target, codes,
                deltas: Sequence, w_avg=None) -> tuple[dict, dict]:
    """(params, fixed) of `objective` from HyperStyle's codes and offsets list."""
    layers = tuned_layer_indices(config.layers, [d is not None for d in deltas], gen_config)
    shapes = gen_config.delta_shapes()
    b = codes.shape[0]
    d = {str(j): (jnp.zeros((b,) + shapes[j], jnp.float32) if deltas[j] is None
                  else jnp.asarray(deltas[j], jnp.float32)) for j in layers}
    params = {"deltas": d}
    if config.tune_codes:
        params["codes"] = jnp.asarray(codes, jnp.float32)
    fixed = {"target": target, "codes": codes}
    if config.locality:
        if w_avg is None:
            raise ValueError("refine: the locality term needs w_avg (the checkpoint's latent_avg)")
        fixed["deltas_ref"] = d
        fixed["w_avg"] = jnp.asarray(w_avg, jnp.float32).reshape(-1, gen_config.style_dim)[0]
    return params, fixed


# ----------------------------------------------------------------------------- compiled batches


def batched_refiner(inverter, batch_size: int, config: RefineConfig, lpips=None,
                    chunk_steps: Optional[int] = None, check_memory: Optional[Callable] = None):
    """`compile_refiner` for an `inference.Inverter`: its generator, fixed noise, cars crop
    and latent_avg (the locality term's w_avg)."""
    model = inverter.model
    return compile_refiner(model.generator, inverter.frozen["generator"], batch_size, config,
                           lpips=lpips, crop=model.config.cars_crop,
                           w_avg=inverter.frozen["latent_avg"], chunk_steps=chunk_steps,
                           check_memory=check_memory)


def compile_refiner(generator: Generator, gen_vars, batch_size: int, config: RefineConfig,
                    lpips=None, crop: bool = False, w_avg=None,
                    chunk_steps: Optional[int] = None, check_memory: Optional[Callable] = None):
    """Compile the refinement of fixed-size batches on `generator` with `gen_vars`.

    lpips: converted LPIPS (alex) variables `{'params'}` or None (L2 alone). Returns
    run(target [n <= batch_size, h, w, 3], codes [n, n_styles, D], deltas list (None or
    [n, out, in, k, k]), progress=None, steps=config.steps) -> dict of numpy (padding
    removed; any number of steps runs on the same compiled functions):
      'deltas' (list, None at untuned layers), 'codes', 'image' [n, H, W, 3] (full size,
      un-clipped, the cars crop applied), 'l2', 'lpips' [n] (at the target's size),
      'l2_start', 'lpips_start' [n] (HyperStyle's), 'steps' [n] (updates applied).
    progress(done_steps, total_steps, {'loss', 'active'}) is called after each chunk of
    `chunk_steps` steps (default: about 20 chunks when progress is given, else one).
    The mesh is `parallel.local_mesh`: batch-sharded state and inputs, replicated weights;
    the loop state is donated from chunk to chunk. The step loop is compiled ahead of time
    on the first run with steps > 0; check_memory(its XLA `memory_analysis()`) is called
    then, before anything runs (it may raise to refuse a batch that does not fit).
    """
    gen = generator
    gcfg = gen.config
    mesh = parallel.local_mesh(batch_size)
    repl, batch = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    gen_vars = jax.device_put(gen_vars, repl)
    lpips_vars = None if lpips is None else jax.device_put(lpips, repl)
    w_avg = None if w_avg is None else np.asarray(w_avg, np.float32)

    init = jax.jit(functools.partial(init_state, config))
    step_fn = jax.jit(functools.partial(run_steps, gen, config, crop=crop),
                    donate_argnums=(3,))
    ev = jax.jit(functools.partial(evaluate, gen, crop=crop))
    compiled = {}

    def steps_fn(fixed, state, k):
        key = fixed["target"].shape
        if key not in compiled:
            compiled[key] = step_fn.lower(gen_vars, lpips_vars, fixed, state, k).compile()
            if check_memory is not None:
                check_memory(compiled[key].memory_analysis())
        return compiled[key](gen_vars, lpips_vars, fixed, state, k)

    def run(target, codes, deltas, progress: Optional[Callable] = None,
            steps: Optional[int] = None) -> dict:
        total = config.steps if steps is None else steps
        if isinstance(total, bool) or not isinstance(total, (int, np.integer)) or total < 0:
            raise ValueError(f"refine steps = {total!r}: must be an integer >= 0")
        n = codes.shape[0]
        if target.shape[0] != n:
            raise ValueError(f"refine: {target.shape[0]} targets for {n} codes")
        put = lambda a: jax.device_put(  # noqa: E731
            parallel.pad_batch(np.asarray(a, np.float32), batch_size), batch)
        padded = [None if d is None else put(d) for d in deltas]
        params, fixed = make_params(gcfg, config, put(target), put(codes), padded, w_avg)
        params = jax.device_put(params, batch)
        fixed = {k: jax.device_put(v, repl if k == "w_avg" else batch) for k, v in fixed.items()}
        valid = jax.device_put(np.arange(batch_size) < n, batch)
        start = ev(gen_vars, lpips_vars, fixed, params)
        state = init(params, valid)
        chunk = chunk_steps or (max(1, -(-total // 20)) if progress else total)
        done = 0
        while done < total:
            k = min(chunk, total - done)
            state = steps_fn(fixed, state, np.int32(k))
            done += k
            active = np.asarray(state["active"])[:n]
            if progress is not None:
                loss = np.asarray(state["loss"])[:n]
                progress(done, total, {"loss": float(loss.mean()),
                                              "active": int(active.sum())})
            if not active.any():
                break
        end = ev(gen_vars, lpips_vars, fixed, state["params"])
        out = jax.device_get({"end": end, "start": start, "steps": state["steps"],
                              "params": state["params"]})
        p = out["params"]
        return {"deltas": [None if d is None else d[:n] for d in deltas_list(p, gcfg.n_convs)],
                "codes": (p["codes"] if "codes" in p else np.asarray(codes, np.float32))[:n],
                "image": out["end"]["image"][:n], "l2": out["end"]["l2"][:n],
                "lpips": out["end"]["lpips"][:n], "l2_start": out["start"]["l2"][:n],
                "lpips_start": out["start"]["lpips"][:n], "steps": out["steps"][:n]}

    return run


# ----------------------------------------------------------------------------- export


def tuned_generator(config: GeneratorConfig, variables: dict, deltas: Sequence) -> dict:
    """One image's tuned generator: every conv weight θ·(1+D) (D [out, in, k, k] or None per
    official layer j) -> variables {'params', 'noises'} of a plain `Generator(config)`."""
    if len(deltas) != config.n_convs:
        raise ValueError(f"deltas has {len(deltas)} entries, the generator has {config.n_convs}")
    params = jax.tree.map(np.asarray, dict(variables["params"]))
    params = {k: dict(v) for k, v in params.items()}
    for name, d, shape in zip(config.layer_names(), deltas, config.delta_shapes()):
        if d is None:
            continue
        d = np.asarray(d, np.float32)
        if d.shape != shape:
            raise ValueError(f"deltas for {name} have shape {d.shape}, expected {shape}")
        layer = dict(params[name])
        conv = dict(layer["conv"])
        conv["weight"] = (conv["weight"] * (1.0 + d.transpose(2, 3, 1, 0))).astype(np.float32)
        layer["conv"] = conv
        params[name] = layer
    return {"params": params, "noises": jax.tree.map(np.asarray, dict(variables["noises"]))}


def rosinality_state_dict(variables: dict) -> dict:
    """Generator variables -> rosinality `g_ema` keys and layouts (numpy): the converter's
    `GENERATOR_RULES` read backwards, plus the blur kernels it checks."""
    sd = {}
    for coll in ("params", "noises"):
        for path, arr in jax.tree_util.tree_flatten_with_path(variables[coll])[0]:
            parts = tuple(str(getattr(k, "key", k)) for k in path)
            arr = np.asarray(arr, np.float32)
            if coll == "noises":
                sd[f"noises.{parts[0]}"] = arr.transpose(0, 3, 1, 2)
                continue
            key = torch_key(parts)
            if parts[-2:] == ("conv", "weight"):
                arr = arr.transpose(3, 2, 0, 1)[None]                 # [k,k,I,O] -> [1,O,I,k,k]
            elif parts == ("input", "input"):
                arr = arr.transpose(0, 3, 1, 2)                        # [1,4,4,C] -> [1,C,4,4]
            elif len(parts) == 2 and re.fullmatch(r"to_rgb(1|s_\d+)", parts[0]) \
                    and parts[1] == "bias":
                arr = arr.reshape(1, 3, 1, 1)
            elif arr.ndim == 2:
                arr = arr.T                                            # EqualLinear [in, out]
            sd[key] = np.ascontiguousarray(arr)
    blur = (make_kernel((1, 3, 3, 1)) * 4).astype(np.float32)
    n_blocks = sum(1 for k in variables["params"] if k.startswith("to_rgbs_"))
    for b in range(n_blocks):
        sd[f"convs.{2 * b}.conv.blur.kernel"] = blur
        sd[f"to_rgbs.{b}.upsample.kernel"] = blur
    return sd


def export_generator(out_dir: str, config: GeneratorConfig, variables: dict, deltas: Sequence,
                     latent_avg=None, pt_path: Optional[str] = None) -> None:
    """Write one image's tuned generator θ·(1+D) as a converted `stylegan2` folder (what
    `checkpoints.load_generator` and `generate --checkpoint` read) and, with `pt_path`, as
    a rosinality checkpoint {'g_ema': state dict, 'latent_avg'} of plain tensors (needs
    torch). latent_avg: [D] or [n_latent, D] (HyperStyle's, rows equal) or None."""
    if tuple(config.blur_kernel) != (1, 3, 3, 1) and pt_path:
        raise ValueError("rosinality export supports the blur kernel (1, 3, 3, 1) only")
    tuned = tuned_generator(config, variables, deltas)
    tree = dict(tuned)
    avg = None
    if latent_avg is not None:
        avg = np.asarray(latent_avg, np.float32)
        if avg.ndim == 2 and np.all(avg == avg[:1]):
            avg = avg[0]
        tree["latent_avg"] = avg
    save_converted(out_dir, tree, config.to_dict(), kind=KIND_STYLEGAN2)
    if pt_path:
        import torch  # noqa: PLC0415  optional extra (the convert extra)

        obj = {"g_ema": {k: torch.from_numpy(np.array(v))
                         for k, v in rosinality_state_dict(tuned).items()}}
        if avg is not None:
            obj["latent_avg"] = torch.from_numpy(np.array(avg))
        os.makedirs(os.path.dirname(os.path.abspath(pt_path)), exist_ok=True)
        with atomic_write(pt_path, "wb") as f:
            torch.save(obj, f)


__all__ = ["RefineConfig", "batched_refiner", "compile_refiner", "refine", "objective",
           "loss_and_grad", "train_step", "run_steps", "evaluate", "init_state", "make_params",
           "tuned_layer_indices", "state_bytes", "tuned_generator", "rosinality_state_dict",
           "export_generator"]
