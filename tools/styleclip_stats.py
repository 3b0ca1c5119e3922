#!/usr/bin/env python
"""Compute StyleCLIP's global-direction statistics (`S_mean_std`, `fs3.npy`) for any
converted generator, with the CLIP image encoder.

  python tools/styleclip_stats.py ckpt/stylegan2_ffhq ckpt/clip_vit_b32 out/ffhq_stats
  python tools/styleclip_stats.py GEN CLIP OUT --image_batch 8 --channels_per_step 2   # GPU
  python tools/styleclip_stats.py GEN CLIP OUT --max_channels 20    # time 20 channels, stop

GEN is a converted `stylegan2` folder or a `hyperstyle` folder (its generator is used);
CLIP a converted `clip` folder (tools/convert_weights.py clip). OUT receives `S_mean_std`
(pickle protocol 3 of [means, stds], the official file's structure), `fs3.npy` (float32
[rows, embed]), `stats_settings.json`, and while running `fs3_partial.npz`. Run the same
command again to resume: finished channels are kept; other settings refuse to resume.

The procedure, its differences from StyleCLIP, speed and sharding: docs/notes.md,
"StyleCLIP statistics".
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from hyperstyle_jax import parallel
from hyperstyle_jax.checkpoints import (
    load_converted,
    load_generator,
    load_hyperstyle,
)
from hyperstyle_jax.clip import load_clip
from hyperstyle_jax.clip.preprocess import preprocess_batch
from hyperstyle_jax.editing import EditError, styleclip
from hyperstyle_jax.models import stylespace
from hyperstyle_jax.models.clip import CLIP
from hyperstyle_jax.models.stylegan2 import Generator, GeneratorConfig
from hyperstyle_jax.utils import cli
from hyperstyle_jax.utils.paths import atomic_write

PARTIAL = "fs3_partial.npz"
SETTINGS = "stats_settings.json"


@dataclasses.dataclass(frozen=True)
class StatsSettings:
    """Everything that determines the result (a resumed run must match it exactly)."""
    n_samples: int = 100_000   # StyleCLIP's num_img for S_mean_std
    n_images: int = 100        # StyleCLIP's num_images for fs3
    alpha: float = 5.0         # StyleCLIP's M.alpha = [-5, 5]
    seed: int = 0
    sample_batch: int = 1000   # z per step when sampling s (fixes the z stream with the seed)
    layers: str = "all"        # 'all' non-toRGB layers (6048 rows at 1024) or 'edited' (5376)

    def __post_init__(self):
        if self.n_samples < 2 or self.n_images < 1 or self.n_images > self.n_samples:
            raise ValueError(f"need n_samples >= 2 and 1 <= n_images <= n_samples: {self}")
        if self.layers not in ("all", "edited"):
            raise ValueError(f"layers must be 'all' or 'edited', got {self.layers!r}")
        if not self.alpha > 0 or self.sample_batch < 1:
            raise ValueError(f"alpha must be > 0 and sample_batch >= 1: {self}")


def fs3_layers(lay: stylespace.StyleSpaceLayout, which: str) -> tuple:
    return lay.non_torgb_indices if which == "all" else lay.edited_indices


def fs3_flat_indices(lay: stylespace.StyleSpaceLayout, which: str) -> np.ndarray:
    """Per fs3 row, its index in the concatenation of all layers' s (toRGB included)."""
    starts = np.concatenate([[0], np.cumsum(lay.dims)[:-1]])
    return np.concatenate([starts[j] + np.arange(lay.dims[j]) for j in fs3_layers(lay, which)])


# ----------------------------------------------------------------------------- 1. S_mean_std


def _z(seed: int, step: int, batch: int, dim: int):
    return jax.random.normal(jax.random.fold_in(jax.random.key(seed), step), (batch, dim))


def _styles_fn(config: GeneratorConfig):
    """(variables, z [B, D]) -> concatenated s [B, sum(dims)] (w = mapping(z), no truncation)."""
    gen = Generator(config)

    def fn(variables, z):
        w = gen.apply(variables, z, method=Generator.mapping)
        return jnp.concatenate(stylespace.styles_from_w(variables["params"], config, w), axis=1)
    return fn


@functools.lru_cache(maxsize=8)
def _jitted_styles(config: GeneratorConfig, mesh):
    repl, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(_styles_fn(config), in_shardings=(repl, shard), out_shardings=shard)


def sample_styles(config: GeneratorConfig, variables, settings: StatsSettings, mesh,
                  n: Optional[int] = None, progress: bool = False):
    """Yield the concatenated s of the sample stream, `sample_batch` at a time (the first
    `n` samples when given): float32 numpy [<= sample_batch, sum(dims)]."""
    n = settings.n_samples if n is None else n
    b = settings.sample_batch
    repl, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    b_dev = -(-b // mesh.devices.size) * mesh.devices.size  # pad the step to the mesh
    fn = _jitted_styles(config, mesh)
    variables = jax.device_put(variables, repl)
    steps = range(-(-n // b))
    bar = _bar(len(steps), "S stats", "step") if progress else None
    for step in steps:
        z = np.asarray(_z(settings.seed, step, b, config.style_dim))
        z = parallel.pad_batch(z, b_dev)
        s = np.asarray(jax.device_get(fn(variables, jax.device_put(z, shard))))[:b]
        yield s[:min(b, n - step * b)]
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()


def s_mean_std(config: GeneratorConfig, variables, settings: StatsSettings, mesh,
               progress: bool = False) -> tuple[list, list]:
    """StyleCLIP's GetCodeMS over `n_samples` samples: per-layer (means, stds) float32."""
    count, mean, m2 = 0, None, None
    for s in sample_styles(config, variables, settings, mesh, progress=progress):
        s = s.astype(np.float64)
        # Chan et al.'s merge of (count, mean, M2): stable over 100k samples in one pass.
        nb, mb = s.shape[0], s.mean(axis=0)
        m2b = ((s - mb) ** 2).sum(axis=0)
        if mean is None:
            count, mean, m2 = nb, mb, m2b
        else:
            delta = mb - mean
            tot = count + nb
            mean = mean + delta * nb / tot
            m2 = m2 + m2b + delta ** 2 * count * nb / tot
            count = tot
    std = np.sqrt(m2 / count)
    splits = np.cumsum(stylespace.layout(config).dims)[:-1]
    return ([a.astype(np.float32) for a in np.split(mean, splits)],
            [a.astype(np.float32) for a in np.split(std, splits)])


# ----------------------------------------------------------------------------- 2. fs3


def clip_image_encoder(clip_config) -> Callable:
    """encode(clip_variables, images [N, H, W, 3] in [-1, 1]) -> CLIP image features [N, E].

    As StyleCLIP: the generator output becomes uint8 (stylegan2-ada's x·127.5 + 128,
    clamped, truncated), then CLIP's preprocessing (resize, centre crop, normalise)."""
    model = CLIP(clip_config)
    res = clip_config.image_resolution

    def encode(variables, images):
        u8 = jnp.floor(jnp.clip(images * 127.5 + 128.0, 0.0, 255.0))
        x = preprocess_batch(u8 / 127.5 - 1.0, res)
        return model.apply(variables, x, method=CLIP.encode_image)
    return encode


def channel_step(config: GeneratorConfig, encode: Callable) -> Callable:
    """The jitted unit of work, one compile for every channel of every layer.

    step(gen_vars, enc_vars, s [B, T] (concatenated styles of B images), mask [B] (1 for
    real images, 0 for padding), idx [K] (flat channel indices), lo [K], hi [K] (the values
    mean ∓ α·std)) -> [K, E]: for each of the K channels, the sum over the B images of the
    unit differences normalize(f(hi)/|f(hi)| - f(lo)/|f(lo)|).
    """
    gen = Generator(config)
    splits = [int(v) for v in np.cumsum(stylespace.layout(config).dims)[:-1]]

    def unit(x):
        n = jnp.linalg.norm(x, axis=-1, keepdims=True)
        return jnp.where(n > 0, x / jnp.where(n > 0, n, 1.0), 0.0)

    def step(gen_vars, enc_vars, s, mask, idx, lo, hi):
        b, t = s.shape
        k = idx.shape[0]
        hit = jnp.arange(t)[None, :] == idx[:, None]                      # [K, T]
        vals = jnp.stack([lo, hi], axis=1)                                # [K, 2]
        # Batch-major [B, K, 2, T], so the leading (sharded) axis stays the image axis.
        edited = jnp.where(hit[None, :, None, :], vals[None, :, :, None], s[:, None, None, :])
        flat = edited.reshape(b * k * 2, t)
        img = stylespace.render_styles(gen, gen_vars, jnp.split(flat, splits, axis=1))
        f = unit(encode(enc_vars, img).astype(jnp.float32)).reshape(b, k, 2, -1)
        d = unit(f[:, :, 1] - f[:, :, 0])                                 # [B, K, E]
        return jnp.sum(d * mask[:, None, None], axis=0)
    return step


@functools.lru_cache(maxsize=8)
def _jitted_step(config: GeneratorConfig, encode: Callable, mesh):
    """One jitted step per (generator, encoder, mesh): a resumed or repeated run in the same
    process does not trace again."""
    repl, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(channel_step(config, encode),
                   in_shardings=(repl, repl, shard, shard, repl, repl, repl), out_shardings=repl)


def _bar(total: int, desc: str, unit: str, initial: int = 0):
    return cli.progress_bar(total, desc, unit, initial=initial)


def read_partial(path: str, settings_json: str) -> tuple[np.ndarray, np.ndarray]:
    """(sums [rows, E] float64, done [rows] bool) of a partial run made with these settings."""
    try:
        with np.load(path, allow_pickle=False) as p:
            saved, sums, done = str(p["settings"]), p["sums"], p["done"]
    except (OSError, ValueError, KeyError) as e:
        raise EditError(f"{path}: unreadable partial result ({e}); delete it to restart") from None
    if saved != settings_json:
        raise EditError(f"{path} was made with other settings ({saved}); use the same options "
                        "or another output folder")
    return sums, done


def _save_partial(path: str, sums: np.ndarray, done: np.ndarray, settings_json: str) -> None:
    with atomic_write(path) as f:
        np.savez(f, sums=sums, done=done, settings=np.asarray(settings_json))


def compute_fs3(config: GeneratorConfig, gen_vars, encode: Callable, enc_vars, means, stds,
                settings: StatsSettings, mesh, *, image_batch: int, channels_per_step: int = 1,
                partial_path: Optional[str] = None, save_every_s: float = 300.0,
                max_channels: Optional[int] = None, progress: bool = True,
                settings_json: str = "", log=print) -> tuple[np.ndarray, dict]:
    """fs3 [rows, E] for `settings.layers`; resumes from / saves to `partial_path`.

    Returns (fs3, info) with info = {'done', 'rows', 'seconds', 'seconds_per_channel' (after
    the first group, which includes the compile), 'first_group_seconds'}; fs3 rows not yet
    computed (when stopped by `max_channels`) are NaN.
    """
    lay = stylespace.layout(config)
    flat_idx = fs3_flat_indices(lay, settings.layers)
    rows = len(flat_idx)
    parallel.check_batch_size(image_batch, mesh, "image_batch")
    mean_flat, std_flat = np.concatenate(means), np.concatenate(stds)
    lo_all = (mean_flat - settings.alpha * std_flat).astype(np.float32)
    hi_all = (mean_flat + settings.alpha * std_flat).astype(np.float32)

    # The images: the first n_images samples of the S_mean_std stream, padded to chunks.
    s_img = np.concatenate(list(sample_styles(config, gen_vars, settings, mesh,
                                              n=settings.n_images)))
    n_chunks = -(-settings.n_images // image_batch)
    s_img = parallel.pad_batch(s_img, n_chunks * image_batch)
    mask = (np.arange(n_chunks * image_batch) < settings.n_images).astype(np.float32)

    repl, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    gen_vars, enc_vars = jax.device_put(gen_vars, repl), jax.device_put(enc_vars, repl)
    chunks = [(jax.device_put(s_img[i * image_batch:(i + 1) * image_batch], shard),
               jax.device_put(mask[i * image_batch:(i + 1) * image_batch], shard))
              for i in range(n_chunks)]
    step = _jitted_step(config, encode, mesh)

    sums, done = None, None
    if partial_path and os.path.exists(partial_path):
        sums, done = read_partial(partial_path, settings_json)
        if sums.shape[0] != rows:
            raise EditError(f"{partial_path} has {sums.shape[0]} rows, expected {rows}")
        log(f"resuming: {int(done.sum())}/{rows} channels already done")
    k = int(channels_per_step)
    todo = [r for r in range(rows) if done is None or not done[r]]
    if max_channels is not None:
        todo = todo[:max_channels]
    before = 0 if done is None else int(done.sum())
    bar = _bar(rows, "fs3", "ch", initial=before) if progress else None
    t0 = last_save = time.time()
    n_new, t_first, n_first = 0, None, 0
    try:
        for start in range(0, len(todo), k):
            group = todo[start:start + k]
            pad = k - len(group)
            rsel = np.asarray(group + [group[-1]] * pad)   # pad the last group by repetition
            idx = flat_idx[rsel].astype(np.int32)
            acc = None
            for s_c, m_c in chunks:
                out = step(gen_vars, enc_vars, s_c, m_c, idx, lo_all[idx], hi_all[idx])
                acc = out if acc is None else acc + out
            acc = np.asarray(jax.device_get(acc), np.float64)
            if sums is None:
                sums = np.zeros((rows, acc.shape[1]), np.float64)
                done = np.zeros((rows,), bool)
            sums[group] = acc[:len(group)]
            done[group] = True
            n_new += len(group)
            if t_first is None:  # the first group includes the compile: timed apart
                t_first, n_first = time.time(), len(group)
            if bar is not None:
                bar.update(len(group))
                bar.set_postfix_str(f"{(time.time() - t0) / n_new:.3g} s/ch")
            if partial_path and time.time() - last_save > save_every_s:
                _save_partial(partial_path, sums, done, settings_json)
                last_save = time.time()
    except KeyboardInterrupt:
        # Keep what is finished: the same command resumes from it.
        if partial_path and sums is not None:
            _save_partial(partial_path, sums, done, settings_json)
            log(f"\ninterrupted: {int(done.sum())}/{rows} channels saved to {partial_path}")
        raise
    if bar is not None:
        bar.close()
    t_end = time.time()
    seconds = t_end - t0
    steady = ((t_end - t_first) / (n_new - n_first) if t_first is not None and n_new > n_first
              else seconds / max(n_new, 1))
    if partial_path and sums is not None:
        _save_partial(partial_path, sums, done, settings_json)
    fs3 = np.full((rows, sums.shape[1] if sums is not None else 0), np.nan, np.float32)
    if sums is not None:
        fs3[done] = styleclip.normalize(sums[done]).astype(np.float32)
    return fs3, {"done": int(done.sum()) if done is not None else 0, "rows": rows,
                 "seconds": seconds, "seconds_per_channel": steady,
                 "first_group_seconds": (t_first - t0) if t_first is not None else 0.0}


# ----------------------------------------------------------------------------- loading / CLI


def load_any_generator(path: str):
    """A converted `stylegan2` or `hyperstyle` folder -> (GeneratorConfig, variables)."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            kind = json.load(f).get("kind")
    except (OSError, json.JSONDecodeError):
        kind = None
    if kind == "hyperstyle":
        cfgs, tree = load_hyperstyle(path)
        return cfgs["generator"], jax.tree.map(jnp.asarray, tree["generator"])
    if kind is None:
        load_converted(path)  # raises the usual one-line error
    return load_generator(path)


def run(gen_path: str, clip_path: str, out_dir: str, settings: StatsSettings, *,
        image_batch: int = 10, channels_per_step: int = 1, save_every_s: float = 300.0,
        max_channels: Optional[int] = None, encode: Optional[Callable] = None,
        enc_vars: Any = None, gen: Optional[tuple] = None, progress: bool = True,
        log=print) -> dict:
    """The whole tool. `gen` = (config, variables) and `encode`/`enc_vars` replace the
    folders (tests use a stand-in encoder). Returns the `compute_fs3` info."""
    config, gen_vars = gen if gen is not None else load_any_generator(gen_path)
    if encode is None:
        clip_config, enc_vars = load_clip(clip_path)
        encode = clip_image_encoder(clip_config)
    os.makedirs(out_dir, exist_ok=True)
    settings_json = json.dumps({**dataclasses.asdict(settings), "generator": config.to_dict()},
                               sort_keys=True)
    s_path = os.path.join(out_dir, "S_mean_std")
    partial = os.path.join(out_dir, PARTIAL)
    if os.path.exists(partial):
        read_partial(partial, settings_json)  # refuse other settings before writing anything
    with open(os.path.join(out_dir, SETTINGS), "w") as f:
        f.write(settings_json + "\n")
    mesh = parallel.make_mesh()
    if os.path.exists(s_path) and os.path.exists(partial):
        means, stds = styleclip.load_s_mean_std(s_path)  # resumed: the same stream
    else:
        t0 = time.time()
        means, stds = s_mean_std(config, gen_vars, settings, mesh, progress=progress)
        styleclip.save_s_mean_std(s_path, means, stds)
        log(f"{s_path}: {len(means)} layers, {sum(m.size for m in means)} channels, "
            f"{settings.n_samples} samples ({time.time() - t0:.1f} s)")
    fs3, info = compute_fs3(config, gen_vars, encode, enc_vars, means, stds, settings, mesh,
                            image_batch=image_batch, channels_per_step=channels_per_step,
                            partial_path=partial, save_every_s=save_every_s,
                            max_channels=max_channels, progress=progress,
                            settings_json=settings_json, log=log)
    log(f"fs3: {info['done']}/{info['rows']} channels, {info['seconds_per_channel']:.4g} s "
        f"per channel this run after the first step ({info['first_group_seconds']:.1f} s, with "
        f"the compile), {settings.n_images} images, "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s)")
    if info["done"] == info["rows"]:
        np.save(os.path.join(out_dir, "fs3.npy"), fs3)
        log(f"{os.path.join(out_dir, 'fs3.npy')}: {fs3.shape}")
    return info


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("generator", help="converted stylegan2 or hyperstyle folder")
    p.add_argument("clip", help="converted clip folder (tools/convert_weights.py clip)")
    p.add_argument("out_dir")
    d = StatsSettings()
    p.add_argument("--n_samples", type=int, default=d.n_samples)
    p.add_argument("--n_images", type=int, default=d.n_images)
    p.add_argument("--alpha", type=float, default=d.alpha)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--sample_batch", type=int, default=d.sample_batch)
    p.add_argument("--layers", choices=("all", "edited"), default=d.layers)
    p.add_argument("--image_batch", type=int, default=10,
                   help="images per step (x2 renders x channels_per_step); a multiple of "
                        "the device count")
    p.add_argument("--channels_per_step", type=int, default=1)
    p.add_argument("--save_every", type=float, default=300.0, help="seconds between saves")
    p.add_argument("--max_channels", type=int, default=None,
                   help="stop after this many channels (timing; resume later)")
    return p


def main(argv=None) -> int:
    """The tool's entry point: a bad file or value is one `error:` line, exit status 2."""
    return cli.run(_main, argv)


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = StatsSettings(args.n_samples, args.n_images, args.alpha, args.seed,
                                 args.sample_batch, args.layers)
    except ValueError as e:  # the settings' own checks
        raise cli.UserError(str(e)) from None
    run(args.generator, args.clip, args.out_dir, settings, image_batch=args.image_batch,
        channels_per_step=args.channels_per_step, save_every_s=args.save_every,
        max_channels=args.max_channels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
