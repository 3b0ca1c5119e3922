"""The inference layer: converted folders -> compiled, batched, device-parallel functions.

    inv = load_inverter("ckpt/hyperstyle_ffhq", "ckpt/w_encoder_faces")
    run = inv.batched_inverter(batch_size=4, n_iters=5)       # compiled once
    out = run(x)            # x float32 [n, h, w, 3] in [-1, 1] -> dict of numpy
    render = inv.batched_renderer(batch_size=4)                # codes + deltas -> images
    img = render(out["codes"], out["deltas"])                  # [n, size, size, 3]
    for batch in invert_paths(inv, paths, n_iters=5, batch_size=4):   # files -> batches
        ...
    paths, stems = shard_inputs(paths)   # several processes: this one's block of the files
    write_run_codes(out, codes)          # latents.npz, merged from every process's part

The model (`models.hyperstyle.HyperStyle`) is pure; this layer owns the variables and every
compiled function. `compile_for_batch` is the one place that places arguments on the mesh
of `hyperstyle_jax.parallel`, compiles ahead of time for a fixed batch and pads a last
partial batch, so no call after the first retraces. The CLIs, editing and the page call it.
"""
from __future__ import annotations

import dataclasses
import functools
import sys
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hyperstyle_jax import align, inversion_files, parallel
from hyperstyle_jax.checkpoints import (
    CheckpointError,
    load_hyperstyle,
    load_restyle_e4e,
    load_w_encoder,
)
from hyperstyle_jax.models.conv import PRECISIONS, compute_dtype
from hyperstyle_jax.models.e4e import ReStyleConfig, ReStyleE4E, default_restyle_feedback
from hyperstyle_jax.models.hyperstyle import HyperStyle, HyperStyleConfig, default_feedback
from hyperstyle_jax.utils import cli, images
from hyperstyle_jax.utils.paths import unique_stems

# ----------------------------------------------------------------------------- compiling


def _is_none(x) -> bool:
    return x is None


def _map_axes(fn, axes, tree):
    """fn(leaf, axis) over `tree`, the axis taken from the prefix tree `axes` (None: no
    batch axis)."""
    return jax.tree_util.tree_map(lambda ax, sub: jax.tree_util.tree_map(
        lambda a: fn(a, ax), sub), axes, tree, is_leaf=_is_none)


def _first(a, n: int, axis: Optional[int]):
    return a if axis is None else a[(slice(None),) * axis + (slice(0, n),)]


class BatchedFunction:
    """`fn(*bound, *batched, *shared)` compiled ahead of time for batches of exactly
    `batch_size` on `parallel.local_mesh(batch_size, max_devices)`; see `compile_for_batch`.

    call(*batched, *shared): `batched` pytrees of arrays [n, ...] (numpy or jax) are padded
    to the batch and split over the mesh's `data` axis, `shared` ones replicated. With
    to_host, n may exceed the batch size (it goes in chunks) and the outputs come back as
    numpy with the padding removed along `out_axes`; without, one batch's outputs stay on
    the device as they are.
    """

    def __init__(self, fn: Callable, batch_size: int, bound: Sequence = (),
                 batched: Sequence = (), shared: Sequence = (), out_axes: Any = 0,
                 to_host: bool = True, max_devices: Optional[int] = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.out_axes, self.to_host = int(batch_size), out_axes, to_host
        mesh = parallel.local_mesh(self.batch_size, max_devices)
        self.replicated, self.sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
        self._bound = jax.device_put(tuple(bound), self.replicated)
        self._n_batched = len(batched)
        self._dtypes = [jax.tree_util.tree_map(lambda s: s.dtype, t) for t in batched]
        batched_specs = jax.tree_util.tree_map(
            lambda s: jax.ShapeDtypeStruct((self.batch_size,) + tuple(s.shape), s.dtype,
                                           sharding=self.sharded), tuple(batched))
        shared_specs = jax.tree_util.tree_map(
            lambda s: jax.ShapeDtypeStruct(tuple(s.shape), s.dtype, sharding=self.replicated),
            tuple(shared))
        n_bound = len(self._bound)
        shardings = ((self.replicated,) * n_bound + (self.sharded,) * len(batched)
                     + (self.replicated,) * len(shared))
        if mesh.devices.size > 1:  # samples are independent: each device runs its share
            fn = parallel.per_device(
                fn, mesh, tuple(s.spec for s in shardings),
                jax.tree_util.tree_map(parallel.batch_spec, out_axes, is_leaf=_is_none))
        self.compiled = jax.jit(fn, in_shardings=shardings).lower(
            *self._bound, *batched_specs, *shared_specs).compile()

    def _put_batched(self, a, dtype):
        if not isinstance(a, jax.Array):
            a = np.asarray(a, dtype)
        return jax.device_put(parallel.pad_batch(a, self.batch_size), self.sharded)

    def _one(self, batched, shared, n: int):
        xs = [jax.tree_util.tree_map(self._put_batched, t, d)
              for t, d in zip(batched, self._dtypes)]
        out = self.compiled(*self._bound, *xs, *jax.device_put(tuple(shared), self.replicated))
        if not self.to_host:
            return out
        return _map_axes(lambda a, ax: _first(np.asarray(a), n, ax), self.out_axes,
                         jax.device_get(out))

    def __call__(self, *args):
        batched, shared = args[:self._n_batched], args[self._n_batched:]
        leaves = jax.tree_util.tree_leaves(batched)
        n = leaves[0].shape[0] if leaves else self.batch_size
        b = self.batch_size
        if n <= b or not self.to_host:
            return self._one(batched, shared, n)
        chunks = [self._one(jax.tree_util.tree_map(lambda a, s=s: a[s:s + b], batched), shared,
                            min(b, n - s)) for s in range(0, n, b)]
        return jax.tree_util.tree_map(
            lambda ax, *subs: jax.tree_util.tree_map(
                lambda *xs: xs[0] if ax is None else np.concatenate(xs, axis=ax), *subs),
            self.out_axes, *chunks, is_leaf=_is_none)


def compile_for_batch(fn: Callable, batch_size: int, bound: Sequence = (),
                      batched: Sequence = (), shared: Sequence = (), out_axes: Any = 0,
                      to_host: bool = True, max_devices: Optional[int] = None
                      ) -> BatchedFunction:
    """Compile `fn(*bound, *batched, *shared)` for a fixed batch on the inference mesh.

    bound: values placed (replicated) once and passed to every call (frozen variables);
    batched: per argument, a pytree of `jax.ShapeDtypeStruct` for ONE example (no batch
    dim; None leaves allowed), split over the mesh; shared: full-shape specs of arguments
    given per call and replicated (e.g. one image's offsets for a batch of edits);
    out_axes: a prefix tree of the outputs giving each one's batch axis (None: none);
    max_devices: use at most this many of the process's devices (None: all that divide
    the batch).
    """
    return BatchedFunction(fn, batch_size, bound, batched, shared, out_axes, to_host,
                           max_devices)


def _f32(shape) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), jnp.float32)


# ----------------------------------------------------------------------------- HyperStyle


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

    def batched_inverter(self, batch_size: int, n_iters: int, resize_outputs: bool = False,
                         max_devices: Optional[int] = None):
        """Compile the inversion of fixed-size batches; returns numpy x [n, h, w, 3] ->
        {'codes', 'init', 'images' [n_iters, n, ...], 'pooled_final', 'deltas'} (numpy,
        padding removed; n > batch_size goes in chunks). `resize_outputs`: images at the
        feedback size; `max_devices`: see `compile_for_batch`."""
        h, w = self.input_hw
        fn = functools.partial(self.model.invert, n_iters=n_iters, resize_outputs=resize_outputs)
        return compile_for_batch(
            fn, batch_size, bound=(self.frozen, self.hyper_vars), batched=(_f32((h, w, 3)),),
            out_axes={"codes": 0, "init": 0, "images": 1, "pooled_final": 0, "deltas": 0},
            max_devices=max_devices)

    def batched_renderer(self, batch_size: int, crop: bool = False):
        """Compile G(codes, deltas) for fixed-size batches with the checkpoint's noise.

        Returns render(codes [n, n_styles, D], deltas: list (None at untuned layers) of
        [n, out, in, k, k]) -> numpy [n, size, size, 3] (un-clipped; the cars crop applied
        when `crop`). One compiled function serves every edit of that batch size.
        """
        return self._renderer(batch_size, crop=crop, shared_deltas=False)

    def shared_delta_renderer(self, batch_size: int):
        """Compile G(codes, deltas) for a batch of codes that share ONE image's deltas.

        The official editors render every edit of image i as one batch with the unbatched
        d[i] broadcast over it. A shared delta also lets the generator take its cheap
        shared-kernel path (one W·(1+Δ) per layer, no per-sample convolution).
        Returns render(codes [n, n_styles, D], deltas: list (None at untuned layers) of
        [out, in, k, k]) -> numpy [n, size, size, 3], un-clipped, uncropped.
        """
        return self._renderer(batch_size, crop=False, shared_deltas=True)

    def _renderer(self, batch_size: int, crop: bool, shared_deltas: bool):
        """The two renderers above: deltas per code ([n, out, in, k, k], batch-sharded and
        padded like the codes) or one set for the whole batch ([out, in, k, k], replicated)."""
        shapes = self.model.tuned_delta_shapes()

        def fn(frozen, codes, deltas):
            img, _ = self.model.generator.apply(frozen["generator"], codes, input_space="w+",
                                                randomize_noise=False, weights_deltas=deltas)
            return self.model.crop(img) if crop else img

        g = self.generator_config
        codes_spec = _f32((g.n_latent, g.style_dim))
        deltas_spec = [None if s is None else _f32(s) for s in shapes]
        if shared_deltas:
            compiled = compile_for_batch(fn, batch_size, bound=(self.frozen,),
                                         batched=(codes_spec,), shared=(deltas_spec,))
        else:
            compiled = compile_for_batch(fn, batch_size, bound=(self.frozen,),
                                         batched=(codes_spec, deltas_spec))

        def render(codes: np.ndarray, deltas: Sequence[Optional[np.ndarray]]) -> np.ndarray:
            n = codes.shape[0]
            lead = () if shared_deltas else (n,)  # the leading dims of one layer's deltas
            if len(deltas) != len(shapes):
                raise ValueError(f"deltas has {len(deltas)} entries, the generator has "
                                 f"{len(shapes)} layers")
            ds = []
            for j, (d, s) in enumerate(zip(deltas, shapes)):
                if s is None:
                    ds.append(None)
                    continue
                want = lead + s
                d = np.zeros(want, np.float32) if d is None else np.asarray(d, np.float32)
                if d.shape != want:
                    raise ValueError(f"deltas[{j}] has shape {d.shape}, expected {want}")
                ds.append(d)
            return compiled(np.asarray(codes, np.float32), ds)

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
    return make_inverter(config, frozen, tree["hypernet"], opts, per_sample, precision)


def make_inverter(config: HyperStyleConfig, frozen, hyper_vars, opts: Optional[dict] = None,
                  per_sample: str = "auto", precision: str = "fp32") -> Inverter:
    """The one place an `Inverter` gets its precision: the model's compute dtype and the
    hypernet's stored weights (`stored_for_precision`). The loaders and the benchmarks'
    random full-width models go through it."""
    return Inverter(HyperStyle(config, per_sample=per_sample, precision=precision), frozen,
                    stored_for_precision(hyper_vars, precision), dict(opts or {}))


PRECISION_HELP = ("bf16: the generator's and the hypernetwork's convs and large matmuls on "
                  "bf16 operands with fp32 accumulation; faster on CPUs with AVX-512 BF16 / "
                  "AMX and on GPUs, about 1%% mean relative image error vs fp32 "
                  "(docs/benchmarks.md)")


def add_precision_argument(parser, extra_help: str = "") -> None:
    """--precision for the commands that load an inverter (invert, edit, the page);
    the value goes to `load_inverter` / `load_renderer`."""
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help=PRECISION_HELP + extra_help)


def stored_for_precision(hyper_vars, precision: str):
    """bf16: the shared hypernet's w1/w2 (0.5 GB of the 1.3 GB) stored in bf16, the dtype
    its products read them in, so each call reads half the bytes and skips a cast pass.
    Returned as device arrays: host (numpy) arrays would be copied in on every call of a
    function that takes them (273 MB, +0.12 s per shared-hypernet call on CPU)."""
    if precision == "fp32":
        return hyper_vars
    dt = compute_dtype(precision)

    def cast(path, a):
        names = [getattr(k, "key", str(k)) for k in path]
        if len(names) >= 2 and names[-2] == "shared_weight_hypernet" and names[-1] in ("w1", "w2"):
            return jnp.asarray(np.asarray(a).astype(dt))
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
    return make_inverter(config, frozen, tree["hypernet"], opts, per_sample, precision)


# ----------------------------------------------------------------------------- ReStyle-e4e
# The W+ encoder of `models.e4e`, for domain adaptation (editing/domain.py).


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
        h, w = self.input_hw
        fn = functools.partial(self.model.invert, n_iters=n_iters, resize_outputs=resize_outputs)
        return compile_for_batch(
            fn, batch_size, bound=(self.variables,), batched=(_f32((h, w, 3)),),
            out_axes={"avg_image": None, "encoder_out": 1, "codes": 1, "images": 1,
                      "pooled": 1, "latent": 0})


def load_restyle(path: str, per_sample: str = "auto",
                 feedback_hw: Optional[Sequence[int]] = None) -> ReStyleRunner:
    """A converted `restyle_e4e` folder -> a `ReStyleRunner`.

    feedback_hw: override the input / feedback size (default: 256x256, 192x256 for cars,
    i.e. the size whose encoder features match its style heads).
    """
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


# ----------------------------------------------------------------------------- stepwise


@dataclasses.dataclass
class StepState:
    """One image between the steps of `StepwiseInverter` (device arrays, batch of 1)."""
    x: Any
    codes: Any
    y_full: Any
    y_pooled: Any
    deltas: Any

    def image(self) -> np.ndarray:
        """The latest reconstruction, numpy [1, H, W, 3]."""
        return np.asarray(jax.device_get(self.y_full))

    def result(self) -> tuple:
        """(codes [n_styles, D], per layer None or deltas [out, in, k, k]) as numpy."""
        codes, deltas = jax.device_get((self.codes, self.deltas))
        return (np.asarray(codes[0], np.float32),
                [None if d is None else np.asarray(d[0], np.float32) for d in deltas])


class StepwiseInverter:
    """`HyperStyle.invert` for one image as 1 + n compiled calls instead of one scan, so a
    caller (the page) can show each iteration as it comes: the same `initial_inversion` and
    `iteration` functions the scan body calls (tests check it gives the same numbers as
    `Inverter.batched_inverter`). Offsets stay on the device between steps."""

    def __init__(self, inverter: Inverter):
        model = inverter.model
        repl = parallel.replicated(parallel.local_mesh(1))
        frozen = jax.device_put(inverter.frozen, repl)  # placed once, bound by both calls
        h, w = inverter.input_hw
        x_spec = _f32((h, w, 3))
        self._init = compile_for_batch(model.initial_inversion, 1, bound=(frozen,),
                                       batched=(x_spec,), to_host=False)
        batch_spec = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
        codes_s, _, pooled_s = jax.eval_shape(model.initial_inversion, inverter.frozen,
                                              batch_spec)
        one = lambda s: _f32(s.shape[1:])  # noqa: E731  (the spec of one example)
        d_spec = [None if s is None else _f32(s) for s in model.tuned_delta_shapes()]

        def step(f, hv, x, y_hat, codes, deltas):
            y_full, y_pooled, new, _ = model.iteration(f, hv, x, y_hat, codes, deltas,
                                                       train=False)
            return y_full, y_pooled, new

        self._step = compile_for_batch(step, 1, bound=(frozen, inverter.hyper_vars),
                                       batched=(x_spec, one(pooled_s), one(codes_s), d_spec),
                                       to_host=False)
        self._zeros = lambda: jax.device_put(model.zero_deltas(1), self._step.sharded)  # noqa: E731

    def start(self, x: np.ndarray) -> StepState:
        """x float32 [1, h, w, 3] in [-1, 1] -> the W-encoder's inversion (step 0)."""
        xd = jax.device_put(np.asarray(x, np.float32), self._init.sharded)
        # Blocking here keeps the computation inside the caller's device lock (dispatch
        # is asynchronous).
        codes, y_full, y_pooled = jax.block_until_ready(self._init(xd))
        return StepState(xd, codes, y_full, y_pooled, self._zeros())

    def step(self, s: StepState) -> StepState:
        """One hypernetwork iteration."""
        y_full, y_pooled, deltas = jax.block_until_ready(
            self._step(s.x, s.y_pooled, s.codes, s.deltas))
        return StepState(s.x, s.codes, y_full, y_pooled, deltas)


# ----------------------------------------------------------------------------- image files


@dataclasses.dataclass
class InvertedBatch:
    """What `invert_paths` yields per batch: the files inverted (in input order; a file
    appears once per face with face='all'), their output stems, the inputs as the model
    saw them (uint8 [n, h, w, 3]), per image the `inversion_files.FaceOrigin` it was cut
    from (source path, photo name, `align.AlignedFace`; None without alignment: what a
    paste-back needs), the batched inverter's outputs for these n images, the files of
    this batch that were skipped [(path, one-line reason)] and the seconds on the device."""
    paths: list
    stems: list
    inputs: np.ndarray
    origins: list
    result: dict
    skipped: list
    seconds: float

    @property
    def faces(self) -> list:
        """Per image its `align.AlignedFace` (None without alignment)."""
        return [None if o is None else o.face for o in self.origins]

    def deltas(self, i: int) -> list:
        """Image i's final offsets: per layer None or [out, in, k, k]."""
        return [None if d is None else np.asarray(d[i]) for d in self.result["deltas"]]


def image_loader(align_faces: bool = False, face="largest", detector: str = "hog") -> tuple:
    """(path -> [(uint8 [H, W, 3], AlignedFace or None)], the errors that mean 'skip it').

    align_faces: the official FFHQ crop at 1024 (`hyperstyle_jax.align`) of the chosen
    face(s) (face: 'largest', 'last', 'all' or an index; detector 'hog' or 'cnn'); a file
    with no face is skipped like an unreadable one. Raises `align.AlignUnavailableError`
    (one line) when the align extra (or the detector's model) is missing."""
    if not align_faces:
        return (lambda path: [(images.read_image(path), None)]), (images.ImageReadError,)
    face = align.parse_face(face)
    align.require(detector)

    def load(path):
        return [(f.image, f) for f in align.align_faces(path, size=1024, face=face,
                                                        detector=detector)]

    return load, (images.ImageReadError, align.AlignError)


def read_batch(paths: Sequence[str], hw: tuple, load: Callable, errors: tuple) -> tuple:
    """Read (load: path -> [(uint8 [H, W, 3], face)]) and resize to hw -> (ok paths, uint8
    [hw..., 3] arrays, [(path, reason)] for files that raised one of `errors`, faces);
    a path is repeated in `ok` once per face."""
    ok, arrays, bad, faces = [], [], [], []
    for path in paths:
        try:
            loaded = load(path)
        except errors as e:
            bad.append((path, str(e)))
            continue
        for img, face in loaded:
            if img.shape[0] < hw[0] or img.shape[1] < hw[1]:
                print(f"warning: {path}: {img.shape[1]}x{img.shape[0]} is smaller than the "
                      f"model's {hw[1]}x{hw[0]} input; upscaled (expect a blurry result)",
                      file=sys.stderr)
            arrays.append(images.resize(img, hw))
            ok.append(path)
            faces.append(face)
    return ok, arrays, bad, faces


def shard_inputs(paths: Sequence[str]) -> tuple[list, list]:
    """(this process's block of `paths`, their output stems): the stems are made unique
    over the whole list first, so every process names a file as a one-process run does
    (`parallel.process_shard`; the whole list with one process)."""
    stems = unique_stems(paths)
    return parallel.process_shard(paths), parallel.process_shard(stems)


def write_run_codes(out: str, codes: dict) -> Optional[str]:
    """OUT/latents.npz of a run, {stem: codes} being this process's: with one process
    written directly (nothing when empty); with several, each writes its part file, waits
    for the others, process 0 merges them in process order (the input order, the blocks
    being contiguous) and removes them, and every process returns after the merge.
    Returns the path on the process that wrote it, else None."""
    index, count = jax.process_index(), jax.process_count()
    if count == 1:
        return inversion_files.write_codes(out, codes) if codes else None
    inversion_files.write_codes_part(out, codes, index, count)
    parallel.barrier("latents parts written")
    path = inversion_files.merge_codes(out, count) if index == 0 else None
    parallel.barrier("latents merged")  # any process's exit means latents.npz is there
    return path


def invert_paths(inverter: Inverter, paths: Sequence[str], n_iters: int, batch_size: int,
                 align_faces: bool = False, resize_outputs: bool = False,
                 skip_unreadable: bool = True, run: Optional[Callable] = None,
                 desc: str = "invert", face="largest", detector: str = "hog",
                 stems: Optional[Sequence[str]] = None) -> Iterator[InvertedBatch]:
    """Invert image files batch by batch: read (or align), resize to the model's input,
    invert; yields an `InvertedBatch` per batch, so the caller writes (or pastes back) each
    batch as it comes and memory does not grow with the number of files.

    Aligning, `face` chooses the face(s) ('largest' default; 'all': every face, stems
    `<stem>_face<k>` with k dlib's detection index, all sharing the photo name `<stem>`)
    and `detector` finds them ('hog' or 'cnn'). Files that cannot be read (or, aligning,
    hold no face) are named on stderr and in `skipped` (`skip_unreadable=False`: the error
    is raised instead). Progress goes to `utils.cli.progress_bar`. run: a compiled
    `inverter.batched_inverter(batch_size, n_iters, resize_outputs)` to reuse (compiled on
    the first batch otherwise; a batch of files holding more faces than batch_size runs in
    several calls). stems: the output stem of each path (default `unique_stems(paths)`;
    a process's share of a longer list passes the stems of `shard_inputs`).
    """
    load, errors = image_loader(align_faces, face, detector)
    every_face = align_faces and align.parse_face(face) == "all"
    if not skip_unreadable:
        errors = ()
    stems = dict(zip(paths, unique_stems(paths) if stems is None else stems))
    bar = cli.progress_bar(len(paths), desc=desc, unit="img")
    t_run, n_done = 0.0, 0
    try:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            ok, arrays, bad, faces = read_batch(chunk, inverter.input_hw, load, errors)
            for _, reason in bad:
                cli.write_line(bar, f"skipped: {reason}")
            bar.update(len(bad))
            if not ok:
                if bad:
                    yield InvertedBatch([], [], np.zeros((0,) + tuple(inverter.input_hw) + (3,),
                                                         np.uint8), [], {}, bad, 0.0)
                continue
            if run is None:
                run = inverter.batched_inverter(batch_size, n_iters, resize_outputs)
            x = np.stack(arrays)
            t0 = time.perf_counter()
            result = run(images.to_float(x))
            seconds = time.perf_counter() - t0
            t_run, n_done = t_run + seconds, n_done + len(ok)
            bar.update(len(chunk) - len(bad))
            bar.set_postfix_str(f"{n_done / t_run:.2f} img/s")
            out_stems = [f"{stems[p]}_face{f.index}" if every_face else stems[p]
                         for p, f in zip(ok, faces)]
            origins = [None if f is None else inversion_files.FaceOrigin(p, stems[p], f)
                       for p, f in zip(ok, faces)]
            yield InvertedBatch(ok, out_stems, x, origins, result, bad, seconds)
    finally:
        bar.close()
