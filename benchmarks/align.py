#!/usr/bin/env python
"""Face alignment cost per image, by stage: read, detect, landmarks, align (crop/pad/warp),
write (the CLI's PNG).

Inputs are the fixture face (512x600 JPEG, crop branch), its tight crop (280x330 PNG,
pad + blur branch) and the face upscaled x2/x4/x8 (PNG), so the face grows with the
image. Each row is the median of --repeats runs after one warm-up; models are loaded
once (as in one CLI worker). Prints a markdown table.

    python benchmarks/align.py [--size 1024] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hyperstyle_jax.align import api, steps  # noqa: E402
from hyperstyle_jax.align import detect as det  # noqa: E402
from hyperstyle_jax.align.cli import PNG_LEVEL  # noqa: E402

FIX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   "tests", "fixtures", "12_alignment")


def time_one(path, size, max_side):
    t = [time.perf_counter()]
    im = api.load(path)
    t.append(time.perf_counter())
    dets = det.detect(im.detect_rgb, max_side)
    t.append(time.perf_counter())
    lm = det.landmarks(im.detect_rgb, dets[0].box)
    t.append(time.perf_counter())
    out = steps.align_from_landmarks(im.image, lm, size)
    t.append(time.perf_counter())
    out.save(os.path.join(tempfile.gettempdir(), "align_bench.png"), compress_level=PNG_LEVEL)
    t.append(time.perf_counter())
    return np.diff(t), im.image.size


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    t0 = time.perf_counter()
    det.models()
    print(f"model load (once per process): {time.perf_counter() - t0:.2f} s")
    tmp = tempfile.mkdtemp()
    face = Image.open(os.path.join(FIX, "grace_hopper.jpg")).convert("RGB")
    cases = [("grace_hopper.jpg", os.path.join(FIX, "grace_hopper.jpg"), det.DETECT_MAX_SIDE),
             ("grace_hopper_tight.png", os.path.join(FIX, "grace_hopper_tight.png"),
              det.DETECT_MAX_SIDE)]
    for k in (2, 4, 8):
        path = os.path.join(tmp, f"x{k}.png")
        face.resize((face.width * k, face.height * k), Image.Resampling.BICUBIC).save(path)
        cases.append((f"x{k} PNG", path, det.DETECT_MAX_SIDE))
    cases.append(("x4 PNG, full-res detection", os.path.join(tmp, "x4.png"), 0))

    print(f"\noutput {args.size}x{args.size}; median of {args.repeats} after 1 warm-up; seconds\n")
    print("| input | W x H | detected at | read | detect | landmarks | crop/pad/warp | write "
          "| total |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, path, max_side in cases:
        time_one(path, args.size, max_side)
        runs = np.array([time_one(path, args.size, max_side)[0] for _ in range(args.repeats)])
        med = np.median(runs, axis=0)
        w, h = Image.open(path).size
        at = (w, h) if not max_side or max(w, h) <= max_side else \
            tuple(round(v * max_side / max(w, h)) for v in (w, h))
        print(f"| {name} | {w}x{h} | {at[0]}x{at[1]} | " + " | ".join(f"{v:.3f}" for v in med)
              + f" | {med.sum():.3f} |")


if __name__ == "__main__":
    main()
