"""Converters for HyperStyle's own networks: the hypernetwork checkpoint, the W-encoder, ResNet-34.

Subcommands of `tools/convert_weights.py`:
  hyperstyle SRC.pt OUT_DIR   official HyperStyle checkpoint (Coach format): hypernet +
                              decoder + latent_avg; `opts` becomes our config.
  w_encoder  SRC.pt OUT_DIR   pSp-format W-encoder: only `encoder.*` is kept; pSp's
                              generator copy `decoder.*`, `latent_avg` and `opts` are
                              dropped (opts['output_size'] only sets n_styles).
  resnet34   SRC.pth OUT_DIR  torchvision ImageNet ResNet-34 -> the stem and body of a NEW
                              hypernetwork (6-channel conv1, see `resnet34_to_hypernet_init`).

The cores are functions on a name -> array dict (`*_from_state_dict`), so tests can convert
full-size listings from zero-cost `np.broadcast_to` views without writing gigabytes.
Every mapping is strict: the model's `jax.eval_shape(init)` tree drives `from_state_dict`,
so each leaf is read by its official key with the shape the model needs, and
`SourceDict.finish` names each missing, misshaped or unused key. The shared hypernet is read
once from `hypernet.shared_weight_hypernet.*`; its nine copies under
`hypernet.refinement_blocks.{j}.hypernet.*` must be the same storage or equal values.

Key mapping (PyTorch `a.b.N.c` -> Flax `a/b_N/c`; conv `weight` [O,I,kh,kw] -> `kernel`
HWIO; Linear `weight` [out,in] -> Dense `kernel` [in,out]; EqualLinear `weight` -> `weight`
[in,out]; BN `weight`/`bias` -> params, `running_mean`/`running_var` -> batch_stats,
`num_batches_tracked` dropped (momentum is fixed, it is never read).
"""
from __future__ import annotations

import argparse
import math
import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from hyperstyle_jax.checkpoints import KIND_BACKBONE_INIT as KIND_RESNET34
from hyperstyle_jax.checkpoints import KIND_HYPERSTYLE, KIND_W_ENCODER, save_converted
from hyperstyle_jax.convert.common import (
    ConversionError,
    SourceDict,
    _consume_prefix,
    _f32,
    _json_safe,
    _shape,
    check_tree_matches,
    eval_shape_init,
    from_state_dict,
    load_torch_file,
    to_numpy_state_dict,
    unwrap_state_dict,
)
from hyperstyle_jax.convert.stylegan2 import generator_from_state_dict
from hyperstyle_jax.models import stylegan2
from hyperstyle_jax.models.hypernetwork import (
    DEFAULT_LAYERS_TO_TUNE,
    ENCODER_TYPES,
    SHARED_LAYERS,
    HyperNetConfig,
    feature_input_hw,
    init_shapes,
)
from hyperstyle_jax.models.irse import Backbone, WEncoder, get_blocks
from hyperstyle_jax.models.resnet import RESNET34_STAGES, HypernetBackbone, ResNet50Trunk
from hyperstyle_jax.utils.trees import n_params

# ----------------------------------------------------------------------------- ResNet-50 (MoCo)


def resnet50_trunk_from_state_dict(src: SourceDict) -> dict:
    """torchvision resnet50 keys (`conv1`, `bn1`, `layerA.B.*` under `src.prefix`) ->
    `resnet.ResNet50Trunk` variables. `fc.*` is left for the caller to skip; call
    `src.finish()` afterwards."""
    return from_state_dict(src, eval_shape_init(ResNet50Trunk(), jnp.zeros((1, 64, 64, 3))))


# ----------------------------------------------------------------------------- IR-SE nets


def infer_ir_units(src: SourceDict, prefix: str = "body.") -> tuple[tuple, str]:
    """The unit table ((in_channel, depth, stride), …) and mode ('ir' | 'ir_se') from the shapes.

    Strides are not stored. The official `get_block` strides exactly the first unit of each
    stage, and a stage starts at unit 0 or where the width changes: stride 2 there, 1
    elsewhere. This reproduces `get_blocks(50|100|152)` and the narrowed fixture tables.
    """
    units, ses = [], []
    n = 0
    while src.has(f"{prefix}{n}.res_layer.1.weight"):
        depth, cin = _shape(src, f"{prefix}{n}.res_layer.1.weight", 4, "IR unit table")[:2]
        units.append((cin, depth, 2 if n == 0 or cin != depth else 1))
        ses.append(src.has(f"{prefix}{n}.res_layer.5.fc1.weight"))
        n += 1
    if not units:
        raise ConversionError(f"{src.origin}: no IR units found (expected keys "
                              f"'{src.prefix}{prefix}0.res_layer.1.weight', …)")
    if len(set(ses)) != 1:
        raise ConversionError(f"{src.origin}: some IR units have an SE module and some do not")
    return tuple(units), ("ir_se" if ses[0] else "ir")


def arcface_config_from_keys(sd: Mapping[str, np.ndarray], origin: str) -> dict:
    """{'num_layers', 'mode', 'affine', 'input_size'} of an official `Backbone` state dict.

    IR-SE-50 (`model_ir_se50.pth`: 24 units with SE, affine final BN) and IR-101
    (`CurricularFace_Backbone.pth`: 49 units, no SE, `affine=False`) are both recognised.
    """
    units = {int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.", k))}
    if not units or "input_layer.0.weight" not in sd:
        raise ConversionError(f"{origin}: not an ArcFace/CurricularFace Backbone state dict "
                              f"(no input_layer.0.weight / body.N.* keys); found {sorted(sd)[:12]}")
    n_units = max(units) + 1
    by_units = {len(get_blocks(d)): d for d in (50, 100, 152)}
    if n_units not in by_units:
        raise ConversionError(
            f"{origin}: {n_units} body units match no IR depth (known: "
            + ", ".join(f"{d} layers = {n} units" for n, d in by_units.items()) + ")")
    return {"num_layers": by_units[n_units],
            "mode": "ir_se" if "body.0.res_layer.5.fc1.weight" in sd else "ir",
            "affine": "output_layer.4.weight" in sd, "input_size": 112}


def arcface_from_state_dict(src: SourceDict, config: Mapping | None = None) -> dict:
    """TreB1eN `Backbone` state dict (`model_ir_se50.pth`) -> `irse.Backbone` variables;
    `config` (depth, mode, affinity, input size) defaults to `arcface_config_from_keys`.

    `output_layer.3.weight` [512, C*H*W] flattens NCHW features in PyTorch; its columns are
    permuted to the NHWC flatten order (h, w, c) of our `Backbone`. Call `src.finish()`.
    """
    config = config or arcface_config_from_keys(src.sd, src.origin)
    input_size = config["input_size"]
    model = Backbone(input_size, config["num_layers"], config["mode"], affine=config["affine"])
    expected = eval_shape_init(model, jnp.zeros((1, input_size, input_size, 3)))
    hw = input_size // 16

    def output_kernel(src, key, shape):  # shape = (C*h*w, 512), rows wanted in (h, w, c) order
        w = src.take(key, (shape[1], shape[0]))
        c = shape[0] // (hw * hw)
        return np.transpose(w.reshape(shape[1], c, hw, hw), (2, 3, 1, 0)).reshape(shape)

    return from_state_dict(src, expected, {"params/output_layer_3/kernel": output_kernel})


def _n_styles_from_decoder(sd: Mapping, prefix: str = "decoder.") -> int | None:
    """n_styles = 2*log2(size) - 2 from the number of `to_rgbs.{b}` blocks (size = 2**(b+2))."""
    b = 0
    while f"{prefix}to_rgbs.{b}.conv.weight" in sd:
        b += 1
    return 2 * (b + 2) - 2 if b else None


def w_encoder_from_state_dict(sd: Mapping[str, np.ndarray], top: Mapping, origin: str,
                              n_styles: int | None = None) -> tuple[dict, dict]:
    """pSp-format W-encoder (`encoder.*`) -> (config, {'params', 'batch_stats'}).

    Only the encoder is kept: `decoder.*` (pSp's copy of the generator, which HyperStyle
    discards) is consumed unread, as are the top-level `latent_avg` and `opts`. The unit
    table, widths and style_dim come from the shapes; n_styles from `n_styles`, else
    `opts['output_size']`, else the decoder's number of toRGB blocks.
    """
    if not any(k.startswith("encoder.") for k in sd):
        raise ConversionError(f"{origin}: not a pSp-format W-encoder: no 'encoder.*' keys "
                              f"(found {sorted(sd)[:8]}…)")
    src = SourceDict(sd, origin, prefix="encoder.")
    units, mode = infer_ir_units(src)
    input_width = _shape(src, "input_layer.0.weight", 4, "W-encoder input layer")[0]
    style_dim = _shape(src, "linear.weight", 2, "W-encoder head")[0]
    sources = []
    if n_styles is None:
        opts = top.get("opts") if isinstance(top.get("opts"), Mapping) else {}
        if isinstance(opts.get("output_size"), int) and opts["output_size"] >= 8:
            n_styles = 2 * int(math.log2(opts["output_size"])) - 2
            sources.append("opts.output_size")
        else:
            n_styles = _n_styles_from_decoder(sd)
            sources.append("decoder toRGB count")
    if not n_styles:
        raise ConversionError(f"{origin}: cannot tell n_styles (no opts['output_size'] and no "
                              f"decoder.to_rgbs.* keys): pass --n_styles")
    model = WEncoder(n_styles, style_dim, units, input_width, mode)
    expected = eval_shape_init(model, jnp.zeros((1, 64, 64, 3)))
    variables = from_state_dict(src, expected)
    n_dec = _consume_prefix(src, "decoder.")
    src.finish("W-encoder")
    check_tree_matches(variables, expected, origin, "W-encoder variables")
    config = {"n_styles": int(n_styles), "style_dim": int(style_dim),
              "units": [list(u) for u in units], "input_width": int(input_width), "mode": mode,
              "dropped": f"{n_dec} decoder.* keys (pSp's generator copy; HyperStyle uses only "
                         f"the encoder)"}
    return config, variables


# ----------------------------------------------------------------------------- hypernetwork


def infer_stages(src: SourceDict, stem_width: int) -> tuple:
    """(planes, blocks, stride) stages of the BasicBlock body `body.{n}` from the shapes.

    A stage starts at body.0 and at every block with a `downsample` (torchvision puts one on
    a stage's first block when the stride or width changes); such blocks have stride 2 except
    body.0 (layer1 is never strided). Reproduces resnet34 and the narrowed fixture body.
    """
    stages: list[list[int]] = []
    n = 0
    while src.has(f"body.{n}.conv1.weight"):
        planes = _shape(src, f"body.{n}.conv1.weight", 4, "hypernet body")[0]
        ds = _has_prefix(src, f"body.{n}.downsample.")
        if n == 0 or ds:
            stages.append([planes, 1, 2 if (ds and n > 0) else 1])
        else:
            stages[-1][1] += 1
        n += 1
    return tuple(tuple(s) for s in stages)


def _has_prefix(src: SourceDict, prefix: str) -> bool:
    p = src.prefix + prefix
    return any(k.startswith(p) for k in src.sd)


def _count_convs(src: SourceDict, key: str) -> int:
    n = 0
    while src.has(f"{key}.convs.{2 * n}.weight"):
        n += 1
    return n


def hypernet_config_from_state_dict(src: SourceDict, opts: Mapping, generator_config):
    """`HyperNetConfig` from the official `opts` and the shapes under `src.prefix` ('hypernet.')."""
    what = "hypernetwork architecture"
    encoder_type = opts.get("encoder_type")
    if encoder_type not in ENCODER_TYPES:
        raise ConversionError(f"{src.origin}: opts['encoder_type'] = {encoder_type!r} is not "
                              f"one of {ENCODER_TYPES}")
    layers_to_tune = opts.get("layers_to_tune", DEFAULT_LAYERS_TO_TUNE)
    o, input_nc = _shape(src, "conv1.weight", 4, what)[:2]
    kw: dict[str, Any] = dict(encoder_type=encoder_type, layers_to_tune=layers_to_tune,
                              input_nc=input_nc, stem_width=o, stages=infer_stages(src, o))
    z_dim, out_ff = _shape(src, "shared_weight_hypernet.w1", 2, what)
    _, in_z = _shape(src, "shared_weight_hypernet.w2", 2, what)
    f = 3
    kw.update(hypernet_f_size=f, hypernet_z_dim=z_dim, hypernet_out_size=out_ff // (f * f),
              hypernet_in_size=in_z // z_dim)
    n_outputs = generator_config.n_convs
    present = [j for j in range(n_outputs) if _has_prefix(src, f"refinement_blocks.{j}.")]
    shared = [j for j in present if j in SHARED_LAYERS]
    other = [j for j in present if j not in SHARED_LAYERS]
    if shared:
        key = f"refinement_blocks.{shared[0]}"
        kw["hyper_block_inner_c"] = _shape(src, f"{key}.convs.0.weight", 4, what)[0]
        kw["spatial"] = 2 ** (_count_convs(src, key) - 1)
    if other:
        j = other[0]
        key = f"refinement_blocks.{j}"
        n = _count_convs(src, key)
        kw["refine_block_inner_c"] = _shape(src, f"{key}.convs.0.weight", 4, what)[0]
        kw["refine_block_out_c"] = _shape(src, f"{key}.convs.{2 * (n - 1)}.weight", 4, what)[0]
        if not shared:  # RefinementBlock: log2(s)-1 convs (k=3) or log2(s) (toRGB/separable)
            k = generator_config.delta_shapes()[j][2]
            sep = encoder_type == ENCODER_TYPES[1]
            kw["spatial"] = 2 ** (n if (sep or k == 1) else n + 1)
    try:
        config = HyperNetConfig.for_generator(generator_config, **kw)
    except ValueError as e:
        raise ConversionError(f"{src.origin}: {e}") from None
    found = sorted(shared + other)
    if list(config.tuned_layers) != found:
        raise ConversionError(
            f"{src.origin}: opts['layers_to_tune'] = {layers_to_tune!r} gives tuned layers "
            f"{list(config.tuned_layers)}, but the checkpoint has refinement blocks for {found}")
    return config


def _same_tensor(a: np.ndarray, b: np.ndarray) -> bool:
    """True if a and b are the same memory (torch.save kept the sharing) or equal values."""
    if a.shape != b.shape:
        return False
    if (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.strides == b.strides and a.dtype == b.dtype):
        return True
    return bool(np.array_equal(a, b))


def hypernet_from_state_dict(src: SourceDict, config) -> dict:
    """`hypernet.*` (under `src.prefix`) -> HyperNetwork {'params', 'batch_stats'}.

    The shared hypernet is read once from `shared_weight_hypernet.{w1,b1,w2,b2}`; each copy
    `refinement_blocks.{j}.hypernet.*` of a shared block is consumed and must be the same
    tensor (one storage, as torch.save writes it) or hold equal values, else the conversion
    fails naming the key. If no shared layer is tuned, the (unused) shared hypernet is
    consumed and dropped. Call `src.finish()` afterwards.
    """
    expected = init_shapes(config, feature_input_hw(config))
    variables = from_state_dict(src, expected)
    shared = [j for j in config.tuned_layers if config.block_kind(j) == "shared"]
    if not shared:
        src.skip("shared_weight_hypernet.")
        return variables
    for name in ("w1", "b1", "w2", "b2"):
        main = src.sd[src.prefix + f"shared_weight_hypernet.{name}"]
        for j in shared:
            key = f"refinement_blocks.{j}.hypernet.{name}"
            copy = src.take(key, main.shape)
            if src.has(key) and copy.shape == main.shape and not _same_tensor(main, copy):
                raise ConversionError(
                    f"{src.origin}: {src.prefix}{key} differs from "
                    f"{src.prefix}shared_weight_hypernet.{name}: the shared hypernet must be one "
                    f"tensor (max |diff| {float(np.max(np.abs(_f32(main) - _f32(copy)))):.3g})")
    return variables


def hyperstyle_from_state_dict(sd: Mapping[str, np.ndarray], top: Mapping, origin: str
                               ) -> tuple[dict, dict]:
    """Official HyperStyle checkpoint contents -> (config, tree) in our folder layout.

    sd: the `state_dict` (name -> array; `hypernet.*` and `decoder.*`); top: the other
    top-level entries (`opts`, `latent_avg`, `global_step`, `best_val_loss`).
    Returns config {'generator', 'hypernet', 'opts'} and tree
    {'hypernet': {'params', 'batch_stats'}, 'generator': {'params', 'noises'},
     'latent_avg': [n_styles, style_dim]}.
    """
    opts = top.get("opts")
    if not isinstance(opts, Mapping):
        raise ConversionError(f"{origin}: no 'opts' dict at the top level (found "
                              f"{type(opts).__name__}); a HyperStyle checkpoint written by the "
                              f"official Coach holds {{'state_dict', 'opts', 'latent_avg', …}}")
    stray = sorted(k for k in sd if not k.startswith(("hypernet.", "decoder.")))
    if stray:
        raise ConversionError(f"{origin}: unexpected keys outside hypernet.* / decoder.* "
                              f"({len(stray)}): {', '.join(stray[:20])}")
    gsrc = SourceDict({k: v for k, v in sd.items() if k.startswith("decoder.")}, origin, "decoder.")
    if not gsrc.sd:
        raise ConversionError(f"{origin}: no decoder.* keys: not a HyperStyle checkpoint")
    gen_config, gen_vars = generator_from_state_dict(gsrc)
    gsrc.finish("decoder")
    check_tree_matches(gen_vars, stylegan2.init_shapes(gen_config), origin, "decoder variables")
    size = opts.get("output_size")
    if size is not None and size != gen_config.size:
        raise ConversionError(f"{origin}: opts['output_size'] = {size} but the decoder is "
                              f"{gen_config.size}px")
    n_out = opts.get("n_hypernet_outputs")
    if n_out is not None and n_out != gen_config.n_convs:
        raise ConversionError(f"{origin}: opts['n_hypernet_outputs'] = {n_out} but a "
                              f"{gen_config.size}px generator has {gen_config.n_convs} convs")

    hsrc = SourceDict({k: v for k, v in sd.items() if k.startswith("hypernet.")}, origin,
                      "hypernet.")
    if not hsrc.sd:
        raise ConversionError(f"{origin}: no hypernet.* keys: not a HyperStyle checkpoint")
    h_config = hypernet_config_from_state_dict(hsrc, opts, gen_config)
    h_vars = hypernet_from_state_dict(hsrc, h_config)
    hsrc.finish("hypernetwork")

    if "latent_avg" not in top:
        raise ConversionError(f"{origin}: no top-level 'latent_avg'")
    la = top["latent_avg"]
    la = _f32(la.detach().cpu().float().numpy() if hasattr(la, "detach") else la)
    n, d = gen_config.n_latent, gen_config.style_dim
    if la.shape in ((d,), (1, d)):
        la = np.broadcast_to(la.reshape(1, d), (n, d)).copy()
    if la.shape != (n, d):
        raise ConversionError(f"{origin}: 'latent_avg' has shape {la.shape}, expected ({n}, {d})")
    config = {"generator": gen_config.to_dict(), "hypernet": h_config.to_dict(),
              "opts": _json_safe(dict(opts))}
    return config, {"hypernet": h_vars, "generator": gen_vars, "latent_avg": la}


# ----------------------------------------------------------------------------- ResNet-34 init


EXTRA_CHANNEL_MODES = ("half", "zeros")


def resnet34_to_hypernet_init(sd: Mapping[str, np.ndarray], origin: str, input_nc: int = 6,
                              extra_channels: str = "half") -> tuple[dict, dict]:
    """torchvision ImageNet ResNet-34 -> the stem and body of a NEW hypernetwork.

    `conv1.weight` [64, 3, 7, 7] is widened to `input_nc` (6: cat[x, y_hat]) input channels.
    extra_channels='half' (default): both halves get the RGB filters * 0.5, so at the start of
    training, when y_hat is close to x, conv1 responds as the pretrained net does to x and
    the pretrained bn1 statistics still fit; 'zeros': the extra channels start at 0 (the
    y_hat half is ignored until trained). The official code uses `torch.randn` here (one of
    its listed bugs), which we do not copy. `layerA.B.*` map to `body.N` (layer1 -> body.0-2,
    layer2 -> 3-6, layer3 -> 7-12, layer4 -> 13-15), which the official computes but then
    does not return; we do map it. `fc.*` (the classifier) is unused and dropped.
    The PReLU slopes (`relu`) and all refinement blocks are not in ResNet-34: they keep
    their fresh initialisation (see `checkpoints.merge_backbone_init`).
    Returns (config, {'params', 'batch_stats'}) with paths conv1, bn1, body_N.
    """
    if extra_channels not in EXTRA_CHANNEL_MODES:
        raise ConversionError(f"extra_channels must be one of {EXTRA_CHANNEL_MODES}, "
                              f"got {extra_channels!r}")
    if input_nc < 3 or input_nc % 3:
        raise ConversionError(f"input_nc must be a multiple of 3 (RGB images), got {input_nc}")
    renamed = {}
    n = 0
    for layer, (_, blocks, _) in enumerate(RESNET34_STAGES, start=1):
        for b in range(blocks):
            for k, v in sd.items():
                if k.startswith(f"layer{layer}.{b}."):
                    renamed[f"body.{n}." + k[len(f"layer{layer}.{b}."):]] = v
            n += 1
    renamed.update({k: v for k, v in sd.items() if not k.startswith("layer")})
    src = SourceDict(renamed, origin)
    model = HypernetBackbone(input_nc=input_nc, stem_width=64, stages=RESNET34_STAGES)
    expected = eval_shape_init(model, jnp.zeros((1, 64, 64, input_nc)))
    expected["params"] = {k: v for k, v in expected["params"].items() if k != "relu"}

    def widened_conv1(src, key, shape):  # shape HWIO (7, 7, input_nc, 64)
        w = _f32(src.take(key, (shape[3], 3, shape[0], shape[1])))
        reps = input_nc // 3
        if extra_channels == "half":
            full = np.concatenate([w / reps] * reps, axis=1)
        else:
            full = np.concatenate([w] + [np.zeros_like(w)] * (reps - 1), axis=1)
        return np.transpose(full, (2, 3, 1, 0))

    variables = from_state_dict(src, expected, {"params/conv1/kernel": widened_conv1})
    src.skip("fc.weight", "fc.bias")
    src.finish("torchvision ResNet-34")
    config = {"input_nc": input_nc, "stem_width": 64, "stages": [list(s) for s in RESNET34_STAGES],
              "extra_channels": extra_channels,
              "note": "stem conv1/bn1 and body only; relu (PReLU) and refinement blocks "
                      "are not included (fresh init)"}
    return config, variables


# ----------------------------------------------------------------------------- files and CLI

def _read(path: str) -> tuple[dict, dict]:
    """(state dict as numpy, other top-level entries) of a torch checkpoint file."""
    obj = load_torch_file(path)
    sd, top = unwrap_state_dict(obj, path, ("state_dict",))
    top = {k: v for k, v in top.items() if k != "state_dict"}
    return to_numpy_state_dict(sd, path), top


def convert_hyperstyle(src_path: str, out_dir: str, log=print) -> dict:
    sd, top = _read(src_path)
    config, tree = hyperstyle_from_state_dict(sd, top, src_path)
    save_converted(out_dir, tree, config, kind=KIND_HYPERSTYLE)
    h = config["hypernet"]
    log(f"{src_path} -> {out_dir}: HyperStyle {config['generator']['size']}px, "
        f"{h['encoder_type']}, tuned layers {h['layers_to_tune'] or 'all'}; hypernet "
        f"{n_params(tree['hypernet']['params']):,} parameters (shared hypernet stored once), "
        f"decoder {n_params(tree['generator']['params']):,}, "
        f"latent_avg {tree['latent_avg'].shape}")
    return config


def convert_w_encoder(src_path: str, out_dir: str, n_styles: int | None = None, log=print) -> dict:
    sd, top = _read(src_path)
    config, variables = w_encoder_from_state_dict(sd, top, src_path, n_styles)
    save_converted(out_dir, variables, config, kind=KIND_W_ENCODER)
    log(f"{src_path} -> {out_dir}: W-encoder ({config['mode']}, {len(config['units'])} units), "
        f"n_styles {config['n_styles']}, style_dim {config['style_dim']}, "
        f"{n_params(variables['params']):,} parameters; dropped {config['dropped']}")
    return config


def convert_resnet34(src_path: str, out_dir: str, extra_channels: str = "half", log=print) -> dict:
    sd, _ = _read(src_path)
    config, variables = resnet34_to_hypernet_init(sd, src_path, extra_channels=extra_channels)
    save_converted(out_dir, variables, config, kind=KIND_RESNET34)
    log(f"{src_path} -> {out_dir}: hypernet stem + 16 BasicBlocks from ResNet-34 "
        f"({n_params(variables['params']):,} parameters), 6-channel conv1 with extra "
        f"channels = {extra_channels}; fc dropped")
    return config


def register(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "hyperstyle", formatter_class=fmt,
        help="official HyperStyle checkpoint (.pt) -> hyperstyle folder",
        description="Convert an official HyperStyle checkpoint (hyperstyle_ffhq.pt, …: "
                    "{'state_dict', 'opts', 'latent_avg', …}) into a folder holding the "
                    "hypernetwork, the decoder and latent_avg; the checkpoint's opts become "
                    "config.json. The W-encoder is a separate file: convert it with w_encoder.")
    p.add_argument("src", help="HyperStyle .pt written by the official Coach")
    p.add_argument("out_dir", help="new output folder (config.json + arrays/)")
    p.set_defaults(func=lambda a: convert_hyperstyle(a.src, a.out_dir))

    p = subparsers.add_parser(
        "w_encoder", formatter_class=fmt,
        help="pSp-format W-encoder (.pt) -> w_encoder folder",
        description="Convert a pSp-format W-encoder (faces_w_encoder.pt, …: 'state_dict' with "
                    "encoder.* and decoder.*). Only the encoder is kept; the decoder copy, "
                    "latent_avg and opts are not needed by HyperStyle and are dropped.")
    p.add_argument("src", help="W-encoder .pt (pSp format)")
    p.add_argument("out_dir", help="new output folder (config.json + arrays/)")
    p.add_argument("--n_styles", type=int, default=None,
                   help="number of W+ rows to repeat w over (default: from opts['output_size'], "
                        "else from the decoder keys; 18 for 1024 generators)")
    p.set_defaults(func=lambda a: convert_w_encoder(a.src, a.out_dir, a.n_styles))

    p = subparsers.add_parser(
        "resnet34", formatter_class=fmt,
        help="torchvision ResNet-34 (.pth) -> init for a new hypernetwork backbone",
        description=__import__("textwrap").dedent("    " + resnet34_to_hypernet_init.__doc__))
    p.add_argument("src", help="resnet34-333f7ec4.pth (torchvision ImageNet weights)")
    p.add_argument("out_dir", help="new output folder (config.json + arrays/)")
    p.add_argument("--extra_channels", choices=EXTRA_CHANNEL_MODES, default="half",
                   help="what conv1's 3 extra input channels (the y_hat half) get: 'half' = both "
                        "halves are the RGB filters x 0.5 (default), 'zeros' = zeros")
    p.set_defaults(func=lambda a: convert_resnet34(a.src, a.out_dir, a.extra_channels))
