"""StyleGAN2 image discriminators -> `discriminator` folders (`models/discriminator.py`).

  python tools/convert_weights.py discriminator 550000.pt ckpt/d_ffhq          (rosinality `d`)
  python tools/convert_weights.py stylegan2_ada snapshot.pkl ckpt/d --which D  (NVIDIA `D`)

One Flax module, two tables: NVIDIA's (`convert/stylegan2_ada.py` `NVIDIA_D_RULES`: its
keys are ours) and rosinality's, here (`Discriminator` of its model.py, the `d` of a training
checkpoint, read with torch.load(weights_only=True)), with i = log2(size/R) + 1:

  convs.0.0.weight / convs.0.1.bias            -> b{size}/fromrgb/weight / bias
  convs.{i}.conv1.0.weight / conv1.1.bias      -> b{R}/conv0/weight / bias
  convs.{i}.conv2.1.weight / conv2.2.bias      -> b{R}/conv1/weight / bias
  convs.{i}.skip.1.weight                      -> b{R}/skip/weight
  convs.{i}.conv2.0.kernel, skip.0.kernel      checked constants make_kernel([1, 3, 3, 1])
  final_conv.0.weight / final_conv.1.bias      -> b4/conv/weight / bias
  final_linear.0.* / final_linear.1.*          -> b4/fc/* / b4/out/*

rosinality's train.py checkpoints also pickle `args`, which safe loading refuses: re-save
`{'d': ckpt['d']}` in a trusted environment first. Output: config.json (DiscriminatorConfig)
and arrays {'params'}; `checkpoints.load_discriminator(DIR)` reads it back.
"""
from __future__ import annotations

import argparse
import math
import re

import numpy as np

from hyperstyle_jax.checkpoints import KIND_DISCRIMINATOR, save_converted
from hyperstyle_jax.convert.common import (
    ConversionError,
    SourceDict,
    _shape,
    check_tree_matches,
    from_state_dict,
    load_torch_file,
    to_numpy_state_dict,
    unwrap_state_dict,
)
from hyperstyle_jax.models import discriminator as dmodel
from hyperstyle_jax.models.ops import make_kernel
from hyperstyle_jax.utils.trees import n_params

KIND = KIND_DISCRIMINATOR


def weight_rule(src: SourceDict, key: str, shape: tuple) -> np.ndarray:
    """Conv [O, I, k, k] -> [k, k, I, O]; linear [out, in] -> [in, out]."""
    if len(shape) == 4:
        return np.transpose(src.take(key, (shape[3], shape[2], shape[0], shape[1])), (2, 3, 1, 0))
    return np.transpose(src.take(key, shape[::-1]))


# ----------------------------------------------------------------------------- rosinality


def rosinality_config(src: SourceDict) -> dmodel.DiscriminatorConfig:
    """DiscriminatorConfig read off the shapes of a rosinality `d` state dict."""
    top = _shape(src, "convs.0.0.weight", 4, "discriminator input width")[0]
    n = 0
    while src.has(f"convs.{n + 1}.conv1.0.weight"):
        n += 1
    if n == 0:
        raise ConversionError(f"{src.origin}: no 'convs.1.conv1.0.weight': not a StyleGAN2 "
                              "discriminator of size >= 8")
    size = 2 ** (n + 2)
    widths = {size: top}
    for i in range(1, n + 1):
        widths[size >> i] = _shape(src, f"convs.{i}.conv2.1.weight", 4, "discriminator widths")[0]
    try:
        return dmodel.DiscriminatorConfig(size=size, channels=tuple(sorted(widths.items())))
    except ValueError as e:
        raise ConversionError(f"{src.origin}: inferred an invalid discriminator: {e}") from None


def _rosinality_rule(size: int):
    top = int(math.log2(size))

    def key_of(key: str) -> str:
        if m := re.fullmatch(r"b(\d+)\.(fromrgb|conv0|conv1|skip)\.(weight|bias)", key):
            i = top - int(math.log2(int(m[1]))) + 1
            layer, leaf = m[2], m[3]
            if layer == "fromrgb":
                return "convs.0.0.weight" if leaf == "weight" else "convs.0.1.bias"
            sub = {"conv0": ("conv1", 0), "conv1": ("conv2", 1), "skip": ("skip", 1)}[layer]
            return f"convs.{i}.{sub[0]}.{sub[1] + (leaf == 'bias')}.{leaf}"
        if m := re.fullmatch(r"b4\.conv\.(weight|bias)", key):
            return f"final_conv.{int(m[1] == 'bias')}.{m[1]}"
        if m := re.fullmatch(r"b4\.(fc|out)\.(weight|bias)", key):
            return f"final_linear.{int(m[1] == 'out')}.{m[2]}"
        raise ConversionError(f"internal: no rosinality key for {key!r}")

    def rule(src: SourceDict, key: str, shape: tuple) -> np.ndarray:
        theirs = key_of(key)
        if key.endswith("weight"):
            return weight_rule(src, theirs, shape)
        return src.take(theirs, shape)

    return rule


def rosinality_from_state_dict(src: SourceDict):
    """(DiscriminatorConfig, {'params'}) of a rosinality `d` state dict (caller: finish())."""
    config = rosinality_config(src)
    variables = from_state_dict(src, dmodel.init_shapes(config),
                                rules=((r"params/.+", _rosinality_rule(config.size)),))
    want = make_kernel(config.blur_kernel)
    for i in range(1, len(config.block_resolutions) + 1):
        for k in (f"convs.{i}.conv2.0.kernel", f"convs.{i}.skip.0.kernel"):
            got = src.take(k, want.shape)
            if got.shape == want.shape and not np.allclose(got, want, rtol=1e-5, atol=1e-7):
                src.misshaped.append(f"{k}: not make_kernel([1, 3, 3, 1]); another blur "
                                     "kernel is not supported")
    return config, variables


def convert_rosinality_discriminator(src_path: str, out_dir: str, log=print):
    obj = load_torch_file(src_path)
    sd, _ = unwrap_state_dict(obj, src_path, ("d",))
    src = SourceDict(to_numpy_state_dict(sd, src_path), origin=src_path)
    config, variables = rosinality_from_state_dict(src)
    src.finish("StyleGAN2 discriminator")
    return save(variables, config, src_path, out_dir, log)


def save(variables, config, origin: str, out_dir: str, log=print):
    """Check {'params'} against the model and write a discriminator folder."""
    check_tree_matches(variables, dmodel.init_shapes(config), origin, "discriminator params")
    save_converted(out_dir, variables, config.to_dict(), kind=KIND)
    n = n_params(variables["params"])
    log(f"{origin} -> {out_dir}: StyleGAN2 discriminator ({config.family}) {config.size}px, "
        f"{config.architecture}, c_dim {config.c_dim}, mbstd group {config.mbstd_group_size}, "
        f"channels {dict(config.channels)}, {n:,} parameters")
    return config


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "discriminator", help="rosinality StyleGAN2 discriminator (.pt key 'd') -> "
                              "discriminator folder (NVIDIA's: stylegan2_ada --which D)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="rosinality checkpoint .pt holding 'd' (or a bare D state dict)")
    p.add_argument("out_dir", help="new output folder (config.json + arrays/)")
    p.set_defaults(func=lambda args: convert_rosinality_discriminator(args.src, args.out_dir))
