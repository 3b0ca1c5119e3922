"""The inference layer: converted folders -> compiled, batched, device-parallel functions.

    inv = load_inverter("ckpt/hyperstyle_ffhq", "ckpt/w_encoder_faces")
    run = inv.batched_inverter(batch_size=4, n_iters=5)       # compiled once
    out = run(x)            # x float32 [n <= 4, h, w, 3] in [-1, 1] -> dict of numpy
    render = inv.batched_renderer(batch_size=4)                # codes + deltas -> images
    img = render(out["codes"], out["deltas"])                  # [n, size, size, 3]

The model (`models.hyperstyle.HyperStyle`) is pure; this layer owns the variables, places
them on the mesh of `hyperstyle_jax.parallel`, pads a last partial batch and compiles
ahead of time, so no call after the first retraces. Editing, the page and the CLIs call it.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hyperstyle_jax import parallel
from hyperstyle_jax.checkpoints import CheckpointError, load_hyperstyle, load_w_encoder
from hyperstyle_jax.models.conv import compute_dtype
from hyperstyle_jax.models.hyperstyle import HyperStyle, HyperStyleConfig, default_feedback


@dataclasses.dataclass
class Inverter:
    """A converted HyperStyle + W-encoder, ready to invert batches of images."""
    model: HyperStyle
    frozen: Any
    hyper_vars: Any
    opts: dict

    @property
    def input_hw(self) -> tuple[int, int]:
        """Size of the images the model takes (and of the fed-back reconstructions)."""
        return self.model.config.feedback_hw

    @property
    def generator_config(self):
        return self.model.config.generator

    def _placed(self, batch_size: int):
        mesh = parallel.local_mesh(batch_size)
        repl, batch = parallel.replicated(mesh), parallel.batch_sharded(mesh)
        return repl, batch, jax.device_put(self.frozen, repl)

    def batched_inverter(self, batch_size: int, n_iters: int, resize_outputs: bool = False):
        """Compile the inversion of fixed-size batches; returns numpy x [n <= batch_size,
        h, w, 3] -> {'codes', 'init', 'images' [n_iters, n, ...], 'pooled_final', 'deltas'}
        (numpy, padding removed). `resize_outputs`: images at the feedback size."""
        repl, batch, frozen = self._placed(batch_size)
        hyper = jax.device_put(self.hyper_vars, repl)
        fn = jax.jit(functools.partial(self.model.invert, n_iters=n_iters,
                                       resize_outputs=resize_outputs),
                     in_shardings=(repl, repl, batch))
        h, w = self.input_hw
        x_spec = jax.ShapeDtypeStruct((batch_size, h, w, 3), jnp.float32, sharding=batch)
        compiled = fn.lower(frozen, hyper, x_spec).compile()

        def run(x: np.ndarray) -> dict:
            n = x.shape[0]
            xb = jax.device_put(parallel.pad_batch(x.astype(np.float32), batch_size), batch)
            out = jax.device_get(compiled(frozen, hyper, xb))
            return {"codes": out["codes"][:n], "init": out["init"][:n],
                    "images": out["images"][:, :n], "pooled_final": out["pooled_final"][:n],
                    "deltas": [None if d is None else d[:n] for d in out["deltas"]]}

        return run

    def batched_renderer(self, batch_size: int, crop: bool = False):
        """Compile G(codes, deltas) for fixed-size batches with the checkpoint's noise.

        Returns render(codes [n, n_styles, D], deltas: list (None at untuned layers) of
        [n, out, in, k, k]) -> numpy [n, size, size, 3] (un-clipped; the cars crop applied
        when `crop`). One compiled function serves every edit of that batch size.
        """
        return self._renderer(batch_size, crop=crop, shared_deltas=False)

    # ---- editing support (issue 11: hyperstyle_jax/editing, hyperstyle_jax/edit.py)

    def shared_delta_renderer(self, batch_size: int):
        """Compile G(codes, deltas) for a batch of codes that share ONE image's deltas.

        The official editors render every edit of image i as one batch with the unbatched
        d[i] broadcast over it. A shared delta also lets the generator take its cheap
        shared-kernel path (one W·(1+Δ) per layer, no per-sample convolution).
        Returns render(codes [n <= batch_size, n_styles, D], deltas: list (None at untuned
        layers) of [out, in, k, k]) -> numpy [n, size, size, 3], un-clipped, uncropped.
        """
        return self._renderer(batch_size, crop=False, shared_deltas=True)

    def _renderer(self, batch_size: int, crop: bool, shared_deltas: bool):
        """The two renderers above: deltas per code ([n, out, in, k, k], batch-sharded and
        padded like the codes) or one set for the whole batch ([out, in, k, k], replicated)."""
        repl, batch, frozen = self._placed(batch_size)
        shapes = self.model.tuned_delta_shapes()
        d_sharding = repl if shared_deltas else batch

        def fn(frozen, codes, deltas):
            img, _ = self.model.generator.apply(frozen["generator"], codes, input_space="w+",
                                                randomize_noise=False, weights_deltas=deltas)
            return self.model.crop(img) if crop else img

        def lead(n):  # the leading dims of one layer's deltas
            return () if shared_deltas else (n,)

        g = self.generator_config
        specs = (jax.ShapeDtypeStruct((batch_size, g.n_latent, g.style_dim), jnp.float32,
                                      sharding=batch),
                 [None if s is None else jax.ShapeDtypeStruct(lead(batch_size) + s, jnp.float32,
                                                              sharding=d_sharding)
                  for s in shapes])
        compiled = jax.jit(fn, in_shardings=(repl, batch, d_sharding)).lower(
            frozen, *specs).compile()

        def render(codes: np.ndarray, deltas: Sequence[Optional[np.ndarray]]) -> np.ndarray:
            n = codes.shape[0]
            if len(deltas) != len(shapes):
                raise ValueError(f"deltas has {len(deltas)} entries, the generator has "
                                 f"{len(shapes)} layers")
            ds = []
            for j, (d, s) in enumerate(zip(deltas, shapes)):
                if s is None:
                    ds.append(None)
                    continue
                want = lead(n) + s
                d = np.zeros(want, np.float32) if d is None else np.asarray(d, np.float32)
                if d.shape != want:
                    raise ValueError(f"deltas[{j}] has shape {d.shape}, expected {want}")
                ds.append(jax.device_put(d if shared_deltas else
                                         parallel.pad_batch(d, batch_size), d_sharding))
            c = jax.device_put(parallel.pad_batch(np.asarray(codes, np.float32), batch_size), batch)
            return np.asarray(jax.device_get(compiled(frozen, c, ds)))[:n]

        return render


def load_renderer(checkpoint: str, per_sample: str = "auto", precision: str = "fp32") -> Inverter:
    """A converted `hyperstyle` folder alone -> an `Inverter` that can render but not
    invert (no W-encoder): for editing saved inversions (codes + deltas).
    precision: 'fp32' or 'bf16' (see `load_inverter`)."""
    cfgs, tree = load_hyperstyle(checkpoint)
    gen, hyper, opts = cfgs["generator"], cfgs["hypernet"], cfgs.get("opts", {})
    fb, crop = default_feedback(hyper, opts)
    config = HyperStyleConfig(generator=gen, hypernet=hyper, w_encoder=None, feedback_hw=fb,
                              cars_crop=crop)
    frozen = {"generator": tree["generator"],
              "latent_avg": np.asarray(tree["latent_avg"], np.float32)}
    return Inverter(HyperStyle(config, per_sample=per_sample, precision=precision), frozen,
                    stored_for_precision(tree["hypernet"], precision), opts)


def stored_for_precision(hyper_vars, precision: str):
    """bf16: the shared hypernet's w1/w2 (0.5 GB of the 1.3 GB) stored in bf16, the dtype
    its products read them in, so each call reads half the bytes and skips a cast pass."""
    if precision == "fp32":
        return hyper_vars
    dt = compute_dtype(precision)

    def cast(path, a):
        names = [getattr(k, "key", str(k)) for k in path]
        if len(names) >= 2 and names[-2] == "shared_weight_hypernet" and names[-1] in ("w1", "w2"):
            return np.asarray(a).astype(dt)
        return a
    return jax.tree_util.tree_map_with_path(cast, hyper_vars)


def load_inverter(checkpoint: str, w_encoder: str, per_sample: str = "auto",
                  feedback_hw: Optional[Sequence[int]] = None,
                  precision: str = "fp32") -> Inverter:
    """Two converted folders (`hyperstyle`, `w_encoder`) -> an `Inverter`.

    feedback_hw: override the feedback size (default: from the checkpoint's opts).
    precision: 'fp32' (default; the parity-tested numbers) or 'bf16': the generator's and
    the hypernetwork's convs and large matmuls on bf16 operands with fp32 accumulation
    (demodulation, BatchNorm and the W-encoder stay fp32); faster on CPUs with AVX-512
    BF16 / AMX and on accelerators, within ~1% of fp32 (docs/benchmarks.md).
    """
    cfgs, tree = load_hyperstyle(checkpoint)
    wcfg, wvars = load_w_encoder(w_encoder)
    gen, hyper, opts = cfgs["generator"], cfgs["hypernet"], cfgs.get("opts", {})
    if (wcfg["n_styles"], wcfg["style_dim"]) != (gen.n_latent, gen.style_dim):
        raise CheckpointError(
            f"{w_encoder}: the W-encoder gives {wcfg['n_styles']} x {wcfg['style_dim']} codes, "
            f"but the generator in {checkpoint} needs {gen.n_latent} x {gen.style_dim}")
    fb, crop = default_feedback(hyper, opts)
    if feedback_hw is not None:
        fb = tuple(int(v) for v in feedback_hw)
    config = HyperStyleConfig(generator=gen, hypernet=hyper, w_encoder=wcfg, feedback_hw=fb,
                              cars_crop=crop)
    frozen = {"generator": tree["generator"], "w_encoder": wvars,
              "latent_avg": np.asarray(tree["latent_avg"], np.float32)}
    return Inverter(HyperStyle(config, per_sample=per_sample, precision=precision), frozen,
                    stored_for_precision(tree["hypernet"], precision), opts)


# ----------------------------------------------------------------------------- ReStyle-e4e
# (issue 14: domain adaptation; the W+ encoder of `models.e4e`, see editing/domain.py)


@dataclasses.dataclass
class ReStyleRunner:
    """A converted ReStyle-e4e (encoder + its own decoder + latent_avg), ready to run."""
    model: Any          # models.e4e.ReStyleE4E
    variables: Any      # {'encoder', 'generator', 'latent_avg'}
    opts: dict

    @property
    def input_hw(self) -> tuple[int, int]:
        """Size of the images the encoder takes (and of the fed-back reconstructions)."""
        return self.model.config.feedback_hw

    @property
    def generator_config(self):
        """The ReStyle checkpoint's own decoder (what the iterations render with)."""
        return self.model.config.generator

    def batched_runner(self, batch_size: int, n_iters: int, resize_outputs: bool = False):
        """Compile `run_on_batch` for fixed-size batches; returns numpy x [n <= batch_size,
        h, w, 3] -> {'avg_image' [h, w, 3], 'encoder_out', 'codes' [n_iters, n, n_styles, D],
        'images' [n_iters, n, H, W, 3], 'pooled' [n_iters, n, h, w, 3], 'latent'
        [n, n_styles, D] (the final W+ codes)} (padding removed)."""
        mesh = parallel.local_mesh(batch_size)
        repl, batch = parallel.replicated(mesh), parallel.batch_sharded(mesh)
        variables = jax.device_put(self.variables, repl)
        fn = jax.jit(functools.partial(self.model.invert, n_iters=n_iters,
                                       resize_outputs=resize_outputs),
                     in_shardings=(repl, batch))
        h, w = self.input_hw
        x_spec = jax.ShapeDtypeStruct((batch_size, h, w, 3), jnp.float32, sharding=batch)
        compiled = fn.lower(variables, x_spec).compile()

        def run(x: np.ndarray) -> dict:
            n = x.shape[0]
            xb = jax.device_put(parallel.pad_batch(np.asarray(x, np.float32), batch_size), batch)
            out = jax.device_get(compiled(variables, xb))
            return {"avg_image": out["avg_image"], "encoder_out": out["encoder_out"][:, :n],
                    "codes": out["codes"][:, :n], "images": out["images"][:, :n],
                    "pooled": out["pooled"][:, :n], "latent": out["latent"][:n]}

        return run


def load_restyle(path: str, per_sample: str = "auto",
                 feedback_hw: Optional[Sequence[int]] = None) -> ReStyleRunner:
    """A converted `restyle_e4e` folder -> a `ReStyleRunner`.

    feedback_hw: override the input / feedback size (default: 256x256, 192x256 for cars,
    i.e. the size whose encoder features match its style heads).
    """
    from hyperstyle_jax.checkpoints import load_restyle_e4e
    from hyperstyle_jax.models.e4e import ReStyleConfig, ReStyleE4E, default_restyle_feedback

    cfgs, tree = load_restyle_e4e(path)
    fb, crop = default_restyle_feedback(cfgs["encoder"], cfgs["opts"])
    if feedback_hw is not None:
        fb = tuple(int(v) for v in feedback_hw)
    try:
        config = ReStyleConfig(encoder=cfgs["encoder"], generator=cfgs["generator"],
                               feedback_hw=fb, cars_crop=crop)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    variables = {"encoder": tree["encoder"], "generator": tree["generator"],
                 "latent_avg": np.asarray(tree["latent_avg"], np.float32)}
    return ReStyleRunner(ReStyleE4E(config, per_sample=per_sample), variables, cfgs["opts"])
