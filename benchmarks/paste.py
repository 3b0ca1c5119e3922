#!/usr/bin/env python
"""Paste-back cost and quality, and dlib's HOG vs CNN detector on the alignment fixtures.

1. paste_back of a 1024 crop into a 12-megapixel photo (4000x3000: the fixture photo
   upscaled x5 on a noise canvas, face quad about 1600 px; and a second photo with the
   face at 400 px), by stage: face mask, its warp (blend_weight), the crop's warp + blend;
   the round trip's PSNR inside the face; the same with color_match, and with a colour
   cast on the crop.
2. Detection: time and hits of HOG (upsample 1, searched at <= 2048) and the CNN
   (upsample 0, searched at <= 640) on the fixture photo, its tight crop, the two-face
   composite, copies rotated in the image plane, and a squeezed copy (a crude stand-in for
   a face turned sideways), plus the 12 MP photo. A hit is a box that holds the (moved)
   face's landmark centre; extra boxes are counted apart. Then align_faces (face='all')
   with that detector: how far the aligned quad is from the one the true (moved)
   landmarks give, in % of its side.

Median of --repeats after one warm-up; markdown tables on stdout.

    python benchmarks/paste.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hyperstyle_jax.align import api, paste, steps  # noqa: E402
from hyperstyle_jax.align import detect as det  # noqa: E402

FIX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   "tests", "fixtures", "12_alignment")


def median_time(fn, repeats):
    """Median seconds of `repeats` calls after a warm-up call (whose result is returned)."""
    result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), result


def psnr(a, b):
    err = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / err)


def photo_12mp(scale, at):
    """4000x3000 noise canvas (blurred) with the fixture photo x scale pasted at `at`."""
    src = Image.open(os.path.join(FIX, "grace_hopper.jpg")).convert("RGB")
    rng = np.random.RandomState(0)
    canvas = Image.fromarray(rng.randint(0, 256, (300, 400, 3), dtype=np.uint8)).resize(
        (4000, 3000), Image.Resampling.BICUBIC)
    big = src.resize((round(src.width * scale), round(src.height * scale)),
                     Image.Resampling.BICUBIC)
    canvas.paste(big, at)
    lm = np.load(os.path.join(FIX, "alignment_io.npz"))["landmarks"].astype(np.float64)
    lm = np.rint((lm + 0.5) * scale - 0.5 + at)
    return np.asarray(canvas), lm


def bench_paste(repeats):
    print("\n### paste_back: a 1024 crop into a 4000x3000 photo (ms)\n")
    print("| face quad | blended box | face mask | mask warp | crop warp + blend | total "
          "| PSNR in face | + color_match | cast crop | cast + color_match |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for scale, at in ((5.0, (700, 0)), (1.25, (1700, 1200))):
        photo, lm = photo_12mp(scale, at)
        face = api.align_landmarks(Image.fromarray(photo), lm, 1024)
        crop = face.image
        t_mask, _ = median_time(lambda: paste.face_mask(face), repeats)
        t_weight, (alpha, box) = median_time(lambda: paste.blend_weight(face), repeats)
        t_total, _ = median_time(lambda: paste.paste_back(photo, crop, face), repeats)
        inside = np.zeros(photo.shape[:2], bool)
        inside[box[1]:box[3], box[0]:box[2]] = alpha >= 0.999
        cast = np.clip(crop.astype(int) + [12, -8, 6], 0, 255).astype(np.uint8)
        q = [psnr(paste.paste_back(photo, c, face, color_match=m)[inside], photo[inside])
             for c, m in ((crop, False), (crop, True), (cast, False), (cast, True))]
        side = np.hypot(*(face.quad[3] - face.quad[0]))
        print(f"| {side:.0f} px | {box[2] - box[0]}x{box[3] - box[1]} | {1e3 * t_mask:.0f} | "
              f"{1e3 * (t_weight - t_mask):.0f} | {1e3 * (t_total - t_weight):.0f} | "
              f"{1e3 * t_total:.0f} | "
              + " | ".join(f"{v:.1f} dB" for v in q) + " |")


def cases():
    """(name, uint8 RGB, [landmarks [68, 2] of each face there, or None if mirrored])."""
    src = np.asarray(Image.open(os.path.join(FIX, "grace_hopper.jpg")).convert("RGB"))
    tight = np.asarray(Image.open(os.path.join(FIX, "grace_hopper_tight.png")).convert("RGB"))
    fx = np.load(os.path.join(FIX, "alignment_io.npz"))
    lm = fx["landmarks"].astype(np.float64)
    mirrored = np.c_[1023 - lm[:, 0], lm[:, 1]]
    out = [("photo 512x600", src, [lm]),
           ("tight 280x330", tight, [fx["tight_landmarks"].astype(np.float64)]),
           ("two faces 1024x600", np.concatenate([src, src[:, ::-1]], axis=1), [lm, mirrored])]
    img = Image.fromarray(src)
    for angle in (20, 35, 50, 70):
        rot = img.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=(60, 60, 60))
        t = np.deg2rad(angle)  # PIL turns counter-clockwise on screen (y down)
        m = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
        moved = (lm + 0.5 - np.array(img.size) / 2) @ m.T + np.array(rot.size) / 2 - 0.5
        out.append((f"rotated {angle} deg", np.asarray(rot), [moved]))
    squeeze = img.resize((round(img.width * 0.55), img.height), Image.Resampling.LANCZOS)
    out.append(("squeezed to 55 % width", np.asarray(squeeze), [(lm + 0.5) * [0.55, 1] - 0.5]))
    photo, big = photo_12mp(5.0, (700, 0))
    out.append(("12 MP, face 1600 px", photo, [big]))
    return out


def quad_error(faces, truth):
    """Quad corner error of the aligned face nearest truth's, in % of its side."""
    quad, qsize = steps.quad_from_landmarks(truth)
    if not faces:
        return None
    err = min(np.abs(f.quad - quad).max() for f in faces)
    return 100 * err / qsize


def bench_detect(repeats):
    t0 = time.perf_counter()
    det.models()
    t_hog = time.perf_counter() - t0
    t0 = time.perf_counter()
    det.cnn_model()
    print(f"\nmodel load: HOG + 68-point predictor {t_hog:.2f} s, CNN "
          f"{time.perf_counter() - t0:.2f} s")
    print("\n### Detection: faces found / there (+ extra boxes), detection seconds, and the "
          "aligned quad's error (% of its side; worst face)\n")
    print("| input | HOG hits | HOG s | HOG quad err | CNN hits | CNN s | CNN quad err |")
    print("|---|---|---|---|---|---|---|")
    totals = {"hog": 0, "cnn": 0}
    n_faces = 0
    for name, rgb, truths in cases():
        row = [name]
        centres = [t.mean(axis=0) for t in truths]
        n_faces += len(truths)
        for detector in ("hog", "cnn"):
            secs, found = median_time(lambda: det.detect(rgb, None, detector), repeats)

            def holds(d, x, y):
                return d.box[0] <= x <= d.box[2] and d.box[1] <= y <= d.box[3]

            hits = sum(any(holds(d, x, y) for d in found) for x, y in centres)
            extra = sum(not any(holds(d, x, y) for x, y in centres) for d in found)
            totals[detector] += hits
            try:
                faces = api.align_faces(rgb, 256, "all", detector=detector)
            except api.NoFaceError:
                faces = []
            errs = [quad_error(faces, t) for t, c in zip(truths, centres)
                    if t[0, 0] < t[16, 0]]  # mirrored faces swap left and right: skipped
            errs = [e for e in errs if e is not None]
            row += [f"{hits}/{len(centres)}" + (f" +{extra}" if extra else ""), f"{secs:.2f}",
                    f"{max(errs):.1f} %" if errs else "—"]
        print("| " + " | ".join(row) + " |")
    print(f"\ntotal hits: HOG {totals['hog']}/{n_faces}, CNN {totals['cnn']}/{n_faces}")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip_detect", action="store_true")
    args = p.parse_args()
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"load average {' '.join(load)} at start")
    bench_paste(args.repeats)
    if not args.skip_detect:
        bench_detect(args.repeats)
    with open("/proc/loadavg") as f:
        print(f"\nload average at end: {' '.join(f.read().split()[:3])}")


if __name__ == "__main__":
    main()
