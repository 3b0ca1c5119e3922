"""Converters for HyperStyle's own networks: the hypernetwork checkpoint, the W-encoder, ResNet-34.

Subcommands of `tools/convert_weights.py`:
  hyperstyle SRC.pt OUT_DIR   official HyperStyle checkpoint (Coach format): hypernet +
                              decoder + latent_avg; `opts` becomes our config.
  w_encoder  SRC.pt OUT_DIR   pSp-format W-encoder (`encoder.*` kept; `decoder.*`,
                              `latent_avg` and `opts` are read only to check them).
  resnet34   SRC.pth OUT_DIR  torchvision ImageNet ResNet-34 -> the stem and body of a NEW
                              hypernetwork (6-channel conv1, see `resnet34_to_hypernet_init`).

The cores are functions on a name -> array dict (`*_from_state_dict`), so tests can convert
full-size listings from zero-cost `np.broadcast_to` views without writing gigabytes.
Every mapping is strict: `SourceDict.finish` names each missing, misshaped or unused key,
and the converted tree must equal the model's `jax.eval_shape(init)` tree path for path.

Key mapping (PyTorch `a.b.N.c` -> Flax `a/b_N/c`; conv `weight` [O,I,kh,kw] -> `kernel`
HWIO; Linear `weight` [out,in] -> Dense `kernel` [in,out]; EqualLinear `weight` -> `weight`
[in,out]; BN `weight`/`bias` -> params, `running_mean`/`running_var` -> batch_stats,
`num_batches_tracked` dropped (momentum is fixed, it is never read).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np

from hyperstyle_jax.convert.common import (ConversionError, SourceDict, conv_weight,
                                           linear_weight)

# ----------------------------------------------------------------------------- tree building


class Out:
    """Two nested trees being filled ('params' and 'batch_stats'), addressed by '/' paths."""

    def __init__(self):
        self.trees: dict[str, dict] = {"params": {}, "batch_stats": {}}

    def put(self, collection: str, path: str, value: np.ndarray) -> None:
        node = self.trees[collection]
        parts = path.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if parts[-1] in node:
            raise ConversionError(f"internal: {collection}/{path} written twice")
        node[parts[-1]] = value

    def variables(self) -> dict:
        return {k: v for k, v in self.trees.items() if v or k == "params"}


def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def put_conv(src: SourceDict, out: Out, key: str, path: str, bias: bool) -> None:
    """torch Conv2d `key.weight` (+ `key.bias`) -> Flax `path/kernel` (+ `path/bias`)."""
    out.put("params", f"{path}/kernel", conv_weight(_f32(src.take(f"{key}.weight"))))
    if bias:
        out.put("params", f"{path}/bias", _f32(src.take(f"{key}.bias")))


def put_linear(src: SourceDict, out: Out, key: str, path: str) -> None:
    """torch Linear -> Flax Dense (`kernel` [in, out], `bias`)."""
    out.put("params", f"{path}/kernel", linear_weight(_f32(src.take(f"{key}.weight"))))
    out.put("params", f"{path}/bias", _f32(src.take(f"{key}.bias")))


def put_equal_linear(src: SourceDict, out: Out, key: str, path: str) -> None:
    """rosinality EqualLinear (raw `weight` [out, in]) -> ops.EqualLinear (`weight` [in, out])."""
    out.put("params", f"{path}/weight", linear_weight(_f32(src.take(f"{key}.weight"))))
    out.put("params", f"{path}/bias", _f32(src.take(f"{key}.bias")))


def put_bn(src: SourceDict, out: Out, key: str, path: str, affine: bool = True) -> None:
    """torch BatchNorm -> layers.BatchNorm (affine params + running stats)."""
    if affine:
        out.put("params", f"{path}/weight", _f32(src.take(f"{key}.weight")))
        out.put("params", f"{path}/bias", _f32(src.take(f"{key}.bias")))
    out.put("batch_stats", f"{path}/running_mean", _f32(src.take(f"{key}.running_mean")))
    out.put("batch_stats", f"{path}/running_var", _f32(src.take(f"{key}.running_var")))
    src.skip(f"{key}.num_batches_tracked")


def put_prelu(src: SourceDict, out: Out, key: str, path: str) -> None:
    out.put("params", f"{path}/weight", _f32(src.take(f"{key}.weight")))


# ----------------------------------------------------------------------------- ResNet pieces


def put_basic_block(src: SourceDict, out: Out, key: str, path: str) -> None:
    """torchvision BasicBlock `key.*` -> resnet.BasicBlock at `path`."""
    put_conv(src, out, f"{key}.conv1", f"{path}/conv1", bias=False)
    put_bn(src, out, f"{key}.bn1", f"{path}/bn1")
    put_conv(src, out, f"{key}.conv2", f"{path}/conv2", bias=False)
    put_bn(src, out, f"{key}.bn2", f"{path}/bn2")
    if src.has(f"{key}.downsample.0.weight"):
        put_conv(src, out, f"{key}.downsample.0", f"{path}/downsample_0", bias=False)
        put_bn(src, out, f"{key}.downsample.1", f"{path}/downsample_1")


def put_bottleneck(src: SourceDict, out: Out, key: str, path: str) -> None:
    """torchvision Bottleneck `key.*` -> resnet.Bottleneck at `path`."""
    for i in (1, 2, 3):
        put_conv(src, out, f"{key}.conv{i}", f"{path}/conv{i}", bias=False)
        put_bn(src, out, f"{key}.bn{i}", f"{path}/bn{i}")
    if src.has(f"{key}.downsample.0.weight"):
        put_conv(src, out, f"{key}.downsample.0", f"{path}/downsample_0", bias=False)
        put_bn(src, out, f"{key}.downsample.1", f"{path}/downsample_1")


def put_stem_and_body(src: SourceDict, out: Out, n_blocks: int, path: str = "") -> None:
    """Hypernet `conv1`, `bn1`, `relu` (PReLU) and `body.{0..n-1}` -> same names in Flax."""
    p = f"{path}/" if path else ""
    put_conv(src, out, "conv1", f"{p}conv1", bias=False)
    put_bn(src, out, "bn1", f"{p}bn1")
    put_prelu(src, out, "relu", f"{p}relu")
    for n in range(n_blocks):
        put_basic_block(src, out, f"body.{n}", f"{p}body_{n}")


def resnet50_trunk_from_state_dict(src: SourceDict) -> dict:
    """torchvision resnet50 keys (`conv1`, `bn1`, `layerA.B.*`; `fc.*` must be skipped by
    the caller) -> `ResNet50Trunk` variables {'params', 'batch_stats'}. Call `src.finish()`."""
    from hyperstyle_jax.models.resnet import RESNET50_STAGES

    out = Out()
    put_conv(src, out, "conv1", "conv1", bias=False)
    put_bn(src, out, "bn1", "bn1")
    for s, (_, n_blocks, _) in enumerate(RESNET50_STAGES):
        for b in range(n_blocks):
            put_bottleneck(src, out, f"layer{s + 1}.{b}", f"layer{s + 1}_{b}")
    return out.variables()


# ----------------------------------------------------------------------------- IR-SE pieces


def put_se_module(src: SourceDict, out: Out, key: str, path: str) -> None:
    put_conv(src, out, f"{key}.fc1", f"{path}/fc1", bias=False)
    put_conv(src, out, f"{key}.fc2", f"{path}/fc2", bias=False)


def put_bottleneck_ir(src: SourceDict, out: Out, key: str, path: str, se: bool) -> None:
    """helpers.bottleneck_IR(_SE) `key.*` -> irse.bottleneck_IR(_SE) at `path`."""
    if src.has(f"{key}.shortcut_layer.0.weight"):
        put_conv(src, out, f"{key}.shortcut_layer.0", f"{path}/shortcut_layer_0", bias=False)
        put_bn(src, out, f"{key}.shortcut_layer.1", f"{path}/shortcut_layer_1")
    put_bn(src, out, f"{key}.res_layer.0", f"{path}/res_layer_0")
    put_conv(src, out, f"{key}.res_layer.1", f"{path}/res_layer_1", bias=False)
    put_prelu(src, out, f"{key}.res_layer.2", f"{path}/res_layer_2")
    put_conv(src, out, f"{key}.res_layer.3", f"{path}/res_layer_3", bias=False)
    put_bn(src, out, f"{key}.res_layer.4", f"{path}/res_layer_4")
    if se:
        put_se_module(src, out, f"{key}.res_layer.5", f"{path}/res_layer_5")


def put_input_layer(src: SourceDict, out: Out, key: str = "input_layer") -> None:
    """IR-SE `input_layer` (Conv3x3 no bias, BN, PReLU) -> `input_layer_0/1/2`."""
    put_conv(src, out, f"{key}.0", "input_layer_0", bias=False)
    put_bn(src, out, f"{key}.1", "input_layer_1")
    put_prelu(src, out, f"{key}.2", "input_layer_2")


def infer_ir_units(src: SourceDict, prefix: str = "body.") -> tuple[tuple, str]:
    """The unit table [(in_channel, depth, stride)] and mode ('ir' | 'ir_se') from the shapes.

    Strides are not stored; the official `get_block` strides exactly the first unit of each
    stage, and a stage starts at unit 0 or where the width changes, so: stride 2 there,
    1 elsewhere. This reproduces `get_blocks(50|100|152)` and the narrowed fixture tables.
    """
    units, ses = [], []
    n = 0
    while src.has(f"{prefix}{n}.res_layer.1.weight"):
        depth, cin = src.sd[src.prefix + f"{prefix}{n}.res_layer.1.weight"].shape[:2]
        units.append((int(cin), int(depth), 2 if n == 0 or cin != depth else 1))
        ses.append(src.has(f"{prefix}{n}.res_layer.5.fc1.weight"))
        n += 1
    if not units:
        raise ConversionError(f"{src.origin}: no IR units found (expected keys "
                              f"'{src.prefix}{prefix}0.res_layer.1.weight', …)")
    if len(set(ses)) != 1:
        raise ConversionError(f"{src.origin}: some IR units have an SE module and some do not")
    return tuple(units), ("ir_se" if ses[0] else "ir")


def put_ir_input_and_body(src: SourceDict, out: Out, units, mode: str) -> None:
    put_input_layer(src, out)
    for n in range(len(units)):
        put_bottleneck_ir(src, out, f"body.{n}", f"body_{n}", se=(mode == "ir_se"))


def arcface_from_state_dict(src: SourceDict, input_size: int = 112) -> dict:
    """TreB1eN `model_ir_se50.pth` (bare state dict) -> `irse.Backbone` variables.

    `output_layer.3.weight` [512, C*H*W] is flattened from NCHW in PyTorch; its columns are
    permuted to the NHWC flatten order (h, w, c) our `Backbone` uses. Call `src.finish()`.
    """
    units, mode = infer_ir_units(src)
    out = Out()
    put_ir_input_and_body(src, out, units, mode)
    put_bn(src, out, "output_layer.0", "output_layer_0")
    w = _f32(src.take("output_layer.3.weight"))
    c, hw = units[-1][1], input_size // 16
    if w.ndim != 2 or w.shape[1] != c * hw * hw:
        raise ConversionError(f"{src.origin}: {src.prefix}output_layer.3.weight has shape {w.shape}, "
                              f"expected (512, {c * hw * hw}) for input_size {input_size}")
    w = w.reshape(w.shape[0], c, hw, hw).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
    out.put("params", "output_layer_3/kernel", linear_weight(w))
    out.put("params", "output_layer_3/bias", _f32(src.take("output_layer.3.bias")))
    put_bn(src, out, "output_layer.4", "output_layer_4", affine=src.has("output_layer.4.weight"))
    return out.variables()
