"""IR / IR-SE ResNets (TreB1eN ArcFace layout): the W-encoder and the ID-loss `Backbone`.

Names mirror the official `models/encoders/helpers.py`, `w_encoder.py` and `model_irse.py`
state dicts, with PyTorch's `Sequential` indices kept as suffixes: `input_layer_0/1/2`,
`body_N`, `shortcut_layer_0/1`, `res_layer_0..5`, `fc1`/`fc2`, `output_layer_0/3/4`, `linear`.
All activations are NHWC.

Public API
----------
* `get_blocks(num_layers)` -> unit table: tuple of `(in_channel, depth, stride)` per unit,
  flattened over the stages (50: 3+4+14+3 units; 100: 3+13+30+3; 152: 3+8+36+3).
* `SEModule(channels, reduction)`, `bottleneck_IR(in_channel, depth, stride)`,
  `bottleneck_IR_SE(in_channel, depth, stride)`: `__call__(x, train=False)`.
* `WEncoder(n_styles, style_dim=512, units=get_blocks(50), input_width=64, mode='ir_se')`:
  `__call__(x [B, H, W, 3], train=False) -> [B, n_styles, style_dim]` (one w repeated:
  HyperStyle inverts into W: official `models/encoders/psp.py` with `WEncoder`).
* `Backbone(input_size=112, num_layers=50, mode='ir_se', drop_ratio=0.6, affine=True)`:
  the ArcFace network of the ID loss. `__call__(x [B, 112, 112, 3], train=False) ->
  [B, 512]`, the **L2-normalized** embedding (official `forward` returns `l2_norm(x)`).
  `train=True` uses batch statistics and dropout (needs the 'dropout' rng); the ID loss
  always runs it with `train=False`. Input is the cropped face pooled to 112x112 in
  [-1, 1] (official `criteria/id_loss.py` `IDLoss.extract_feats`). Its `output_layer_3`
  Dense kernel rows are in NHWC-flatten order (h, w, c): the converter
  (`convert.hyperstyle.arcface_from_state_dict`) permutes the official (c, h, w)-ordered
  `output_layer.3.weight` accordingly.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperstyle_jax.models.layers import BatchNorm, PReLU, conv2d, global_avg_pool, max_pool
from hyperstyle_jax.models.ops import EqualLinear

Unit = Tuple[int, int, int]  # (in_channel, depth, stride)

_STAGE_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}


def get_block(in_channel: int, depth: int, num_units: int, stride: int = 2) -> list[Unit]:
    """Official `get_block`: the first unit strided, the rest (depth, depth, 1)."""
    return [(in_channel, depth, stride)] + [(depth, depth, 1)] * (num_units - 1)


def get_blocks(num_layers: int) -> Tuple[Unit, ...]:
    """Official `get_blocks(50 | 100 | 152)`, flattened to one unit table."""
    if num_layers not in _STAGE_UNITS:
        raise ValueError(f"Invalid number of layers: {num_layers}. Must be one of [50, 100, 152]")
    n = _STAGE_UNITS[num_layers]
    units = (get_block(64, 64, n[0]) + get_block(64, 128, n[1]) + get_block(128, 256, n[2])
             + get_block(256, 512, n[3]))
    return tuple(units)


class SEModule(nn.Module):
    """Squeeze-excitation: x * sigmoid(fc2(relu(fc1(avgpool(x))))), 1x1 convs without bias."""
    channels: int
    reduction: int = 16

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = nn.relu(conv2d(self.channels // self.reduction, 1, use_bias=False, name="fc1")(s))
        s = conv2d(self.channels, 1, use_bias=False, name="fc2")(s)
        return x * jax.nn.sigmoid(s)


class bottleneck_IR(nn.Module):  # noqa: N801 - official name
    """IR unit: shortcut + [BN, conv3x3, PReLU, conv3x3(stride), BN (, SE)].

    Shortcut: `MaxPool2d(1, stride)` (a strided subsample) when in_channel == depth,
    otherwise conv1x1(stride, no bias) + BN. x: [B, H, W, in] -> [B, ceil(H/s), ceil(W/s), depth].
    """
    in_channel: int
    depth: int
    stride: int
    use_se: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.shape[-1] != self.in_channel:
            raise ValueError(f"{type(self).__name__}({self.in_channel}, {self.depth}, "
                             f"{self.stride}): input has {x.shape[-1]} channels")
        if self.in_channel == self.depth:
            shortcut = max_pool(x, 1, self.stride)
        else:
            shortcut = conv2d(self.depth, 1, self.stride, 0, use_bias=False,
                              name="shortcut_layer_0")(x)
            shortcut = BatchNorm(name="shortcut_layer_1")(shortcut, train)
        r = BatchNorm(name="res_layer_0")(x, train)
        r = conv2d(self.depth, 3, 1, 1, use_bias=False, name="res_layer_1")(r)
        r = PReLU(name="res_layer_2")(r)
        r = conv2d(self.depth, 3, self.stride, 1, use_bias=False, name="res_layer_3")(r)
        r = BatchNorm(name="res_layer_4")(r, train)
        if self.use_se:
            r = SEModule(self.depth, 16, name="res_layer_5")(r)
        return r + shortcut


class bottleneck_IR_SE(bottleneck_IR):  # noqa: N801 - official name
    """IR unit with the SE module (reduction 16) at the end of the residual branch."""
    use_se: bool = True


def _unit_cls(mode: str):
    if mode not in ("ir", "ir_se"):
        raise ValueError(f"mode should be 'ir' or 'ir_se', got {mode!r}")
    return bottleneck_IR_SE if mode == "ir_se" else bottleneck_IR


def build_input_and_body(units: Sequence[Unit], input_width: int, mode: str) -> tuple:
    """The `input_layer` (conv3x3 no bias, BN, PReLU) and the body units, for a `setup`.

    Assigned in `setup` as `input_layer_0/1/2` and `body` (-> `body_0`, `body_1`, …), so
    the names stay official without an extra nesting level.
    """
    unit = _unit_cls(mode)
    return (conv2d(input_width, 3, 1, 1, use_bias=False), BatchNorm(), PReLU(),
            [unit(cin, depth, stride) for cin, depth, stride in units])


def input_and_body_forward(m: nn.Module, x: jax.Array, train: bool) -> jax.Array:
    x = m.input_layer_2(m.input_layer_1(m.input_layer_0(x), train))
    for unit in m.body:
        x = unit(x, train)
    return x


class WEncoder(nn.Module):
    """HyperStyle's W-encoder (official `WEncoder(50, 'ir_se')`, e4e's
    `BackboneEncoderUsingLastLayerIntoW`): x [B, H, W, 3] -> codes [B, n_styles, style_dim].

    input_layer -> IR-SE body -> global average pool -> EqualLinear(depth, style_dim)
    -> the same w repeated over the n_styles layers. `units` is the flattened unit table
    (narrowed tables work); `input_width` is the input_layer width (64 officially).
    `features(x, train)` and `head(features)` are the two halves of `__call__`.
    """
    n_styles: int
    style_dim: int = 512
    units: Tuple[Unit, ...] = get_blocks(50)
    input_width: int = 64
    mode: str = "ir_se"

    def setup(self):
        (self.input_layer_0, self.input_layer_1, self.input_layer_2,
         self.body) = build_input_and_body(self.units, self.input_width, self.mode)
        depth = self.units[-1][1] if self.units else self.input_width
        self.linear = EqualLinear(depth, self.style_dim)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """x [B, H, W, 3] -> body features [B, H', W', depth]."""
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"WEncoder: expected images [B, H, W, 3] (NHWC), got {x.shape}")
        return input_and_body_forward(self, x, train)

    def head(self, feats: jax.Array) -> jax.Array:
        """[B, H', W', depth] -> average pool -> EqualLinear -> repeat: [B, n_styles, style_dim]."""
        w = self.linear(global_avg_pool(feats))
        return jnp.broadcast_to(w[:, None, :], (w.shape[0], self.n_styles, self.style_dim))

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.head(self.features(x, train))

    @classmethod
    def from_config(cls, config: dict) -> "WEncoder":
        """The module described by a converted `w_encoder` folder's config.json."""
        return cls(n_styles=int(config["n_styles"]), style_dim=int(config["style_dim"]),
                   units=tuple(tuple(int(v) for v in u) for u in config["units"]),
                   input_width=int(config["input_width"]), mode=config.get("mode", "ir_se"))


def w_encoder_init_shapes(config: dict) -> dict:
    """`jax.eval_shape` of `WEncoder.from_config(config).init` (any input size works)."""
    model = WEncoder.from_config(config)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))


class Backbone(nn.Module):
    """TreB1eN ArcFace `Backbone(input_size, num_layers, mode, drop_ratio, affine)` (ID loss).

    x [B, S, S, 3] (S = input_size, 112 or 224) -> L2-normalized embedding [B, 512].
    output_layer = BN2d(512) (`output_layer_0`), Dropout, flatten, Linear(512*(S/16)^2, 512)
    (`output_layer_3`, rows in NHWC flatten order), BN1d(512, affine) (`output_layer_4`).
    """
    input_size: int = 112
    num_layers: int = 50
    mode: str = "ir_se"
    drop_ratio: float = 0.6
    affine: bool = True

    def setup(self):
        if self.input_size not in (112, 224):
            raise ValueError(f"input_size should be 112 or 224, got {self.input_size}")
        (self.input_layer_0, self.input_layer_1, self.input_layer_2,
         self.body) = build_input_and_body(get_blocks(self.num_layers), 64, self.mode)
        self.output_layer_0 = BatchNorm()
        self.dropout = nn.Dropout(self.drop_ratio)
        self.output_layer_3 = nn.Dense(512)
        self.output_layer_4 = BatchNorm(affine=self.affine)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(f"Backbone: expected input [B, {self.input_size}, "
                             f"{self.input_size}, 3] (NHWC), got {x.shape}")
        x = input_and_body_forward(self, x, train)
        x = self.output_layer_0(x, train)
        x = self.dropout(x, deterministic=not train)
        x = self.output_layer_3(x.reshape(x.shape[0], -1))
        x = self.output_layer_4(x, train)
        return x / jnp.linalg.norm(x, axis=1, keepdims=True)
