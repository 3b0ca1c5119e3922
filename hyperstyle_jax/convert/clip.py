"""CLIP ViT converter: OpenAI state dicts and Hugging Face `CLIPModel` safetensors.

Subcommand of `tools/convert_weights.py`:
  clip SRC OUT_DIR [--text-heads N] [--vision-heads N]
    SRC is one of
    * an OpenAI-layout state dict saved with torch.save (`token_embedding.weight`,
      `transformer.resblocks.N.*`, `visual.*`; the integer entries `input_resolution`,
      `context_length`, `vocab_size` are checked and dropped, as `build_model` does);
    * a Hugging Face `openai/clip-vit-base-patch32` `model.safetensors` (read with the
      `safetensors` package, no torch; a `config.json` next to it supplies the head counts).
    * the released `ViT-B-32.pt`, a TorchScript archive: never `torch.jit.load`ed (that runs
      its code); `read_torchscript_tensors` reads only its tensors, with a restricted
      unpickler. If that fails, export the state dict once where you trust the file:
      python -c "import torch; m = torch.jit.load('ViT-B-32.pt', map_location='cpu'); \\
        torch.save(m.state_dict(), 'ViT-B-32-state_dict.pt')"

Key table (ours `a/b_N/c` <- OpenAI `a.b.N.c`; Linear [out,in] and the patch conv OIHW are
transposed; `text_projection` / `visual.proj` are already [in,out]):
    */attn/in_proj_kernel [d,3d]   <- attn.in_proj_weight [3d,d] (.T)
                                      HF: q|k|v_proj.weight
    */attn/in_proj_bias            <- attn.in_proj_bias                   HF: q|k|v_proj.bias
    */attn/out_proj, mlp/c_fc, mlp/c_proj   <- same names
                                      HF: self_attn.out_proj, mlp.fc1, mlp.fc2
    */ln_1, */ln_2                 <- same names (not list indices)
                                      HF: layer_norm1, layer_norm2
    token_embedding/weight         <- token_embedding.weight (no .T)
                                      HF: text_model.embeddings.token_embedding
    everything else                <- its own name (rule engine default)
                                      HF: table `_HF_TOP` below

Heads cannot be read from shapes. The default is OpenAI's width // 64 (ViT-B/32: 8 text, 12
vision heads); a narrower tower needs `--text-heads` / `--vision-heads` (the fixture's
width-32 text tower has 2 heads), and a width below 64 without a flag is an error.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import re
import zipfile
from typing import Callable, Mapping

import numpy as np

from hyperstyle_jax.checkpoints import save_converted
from hyperstyle_jax.clip.encoder import KIND
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
from hyperstyle_jax.models.clip import CLIPConfig, init_shapes

OPENAI_INT_ENTRIES = ("input_resolution", "context_length", "vocab_size")
EXPORT_HINT = ("python -c \"import torch; torch.save(torch.jit.load('ViT-B-32.pt', "
               "map_location='cpu').state_dict(), 'ViT-B-32-state_dict.pt')\"")


# ----------------------------------------------------------------------------- config


def _count_blocks(sd: Mapping, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    return max(idx) + 1 if idx else 0


def _heads(width: int, given: int | None, tower: str, flag: str, origin: str) -> int:
    if given is not None:
        return int(given)
    if width < 64:
        raise ConversionError(
            f"{origin}: cannot infer the {tower} heads: width {width} < 64 (OpenAI's rule is "
            f"width // 64); pass {flag} N")
    return width // 64


def _config(src: SourceDict, names: Mapping[str, str], text_heads, vision_heads):
    """CLIPConfig from the shapes; `names` gives the key of each shape source in this layout."""
    vocab, width = _shape(src, names["token"], 2, "vocabulary and text width")
    context = _shape(src, names["text_pos"], 2, "context length")[0]
    patch_w = _shape(src, names["conv"], 4, "vision width and patch size")
    n_pos = _shape(src, names["vis_pos"], 2, "vision grid")[0]
    grid = int(round((n_pos - 1) ** 0.5))
    if grid * grid + 1 != n_pos:
        raise ConversionError(f"{src.origin}: {names['vis_pos']} has {n_pos} rows, not 1 + grid²")
    proj = _shape(src, names["proj"], 2, "embedding dimension")
    embed = proj[1] if names["proj_in_out"] else proj[0]
    try:
        return CLIPConfig(
            embed_dim=embed, image_resolution=grid * patch_w[3],
            vision_layers=_count_blocks(src.sd, names["vis_blocks"]), vision_width=patch_w[0],
            vision_patch_size=patch_w[3],
            vision_heads=_heads(patch_w[0], vision_heads, "vision", "--vision-heads", src.origin),
            context_length=context, vocab_size=vocab, transformer_width=width,
            transformer_heads=_heads(width, text_heads, "text", "--text-heads", src.origin),
            transformer_layers=_count_blocks(src.sd, names["text_blocks"]))
    except ValueError as e:
        raise ConversionError(f"{src.origin}: inferred an invalid CLIP config: {e}") from None


# ----------------------------------------------------------------------------- OpenAI layout

_OPENAI_NAMES = {"token": "token_embedding.weight", "text_pos": "positional_embedding",
                 "conv": "visual.conv1.weight", "vis_pos": "visual.positional_embedding",
                 "proj": "text_projection", "proj_in_out": True,
                 "vis_blocks": "visual.transformer.resblocks.",
                 "text_blocks": "transformer.resblocks."}


def _in_proj(src: SourceDict, key: str, shape: tuple) -> np.ndarray:
    # ours in_proj_kernel [d, 3d] <- torch in_proj_weight [3d, d]
    return np.transpose(src.take(key[: -len("in_proj_kernel")] + "in_proj_weight", shape[::-1]))


def _plain(src: SourceDict, key: str, shape: tuple) -> np.ndarray:
    return src.take(key, shape)


def _ln(src: SourceDict, key: str, shape: tuple) -> np.ndarray:
    # the engine reads a trailing `_N` as a list index (`ln.1`); CLIP's names are `ln_1`, `ln_2`
    return src.take(re.sub(r"\.ln\.([12])\.", r".ln_\1.", key), shape)


def _block_paths(config) -> list[str]:
    return ([f"params/transformer/resblocks_{i}" for i in range(config.transformer_layers)]
            + [f"params/visual/transformer/resblocks_{i}" for i in range(config.vision_layers)])


def openai_from_state_dict(sd: Mapping[str, np.ndarray], origin: str = "clip",
                           text_heads: int | None = None, vision_heads: int | None = None):
    """OpenAI `CLIP.state_dict()` (name -> array) -> (CLIPConfig, variables {'params'})."""
    if "visual.conv1.weight" not in sd:
        hint = (" (a ResNet CLIP: only the ViT branch is supported)"
                if "visual.layer1.0.conv1.weight" in sd else "")
        raise ConversionError(f"{origin}: not an OpenAI CLIP ViT state dict: no "
                              f"'visual.conv1.weight'{hint}; found {sorted(sd)[:8]}")
    src = SourceDict(sd, origin)
    config = _config(src, _OPENAI_NAMES, text_heads, vision_heads)
    for name in OPENAI_INT_ENTRIES:  # build_model deletes them; they must agree with the shapes
        if name in sd:
            want = {"input_resolution": config.image_resolution,
                    "context_length": config.context_length, "vocab_size": config.vocab_size}[name]
            if np.asarray(sd[name]).size != 1 or int(np.asarray(sd[name])) != want:
                raise ConversionError(f"{origin}: {name} = {np.asarray(sd[name]).tolist()}, but "
                                      f"the weights' shapes give {want}")
            src.skip(name)
    custom: dict[str, Callable] = {"params/token_embedding/weight": _plain}
    for b in _block_paths(config):
        custom[f"{b}/attn/in_proj_kernel"] = _in_proj
        custom.update({f"{b}/{ln}/{leaf}": _ln for ln in ("ln_1", "ln_2")
                       for leaf in ("weight", "bias")})
    variables = from_state_dict(src, init_shapes(config), custom)
    src.finish("CLIP ViT (OpenAI layout)")
    check_tree_matches(variables, init_shapes(config), origin)
    return config, variables


# ----------------------------------------------------------------------------- Hugging Face layout

_HF_NAMES = {"token": "text_model.embeddings.token_embedding.weight",
             "text_pos": "text_model.embeddings.position_embedding.weight",
             "conv": "vision_model.embeddings.patch_embedding.weight",
             "vis_pos": "vision_model.embeddings.position_embedding.weight",
             "proj": "text_projection.weight", "proj_in_out": False,
             "vis_blocks": "vision_model.encoder.layers.",
             "text_blocks": "text_model.encoder.layers."}

# our path (after 'params/') -> (HF key, transpose a 2-D [out,in] matrix)
_HF_TOP = {
    "token_embedding/weight": ("text_model.embeddings.token_embedding.weight", False),
    "positional_embedding": ("text_model.embeddings.position_embedding.weight", False),
    "ln_final/weight": ("text_model.final_layer_norm.weight", False),
    "ln_final/bias": ("text_model.final_layer_norm.bias", False),
    "text_projection": ("text_projection.weight", True),
    "logit_scale": ("logit_scale", False),
    "visual/class_embedding": ("vision_model.embeddings.class_embedding", False),
    "visual/positional_embedding": ("vision_model.embeddings.position_embedding.weight", False),
    "visual/ln_pre/weight": ("vision_model.pre_layrnorm.weight", False),  # sic: HF's spelling
    "visual/ln_pre/bias": ("vision_model.pre_layrnorm.bias", False),
    "visual/ln_post/weight": ("vision_model.post_layernorm.weight", False),
    "visual/ln_post/bias": ("vision_model.post_layernorm.bias", False),
    "visual/proj": ("visual_projection.weight", True),
}
_HF_BLOCK = {  # inside a block: our sub-path -> HF sub-key
    "attn/out_proj/kernel": "self_attn.out_proj.weight",
    "attn/out_proj/bias": "self_attn.out_proj.bias",
    "ln_1/weight": "layer_norm1.weight", "ln_1/bias": "layer_norm1.bias",
    "ln_2/weight": "layer_norm2.weight", "ln_2/bias": "layer_norm2.bias",
    "mlp/c_fc/kernel": "mlp.fc1.weight", "mlp/c_fc/bias": "mlp.fc1.bias",
    "mlp/c_proj/kernel": "mlp.fc2.weight", "mlp/c_proj/bias": "mlp.fc2.bias",
}
_HF_POSITION_IDS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def _hf_rule(key: str, transpose: bool) -> Callable:
    def rule(src: SourceDict, _torch_key: str, shape: tuple) -> np.ndarray:
        if transpose:
            return np.transpose(src.take(key, shape[::-1]))
        return src.take(key, shape)
    return rule


def _hf_qkv(prefix: str, leaf: str) -> Callable:
    def rule(src: SourceDict, _torch_key: str, shape: tuple) -> np.ndarray:
        d = shape[0]
        if leaf == "kernel":  # [d, 3d] <- cat(q, k, v) of [d, d] (out,in), transposed
            return np.concatenate([np.transpose(src.take(f"{prefix}{n}_proj.weight", (d, d)))
                                   for n in "qkv"], axis=1)
        return np.concatenate([src.take(f"{prefix}{n}_proj.bias", (d // 3,)) for n in "qkv"])
    return rule


def hf_from_state_dict(sd: Mapping[str, np.ndarray], origin: str = "clip",
                       text_heads: int | None = None, vision_heads: int | None = None):
    """Hugging Face `CLIPModel` weights (name -> array) -> (CLIPConfig, variables {'params'})."""
    src = SourceDict(sd, origin)
    config = _config(src, _HF_NAMES, text_heads, vision_heads)
    custom: dict[str, Callable] = {f"params/{p}": _hf_rule(k, t) for p, (k, t) in _HF_TOP.items()}
    custom["params/visual/conv1/kernel"] = lambda s, _k, shape: np.transpose(
        s.take("vision_model.embeddings.patch_embedding.weight",
               (shape[3], shape[2], shape[0], shape[1])), (2, 3, 1, 0))
    towers = [("params/transformer/resblocks_", "text_model.encoder.layers.",
               config.transformer_layers),
              ("params/visual/transformer/resblocks_", "vision_model.encoder.layers.",
               config.vision_layers)]
    for ours, theirs, n in towers:
        for i in range(n):
            for sub, key in _HF_BLOCK.items():
                custom[f"{ours}{i}/{sub}"] = _hf_rule(f"{theirs}{i}.{key}", sub.endswith("kernel"))
            custom[f"{ours}{i}/attn/in_proj_kernel"] = _hf_qkv(f"{theirs}{i}.self_attn.", "kernel")
            custom[f"{ours}{i}/attn/in_proj_bias"] = _hf_qkv(f"{theirs}{i}.self_attn.", "bias")
    variables = from_state_dict(src, init_shapes(config), custom)
    src.skip(*_HF_POSITION_IDS)  # arange buffers that older transformers saved
    src.finish("CLIP ViT (Hugging Face layout)")
    check_tree_matches(variables, init_shapes(config), origin)
    return config, variables


def convert_state_dict(sd: Mapping[str, np.ndarray], origin: str = "clip",
                       text_heads: int | None = None, vision_heads: int | None = None):
    """Either layout, recognised by its keys -> (CLIPConfig, variables, layout name)."""
    if "text_model.embeddings.token_embedding.weight" in sd:
        return (*hf_from_state_dict(sd, origin, text_heads, vision_heads), "huggingface")
    if "token_embedding.weight" in sd:
        return (*openai_from_state_dict(sd, origin, text_heads, vision_heads), "openai")
    raise ConversionError(
        f"{origin}: not a CLIP checkpoint: expected 'token_embedding.weight' (OpenAI layout) or "
        f"'text_model.embeddings.token_embedding.weight' (Hugging Face CLIPModel); "
        f"found {sorted(sd)[:8]}")


# ----------------------------------------------------------------------------- reading files


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


_STORAGE_DTYPES = {"FloatStorage": np.float32, "HalfStorage": np.float16,
                   "DoubleStorage": np.float64, "LongStorage": np.int64,
                   "IntStorage": np.int32, "ShortStorage": np.int16,
                   "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
                   "BFloat16Storage": "bfloat16"}


class _ScriptModule:
    """Stand-in for a TorchScript `__torch__.*` class: it only keeps the pickled attributes."""

    def __setstate__(self, state):
        self.__dict__["_state"] = state if isinstance(state, dict) else {}


def _rebuild_tensor(storage, offset, size, stride, *_rest):
    arr, item = storage
    view = np.lib.stride_tricks.as_strided(arr[offset:], shape=tuple(size),
                                           strides=tuple(s * item for s in stride))
    return np.array(view)


def read_torchscript_tensors(path: str) -> dict[str, np.ndarray]:
    """name -> array of a TorchScript archive (the released `ViT-B-32.pt`), without running it.

    `data.pkl` is read by a restricted unpickler that resolves only tensor rebuilding, typed
    storages and OrderedDict to our own functions and every `__torch__.*` class to an inert
    attribute holder; any other global is refused, as torch's weights_only loader does. The
    archive's code (`code/`) is never read. Keys are attribute paths, as `state_dict()` gives
    for a traced module (a scripted module's extra tensor attributes, e.g. `attn_mask`, would
    surface as unexpected keys).
    """
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise ConversionError(f"{path}: TorchScript archive without a single top-level "
                                  "data.pkl")
        root = pkl[0][: -len("data.pkl")]
        cache: dict = {}

        class Restricted(pickle.Unpickler):
            def find_class(self, module, name):
                if module.startswith("__torch__"):
                    return _ScriptModule
                if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                    return _rebuild_tensor
                if (module, name) == ("collections", "OrderedDict"):
                    return dict
                if module == "torch" and name in _STORAGE_DTYPES:
                    return name
                raise pickle.UnpicklingError(f"refused global {module}.{name}")

            def persistent_load(self, pid):
                if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
                    raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
                if pid[2] in cache:  # several tensors may view one storage
                    return cache[pid[2]]
                dtype = _STORAGE_DTYPES[pid[1]]
                raw = z.read(f"{root}data/{pid[2]}")
                if dtype == "bfloat16":  # top 16 bits of a float32
                    arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
                else:
                    arr = np.frombuffer(raw, np.dtype(dtype).newbyteorder("<"))
                cache[pid[2]] = (arr, arr.itemsize)
                return cache[pid[2]]

        try:
            obj = Restricted(io.BytesIO(z.read(pkl[0]))).load()
        except (pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError) as e:
            raise ConversionError(
                f"{path}: cannot read this TorchScript archive's tensors safely ({_oneline(e)}); "
                f"export its state dict where you trust the file: {EXPORT_HINT}") from None
    out: dict[str, np.ndarray] = {}

    def walk(node, prefix):
        for k, v in getattr(node, "_state", {}).items():
            if isinstance(v, np.ndarray):
                out[prefix + k] = v
            elif isinstance(v, _ScriptModule):
                walk(v, f"{prefix}{k}.")

    walk(obj, "")
    return out


def _oneline(e: Exception) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:200]


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file  # noqa: PLC0415  optional extra (convert)
    except ImportError:
        raise ConversionError(f"{path}: reading .safetensors needs the safetensors package "
                              "(pip install safetensors)") from None
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    try:
        return dict(load_file(path))
    except Exception as e:  # safetensors raises its own error types; name the file
        raise ConversionError(f"{path}: not a readable safetensors file: "
                              f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from None


def _hf_config_heads(path: str) -> tuple[int | None, int | None]:
    """num_attention_heads of text/vision from a Hugging Face config.json beside the weights."""
    cfg = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if not os.path.isfile(cfg):
        return None, None
    try:
        with open(cfg) as f:
            c = json.load(f)
        return (c.get("text_config", {}).get("num_attention_heads"),
                c.get("vision_config", {}).get("num_attention_heads"))
    except (OSError, json.JSONDecodeError, AttributeError):
        return None, None


def read_clip_file(path: str) -> dict[str, np.ndarray]:
    """name -> array of a CLIP weight file (.safetensors, or a torch state dict)."""
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    if os.path.isfile(path) and _is_torchscript(path):
        return read_torchscript_tensors(path)
    obj = load_torch_file(path)
    if isinstance(obj, Mapping) and ("token_embedding.weight" in obj
                                     or "text_model.embeddings.token_embedding.weight" in obj):
        sd = dict(obj)  # a bare state dict, possibly with plain-int entries
    else:
        sd, _ = unwrap_state_dict(obj, path, ("state_dict", "model"))
    ints = {k: np.asarray(v) for k, v in sd.items()
            if isinstance(v, int) and not isinstance(v, bool)}
    return {**to_numpy_state_dict({k: v for k, v in sd.items() if k not in ints}, path), **ints}


def convert_file(path: str, text_heads: int | None = None, vision_heads: int | None = None):
    """(CLIPConfig, variables, layout) of a weight file; HF head counts from its config.json."""
    sd = read_clip_file(path)
    if "text_model.embeddings.token_embedding.weight" in sd:
        th, vh = _hf_config_heads(path)
        text_heads = text_heads if text_heads is not None else th
        vision_heads = vision_heads if vision_heads is not None else vh
    return convert_state_dict(sd, path, text_heads, vision_heads)


# ----------------------------------------------------------------------------- CLI


def _run(args) -> None:
    config, variables, layout = convert_file(args.src, args.text_heads, args.vision_heads)
    save_converted(args.out_dir, variables,
                   {**config.to_dict(), "source": args.src, "source_layout": layout}, KIND)
    print(f"wrote CLIP ViT-{config.vision_width}/{config.vision_patch_size} "
          f"(embed {config.embed_dim}, "
          f"text {config.transformer_width}x{config.transformer_layers}, "
          f"{config.transformer_heads} heads; vision {config.vision_heads} heads; {layout} layout) "
          f"to {args.out_dir}")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "clip", help="OpenAI CLIP ViT (state dict .pt or Hugging Face model.safetensors)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="OpenAI-layout state dict .pt, or Hugging Face model.safetensors")
    p.add_argument("out_dir", help="new output folder (config.json + arrays/)")
    p.add_argument("--text-heads", type=int, default=None,
                   help="text attention heads (default: a HF config.json beside SRC, "
                        "else width // 64)")
    p.add_argument("--vision-heads", type=int, default=None,
                   help="vision attention heads (default: a HF config.json beside SRC, "
                        "else width // 64)")
    p.set_defaults(func=_run)
