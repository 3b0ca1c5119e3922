#!/usr/bin/env python
"""Input pipeline throughput: images per second out of `make_train_iterator`.

Builds a small TFDS array_record dataset (from --source, or from generated FFHQ-like
images: 1024x1024 PNG by default) and times decode + Resize(256) + flip + [-1, 1] through
grain for each --threads setting. The first batches (thread start-up) are not timed.

    python benchmarks/input_pipeline.py                       # generated 1024 px PNGs
    python benchmarks/input_pipeline.py --format jpg --src_size 512
    python benchmarks/input_pipeline.py --source /data/ffhq/images1024x1024 --num_images 256
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hyperstyle_jax.data import default_data_config, make_train_iterator  # noqa: E402
from hyperstyle_jax.data.build import build_dataset  # noqa: E402


def _face_like(rng, size: int) -> np.ndarray:
    """Smooth colour fields plus mild noise: compresses like a photo, not like noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    chans = [np.sin(rng.uniform(2, 9) * xx + rng.uniform(2, 9) * yy + rng.uniform(0, 6))
             * np.cos(rng.uniform(1, 5) * yy + rng.uniform(0, 6)) for _ in range(3)]
    img = np.stack(chans, -1) * 100 + 128 + rng.normal(0, 3, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_images(folder: str, n: int, size: int, fmt: str, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in tqdm(range(n), desc=f"writing {n} {size}px {fmt}"):
        Image.fromarray(_face_like(rng, size)).save(os.path.join(folder, f"{i:05d}.{fmt}"),
                                                    quality=95)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=None, help="folder of images (default: generate)")
    p.add_argument("--num_images", type=int, default=48, help="images to generate")
    p.add_argument("--src_size", type=int, default=1024, help="generated image side")
    p.add_argument("--format", default="png", choices=("png", "jpg"), help="generated format")
    p.add_argument("--image_hw", default="256,256", help="output size H,W (192,256 for cars)")
    p.add_argument("--batch", type=int, default=8, help="global batch size (one process)")
    p.add_argument("--steps", type=int, default=12, help="timed batches per setting")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches per setting")
    p.add_argument("--threads", default="1,2", help="comma list of grain reader threads")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        src = args.source
        if src is None:
            src = os.path.join(tmp, "src")
            os.makedirs(src)
            make_images(src, args.num_images, args.src_size, args.format)
        data_dir = os.path.join(tmp, "tfds")
        t = time.perf_counter()
        report = build_dataset("ffhq", src, data_dir)
        n = sum(report.written.values())
        print(f"build: {n} images in {time.perf_counter() - t:.1f} s "
              f"({n / (time.perf_counter() - t):.1f} images/s, validation decode included)")
        cfg = default_data_config()
        cfg.source, cfg.name, cfg.data_dir = "tfds", "ffhq", data_dir
        cfg.image_hw = tuple(int(v) for v in args.image_hw.split(","))
        for threads in (int(v) for v in args.threads.split(",")):
            cfg.num_threads, cfg.prefetch = threads, max(2, 2 * threads)
            it = make_train_iterator(cfg, global_batch_size=args.batch, seed=0)
            for _ in range(args.warmup):
                next(it)
            t = time.perf_counter()
            for _ in range(args.steps):
                batch = next(it)
            dt = time.perf_counter() - t
            assert batch["image"].shape == (args.batch, *cfg.image_hw, 3)
            print(f"threads={threads}: {args.steps * args.batch / dt:.1f} images/s "
                  f"({1000 * dt / args.steps:.0f} ms per batch of {args.batch}) "
                  f"at {cfg.image_hw[0]}x{cfg.image_hw[1]}")
            it.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
