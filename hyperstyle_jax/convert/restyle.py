"""ReStyle-e4e checkpoints (`restyle_e4e_ffhq_encode.pt`) -> `restyle_e4e` folders.

  python tools/convert_weights.py restyle_e4e restyle_e4e_ffhq_encode.pt ckpt/restyle_e4e_ffhq

Input: the official ReStyle format `{'state_dict': {'encoder.*', 'decoder.*'}, 'latent_avg',
'opts', …}` (official `utils/model_utils.py` `load_model`). Only
`ProgressiveBackboneEncoder` (IR-SE, the released FFHQ model) is supported; the ResNet-34
variant is refused by name.

Kept:
* `encoder.*` -> the `models.e4e.ProgressiveBackboneEncoder` variables. The unit table,
  widths, input channels, number of heads and their conv count come from the shapes.
* `decoder.*` -> a generator ({'params', 'noises'}), **kept**: the official `run_on_batch`
  renders the average image and every iteration's y_hat with the ReStyle checkpoint's own
  decoder (`e4e.load_weights` loads it strict), and the encoder was trained against it, so
  dropping it (or substituting HyperStyle's) would change the W+ latents.
* `latent_avg` ([n_styles, 512]; a [512] one is repeated), added at iteration 0.
* `opts` -> config.json (`dataset_type` switches on the cars crops).
Ignored: ReStyle's training extras at the top level (`global_step`, `optimizer`,
`best_val_loss`, discriminator states), which inference never reads.
Every key of `state_dict` must be consumed: missing, misshaped or unexpected keys are
listed in one error line.
"""
from __future__ import annotations

import argparse
from typing import Mapping

import numpy as np

from hyperstyle_jax.checkpoints import save_converted
from hyperstyle_jax.convert.common import (
    ConversionError,
    SourceDict,
    _f32,
    _json_safe,
    _shape,
    check_tree_matches,
    from_state_dict,
)
from hyperstyle_jax.convert.hyperstyle import _read, infer_ir_units
from hyperstyle_jax.convert.stylegan2 import generator_from_state_dict
from hyperstyle_jax.models import e4e, stylegan2
from hyperstyle_jax.utils.trees import n_params

KIND = "restyle_e4e"
SUPPORTED_ENCODER = "ProgressiveBackboneEncoder"


def _count(src: SourceDict, fmt: str) -> int:
    n = 0
    while src.has(fmt.format(n)):
        n += 1
    return n


def encoder_config_from_state_dict(src: SourceDict) -> dict:
    """The `ProgressiveBackboneEncoder` config from the shapes under `src.prefix`."""
    units, mode = infer_ir_units(src)
    input_width, input_nc = _shape(src, "input_layer.0.weight", 4, "ReStyle input layer")[:2]
    n_styles = _count(src, "styles.{}.linear.weight")
    if n_styles == 0:
        raise ConversionError(f"{src.origin}: no '{src.prefix}styles.0.linear.weight': not a "
                              f"ReStyle-e4e ProgressiveBackboneEncoder")
    style_dim = _shape(src, "styles.0.linear.weight", 2, "ReStyle style heads")[0]
    # Sequential indices 0, 2, 4, … are the convs (odd ones are LeakyReLUs).
    n_convs = 0
    while src.has(f"styles.0.convs.{2 * n_convs}.weight"):
        n_convs += 1
    return {"n_styles": int(n_styles), "style_dim": int(style_dim),
            "units": [list(u) for u in units], "input_width": int(input_width),
            "input_nc": int(input_nc), "mode": mode, "spatial": 2 ** n_convs}


def restyle_e4e_from_state_dict(sd: Mapping[str, np.ndarray], top: Mapping, origin: str
                                ) -> tuple[dict, dict]:
    """Official ReStyle-e4e checkpoint contents -> (config, tree).

    sd: the `state_dict` (`encoder.*`, `decoder.*`); top: the other top-level entries.
    config = {'encoder': encoder config, 'generator': GeneratorConfig dict, 'opts': dict};
    tree = {'encoder': {'params', 'batch_stats'}, 'generator': {'params', 'noises'},
            'latent_avg': [n_styles, style_dim]}.
    """
    opts = top.get("opts") if isinstance(top.get("opts"), Mapping) else {}
    enc_type = opts.get("encoder_type", SUPPORTED_ENCODER)
    if enc_type != SUPPORTED_ENCODER:
        raise ConversionError(f"{origin}: opts['encoder_type'] = {enc_type!r}; only "
                              f"{SUPPORTED_ENCODER!r} (IR-SE-50, the released ReStyle-e4e FFHQ "
                              f"model) is supported")
    stray = sorted(k for k in sd if not k.startswith(("encoder.", "decoder.")))
    if stray:
        raise ConversionError(f"{origin}: unexpected keys outside encoder.* / decoder.* "
                              f"({len(stray)}): {', '.join(stray[:20])}")
    esrc = SourceDict({k: v for k, v in sd.items() if k.startswith("encoder.")}, origin, "encoder.")
    if not esrc.sd:
        raise ConversionError(f"{origin}: no encoder.* keys: not a ReStyle-e4e checkpoint")
    enc_config = encoder_config_from_state_dict(esrc)
    expected = e4e.init_shapes(enc_config)
    enc_vars = from_state_dict(esrc, expected)
    esrc.finish("ReStyle-e4e encoder")
    check_tree_matches(enc_vars, expected, origin, "encoder variables")

    gsrc = SourceDict({k: v for k, v in sd.items() if k.startswith("decoder.")}, origin, "decoder.")
    if not gsrc.sd:
        raise ConversionError(f"{origin}: no decoder.* keys: the ReStyle iterations render with "
                              f"the checkpoint's own decoder, which is missing")
    gen_config, gen_vars = generator_from_state_dict(gsrc)
    gsrc.finish("decoder")
    check_tree_matches(gen_vars, stylegan2.init_shapes(gen_config), origin, "decoder variables")

    n, d = enc_config["n_styles"], enc_config["style_dim"]
    if (n, d) != (gen_config.n_latent, gen_config.style_dim):
        raise ConversionError(f"{origin}: the encoder has {n} style heads of {d} but the "
                              f"{gen_config.size}px decoder needs {gen_config.n_latent} x "
                              f"{gen_config.style_dim}")
    size = opts.get("output_size")
    if size is not None and size != gen_config.size:
        raise ConversionError(f"{origin}: opts['output_size'] = {size} but the decoder is "
                              f"{gen_config.size}px")
    if "latent_avg" not in top:
        raise ConversionError(f"{origin}: no top-level 'latent_avg' (e4e adds it at iteration 0)")
    la = top["latent_avg"]
    la = _f32(la.detach().cpu().float().numpy() if hasattr(la, "detach") else la)
    if la.shape in ((d,), (1, d)):
        la = np.broadcast_to(la.reshape(1, d), (n, d)).copy()
    if la.shape != (n, d):
        raise ConversionError(f"{origin}: 'latent_avg' has shape {la.shape}, expected ({n}, {d})")
    config = {"encoder": enc_config, "generator": gen_config.to_dict(),
              "opts": _json_safe(dict(opts))}
    return config, {"encoder": enc_vars, "generator": gen_vars, "latent_avg": la}


def convert_restyle_e4e(src_path: str, out_dir: str, log=print) -> dict:
    sd, top = _read(src_path)
    config, tree = restyle_e4e_from_state_dict(sd, top, src_path)
    save_converted(out_dir, tree, config, kind=KIND)
    e, g = config["encoder"], config["generator"]
    log(f"{src_path} -> {out_dir}: ReStyle-e4e ({e['mode']}, {len(e['units'])} units, "
        f"{e['n_styles']} style heads of {e['style_dim']}), "
        f"{n_params(tree['encoder']['params']):,} encoder parameters; decoder {g['size']}px "
        f"kept ({n_params(tree['generator']['params']):,}); latent_avg "
        f"{tree['latent_avg'].shape}")
    return config


def register(subparsers) -> None:
    p = subparsers.add_parser(
        KIND, formatter_class=argparse.RawDescriptionHelpFormatter,
        help="official ReStyle-e4e checkpoint (.pt) -> restyle_e4e folder (domain adaptation)",
        description=__doc__)
    p.add_argument("src", help="ReStyle-e4e .pt (restyle_e4e_ffhq_encode.pt)")
    p.add_argument("out_dir", help="new output folder (config.json + arrays/)")
    p.set_defaults(func=lambda a: convert_restyle_e4e(a.src, a.out_dir))
