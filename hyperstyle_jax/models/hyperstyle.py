"""HyperStyle: W-encoder + frozen StyleGAN2 + iterative weight-offset hypernetwork.

The official flow (`models/hyperstyle.py` `HyperStyle.forward`, `utils/inference_utils.py`
`run_inversion`):
    codes = W-encoder(x) + latent_avg                     (one w repeated, never changes)
    y_0   = pool(G(codes))                                (fixed noise buffers)
    for t = 1..n:  Δ_t = hypernet(cat[x, y_{t-1}]);  D_t = D_{t-1} + Δ_t
                   y_t = pool(G(codes, weights_deltas=D_t))
`pool` is the feedback resize: the cars crop (rows [size/8, 7·size/8)) and then
`AdaptiveAvgPool2d(feedback_hw)` (256x256, or 192x256 for cars).

Everything here is a pure function of explicit variables:
    frozen     = {'generator': {'params', 'noises'}, 'w_encoder': {'params', 'batch_stats'},
                  'latent_avg': [n_styles, style_dim]}
    hyper_vars = {'params', 'batch_stats'} of the HyperNetwork.
`HyperStyle.invert` runs the whole n-iteration loop as one `lax.scan`;
`hyperstyle_jax.inference.load_inverter` turns converted folders into a batched, compiled,
device-parallel inverter.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from hyperstyle_jax.models.conv import compute_dtype
from hyperstyle_jax.models.hypernetwork import HyperNetConfig, HyperNetwork, feature_input_hw
from hyperstyle_jax.models.irse import WEncoder
from hyperstyle_jax.models.ops import KernelDelta
from hyperstyle_jax.models.pooling import adaptive_avg_pool2d
from hyperstyle_jax.models.stylegan2 import Generator, GeneratorConfig

Deltas = Sequence[Optional[jax.Array]]


@dataclasses.dataclass(frozen=True)
class HyperStyleConfig:
    """generator / hypernet: the two architectures; w_encoder: the `irse.WEncoder` config
    dict of a converted W-encoder folder (None when codes are supplied by the caller);
    feedback_hw: size of x and of the fed-back y_hat; cars_crop: the official cars band."""
    generator: GeneratorConfig
    hypernet: HyperNetConfig
    w_encoder: Optional[dict] = None
    feedback_hw: tuple = (256, 256)
    cars_crop: bool = False

    def __post_init__(self):
        object.__setattr__(self, "feedback_hw", tuple(int(v) for v in self.feedback_hw))
        if self.hypernet.n_outputs != self.generator.n_convs:
            raise ValueError(f"HyperStyleConfig: the hypernet predicts {self.hypernet.n_outputs} "
                             f"layers but the generator has {self.generator.n_convs}")


def default_feedback(hypernet: HyperNetConfig, opts: dict) -> tuple[tuple[int, int], bool]:
    """(feedback_hw, cars_crop) of an official checkpoint: cars datasets use 192x256 and the
    crop; otherwise the size whose hypernet features are `spatial` x `spatial` (256)."""
    if "feedback_hw" in opts:  # written by our trainer's export
        return tuple(int(v) for v in opts["feedback_hw"]), bool(opts.get("cars_crop", False))
    if "cars" in str(opts.get("dataset_type", "")):
        return (192, 256), True
    return tuple(feature_input_hw(hypernet)), False


class HyperStyle:
    """The model as pure functions over explicit variables (see the module docstring)."""

    def __init__(self, config: HyperStyleConfig, per_sample: str = "auto",
                 precision: str = "fp32"):
        """precision: 'fp32' or 'bf16' for the generator's and the hypernetwork's convs and
        large matmuls (bf16 operands, fp32 accumulation, fp32 demodulation and BatchNorm).
        The W-encoder runs once per image and stays fp32."""
        compute_dtype(precision)  # validates
        self.config = config
        self.precision = precision
        self.generator = Generator(config.generator, per_sample=per_sample, precision=precision)
        self.hypernet = HyperNetwork(config.hypernet, precision=precision)
        self.w_encoder = None
        if config.w_encoder is not None:
            self.w_encoder = WEncoder.from_config(config.w_encoder)

    # ---- pieces

    def crop(self, img: jax.Array) -> jax.Array:
        """The official cars crop at full resolution ([64:448] rows of 512); else identity."""
        if not self.config.cars_crop:
            return img
        s = img.shape[1]
        return img[:, s // 8: s - s // 8]

    def pool(self, img: jax.Array) -> jax.Array:
        """[B, H, W, 3] (already cropped) -> the feedback size [B, h, w, 3]."""
        return adaptive_avg_pool2d(img, self.config.feedback_hw)

    def render(self, gen_vars: dict, codes: jax.Array, deltas: Optional[Deltas]):
        """G(codes, deltas) with the fixed noise buffers -> (full cropped, pooled)."""
        img, _ = self.generator.apply(gen_vars, codes, input_space="w+", randomize_noise=False,
                                      weights_deltas=deltas)
        img = self.crop(img)
        return img, self.pool(img)

    def encode(self, frozen: dict, x: jax.Array) -> jax.Array:
        """x [B, h, w, 3] -> codes [B, n_styles, style_dim] (W-encoder in eval mode +
        latent_avg)."""
        if self.w_encoder is None:
            raise ValueError("HyperStyle: this model has no W-encoder; pass codes explicitly")
        w = self.w_encoder.apply(frozen["w_encoder"], x, False)
        return w + frozen["latent_avg"]

    def initial_inversion(self, frozen: dict, x: jax.Array, codes: Optional[jax.Array] = None):
        """-> (codes, y0_full, y0_pooled); `codes` skips the encoder when given."""
        if codes is None:
            codes = self.encode(frozen, x)
        y_full, y_pooled = self.render(frozen["generator"], codes, None)
        return codes, y_full, y_pooled

    def iteration(self, frozen: dict, hyper_vars: dict, x: jax.Array, y_hat: jax.Array,
                  codes: jax.Array, deltas: Optional[Deltas], train: bool = False):
        """One HyperStyle step -> (y_full, y_pooled, new_deltas, new_batch_stats).

        `deltas` None or a list with None at untuned layers; the new ones are their sum
        with this step's hypernet output, in the layout `deltas` has (official, or
        `KernelDelta`s as `invert` carries them). In train mode BatchNorm uses batch statistics
        and `new_batch_stats` holds the updated running statistics (else it is None).
        """
        inp = jnp.concatenate([x, y_hat.astype(x.dtype)], axis=-1)
        kernel = deltas is not None and any(isinstance(d, KernelDelta) for d in deltas)
        if train:
            out, upd = self.hypernet.apply(hyper_vars, inp, True, kernel,
                                           mutable=["batch_stats"])
            new_stats = upd["batch_stats"]
        else:
            out, new_stats = self.hypernet.apply(hyper_vars, inp, False, kernel), None
        new = accumulate(deltas, out)
        y_full, y_pooled = self.render(frozen["generator"], codes, new)
        return y_full, y_pooled, new, new_stats

    def invert(self, frozen: dict, hyper_vars: dict, x: jax.Array, n_iters: int,
               resize_outputs: bool = False, codes: Optional[jax.Array] = None,
               unroll: bool = False) -> dict:
        """The official `run_inversion` (eval mode) as one scan; jit it with n_iters static.

        Returns {'codes': [B, n_styles, D], 'init': y_0, 'images': [n_iters, B, H, W, 3]
        (full-resolution, or feedback-size with `resize_outputs`), 'pooled_final': y_n at
        the feedback size, 'deltas': the accumulated offsets (None at untuned layers)}.
        `unroll` compiles n copies of the body (faster on CPU, same numbers).
        """
        codes, y0_full, y0_pooled = self.initial_inversion(frozen, x, codes)

        def body(carry, _):
            y_hat, deltas = carry
            y_full, y_pooled, deltas, _ = self.iteration(frozen, hyper_vars, x, y_hat, codes,
                                                         deltas, train=False)
            return (y_pooled, deltas), (y_pooled if resize_outputs else y_full)

        # The offsets ride the loop in the kernel's layout (`KernelDelta`), the official one
        # comes back once at the end.
        zeros = to_kernel_layout(self.zero_deltas(x.shape[0], x.dtype))
        (y_last, deltas), images = jax.lax.scan(
            body, (y0_pooled, zeros), None, length=n_iters, unroll=n_iters if unroll else 1)
        deltas = [None if d is None else d.official() for d in deltas]
        return {"codes": codes, "init": y0_pooled if resize_outputs else y0_full,
                "images": images, "pooled_final": y_last, "deltas": deltas}

    def zero_deltas(self, batch: int, dtype=jnp.float32) -> list:
        """Zero offsets at the tuned layers (None elsewhere): a scan carry of fixed
        structure that starts like the official `None` (0 + Δ is exact)."""
        return [None if s is None else jnp.zeros((batch,) + s, dtype)
                for s in self.tuned_delta_shapes()]

    def init_hypernet(self, rng: jax.Array) -> dict:
        """Fresh hypernetwork variables {'params', 'batch_stats'} for feedback-size inputs."""
        c = self.config
        v = self.hypernet.init(rng, jnp.zeros((1, *c.feedback_hw, c.hypernet.input_nc)), False)
        return {"params": v["params"], "batch_stats": v.get("batch_stats", {})}

    def tuned_delta_shapes(self) -> list:
        """Per generator layer j: (out, in, k, k) if tuned, else None."""
        c = self.config.hypernet
        tuned = set(c.tuned_layers)
        return [c.delta_shape(j) if j in tuned else None for j in range(c.n_outputs)]


def to_kernel_layout(deltas: Deltas) -> list:
    """Official [B, out, in, k, k] offsets -> `KernelDelta`s (None stays None)."""
    return [None if d is None else KernelDelta.from_official(d) for d in deltas]


def accumulate(deltas: Optional[Deltas], new: Deltas) -> list:
    """Official accumulation: D + Δ per layer; None stays None; D None means 'first step'."""
    if deltas is None:
        return list(new)
    return [n if d is None else d if n is None else d + n for d, n in zip(deltas, new)]
