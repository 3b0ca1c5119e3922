"""HyperStyle's hypernetwork: backbone features -> one weight offset per tuned generator layer.

Official: `models/hypernetworks/hypernetwork.py` `SharedWeightsHyperNetResNet` and
`SharedWeightsHyperNetResNetSeparable`, with `refinement_blocks.py` and
`shared_weights_hypernet.py` beside it.

    HyperNetwork(config).apply(variables, x, train)   # x: [B, H, W, 6] = cat[x, y_hat]
      -> list of length config.n_outputs: Δ_j [B, out, in, k, k] for tuned layers, else None

Parameter names are the official ones at the top level: `conv1`, `bn1`, `relu`, `body_N`,
`shared_weight_hypernet` (ONE set of w1/b1/w2/b2, used by every shared block; the official
state dict repeats it under each `refinement_blocks.{j}.hypernet`), `refinement_blocks_{j}`.
The shared layers' codes go through the shared hypernet in one batched matmul with `w2`.
`train=True` uses batch statistics in the BatchNorms and updates `'batch_stats'` (pass
`mutable=['batch_stats']`), as the official Coach leaves the hypernet in train mode.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperstyle_jax.models.ops import KernelDelta
from hyperstyle_jax.models.refinement import (
    HyperRefinementBlock,
    RefinementBlock,
    RefinementBlockSeparable,
    SharedWeightsHypernet,
)
from hyperstyle_jax.models.resnet import RESNET34_STAGES, build_stem_and_body, stem_and_body_forward

DEFAULT_LAYERS_TO_TUNE = "0,2,3,5,6,8,9,11,12,14,15,17,18,20,21,23,24"
SHARED_LAYERS = (0, 2, 3, 5, 6, 8, 9, 11, 12)
ENCODER_TYPES = ("SharedWeightsHyperNetResNet", "SharedWeightsHyperNetResNetSeparable")


def is_to_rgb(j: int) -> bool:
    """Official `TO_RGB_LAYERS = [1, 4, 7, …, 25]`: layer j is a toRGB conv iff j % 3 == 1."""
    return j % 3 == 1


def parse_layers_to_tune(spec: str, n_outputs: int) -> Tuple[int, ...]:
    """Official parsing: '' -> all layers; else comma-separated ints; indices >= n_outputs are
    ignored (so the default string serves 1024, 512 and 256 generators)."""
    if not isinstance(spec, str):
        raise ValueError(f"layers_to_tune must be a string like '0,2,3', got {spec!r}")
    if spec.strip() == "":
        return tuple(range(n_outputs))
    try:
        idx = [int(s) for s in spec.split(",")]
    except ValueError:
        raise ValueError(f"layers_to_tune {spec!r}: expected comma-separated layer indices, "
                         f"e.g. '0,2,3,5'") from None
    bad = [i for i in idx if i < 0]
    if bad:
        raise ValueError(f"layers_to_tune {spec!r}: negative layer indices {bad}")
    return tuple(sorted({i for i in idx if i < n_outputs}))


@dataclasses.dataclass(frozen=True)
class HyperNetConfig:
    """Architecture of the hypernetwork (what config.json stores under 'hypernet').

    layer_params: official `PARAMETERS` rows (k, in, out) per generator layer j, i.e.
      `GeneratorConfig.delta_shapes()` reordered; its length is `n_outputs` (26 at 1024).
    stages: (planes, blocks, stride) per ResNet stage of the body (resnet34 by default).
    hypernet_*: `SharedWeightsHypernet(f_size, z_dim, out_size, in_size)`; z_dim is also the
      HyperRefinementBlock's out_c (its EqualLinear is z_dim -> z_dim).
    hyper_block_inner_c: HyperRefinementBlock inner_c (128); refine_block_inner_c / _out_c:
      RefinementBlock(Separable) inner_c / out_c (256 / 512). spatial: feature size (16).
    """
    layer_params: Tuple[Tuple[int, int, int], ...]
    encoder_type: str = ENCODER_TYPES[0]
    layers_to_tune: str = DEFAULT_LAYERS_TO_TUNE
    input_nc: int = 6
    stem_width: int = 64
    stages: Tuple[Tuple[int, int, int], ...] = RESNET34_STAGES
    hypernet_f_size: int = 3
    hypernet_z_dim: int = 512
    hypernet_out_size: int = 512
    hypernet_in_size: int = 512
    hyper_block_inner_c: int = 128
    refine_block_inner_c: int = 256
    refine_block_out_c: int = 512
    spatial: int = 16

    def __post_init__(self):
        object.__setattr__(self, "layer_params",
                           tuple(tuple(int(v) for v in p) for p in self.layer_params))
        object.__setattr__(self, "stages", tuple(tuple(int(v) for v in s) for s in self.stages))
        if self.encoder_type not in ENCODER_TYPES:
            raise ValueError(f"HyperNetConfig: encoder_type {self.encoder_type!r} is not one of "
                             f"{ENCODER_TYPES}")
        if not self.layer_params or any(len(p) != 3 for p in self.layer_params):
            raise ValueError(f"HyperNetConfig: layer_params must be (k, in, out) rows, got "
                             f"{self.layer_params!r}")
        if any(len(s) != 3 for s in self.stages):
            raise ValueError(f"HyperNetConfig: stages must be (planes, blocks, stride) rows, got "
                             f"{self.stages!r}")
        tuned = parse_layers_to_tune(self.layers_to_tune, self.n_outputs)
        want = (self.hypernet_f_size, self.hypernet_in_size, self.hypernet_out_size)
        for j in tuned:
            if j in SHARED_LAYERS and self.layer_params[j] != want:
                raise ValueError(
                    f"HyperNetConfig: layer {j} has (k, in, out) = {self.layer_params[j]} but the "
                    f"shared hypernet predicts (f_size, in_size, out_size) = {want}")

    @classmethod
    def for_generator(cls, generator_config, **kw) -> "HyperNetConfig":
        """Config whose `layer_params` follow a `GeneratorConfig` (its `delta_shapes()`)."""
        rows = tuple((k, i, o) for (o, i, k, _) in generator_config.delta_shapes())
        return cls(layer_params=rows, **kw)

    @property
    def n_outputs(self) -> int:
        """Official `n_hypernet_outputs` = generator convs + toRGBs (26 / 23 / 20)."""
        return len(self.layer_params)

    @property
    def tuned_layers(self) -> Tuple[int, ...]:
        return parse_layers_to_tune(self.layers_to_tune, self.n_outputs)

    def block_kind(self, j: int) -> Optional[str]:
        """'shared' (HyperRefinementBlock), 'refine' (RefinementBlock), 'separable'
        (RefinementBlockSeparable) or None (layer not tuned)."""
        if j not in self.tuned_layers:
            return None
        if j in SHARED_LAYERS:
            return "shared"
        return "separable" if self.encoder_type == ENCODER_TYPES[1] else "refine"

    def delta_shape(self, j: int) -> Tuple[int, int, int, int]:
        k, cin, cout = self.layer_params[j]
        return (cout, cin, k, k)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layer_params"] = [list(p) for p in self.layer_params]
        d["stages"] = [list(s) for s in self.stages]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "HyperNetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"HyperNetConfig: unknown fields {unknown}")
        return cls(**d)


class HyperNetwork(nn.Module):
    """x [B, H, W, input_nc] (cat[x, y_hat], NHWC, [-1, 1]) -> list of n_outputs Δs or None.

    H, W = 16 * 2**(number of stride-2 stages + 1) for the refinement blocks' 1x1 reshapes:
    256x256 with the default config (192x256 for cars also works: 12x16 features).
    precision: 'fp32' or 'bf16' (convs and the shared hypernet's products on bf16 operands
    with fp32 accumulation; BatchNorm, biases and parameters stay fp32).
    """
    config: HyperNetConfig
    precision: str = "fp32"

    def setup(self):
        c, pr = self.config, self.precision
        self.conv1, self.bn1, self.relu, self.body = build_stem_and_body(c.input_nc, c.stem_width,
                                                                         c.stages, pr)
        self.shared_weight_hypernet = SharedWeightsHypernet(
            c.hypernet_f_size, c.hypernet_z_dim, c.hypernet_out_size, c.hypernet_in_size, pr)
        blocks: list[Any] = []
        for j in range(c.n_outputs):
            kind = c.block_kind(j)
            k, cin, cout = c.layer_params[j]
            if kind == "shared":
                blocks.append(HyperRefinementBlock(c.hyper_block_inner_c, c.hypernet_z_dim,
                                                   c.spatial, precision=pr))
            elif kind is not None:
                cls = RefinementBlockSeparable if kind == "separable" else RefinementBlock
                blocks.append(cls(k, cin, cout, is_to_rgb(j), c.refine_block_inner_c,
                                  c.refine_block_out_c, c.spatial, precision=pr))
            else:
                blocks.append(None)
        self.refinement_blocks = blocks

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Stem + body: [B, H, W, input_nc] -> [B, H/16, W/16, body width] (16x16x512 at 256)."""
        if x.ndim != 4 or x.shape[-1] != self.config.input_nc:
            raise ValueError(f"HyperNetwork: expected input [B, H, W, {self.config.input_nc}] "
                             f"(cat[x, y_hat], NHWC), got {x.shape}")
        return stem_and_body_forward(self, x, train)

    def __call__(self, x: jax.Array, train: bool = False,
                 kernel_layout: bool = False) -> list[Optional[Any]]:
        """kernel_layout: `ops.KernelDelta`s (what an inversion accumulates) instead of
        official [B, out, in, k, k] arrays; the same values."""
        feats = self.features(x, train)
        b = feats.shape[0]
        deltas: list[Optional[Any]] = [None] * self.config.n_outputs
        shared = [j for j in self.config.tuned_layers if self.config.block_kind(j) == "shared"]
        if shared:
            codes = jnp.concatenate([self.refinement_blocks[j].code(feats) for j in shared], axis=0)
            # [len(shared) * B, out, in, f, f], or [.., f, f, in, out] in the kernel layout
            d = self.shared_weight_hypernet(codes, kernel_layout)
            d = d.reshape((len(shared), b) + d.shape[1:])
            for i, j in enumerate(shared):
                deltas[j] = KernelDelta(d[i]) if kernel_layout else d[i]
        for j in self.config.tuned_layers:
            if deltas[j] is None:
                d = self.refinement_blocks[j](feats)
                deltas[j] = KernelDelta.from_official(d) if kernel_layout else d
        return deltas


def init_shapes(config: HyperNetConfig, image_hw: Optional[Sequence[int]] = None) -> dict:
    """`jax.eval_shape` of `HyperNetwork(config).init` for inputs [1, H, W, input_nc]
    (default: the size whose features are `spatial` x `spatial`)."""
    image_hw = feature_input_hw(config) if image_hw is None else image_hw
    x = jax.ShapeDtypeStruct((1, *image_hw, config.input_nc), jnp.float32)
    return jax.eval_shape(lambda: HyperNetwork(config).init(jax.random.PRNGKey(0),
                                                            jnp.zeros(x.shape, x.dtype)))


def feature_input_hw(config: HyperNetConfig) -> Tuple[int, int]:
    """Input size giving `spatial` x `spatial` features: stem /2, then /stride per stage."""
    f = 2
    for _, n_blocks, stride in config.stages:
        if n_blocks:
            f *= stride
    return (config.spatial * f, config.spatial * f)
