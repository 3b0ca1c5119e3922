"""NVIDIA StyleGAN2-ADA network pickles -> generator / discriminator folders, never run.

  python tools/convert_weights.py stylegan2_ada network-snapshot-025000.pkl ckpt/my_gan
  python tools/convert_weights.py stylegan2_ada network-snapshot-025000.pkl ckpt/my_d --which D

NVIDIA's snapshots (stylegan2-ada-pytorch `training/training_loop.py`) are plain pickles of
{'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'} whose networks are
`torch_utils.persistence` objects: unpickling them normally executes the source code stored
inside the file. `read_snapshot` instead uses a restricted unpickler: the persistence hook,
`training.networks.*`, `dnnlib.EasyDict`, torch's tensor / storage rebuilders, OrderedDict
and numpy scalars resolve to data-only stand-ins of ours (a `Network` keeps a class name, its
`init_kwargs` and its tensors as numpy); the stored source is never read, nothing is
imported from the pickle, and any other class is refused in one line naming it.

--which G_ema (default; what NVIDIA renders) or G: a `stylegan2` generator folder
(GeneratorConfig family 'stylegan2_ada'; `latent_avg` = the tracked `mapping.w_avg`, so
truncation uses it). --which D: a `discriminator` folder. Only architecture 'skip'
generators (every NVIDIA config) and 'resnet' / 'orig' discriminators are read; StyleGAN3
pickles are refused (see `STYLEGAN3`). Generator key table (NVIDIA -> ours, `_ada_key`):

  mapping.fc{i}.weight [out, in] / .bias    -> params/style_{i+1}/weight [in, out] / bias
  mapping.embed.weight / .bias              -> params/embed/...          (c_dim > 0)
  mapping.w_avg [w_dim]                     -> latent_avg
  synthesis.b4.const [C, 4, 4]              -> params/input/input [1, 4, 4, C]
  synthesis.b4.conv1 / b4.torgb             -> params/conv1 / params/to_rgb1
  synthesis.b{R}.conv0 / conv1 / torgb      -> params/convs_{2b} / convs_{2b+1} / to_rgbs_{b}
      (R = 2**(b + 3)); inside each layer:
    weight [O, I, k, k]                     -> conv/weight [k, k, I, O]
    affine.weight / affine.bias             -> conv/modulation/weight (transposed) / bias
    noise_strength []                       -> noise/weight [1]
    bias                                    -> activate/bias (to_rgb*: bias)
    noise_const [R, R]                      -> noises/noise_{i} [1, R, R, 1]
  *.resample_filter                         checked to be setup_filter([1, 3, 3, 1])
"""
from __future__ import annotations

import argparse
import io
import math
import os
import pickle
import re
from typing import Any, Mapping

import numpy as np

from hyperstyle_jax.checkpoints import save_converted
from hyperstyle_jax.convert import discriminator
from hyperstyle_jax.convert.clip import _STORAGE_DTYPES, _rebuild_tensor
from hyperstyle_jax.convert.common import (
    ConversionError,
    SourceDict,
    check_tree_matches,
    from_state_dict,
)
from hyperstyle_jax.models import discriminator as dmodel
from hyperstyle_jax.models.ops import make_kernel
from hyperstyle_jax.models.stylegan2 import GeneratorConfig, init_shapes
from hyperstyle_jax.utils.trees import n_params

KIND = "stylegan2"
NETWORKS = ("G_ema", "G", "D")
STYLEGAN3 = ("not supported yet: StyleGAN3's generator (Fourier-feature input, alias-free "
             "filtered layers without per-layer noise or modulated up-convs) is a different "
             "network from StyleGAN2's, so neither our generator nor HyperStyle's per-layer "
             "weight offsets map onto it")
# Classes of stylegan2-ada-pytorch `training/networks.py` (+ `training/augment.py`).
ADA_CLASSES = frozenset({
    "FullyConnectedLayer", "Conv2dLayer", "MappingNetwork", "SynthesisLayer", "ToRGBLayer",
    "SynthesisBlock", "SynthesisNetwork", "Generator", "DiscriminatorBlock",
    "MinibatchStdLayer", "DiscriminatorEpilogue", "Discriminator", "AugmentPipe"})
STYLEGAN3_CLASSES = frozenset({"SynthesisInput"})
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C   # torch's legacy (non-zip) torch.save format
_LEGACY_PROTOCOL = 1001


# ----------------------------------------------------------------------------- stand-ins


class Network:
    """Data-only stand-in for one of NVIDIA's persistent torch modules.

    class_name: NVIDIA's class ('Generator', 'SynthesisLayer', ...); state: the module's
    pickled `__dict__` (`_parameters`, `_buffers`, `_modules`, `_init_kwargs`, attributes).
    """

    class_name = ""
    state: dict = {}

    def __init__(self, class_name: str = "", state: Any = None):
        self.class_name = class_name
        self.state = state if isinstance(state, dict) else {}

    def __setstate__(self, state):  # a directly pickled module (pickle BUILD)
        self.state = state if isinstance(state, dict) else {}

    @property
    def init_kwargs(self) -> dict:
        return _plain(self.state.get("_init_kwargs") or {})

    def state_dict(self, prefix: str = "") -> dict[str, np.ndarray]:
        """`module.state_dict()` as name -> float32 numpy (parameters, persistent buffers)."""
        st, out = self.state, {}
        skip = set(st.get("_non_persistent_buffers_set") or ())
        for group in ("_parameters", "_buffers"):
            for k, v in (st.get(group) or {}).items():
                if v is None or k in skip:
                    continue
                if not isinstance(v, np.ndarray):
                    raise ConversionError(f"{prefix}{k} is a {type(v).__name__}, not a tensor")
                out[prefix + k] = v.astype(np.float32)
        for k, m in (st.get("_modules") or {}).items():
            if isinstance(m, Network):
                out.update(m.state_dict(f"{prefix}{k}."))
            elif m is not None:
                raise ConversionError(f"submodule {prefix}{k} is a {type(m).__name__}, "
                                      "not a network")
        return out


class _EasyDict(dict):
    """`dnnlib.EasyDict` stand-in: a dict (pickled by NEWOBJ + SETITEMS)."""


class _Refused(pickle.UnpicklingError):
    """A global the reader does not resolve; the message is the user's one line."""


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(x) for x in v)
    return v


class _DType:
    """`numpy.dtype(name, align, copy)` stand-in; numeric kinds only, byte order from BUILD."""

    def __init__(self, name, align=False, copy=False):
        dt = np.dtype(str(name))
        if dt.kind not in "biuf":
            raise _Refused(f"the pickle asks for a numpy dtype {name!r}, not a number")
        self.dtype, self.order = dt, "<"

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in "<>|=":
            self.order = state[1]


def _scalar(dtype, data=None):
    """`numpy.core.multiarray.scalar` stand-in: a numeric numpy scalar from its bytes."""
    if not isinstance(dtype, _DType) or not isinstance(data, bytes):
        raise _Refused("the pickle asks for a numpy scalar that is not a plain number")
    order = "<" if dtype.order in "|=" else dtype.order
    return np.frombuffer(data, dtype.dtype.newbyteorder(order), count=1)[0]


def _tensor(storage, offset, size, stride, *rest):
    """`torch._utils._rebuild_tensor(_v2)` stand-in: a copy of the viewed elements, after
    checking that the view stays inside its storage (as_strided itself does not check)."""
    arr = storage[0] if isinstance(storage, tuple) and len(storage) == 2 else None
    ok = (isinstance(arr, np.ndarray) and isinstance(offset, int) and
          isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))
          and len(size) == len(stride) and all(isinstance(v, int) and v >= 0
                                                for v in (offset, *size, *stride)))
    if not ok or (0 not in size and
                  offset + sum((n - 1) * st for n, st in zip(size, stride)) >= len(arr)):
        raise _Refused(f"a tensor view (offset {offset!r:.20}, size {size!r:.40}) outside its "
                       "storage")
    if 0 in size:
        return np.zeros(tuple(size), arr.dtype)
    return _rebuild_tensor(storage, offset, size, stride, *rest)


def _parameter(data, *_rest):          # torch._utils._rebuild_parameter(_with_state)
    return data


def _load_from_bytes(data: bytes):
    """`torch.storage._load_from_bytes` stand-in: one storage of torch's legacy format.

    Layout (torch `_legacy_save`): pickles of the magic number, the protocol, sys_info and
    the storage (as a persistent id), the list of storage keys, then per key an int64
    element count and the raw little-endian bytes. -> (flat numpy array, itemsize).
    """
    if not isinstance(data, bytes):
        raise _Refused("torch.storage._load_from_bytes without bytes")
    f = io.BytesIO(data)
    found: dict = {}

    class Storage(pickle.Unpickler):
        def find_class(self, module, name):
            if module == "torch" and name in _STORAGE_DTYPES:
                return name
            raise _Refused(f"the pickle asks for {module}.{name} inside a tensor storage")

        def persistent_load(self, pid):
            if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                    and pid[1] in _STORAGE_DTYPES):
                raise _Refused(f"unexpected storage id {pid!r:.80}")
            if len(pid) > 5 and pid[5] is not None:
                raise _Refused("a storage view (torch < 1.0 layout) is not supported")
            found[str(pid[2])] = pid[1]
            return str(pid[2])

    if Storage(f).load() != _LEGACY_MAGIC or Storage(f).load() != _LEGACY_PROTOCOL:
        raise _Refused("a tensor storage is not in torch's legacy format")
    info = Storage(f).load()
    if isinstance(info, dict) and not info.get("little_endian", True):
        raise _Refused("a big-endian tensor storage is not supported")
    key = Storage(f).load()
    arrays = {}
    for k in Storage(f).load():
        n = int.from_bytes(f.read(8), "little")
        dtype = _STORAGE_DTYPES[found[str(k)]]
        item = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        raw = f.read(n * item)
        if len(raw) != n * item:
            raise EOFError("tensor storage ends early")
        if dtype == "bfloat16":  # the top 16 bits of a float32
            arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, np.dtype(dtype).newbyteorder("<"))
        arrays[str(k)] = (arr, arr.itemsize)
    return arrays[key]


def _reconstruct_persistent_obj(meta):
    """`torch_utils.persistence._reconstruct_persistent_obj` stand-in: never runs module_src."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise _Refused("a persistent object that is not a class instance")
    name = str(meta.get("class_name"))
    if name in STYLEGAN3_CLASSES:
        raise _Refused(f"STYLEGAN3: persistent class {name}")
    if name not in ADA_CLASSES:
        raise _Refused(f"the pickle holds a persistent class {name!r}, which is not one of "
                       "stylegan2-ada-pytorch's networks")
    return Network(name, meta.get("state"))


def _network_class(name: str) -> type:
    """Stand-in for `training.networks.<name>` pickled by reference (NEWOBJ + BUILD)."""
    return type(name, (Network,), {"class_name": name})


_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _tensor,
    ("torch._utils", "_rebuild_tensor"): _tensor,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("collections", "OrderedDict"): dict,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    ("numpy", "dtype"): _DType,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}
_NETWORK_CLASSES = {name: _network_class(name) for name in ADA_CLASSES}


class _SnapshotUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        if module in ("training.networks", "training.augment") and name in ADA_CLASSES:
            return _NETWORK_CLASSES[name]
        if module.startswith("training.networks_stylegan3"):
            raise _Refused(f"STYLEGAN3: class {module}.{name}")
        if module.startswith("dnnlib.tflib"):
            raise _Refused(f"the pickle asks for {module}.{name}: a TensorFlow StyleGAN2 "
                           "pickle; convert it to a PyTorch one with NVIDIA's legacy.py first")
        raise _Refused(f"the pickle asks for {module}.{name}, which is not part of a "
                       "StyleGAN2-ADA network pickle")

    def persistent_load(self, pid):
        raise _Refused(f"unexpected persistent id {pid!r:.80} (not an NVIDIA snapshot)")


def read_snapshot(path: str) -> dict:
    """The top-level dict of an NVIDIA network pickle, networks as `Network` stand-ins.

    Raises ConversionError in one line for a missing / truncated file, a pickle that asks
    for anything but the data classes above (nothing from it is run), or a StyleGAN3 pickle.
    """
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise ConversionError(f"{path}: file is empty")
    try:
        with open(path, "rb") as f:
            obj = _SnapshotUnpickler(f).load()
    except _Refused as e:
        msg = str(e)
        if msg.startswith("STYLEGAN3: "):
            raise ConversionError(f"{path}: a StyleGAN3 pickle ({msg[len('STYLEGAN3: '):]}): "
                                  f"{STYLEGAN3}") from None
        raise ConversionError(f"{path}: refused: {msg}; nothing from the file was run "
                              "(only StyleGAN2-ADA network data is read)") from None
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, MemoryError, RecursionError) as e:
        raise ConversionError(f"{path}: not a readable network pickle (truncated or corrupt?): "
                              f"{type(e).__name__}: {' '.join(str(e).split())[:160]}") from None
    if not isinstance(obj, dict) or not any(isinstance(obj.get(k), Network) for k in NETWORKS):
        found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ConversionError(f"{path}: not a StyleGAN2-ADA snapshot: expected networks "
                              f"{list(NETWORKS)}, found {found}")
    return obj


def network_state_dict(net: Network, origin: str) -> dict[str, np.ndarray]:
    """`net.state_dict()`, its problems reported as one line naming `origin`."""
    try:
        return net.state_dict()
    except ConversionError as e:
        raise ConversionError(f"{origin}: {e}") from None


def snapshot_network(snapshot: Mapping, which: str, path: str) -> Network:
    """snapshot[which] ('G_ema', 'G' or 'D'), or one line naming what the pickle holds."""
    net = snapshot.get(which)
    if not isinstance(net, Network):
        held = [k for k in NETWORKS if isinstance(snapshot.get(k), Network)]
        raise ConversionError(f"{path}: no {which!r} network in this pickle (it holds "
                              f"{', '.join(held)})")
    return net


# ----------------------------------------------------------------------------- generator


def _unsupported(origin: str, what: str) -> ConversionError:
    return ConversionError(f"{origin}: {what} is not supported")


def generator_config(net: Network, origin: str):
    """GeneratorConfig (family 'stylegan2_ada') from a Generator's init_kwargs."""
    if net.class_name != "Generator":
        raise ConversionError(f"{origin}: expected a Generator, found {net.class_name}")
    kw = net.init_kwargs
    try:
        z_dim, c_dim, w_dim = int(kw["z_dim"]), int(kw["c_dim"]), int(kw["w_dim"])
        res, img_channels = int(kw["img_resolution"]), int(kw["img_channels"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConversionError(f"{origin}: the generator's init_kwargs lack {e}") from None
    mk, sk = dict(kw.get("mapping_kwargs") or {}), dict(kw.get("synthesis_kwargs") or {})
    if img_channels != 3:
        raise _unsupported(origin, f"img_channels {img_channels} (only RGB)")
    if z_dim != w_dim:
        raise _unsupported(origin, f"z_dim {z_dim} != w_dim {w_dim}")
    for k in ("embed_features", "layer_features"):
        if mk.get(k) not in (None, w_dim):
            raise _unsupported(origin, f"mapping {k}={mk[k]} (other than w_dim)")
    if mk.get("activation", "lrelu") != "lrelu" or sk.get("activation", "lrelu") != "lrelu":
        raise _unsupported(origin, "an activation other than 'lrelu'")
    if sk.get("architecture", "skip") != "skip":
        raise _unsupported(origin, f"generator architecture {sk['architecture']!r} (only "
                                   "'skip', which every stylegan2-ada-pytorch config trains)")
    if list(sk.get("resample_filter", [1, 3, 3, 1])) != [1, 3, 3, 1]:
        raise _unsupported(origin, f"resample_filter {sk['resample_filter']}")
    if sk.get("use_noise", True) is not True or sk.get("kernel_size", 3) != 3:
        raise _unsupported(origin, "use_noise=False or a kernel_size other than 3")
    try:
        return GeneratorConfig.stylegan2_ada(
            res, w_dim=w_dim, n_mlp=int(mk.get("num_layers", 8)),
            channel_base=int(sk.get("channel_base", 32768)),
            channel_max=int(sk.get("channel_max", 512)), c_dim=c_dim,
            conv_clamp=None if sk.get("conv_clamp") is None else float(sk["conv_clamp"]),
            lr_mlp=float(mk.get("lr_multiplier", 0.01)))
    except ValueError as e:
        raise ConversionError(f"{origin}: invalid generator config: {e}") from None


_LAYER_LEAF = {"conv.weight": "weight", "conv.modulation.weight": "affine.weight",
               "conv.modulation.bias": "affine.bias", "noise.weight": "noise_strength",
               "activate.bias": "bias", "bias": "bias"}


def _ada_key(key: str) -> str:
    """Our generator's torch-style key (`convs.3.conv.weight`) -> NVIDIA's state-dict key."""
    if m := re.fullmatch(r"style\.(\d+)\.(weight|bias)", key):
        return f"mapping.fc{int(m[1]) - 1}.{m[2]}"
    if m := re.fullmatch(r"embed\.(weight|bias)", key):
        return f"mapping.embed.{m[1]}"
    if key == "input.input":
        return "synthesis.b4.const"
    m = re.fullmatch(r"(conv1|to_rgb1|convs\.\d+|to_rgbs\.\d+)\.(.+)", key)
    if not m or m[2] not in _LAYER_LEAF:
        raise ConversionError(f"internal: no NVIDIA key for {key!r}")
    layer, leaf = m[1], _LAYER_LEAF[m[2]]
    if layer == "conv1":
        block = "b4.conv1"
    elif layer == "to_rgb1":
        block = "b4.torgb"
    elif layer.startswith("convs."):
        n = int(layer.split(".")[1])
        block = f"b{2 ** (n // 2 + 3)}.conv{n % 2}"
    else:
        block = f"b{2 ** (int(layer.split('.')[1]) + 3)}.torgb"
    return f"synthesis.{block}.{leaf}"


def _ada_param(src: SourceDict, key: str, shape: tuple) -> np.ndarray:
    nv = _ada_key(key)
    if key == "input.input":                        # [C, 4, 4] -> [1, 4, 4, C]
        return np.transpose(src.take(nv, (shape[3], shape[1], shape[2])), (1, 2, 0))[None]
    if len(shape) == 4:                             # [O, I, k, k] -> [k, k, I, O]
        return np.transpose(src.take(nv, (shape[3], shape[2], shape[0], shape[1])), (2, 3, 1, 0))
    if key.endswith("noise.weight"):                # [] -> [1]
        return src.take(nv, ()).reshape(1)
    if len(shape) == 2:                             # [out, in] -> [in, out]
        return np.transpose(src.take(nv, shape[::-1]))
    return src.take(nv, shape)


def _ada_noise(src: SourceDict, key: str, shape: tuple) -> np.ndarray:
    i = int(key.rsplit("_", 1)[1])                  # noise_0 = b4.conv1, then 2 per block
    layer = "b4.conv1" if i == 0 else f"b{2 ** ((i - 1) // 2 + 3)}.conv{(i - 1) % 2}"
    return src.take(f"synthesis.{layer}.noise_const", shape[1:3]).reshape(shape)


# Every leaf needs a rename (legacy.py-style table): params by `_ada_key`, noise buffers.
ADA_GENERATOR_RULES = (
    (r"params/.+", _ada_param),
    (r"noises/noise_\d+", _ada_noise),
)


def take_resample_filters(src: SourceDict) -> None:
    """Consume every `*.resample_filter`, checked to be NVIDIA's setup_filter([1, 3, 3, 1])."""
    want = make_kernel([1, 3, 3, 1])
    for k in [k for k in src.sd if k.endswith("resample_filter")]:
        got = src.take(k, want.shape)
        if got.shape == want.shape and not np.allclose(got, want, rtol=1e-5, atol=1e-7):
            src.misshaped.append(f"{k}: not setup_filter([1, 3, 3, 1]); another resample "
                                 "filter is not supported")


def generator_from_state_dict(src: SourceDict, config: GeneratorConfig):
    """({'params', 'noises'}, w_avg [w_dim] or None) of an NVIDIA G state dict, through the
    shared engine and `ADA_GENERATOR_RULES`; the caller ends with `src.finish()`."""
    variables = from_state_dict(src, init_shapes(config), rules=ADA_GENERATOR_RULES)
    take_resample_filters(src)
    w_avg = src.take("mapping.w_avg", (config.style_dim,)) if src.has("mapping.w_avg") else None
    return variables, w_avg


def generator_from_network(net: Network, origin: str):
    """(GeneratorConfig, {'params', 'noises'}, w_avg [w_dim] or None) of an NVIDIA Generator."""
    config = generator_config(net, origin)
    src = SourceDict(network_state_dict(net, origin), origin)
    variables, w_avg = generator_from_state_dict(src, config)
    src.finish("StyleGAN2-ADA generator")
    check_tree_matches(variables, init_shapes(config), origin, "generator variables")
    return config, variables, w_avg


# ----------------------------------------------------------------------------- discriminator


# NVIDIA's D keys are ours (`b{R}.conv0.weight` <-> b{R}/conv0/weight); only the layouts change.
NVIDIA_D_RULES = ((r"params/.+/weight", discriminator.weight_rule),)




def discriminator_config(net, origin: str) -> dmodel.DiscriminatorConfig:
    """DiscriminatorConfig (family 'stylegan2_ada') from an NVIDIA Discriminator's init_kwargs."""
    if net.class_name != "Discriminator":
        raise ConversionError(f"{origin}: expected a Discriminator, found {net.class_name}")
    kw = net.init_kwargs
    try:
        c_dim, size = int(kw["c_dim"]), int(kw["img_resolution"])
        img_channels = int(kw["img_channels"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConversionError(f"{origin}: the discriminator's init_kwargs lack {e}") from None
    bk, mk, ek = (dict(kw.get(k) or {}) for k in ("block_kwargs", "mapping_kwargs",
                                                  "epilogue_kwargs"))
    arch = kw.get("architecture", "resnet")
    if img_channels != 3 or arch not in ("resnet", "orig"):
        raise ConversionError(f"{origin}: a discriminator with img_channels {img_channels}, "
                              f"architecture {arch!r} is not supported (RGB; 'resnet' or 'orig')")
    if any(d.get("activation", "lrelu") != "lrelu" for d in (bk, mk, ek)) or \
            list(bk.get("resample_filter", [1, 3, 3, 1])) != [1, 3, 3, 1]:
        raise ConversionError(f"{origin}: a discriminator activation other than 'lrelu' or a "
                              "resample filter other than [1, 3, 3, 1] is not supported")
    base, cmax = int(kw.get("channel_base", 32768)), int(kw.get("channel_max", 512))
    channels = tuple((2 ** i, min(base // 2 ** i, cmax))
                     for i in range(2, int(math.log2(size)) + 1))
    cmap = 0 if c_dim == 0 else int(kw.get("cmap_dim") or dict(channels)[4])
    if c_dim and any(mk.get(k) not in (None, cmap) for k in ("embed_features", "layer_features")):
        raise ConversionError(f"{origin}: label mapping widths other than cmap_dim are not "
                              "supported")
    group = ek.get("mbstd_group_size", 4)
    try:
        return dmodel.DiscriminatorConfig(
            size=size, channels=channels, c_dim=c_dim, cmap_dim=cmap,
            mapping_layers=int(mk.get("num_layers", 8)),
            mapping_lr=float(mk.get("lr_multiplier", 0.01)),
            mbstd_group_size=None if group is None else int(group),
            mbstd_num_channels=int(ek.get("mbstd_num_channels", 1)),
            conv_clamp=None if kw.get("conv_clamp") is None else float(kw["conv_clamp"]),
            architecture=arch, family="stylegan2_ada")
    except ValueError as e:
        raise ConversionError(f"{origin}: invalid discriminator config: {e}") from None


def discriminator_from_state_dict(src: SourceDict, config: dmodel.DiscriminatorConfig) -> dict:
    """{'params'} of an NVIDIA D state dict (caller: src.finish())."""
    variables = from_state_dict(src, dmodel.init_shapes(config), rules=NVIDIA_D_RULES)
    take_resample_filters(src)
    return variables


def convert_nvidia_discriminator(net, origin: str, out_dir: str, log=print):
    """An NVIDIA `D` (a `Network` stand-in) -> a discriminator folder."""
    config = discriminator_config(net, origin)
    src = SourceDict(network_state_dict(net, origin), origin)
    variables = discriminator_from_state_dict(src, config)
    src.finish("StyleGAN2-ADA discriminator")
    return discriminator.save(variables, config, origin, out_dir, log)


# ----------------------------------------------------------------------------- CLI


def convert_stylegan2_ada(src_path: str, out_dir: str, which: str = "G_ema", log=print):
    """Read an NVIDIA pickle safely, convert `which`, check against the model, write out_dir."""
    snapshot = read_snapshot(src_path)
    net = snapshot_network(snapshot, which, src_path)
    origin = f"{src_path} [{which}]"
    if which == "D":
        return convert_nvidia_discriminator(net, origin, out_dir, log)
    config, variables, w_avg = generator_from_network(net, origin)
    tree = dict(variables)
    if w_avg is not None:
        tree["latent_avg"] = w_avg
    save_converted(out_dir, tree, {**config.to_dict(), "source": os.path.basename(src_path),
                                   "source_network": which}, kind=KIND)
    n = n_params(variables["params"])
    log(f"{origin} -> {out_dir}: StyleGAN2-ADA {config.size}px, w_dim {config.style_dim}, "
        f"mapping {config.n_mlp} layers, c_dim {config.c_dim}, conv_clamp {config.conv_clamp}, "
        f"channels {dict(config.channels)}, {n:,} parameters, latent_avg = mapping.w_avg"
        f"{'' if w_avg is not None else ' (none)'}")
    return config


def _run(args) -> None:
    convert_stylegan2_ada(args.src, args.out_dir, which=args.which)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "stylegan2_ada", help="NVIDIA StyleGAN2-ADA network pickle (.pkl), read without "
                              "running it -> generator (or discriminator) folder",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="network-snapshot-*.pkl of stylegan2-ada-pytorch")
    p.add_argument("out_dir", help="new output folder (config.json + arrays/)")
    p.add_argument("--which", choices=NETWORKS, default="G_ema",
                   help="network to convert: G_ema (what NVIDIA renders), G, or D "
                        "(the discriminator)")
    p.set_defaults(func=_run)

