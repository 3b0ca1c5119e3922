"""ReStyle-e4e: the W+ encoder HyperStyle uses for domain adaptation (official
`scripts/run_domain_adaptation.py`).

Official code: HyperStyle `models/encoders/restyle_e4e_encoders.py`
(`ProgressiveBackboneEncoder`, `GradualStyleBlock`), `models/encoders/e4e.py` (`e4e.forward`)
and `utils/restyle_inference_utils.py` (`get_average_image`, `run_on_batch`). Names mirror
the official `encoder.*` state dict: `input_layer_0/1/2`, `body_N` (IR-SE units of
`irse.py`), `styles_i/convs_{0,2,4,6}`, `styles_i/linear`. Activations are NHWC.

Public API
----------
* `GradualStyleBlock(in_c, out_c, spatial)`: log2(spatial) x [conv3x3 s2 p1 + LeakyReLU(0.01)]
  down to 1x1, then `EqualLinear(out_c, out_c)`. [B, spatial, spatial, in_c] -> [B, out_c].
* `ProgressiveBackboneEncoder(n_styles, style_dim, units, input_width, input_nc, mode,
  spatial, progressive_stage)`: x [B, H, W, input_nc] -> [B, n_styles, style_dim] with
  row 0 = w0 and row i = w0 + delta_i for i <= progressive_stage (all at inference).
  `from_config(dict)` builds it from a converted folder's `encoder` config.
* `init_shapes(config)`: `jax.eval_shape` of its init ({'params', 'batch_stats'}).
* `ReStyleE4E(encoder_config, generator_config, feedback_hw, cars_crop)`: the iterative
  inference as pure functions over explicit variables
  `{'encoder': {...}, 'generator': {'params', 'noises'}, 'latent_avg': [n_styles, D]}`;
  `invert(variables, x, n_iters)` is one `lax.scan` (jit it with n_iters static).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperstyle_jax.models.irse import (
    Unit,
    build_input_and_body,
    get_blocks,
    input_and_body_forward,
)
from hyperstyle_jax.models.layers import check_1x1, conv2d, leaky_relu
from hyperstyle_jax.models.ops import EqualLinear
from hyperstyle_jax.models.pooling import adaptive_avg_pool2d
from hyperstyle_jax.models.stylegan2 import Generator, GeneratorConfig

# Official `ProgressiveStage.Inference`: every delta head is active.
PROGRESSIVE_STAGE_INFERENCE = 18


class GradualStyleBlock(nn.Module):
    """Official `GradualStyleBlock(in_c, out_c, spatial)`; `convs.{0,2,4,…}` are the convs
    (odd Sequential indices are the LeakyReLUs), `linear` is `EqualLinear(out_c, out_c)`."""
    in_c: int
    out_c: int
    spatial: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n = int(math.log2(self.spatial))
        for i in range(n):
            x = leaky_relu(conv2d(self.out_c, 3, 2, 1, name=f"convs_{2 * i}")(x))
        check_1x1(x, f"GradualStyleBlock({self.in_c}, {self.out_c}, {self.spatial})")
        return EqualLinear(self.out_c, self.out_c, name="linear")(x.reshape(x.shape[0], self.out_c))


class ProgressiveBackboneEncoder(nn.Module):
    """ReStyle-e4e encoder (official `ProgressiveBackboneEncoder(50, 'ir_se', n_styles, opts)`).

    input_layer (conv3x3 input_nc -> input_width, BN, PReLU) -> IR-SE body -> n_styles heads
    `GradualStyleBlock(depth, style_dim, spatial)`, all on the same final feature map (there
    is no feature pyramid here). `progressive_stage` (official enum value, 18 = Inference)
    limits how many delta heads are added; the official checkpoints run at Inference.
    """
    n_styles: int
    style_dim: int = 512
    units: Tuple[Unit, ...] = get_blocks(50)
    input_width: int = 64
    input_nc: int = 6
    mode: str = "ir_se"
    spatial: int = 16
    progressive_stage: int = PROGRESSIVE_STAGE_INFERENCE

    def setup(self):
        (self.input_layer_0, self.input_layer_1, self.input_layer_2,
         self.body) = build_input_and_body(self.units, self.input_width, self.mode)
        depth = self.units[-1][1] if self.units else self.input_width
        self.styles = [GradualStyleBlock(depth, self.style_dim, self.spatial)
                       for _ in range(self.n_styles)]

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.input_nc:
            raise ValueError(f"ProgressiveBackboneEncoder: expected [B, H, W, {self.input_nc}] "
                             f"(NHWC, cat[x, y_hat]), got {x.shape}")
        f = input_and_body_forward(self, x, train)
        w0 = self.styles[0](f)
        rows = [w0]
        for i in range(1, self.n_styles):
            active = i <= self.progressive_stage
            if active or self.is_initializing():  # every head gets parameters at init
                d = self.styles[i](f)
            rows.append(w0 + d if active else w0)
        return jnp.stack(rows, axis=1)

    @property
    def input_hw(self) -> Tuple[int, int]:
        """Input size whose body features are spatial x spatial (256 for the official model)."""
        s = self.spatial * 2 ** sum(1 for u in self.units if u[2] == 2)
        return (s, s)

    @classmethod
    def from_config(cls, config: dict) -> "ProgressiveBackboneEncoder":
        """The module described by a converted `restyle_e4e` folder's `encoder` config."""
        return cls(n_styles=int(config["n_styles"]), style_dim=int(config["style_dim"]),
                   units=tuple(tuple(int(v) for v in u) for u in config["units"]),
                   input_width=int(config["input_width"]), input_nc=int(config["input_nc"]),
                   mode=config.get("mode", "ir_se"), spatial=int(config["spatial"]),
                   progressive_stage=int(config.get("progressive_stage",
                                                    PROGRESSIVE_STAGE_INFERENCE)))


def init_shapes(config: dict) -> dict:
    """`jax.eval_shape` of `ProgressiveBackboneEncoder.from_config(config).init`."""
    model = ProgressiveBackboneEncoder.from_config(config)
    h, w = model.input_hw
    x = jax.ShapeDtypeStruct((1, h, w, model.input_nc), jnp.float32)
    return jax.eval_shape(lambda k, v: model.init(k, v), jax.random.key(0), x)


# ----------------------------------------------------------------------------- inference


@dataclasses.dataclass(frozen=True)
class ReStyleConfig:
    """encoder: the `ProgressiveBackboneEncoder` config dict; generator: the ReStyle
    checkpoint's own decoder; feedback_hw: size of x and of the fed-back y_hat (official
    `face_pool` 256, or 192x256 for cars); cars_crop: the official cars band."""
    encoder: dict
    generator: GeneratorConfig
    feedback_hw: tuple = (256, 256)
    cars_crop: bool = False

    def __post_init__(self):
        object.__setattr__(self, "feedback_hw", tuple(int(v) for v in self.feedback_hw))
        n, d = int(self.encoder["n_styles"]), int(self.encoder["style_dim"])
        if (n, d) != (self.generator.n_latent, self.generator.style_dim):
            raise ValueError(f"ReStyleConfig: the encoder gives {n} x {d} codes but the "
                             f"{self.generator.size}px decoder needs "
                             f"{self.generator.n_latent} x {self.generator.style_dim}")


class ReStyleE4E:
    """The official ReStyle-e4e inference (`run_on_batch`) as pure functions.

        y_avg = crop(face_pool(G(latent_avg)))                      (fixed noise buffers)
        t = 0:  w_0 = E(cat[x, y_avg]) + latent_avg
        t >= 1: w_t = E(cat[x, pool(crop(G(w_{t-1})))]) + w_{t-1}
    `face_pool` pools to (W, W) with W = feedback width (256); cars then keep rows
    [W/8, 7W/8) (32:224). The per-iteration render is cropped at full resolution
    ([size/8, 7 size/8): 64:448 of 512) and pooled to feedback_hw (192x256 for cars).
    """

    def __init__(self, config: ReStyleConfig, per_sample: str = "auto"):
        self.config = config
        self.encoder = ProgressiveBackboneEncoder.from_config(config.encoder)
        self.generator = Generator(config.generator, per_sample=per_sample)

    def crop(self, img: jax.Array) -> jax.Array:
        """Cars band rows [H/8, 7H/8) at any resolution; identity otherwise."""
        if not self.config.cars_crop:
            return img
        s = img.shape[1]
        return img[:, s // 8: s - s // 8]

    def render(self, gen_vars: dict, codes: jax.Array) -> jax.Array:
        """G(codes) with the checkpoint's noise buffers, no weight offsets: [B, size, size, 3]."""
        img, _ = self.generator.apply(gen_vars, codes, input_space="w+", randomize_noise=False)
        return img

    def average_image(self, variables: dict) -> jax.Array:
        """Official `get_average_image`: [h, w, 3] at the feedback size (cars: cropped)."""
        img = self.render(variables["generator"], variables["latent_avg"][None].astype(jnp.float32))
        w = self.config.feedback_hw[1]
        return self.crop(adaptive_avg_pool2d(img, (w, w)))[0]

    def step(self, variables: dict, x: jax.Array, y_hat: jax.Array, latent: jax.Array):
        """One iteration: -> (encoder output, new latent, y_full (cropped), y_pooled)."""
        inp = jnp.concatenate([x, y_hat.astype(x.dtype)], axis=-1)
        out = self.encoder.apply(variables["encoder"], inp, False)
        codes = out + latent
        y_full = self.crop(self.render(variables["generator"], codes))
        return out, codes, y_full, adaptive_avg_pool2d(y_full, self.config.feedback_hw)

    def invert(self, variables: dict, x: jax.Array, n_iters: int,
               resize_outputs: bool = False) -> dict:
        """`run_on_batch` for x [B, h, w, 3] (feedback size) as one scan.

        Returns {'avg_image' [h, w, 3], 'encoder_out' / 'codes' [n_iters, B, n_styles, D],
        'images' [n_iters, B, H, W, 3] (full resolution, or the feedback size with
        `resize_outputs`), 'pooled' [n_iters, B, h, w, 3] (what is fed back), 'latent'
        (the final codes, the W+ latents the official code returns)}.
        """
        if n_iters < 1:
            raise ValueError(f"ReStyleE4E.invert: n_iters must be >= 1, got {n_iters}")
        avg = self.average_image(variables)
        b = x.shape[0]
        y0 = jnp.broadcast_to(avg[None], (b,) + avg.shape).astype(x.dtype)
        lat0 = jnp.broadcast_to(variables["latent_avg"][None],
                                (b,) + variables["latent_avg"].shape).astype(x.dtype)

        def body(carry, _):
            y_hat, latent = carry
            out, codes, y_full, y_pooled = self.step(variables, x, y_hat, latent)
            return (y_pooled, codes), (out, codes, y_pooled if resize_outputs else y_full,
                                       y_pooled)

        (_, latent), (outs, codes, images, pooled) = jax.lax.scan(body, (y0, lat0), None,
                                                                  length=n_iters)
        return {"avg_image": avg, "encoder_out": outs, "codes": codes, "images": images,
                "pooled": pooled, "latent": latent}


def default_restyle_feedback(encoder_config: dict, opts: Optional[dict] = None
                             ) -> tuple[tuple[int, int], bool]:
    """(feedback_hw, cars_crop) of an official ReStyle checkpoint: cars datasets use 192x256
    and the crop; otherwise the input size whose body features match the heads (256)."""
    if "cars" in str((opts or {}).get("dataset_type", "")):
        return (192, 256), True
    return ProgressiveBackboneEncoder.from_config(encoder_config).input_hw, False
