"""Synthetic data: images rendered by a StyleGAN2 generator, with their true latents.

For the tiny CPU config and for tests. `synthetic_data(data_config)` renders (once per
config; memoised, and cached under `<data_dir>/synthetic/` when `data_dir` is set) the
train and eval arrays so that an exact reconstruction exists, reachable from the true W
only through weight offsets. The trainer must build its model on
`synthetic_generator(data_config)`. How the images are drawn: docs/notes.md, "Synthetic
data".
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyperstyle_jax.checkpoints import load_generator_with_latent_avg
from hyperstyle_jax.data.sources import ArraySource
from hyperstyle_jax.models.pooling import adaptive_avg_pool2d
from hyperstyle_jax.models.stylegan2 import Generator, GeneratorConfig
from hyperstyle_jax.utils import trees
from hyperstyle_jax.utils.paths import atomic_write

CACHE_VERSION = 1
RANDOM_OUTPUT_STD = 0.5
MEAN_LATENT_SAMPLES = 10000  # w_avg estimate for a generator without latent_avg
SPLITS = {"train": 0, "eval": 1}
_MEMO: dict[str, dict] = {}


@dataclasses.dataclass
class SyntheticGenerator:
    """The generator that rendered the data: build the model on exactly this."""

    config: Any                # GeneratorConfig
    variables: dict            # {'params': ..., 'noises': ...}, NumPy leaves
    latent_avg: np.ndarray     # [style_dim]: checkpoint's latent_avg, or the mean of W
    description: str


# ------------------------------------------------------------------------------ layers


def perturbed_layers(gen_config, spec: str = "") -> list[int]:
    """Official layer indices to perturb: '' = every non-toRGB conv, else '0,2,3'."""
    n = gen_config.n_convs
    torgb = {1} | {4 + 3 * b for b in range(n)}
    if not spec:
        return [j for j in range(n) if j not in torgb]
    out = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) >= n:
            raise ValueError(f"data.perturb_layers={spec!r}: {part!r} is not a layer index in "
                             f"[0, {n}) of this generator")
        out.append(int(part))
    return sorted(set(out))


def compact_delta_shape(gen_config, j: int, mode: str) -> tuple[int, int]:
    out, inp, _, _ = gen_config.delta_shapes()[j]
    return (1, inp) if mode == "in" else (out, inp)


def expand_deltas(deltas: dict, gen_config) -> list:
    """{str(j): [B, out or 1, in]} -> the generator's `weights_deltas` list.

    Entry j is [B, out, in, k, k] (the value repeated over k x k, and over 'out' for the
    'in' mode), or None for an unperturbed layer.
    """
    shapes = gen_config.delta_shapes()
    out = [None] * gen_config.n_convs
    for key, d in deltas.items():
        j = int(key)
        o, i, kh, kw = shapes[j]
        d = jnp.asarray(d)
        out[j] = jnp.broadcast_to(d[:, :, :, None, None], (d.shape[0], o, i, kh, kw))
    return out


# --------------------------------------------------------------------------- generator


def _generator_fingerprint(data_config) -> dict:
    gdir = data_config.get("generator_dir", "")
    if gdir:
        gdir = os.path.abspath(os.path.expanduser(gdir))
        files = sorted(p for p in glob.glob(os.path.join(gdir, "**"), recursive=True)
                       if os.path.isfile(p))
        if not files:
            raise FileNotFoundError(f"data.generator_dir={gdir!r}: no such checkpoint folder")
        stamp = [(os.path.relpath(p, gdir), os.path.getsize(p), int(os.path.getmtime(p)))
                 for p in files]
        return {"dir": gdir, "files": stamp}
    gen = data_config.generator
    gen = gen.to_dict() if hasattr(gen, "to_dict") else dict(gen)
    return {"random": json.loads(json.dumps(gen)), "seed": int(data_config.seed)}


def _scale_to_rgb(params: dict, s: float) -> dict:
    out = dict(params)
    for name, p in params.items():
        if name.startswith("to_rgb"):
            p = dict(p)
            p["bias"] = p["bias"] * s
            p["conv"] = {**p["conv"], "weight": p["conv"]["weight"] * s}
            out[name] = p
    return out


# ---------------------------------------------------------------------------- rendering


def _fingerprint(data_config) -> tuple[str, dict]:
    fp = {
        "version": CACHE_VERSION,
        "generator": _generator_fingerprint(data_config),
        "seed": int(data_config.seed),
        "num_train": int(data_config.num_train),
        "num_eval": int(data_config.num_eval),
        "perturb_std": float(data_config.perturb_std),
        "perturb_mode": str(data_config.perturb_mode),
        "perturb_layers": str(data_config.get("perturb_layers", "")),
        "truncation": float(data_config.truncation),
        "image_hw": [int(v) for v in data_config.image_hw],
    }
    if int(data_config.get("class_index", -1)) >= 0:  # absent: the unconditional caches' keys
        fp["class_index"] = int(data_config.class_index)
    digest = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    return digest, fp


def _pool(images, size: int, hw: tuple[int, int]):
    """The model's own resize of generator outputs: the cars crop, then face_pool."""
    h, w = hw
    if h * 4 == w * 3 and h != w:  # cars: 512x512, content rows [64:448] (official hyperstyle.py)
        images = images[:, size // 8: size - size // 8]
    elif h != w:
        raise ValueError(f"data.image_hw={tuple(hw)}: synthetic images are square, or 3:4 "
                         "with the cars crop")
    return adaptive_avg_pool2d(images, (h, w))


def draw(data_config, gen_config, split: str, indices) -> tuple[np.ndarray, dict]:
    """Per-image randomness of images `indices` of `split`: (z [B, D], {str(j): Δ}).

    NumPy, one `default_rng([seed, split id, i])` stream per image (z first, then each
    perturbed layer's Δ in index order), so image i does not depend on the batching.
    """
    std, mode = float(data_config.perturb_std), str(data_config.perturb_mode)
    layers = perturbed_layers(gen_config, data_config.get("perturb_layers", "")) if std > 0 else []
    zs, ds = [], {str(j): [] for j in layers}
    for i in indices:
        rng = np.random.default_rng([int(data_config.seed), 2 + SPLITS[split], int(i)])
        zs.append(rng.standard_normal(gen_config.style_dim, dtype=np.float32))
        for j in layers:
            shape = compact_delta_shape(gen_config, j, mode)
            ds[str(j)].append(std * rng.standard_normal(shape, dtype=np.float32))
    return np.stack(zs), {j: np.stack(v) for j, v in ds.items()}


def class_labels(gen_config, class_index: int, key: str = "config.data.class_index"):
    """One-hot label [c_dim] of a conditional generator's class, or None (unconditional).
    A conditional generator without a class, or a class out of range: one-line ValueError."""
    c_dim = int(getattr(gen_config, "c_dim", 0) or 0)
    class_index = int(class_index)
    if not c_dim:
        if class_index >= 0:
            raise ValueError(f"{key}={class_index}: the generator is unconditional "
                             "(no classes); leave it at -1")
        return None
    if not 0 <= class_index < c_dim:
        raise ValueError(f"{key}={class_index}: the generator is conditional with {c_dim} "
                         f"classes; set it to a class in [0, {c_dim})")
    return np.eye(c_dim, dtype=np.float32)[class_index]


@functools.lru_cache(maxsize=8)
def _jitted(gcfg, trunc: float, hw: tuple):
    """Compiled (init, mean_w, render) for one setting; reused across calls."""
    gen = Generator(gcfg)

    def init(key):
        return gen.init(key, jnp.zeros((1, gcfg.style_dim), jnp.float32), input_space="z")

    def labels_for(z, label):
        return None if label is None else jnp.broadcast_to(label, z.shape[:1] + label.shape)

    def mean_w(v, z, label=None):
        return gen.apply(v, z, labels_for(z, label), method=Generator.mapping).mean(0)

    def render(v, w_avg, z, d, label=None):
        """z [B, D] -> (w [B, D], pooled image [B, h, w, 3])."""
        w = gen.apply(v, z, labels_for(z, label), method=Generator.mapping)
        if trunc != 1.0:
            w = w_avg + trunc * (w - w_avg)
        img, _ = gen.apply(v, w, input_space="w", randomize_noise=False,
                           weights_deltas=expand_deltas(d, gcfg) if d else None)
        return w, _pool(img, gcfg.size, hw)

    return jax.jit(init), jax.jit(mean_w), jax.jit(render)


def _render(data_config) -> dict:
    seed = int(data_config.seed)
    gdir = data_config.get("generator_dir", "")
    if gdir:
        gcfg, variables, latent_avg = load_generator_with_latent_avg(gdir)
        desc = f"generator {gdir}"
    else:
        gen = data_config.generator
        gcfg = GeneratorConfig.from_dict(gen.to_dict() if hasattr(gen, "to_dict") else dict(gen))
        latent_avg, variables = None, None
        desc = f"random generator (seed {seed})"
    label = class_labels(gcfg, data_config.get("class_index", -1))
    init, mean_w, render = _jitted(gcfg, float(data_config.truncation),
                                   tuple(int(v) for v in data_config.image_hw))
    if variables is None:
        variables = init(jax.random.key(seed))
    variables = {"params": variables["params"], "noises": variables["noises"]}
    if latent_avg is None:
        z = np.random.default_rng([seed, 1]).standard_normal(
            (MEAN_LATENT_SAMPLES, gcfg.style_dim), dtype=np.float32)
        latent_avg = mean_w(variables, z, label)
    latent_avg = jnp.asarray(latent_avg, jnp.float32).reshape(-1, gcfg.style_dim)[0]

    bs = int(data_config.render_batch)
    if not gdir:  # calibrate the random generator's output scale on unperturbed images
        z, d = draw(data_config, gcfg, "train", range(bs))
        d = jax.tree.map(np.zeros_like, d)  # unperturbed; same structure: no new compile
        s = RANDOM_OUTPUT_STD / float(jnp.std(render(variables, latent_avg, z, d, label)[1]))
        variables = {**variables, "params": _scale_to_rgb(variables["params"], s)}

    out = {}
    for split in SPLITS:
        n = int(data_config[f"num_{split}"])
        chunks = {"image": [], "latent": []}
        deltas = []
        for start in range(0, n, bs):
            z, d = draw(data_config, gcfg, split, range(start, start + bs))  # padded to bs
            w, img = render(variables, latent_avg, z, d, label)
            keep = min(bs, n - start)
            chunks["image"].append(np.asarray(img[:keep], np.float32))
            chunks["latent"].append(np.asarray(w[:keep], np.float32))
            deltas.append({j: v[:keep] for j, v in d.items()})
        arrays = {"image": np.concatenate(chunks["image"]),
                  "latent": np.concatenate(chunks["latent"])}
        if deltas[0]:
            arrays["deltas"] = {j: np.concatenate([c[j] for c in deltas]) for j in deltas[0]}
        out[split] = arrays
    variables = jax.tree.map(np.asarray, variables)
    out["generator"] = SyntheticGenerator(gcfg, variables, np.asarray(latent_avg), desc)
    return out


# -------------------------------------------------------------------------------- cache


def _save(path: str, data: dict, fp: dict) -> None:
    g = data["generator"]
    flat = {"fingerprint": np.asarray(json.dumps(fp, sort_keys=True)),
            "generator_config": np.asarray(json.dumps(g.config.to_dict())),
            "generator_description": np.asarray(g.description),
            "latent_avg": g.latent_avg}
    flat.update(trees.flatten(g.variables, "variables"))
    for split in SPLITS:
        flat.update(trees.flatten(data[split], split))
    with atomic_write(path) as f:
        np.savez(f, **{k: np.asarray(v) for k, v in flat.items()})


def _load(path: str, fp: dict) -> dict | None:
    try:
        with np.load(path) as z:
            flat = {k: z[k] for k in z.files}
    except (OSError, ValueError):
        return None  # unreadable cache: render again and overwrite it
    if str(flat.get("fingerprint")) != json.dumps(fp, sort_keys=True):
        return None
    out = {split: trees.unflatten(flat, split) for split in SPLITS}
    out["generator"] = SyntheticGenerator(
        GeneratorConfig.from_dict(json.loads(str(flat["generator_config"]))),
        trees.unflatten(flat, "variables"), flat["latent_avg"], str(flat["generator_description"]))
    return out


def synthetic_data(data_config) -> dict:
    """{'train': arrays, 'eval': arrays, 'generator': SyntheticGenerator} for the config.

    arrays: 'image' float32 [N, H, W, 3], 'latent' float32 [N, style_dim], and when
    perturb_std > 0 'deltas' {str(j): float32 [N, out, in]} ([N, 1, in] in mode 'in').
    """
    digest, fp = _fingerprint(data_config)
    if digest in _MEMO:
        return _MEMO[digest]
    path = None
    if data_config.get("cache", True) and data_config.get("data_dir", ""):
        path = os.path.join(os.path.expanduser(data_config.data_dir), "synthetic",
                            f"{digest}.npz")
    data = _load(path, fp) if path and os.path.exists(path) else None
    if data is None:
        data = _render(data_config)
        if path:
            _save(path, data, fp)
    _MEMO[digest] = data
    return data


def synthetic_generator(data_config) -> SyntheticGenerator:
    """The generator (config, variables, latent_avg) that renders this config's data."""
    return synthetic_data(data_config)["generator"]


def synthetic_source(data_config, split: str):
    """An `ArraySource` over split 'train' or 'eval' of the synthetic data."""
    digest, _ = _fingerprint(data_config)
    return ArraySource(synthetic_data(data_config)[split], f"synthetic:{digest}/{split}")
