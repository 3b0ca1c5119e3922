"""Converters for the frozen loss / metric networks: LPIPS, ArcFace (ID), MoCo.

Subcommands of `tools/convert_weights.py`:
  lpips    FEATURES LIN OUT_DIR  [--net alex|vgg]
           FEATURES: torchvision AlexNet / VGG-16 weights (`features.N.*`; `classifier.*`
           is ignored), a bare `features` state dict (`N.*`) or a full official LPIPS module
           state dict (`net.layers.N.*`, `lin.*`, `net.mean`, `net.std`).
           LIN: the linear-layer weights, with the keys of the `lpips` package / the
           PerceptualSimilarity file (`lin{i}.model.1.weight`), of the official port after
           its renaming (`{i}.1.weight`) or of a full LPIPS module (`lin.{i}.1.weight`).
           LIN may be the same file as FEATURES.
  arcface  SRC.pth OUT_DIR  `model_ir_se50.pth` (IR-SE-50, ID loss) or
           `CurricularFace_Backbone.pth` (IR-101, ID metric): a bare Backbone state dict;
           depth, mode (ir / ir_se) and the final BatchNorm's affinity come from the keys.
  moco     SRC.pt OUT_DIR   `moco_v2_800ep_pretrain.pt`: `state_dict` `module.encoder_q.*`
           becomes a ResNet-50 trunk; `fc.*`, `encoder_k.*`, `queue*` are dropped. A plain
           torchvision ResNet-50 state dict (`conv1.weight`, ..., `fc.*`) is accepted too.

Cores are functions on name -> array dicts (`*_from_state_dict`), so tests convert
full-size key listings without writing files. Every mapping is strict (`SourceDict`:
each missing, misshaped or unused key is named), and the converted tree must equal
`jax.eval_shape` of the model's init, path for path. The ArcFace and ResNet-50 key
tables are the shared ones in `convert/hyperstyle.py` (`arcface_from_state_dict`, which
also reorders `output_layer.3.weight` from NCHW- to NHWC-flatten order, and
`resnet50_trunk_from_state_dict`); `num_batches_tracked` is dropped (never read).
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from hyperstyle_jax.checkpoints import save_converted
from hyperstyle_jax.convert import hyperstyle
from hyperstyle_jax.convert.common import (
    ConversionError,
    SourceDict,
    check_tree_matches,
    conv_weight,
    load_torch_file,
    to_numpy_state_dict,
    unwrap_state_dict,
)
from hyperstyle_jax.losses.id_loss import arcface_eval_shape
from hyperstyle_jax.losses.lpips import LPIPS, LPIPS_SCALE, LPIPS_SHIFT, NET_CHANNELS
from hyperstyle_jax.losses.moco import moco_eval_shape

LPIPS_KIND, ARCFACE_KIND, MOCO_KIND = "lpips", "arcface", "moco"


def _skip_num_batches_tracked(src: SourceDict) -> None:
    for k in list(src.sd):
        if k.startswith(src.prefix) and k.endswith(".num_batches_tracked"):
            src.skip(k[len(src.prefix):])


# ----------------------------------------------------------------------------- LPIPS


LIN_KEY_FORMATS = ("lin{i}.model.1.weight", "lin.{i}.1.weight", "{i}.1.weight")
TRUNK_PREFIXES = ("features.", "net.layers.", "layers.", "")


def lpips_expected(net_type: str) -> dict:
    """`jax.eval_shape` of the LPIPS init (a tree of ShapeDtypeStructs)."""
    z = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    return jax.eval_shape(lambda a, b: LPIPS(net_type=net_type).init(jax.random.PRNGKey(0), a, b),
                          z, z)


def _infer_lpips_net(sd: Mapping[str, np.ndarray], prefix: str) -> str:
    return "vgg" if f"{prefix}28.weight" in sd else "alex"


def lpips_from_state_dict(features_sd: Mapping[str, np.ndarray], lin_sd: Mapping[str, np.ndarray],
                          features_origin: str = "features", lin_origin: str = "lin",
                          net_type: str | None = None) -> tuple[dict, dict]:
    """Torch name -> array dicts -> (LPIPS variables, config). Strict on both dicts."""
    prefix = next((p for p in TRUNK_PREFIXES if f"{p}0.weight" in features_sd), None)
    if prefix is None:
        raise ConversionError(
            f"{features_origin}: no AlexNet/VGG feature weights found: expected a key "
            f"'features.0.weight' (torchvision), 'net.layers.0.weight' (LPIPS module) or "
            f"'0.weight'; found {sorted(features_sd)[:12]}")
    net_type = net_type or _infer_lpips_net(features_sd, prefix)
    if net_type not in NET_CHANNELS:
        raise ConversionError(f"--net {net_type!r}: expected one of {sorted(NET_CHANNELS)}")
    expected = lpips_expected(net_type)
    params = expected["params"]

    same_file = features_sd is lin_sd
    src = SourceDict(features_sd, features_origin, prefix)
    trunk = {}
    for name, leaves in params["net"].items():  # 'layers_N' <- '{prefix}N.*'
        idx = name.split("_")[1]
        k = leaves["kernel"].shape
        trunk[name] = {
            "kernel": conv_weight(np.asarray(src.take(f"{idx}.weight", (k[3], k[2], k[0], k[1])),
                                             np.float32)),
            "bias": np.asarray(src.take(f"{idx}.bias", leaves["bias"].shape), np.float32)}
    if prefix == "features.":  # a whole torchvision model: its classifier is not LPIPS
        src.used.update(k for k in features_sd if k.startswith("classifier."))
    if prefix == "net.layers.":
        for name, want in (("net.mean", LPIPS_SHIFT), ("net.std", LPIPS_SCALE)):
            if name in features_sd:
                got = np.asarray(features_sd[name], np.float32).reshape(-1)
                if got.shape != (3,) or not np.allclose(got, want, atol=1e-6):
                    raise ConversionError(f"{features_origin}: {name} = {got.tolist()}, expected "
                                          f"the LPIPS constants {list(want)}")
                src.used.add(name)

    fmt = next((f for f in LIN_KEY_FORMATS if f.format(i=0) in lin_sd), None)
    if fmt is None:
        raise ConversionError(
            f"{lin_origin}: no LPIPS linear-layer weights found: expected keys like "
            f"{', '.join(repr(f.format(i=0)) for f in LIN_KEY_FORMATS)}; "
            f"found {sorted(lin_sd)[:12]}")
    lin_src = SourceDict(lin_sd, lin_origin)
    out = {"net": trunk}
    for i, ch in enumerate(NET_CHANNELS[net_type]):
        w = lin_src.take(fmt.format(i=i), (1, ch, 1, 1))
        out[f"lin_{i}"] = {"kernel": conv_weight(np.asarray(w, np.float32))}
    what = f"LPIPS {net_type} features"
    if same_file:  # one dict read through two prefixes: report it once, as one file
        src.used |= lin_src.used
        src.missing += lin_src.missing
        src.misshaped += lin_src.misshaped
        src.finish(f"{what} and linear layers")
    else:
        src.finish(what)
        lin_src.finish(f"LPIPS {net_type} linear layers")
    variables = {"params": out}
    check_tree_matches(variables, expected, f"{features_origin} + {lin_origin}")
    return variables, {"net_type": net_type}


# ----------------------------------------------------------------------------- ArcFace


def arcface_from_state_dict(sd: Mapping[str, np.ndarray], origin: str = "arcface"
                            ) -> tuple[dict, dict]:
    """Official `Backbone` state dict -> (variables, config)."""
    config = hyperstyle.arcface_config_from_keys(sd, origin)
    src = SourceDict(sd, origin)
    variables = hyperstyle.arcface_from_state_dict(src, config)
    _skip_num_batches_tracked(src)
    src.finish(f"{config['mode']}-{config['num_layers']} backbone")
    check_tree_matches(variables, arcface_eval_shape(config), origin)
    return variables, config


# ----------------------------------------------------------------------------- MoCo


def moco_from_state_dict(sd: Mapping[str, np.ndarray], origin: str = "moco") -> tuple[dict, dict]:
    """MoCo (`module.encoder_q.*`) or torchvision ResNet-50 state dict -> (variables, config)."""
    for prefix in ("module.encoder_q.", "encoder_q.", ""):
        if f"{prefix}conv1.weight" in sd:
            break
    else:
        raise ConversionError(
            f"{origin}: no ResNet-50 query encoder found: expected 'module.encoder_q.conv1.weight' "
            f"(MoCo v2 checkpoint) or 'conv1.weight' (torchvision); found {sorted(sd)[:12]}")
    src = SourceDict(sd, origin, prefix)
    variables = hyperstyle.resnet50_trunk_from_state_dict(src)
    _skip_num_batches_tracked(src)
    src.skip("fc.")  # the MoCo projection head (fc.0, fc.2) or torchvision's classifier
    if prefix:  # the momentum encoder and the queue: training state, unused by the loss
        src.used.update(k for k in sd if k.startswith(("module.encoder_k.", "encoder_k.",
                                                        "module.queue", "queue")))
    src.finish("ResNet-50 query encoder")
    check_tree_matches(variables, moco_eval_shape(), origin)
    return variables, {"arch": "resnet50", "source_prefix": prefix}


# ----------------------------------------------------------------------------- CLI


def _read_state_dict(path: str, candidates=("state_dict",)) -> dict[str, np.ndarray]:
    obj = load_torch_file(path)
    sd, _ = unwrap_state_dict(obj, path, candidates)
    return to_numpy_state_dict(sd, path)


def _run_lpips(args) -> None:
    feats = _read_state_dict(args.features)
    same = args.lin == args.features
    lin = feats if same else _read_state_dict(args.lin)
    variables, config = lpips_from_state_dict(feats, lin, args.features, args.lin,
                                              None if args.net == "auto" else args.net)
    save_converted(args.out, variables, {**config, "source": [args.features, args.lin]}, LPIPS_KIND)
    print(f"wrote LPIPS ({config['net_type']}) to {args.out}")


def _run_arcface(args) -> None:
    sd = _read_state_dict(args.src)
    variables, config = arcface_from_state_dict(sd, args.src)
    save_converted(args.out, variables, {**config, "source": args.src}, ARCFACE_KIND)
    print(f"wrote {config['mode']}-{config['num_layers']} ArcFace backbone to {args.out}")


def _run_moco(args) -> None:
    sd = _read_state_dict(args.src)
    variables, config = moco_from_state_dict(sd, args.src)
    save_converted(args.out, variables, {**config, "source": args.src}, MOCO_KIND)
    print(f"wrote MoCo ResNet-50 trunk to {args.out}")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "lpips", help="LPIPS trunk (torchvision AlexNet/VGG-16) + linear layers",
        description="Convert LPIPS v0.1 weights: the torchvision AlexNet (or VGG-16) feature "
                    "weights plus the linear-layer file (lpips package keys "
                    "'lin{i}.model.1.weight', or the official port's '{i}.1.weight' / "
                    "'lin.{i}.1.weight'). The two may be one file (a full LPIPS module state "
                    "dict).")
    p.add_argument("features", help="torchvision alexnet/vgg16 .pth (features.N.*), or an LPIPS "
                                    "module state dict (net.layers.N.*)")
    p.add_argument("lin", help="linear-layer weights, e.g. lpips/weights/v0.1/alex.pth from the "
                               "lpips package (may equal FEATURES)")
    p.add_argument("out", help="output folder (must not already hold a checkpoint)")
    p.add_argument("--net", choices=("auto", "alex", "vgg"), default="auto",
                   help="trunk type (default: inferred from the keys)")
    p.set_defaults(func=_run_lpips)

    p = subparsers.add_parser(
        "arcface", help="ArcFace IR-SE-50 (ID loss) or CurricularFace IR-101 (ID metric)",
        description="Convert an official Backbone state dict (model_ir_se50.pth, "
                    "CurricularFace_Backbone.pth). Depth, mode and affinity come from the keys.")
    p.add_argument("src", help="model_ir_se50.pth or CurricularFace_Backbone.pth")
    p.add_argument("out", help="output folder (must not already hold a checkpoint)")
    p.set_defaults(func=_run_arcface)

    p = subparsers.add_parser(
        "moco", help="MoCo v2 ResNet-50 query encoder (MoCo loss)",
        description="Convert moco_v2_800ep_pretrain.pt: module.encoder_q.* without fc becomes a "
                    "ResNet-50 trunk (2048-d pooled features).")
    p.add_argument("src", help="moco_v2_800ep_pretrain.pt (or a torchvision resnet50 state dict)")
    p.add_argument("out", help="output folder (must not already hold a checkpoint)")
    p.set_defaults(func=_run_moco)
