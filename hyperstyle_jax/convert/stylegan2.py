"""rosinality StyleGAN2 checkpoints -> hyperstyle_jax generator folders.

  python tools/convert_weights.py stylegan2 stylegan2-ffhq-config-f.pt ckpt/stylegan2_ffhq

Input: `{'g_ema': state_dict, 'latent_avg': (512,)}` (rosinality's convert_weight.py),
a checkpoint's `'g'` (--which g), or a bare generator state dict. rosinality's train.py
checkpoints also pickle `args` (an argparse.Namespace), which safe loading refuses:
re-save `{'g_ema': ckpt['g_ema']}` in a trusted environment first. Size, style_dim, n_mlp and
the channel table are read off the shapes. Every key goes through the shared engine and
`GENERATOR_RULES`; the conversion fails listing every missing, misshaped or
unexpected key. Output: `save_converted` folder of kind 'stylegan2' holding
{'params', 'noises', 'latent_avg' (if present)} and the GeneratorConfig as config.json.
"""
from __future__ import annotations

import argparse

import numpy as np

from hyperstyle_jax.checkpoints import save_converted
from hyperstyle_jax.convert.common import (
    ConversionError,
    SourceDict,
    check_tree_matches,
    conv_weight,
    from_state_dict,
    load_torch_file,
    to_numpy_state_dict,
    unwrap_state_dict,
)
from hyperstyle_jax.models.ops import make_kernel
from hyperstyle_jax.models.stylegan2 import GeneratorConfig, init_shapes
from hyperstyle_jax.utils.trees import n_params

KIND = "stylegan2"


def _infer_config(src: SourceDict):
    """GeneratorConfig from the shapes under `src.prefix`; raises naming what is missing."""
    p = src.prefix

    def shape(key, ndim):
        if not src.has(key):
            raise ConversionError(f"{src.origin}: cannot infer the generator architecture: "
                                  f"key {p + key!r} is missing")
        s = tuple(src.sd[p + key].shape)
        if len(s) != ndim:
            raise ConversionError(f"{src.origin}: cannot infer the generator architecture: "
                                  f"{p + key} has shape {s}, expected {ndim} dimensions")
        return s

    n_mlp = 0
    while src.has(f"style.{n_mlp + 1}.weight"):
        n_mlp += 1
    style_dim = shape("conv1.conv.modulation.weight", 2)[1]
    c4 = shape("input.input", 4)[1]
    channels = [(4, c4)]
    n_blocks = 0
    while (src.has(f"convs.{2 * n_blocks}.conv.weight")
           or src.has(f"to_rgbs.{n_blocks}.conv.weight")):
        channels.append((2 ** (n_blocks + 3), shape(f"convs.{2 * n_blocks}.conv.weight", 5)[1]))
        n_blocks += 1
    if n_blocks == 0:
        raise ConversionError(f"{src.origin}: no '{p}convs.0.conv.weight': not a StyleGAN2 "
                              "generator of size >= 8")
    if n_mlp == 0:
        raise ConversionError(f"{src.origin}: no '{p}style.1.weight': the mapping network "
                              "is missing")
    try:
        return GeneratorConfig(size=2 ** (n_blocks + 2), style_dim=style_dim, n_mlp=n_mlp,
                               channels=tuple(channels))
    except ValueError as e:
        raise ConversionError(f"{src.origin}: inferred an invalid generator config: {e}") from None


def _take_constant(src: SourceDict, key: str, expected: np.ndarray, what: str) -> None:
    """A fixed FIR buffer: consumed, and checked to equal the architecture's constant."""
    got = src.take(key, expected.shape)
    if src.has(key) and got.shape == expected.shape and not np.allclose(got, expected, rtol=1e-5,
                                                                       atol=1e-7):
        src.misshaped.append(f"{src.prefix + key}: values differ from {what} "
                             f"(max |diff| {np.abs(got - expected).max():.3g}); a different "
                             "blur kernel is not supported")


def _modconv_weight(src, key, shape):   # [1, O, I, k, k] -> [k, k, I, O]
    k, _, i, o = shape
    return conv_weight(src.take(key, (1, o, i, k, k))[0])


def _nchw_constant(src, key, shape):    # input.input [1, C, 4, 4] -> [1, 4, 4, C]
    return np.transpose(src.take(key, (shape[0], shape[3], shape[1], shape[2])), (0, 2, 3, 1))


def _rgb_bias(src, key, shape):         # [1, 3, 1, 1] -> [3]
    return src.take(key, (1, 3, 1, 1)).reshape(3)


def _noise(src, key, shape):            # noises.noise_i [1, 1, H, W] -> [1, H, W, 1]
    return np.transpose(src.take(f"noises.{key}", (1, 1, shape[1], shape[2])), (0, 2, 3, 1))


# Leaves that need more than the engine's rename (`a_N/b` <-> `a.N.b`, EqualLinear [in, out]).
GENERATOR_RULES = (
    (r"params/[^/]+/conv/weight", _modconv_weight),
    (r"params/input/input", _nchw_constant),
    (r"params/to_rgb(1|s_\d+)/bias", _rgb_bias),
    (r"noises/noise_\d+", _noise),
)


def generator_from_state_dict(src: SourceDict):
    """Map a rosinality generator state dict (under `src.prefix`) to Flax variables.

    Returns (GeneratorConfig, {'params': ..., 'noises': ...}) of numpy arrays. The model's
    `init_shapes` tree drives the shared engine with `GENERATOR_RULES`, so every key is
    read with `src.take` and the caller's `src.finish()` reports anything missing,
    misshaped or left over. Official key -> our path:

      style.{i}.weight [D, D]              -> params/style_{i}/weight     (transposed)
      style.{i}.bias                       -> params/style_{i}/bias
      input.input [1, C, 4, 4]             -> params/input/input          [1, 4, 4, C]
      L.conv.weight [1, O, I, k, k]        -> params/L/conv/weight        [k, k, I, O]
      L.conv.modulation.weight [I, D]      -> params/L/conv/modulation/weight  [D, I]
      L.conv.modulation.bias [I]           -> params/L/conv/modulation/bias
      L.noise.weight [1], L.activate.bias  -> params/L/noise/weight, params/L/activate/bias
      to_rgb*.bias [1, 3, 1, 1]            -> params/to_rgb*/bias         [3]
      convs.{2b}.conv.blur.kernel, to_rgbs.{b}.upsample.kernel   (checked constants)
      noises.noise_{i} [1, 1, H, W]        -> noises/noise_{i}            [1, H, W, 1]
    with L in conv1, to_rgb1, convs_{n}, to_rgbs_{b} (dots become underscores).
    """
    config = _infer_config(src)
    variables = from_state_dict(src, init_shapes(config), rules=GENERATOR_RULES)
    blur = make_kernel(config.blur_kernel) * 4
    blur_what = f"make_kernel({list(config.blur_kernel)}) * 4"
    for b in range(config.log_size - 2):
        _take_constant(src, f"convs.{2 * b}.conv.blur.kernel", blur, blur_what)
        _take_constant(src, f"to_rgbs.{b}.upsample.kernel", blur, blur_what)
    return config, variables


def latent_avg_from(top: dict, config, origin: str):
    """The checkpoint's 'latent_avg' as [style_dim] (or [n_latent, style_dim]); None if absent."""
    if "latent_avg" not in top:
        return None
    v = top["latent_avg"]
    if not hasattr(v, "shape"):
        raise ConversionError(f"{origin}: 'latent_avg' is a {type(v).__name__}, not a tensor")
    v = to_numpy_state_dict({"latent_avg": v}, origin)["latent_avg"].astype(np.float32)
    d = config.style_dim
    if v.shape in ((d,), (1, d)):
        return v.reshape(d)
    if v.shape == (config.n_latent, d):
        return v
    raise ConversionError(f"{origin}: 'latent_avg' has shape {tuple(v.shape)}, expected ({d},), "
                          f"(1, {d}) or ({config.n_latent}, {d})")


def convert_stylegan2(src_path: str, out_dir: str, which: str | None = None, log=print):
    """Read a rosinality .pt, convert, check against the model, write `out_dir`."""
    obj = load_torch_file(src_path)
    candidates = (which,) if which else ("g_ema", "g")
    sd, top = unwrap_state_dict(obj, src_path, candidates)
    src = SourceDict(to_numpy_state_dict(sd, src_path), origin=src_path)
    config, variables = generator_from_state_dict(src)
    src.finish("StyleGAN2 generator")
    check_tree_matches(variables, init_shapes(config), src_path, "generator variables")
    tree = dict(variables)
    latent_avg = latent_avg_from(top, config, src_path)
    if latent_avg is not None:
        tree["latent_avg"] = latent_avg
    save_converted(out_dir, tree, config.to_dict(), kind=KIND)
    n = n_params(variables["params"])
    log(f"{src_path} -> {out_dir}: StyleGAN2 {config.size}px, style_dim {config.style_dim}, "
        f"n_mlp {config.n_mlp}, channels {dict(config.channels)}, {n:,} parameters, "
        f"{config.num_layers} noise buffers, latent_avg "
        f"{'(none)' if latent_avg is None else tuple(latent_avg.shape)}")
    return config


def _run(args) -> None:
    convert_stylegan2(args.src, args.out_dir, which=args.which)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "stylegan2", help="rosinality StyleGAN2 generator (.pt) -> generator folder",
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="rosinality checkpoint .pt ({'g_ema', 'latent_avg'}, "
                               "a training checkpoint's 'g', or a bare state dict)")
    p.add_argument("out_dir", help="new output folder (config.json + arrays/)")
    p.add_argument("--which", choices=("g_ema", "g"), default=None,
                   help="which top-level generator to convert (default: g_ema, else g)")
    p.set_defaults(func=_run)
