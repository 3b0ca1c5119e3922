"""`edit interfacegan --video` on synthetic clips (fixture 12's photo panned and zoomed):
frames/s per stage, the flicker ratio with and without smoothing, peak memory vs clip length.

    python benchmarks/video.py                          # all three parts
    python benchmarks/video.py --parts stages --sizes 256,1024 --frames 8 --n_iters 1
    python benchmarks/video.py --parts memory --lengths 30,150,600

stages:  full-width HyperStyle at --sizes with random weights (benchmarks/invert.py's
         `build`), a --frames clip at 640x360; per-stage frames/s from the clip's report
         (each stage's own seconds; invert includes the first batch's compile).
flicker: the fixture-05 model (tiny, random-ish weights) on a 30-frame 320x180 clip, for
         track sigma 0/2 and code sigma 0/1: the report's flicker ratio, and the jitter
         (px, mean second difference of the crop quad's corners) of the track used.
memory:  the streaming stages with the model stubbed (`video.synthetic.stub_run`) at
         640x360, one fresh process per length: tracemalloc peak and peak RSS.
Prints markdown tables and the machine's load (`/proc/loadavg`).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from hyperstyle_jax import edit  # noqa: E402
from hyperstyle_jax.convert.hyperstyle import convert_hyperstyle, convert_w_encoder  # noqa: E402
from hyperstyle_jax.inference import Inverter  # noqa: E402
from hyperstyle_jax.video import pipeline, synthetic, tracks  # noqa: E402

FIX = os.path.join(ROOT, "tests", "fixtures")
PHOTO = os.path.join(FIX, "12_alignment", "grace_hopper.jpg")
UNIT = os.path.join(FIX, "09_editing", "interfacegan_random_unit.pt")


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def report_of(out: str, stem: str) -> dict:
    with open(os.path.join(out, "videos", f"{stem}.json")) as f:
        return json.load(f)


def part_stages(args, tmp: str) -> None:
    from invert import build  # noqa: PLC0415  benchmarks/invert.py: the random full-width model

    clip = synthetic.make_clip(os.path.join(tmp, "hd.mp4"), PHOTO, args.frames, (640, 360))
    warm = synthetic.make_clip(os.path.join(tmp, "warm.mp4"), PHOTO, 2, (640, 360))
    print(f"\n### Stages: {args.frames} frames 640x360, n_iters {args.n_iters}, batch "
          f"{args.batch_size}, after a warm-up clip (compiles excluded) "
          f"(load before: {loadavg()})\n")
    print("| output | " + " | ".join(pipeline.STAGES) + " | wall frames/s |")
    print("|---" * (len(pipeline.STAGES) + 2) + "|")
    direction = np.random.RandomState(0).normal(size=(1, 512)).astype(np.float32)
    dpath = os.path.join(tmp, "dir.npy")
    np.save(dpath, direction / np.linalg.norm(direction))
    for size in [int(s) for s in args.sizes.split(",")]:
        model, frozen, hyper = build(size)
        inverter = Inverter(model, frozen, hyper, {})
        out = os.path.join(tmp, f"stages{size}")
        a = edit.build_parser().parse_args(
            ["interfacegan", "--checkpoint", "-", "--video", clip, "--out", out, "--direction",
             dpath, "--factors=2", "--n_iters", str(args.n_iters), "--batch_size",
             str(args.batch_size)])
        opts = pipeline.VideoOptions.from_args(a)
        ctx = pipeline.VideoContext(a, inverter)
        invert = inverter.batched_inverter(args.batch_size, args.n_iters)
        t0 = time.perf_counter()
        pipeline.edit_clip(warm, "warm", a, ctx, opts, invert)  # compiles both functions
        t_warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        pipeline.edit_clip(clip, "hd", a, ctx, opts, invert)
        wall = time.perf_counter() - t0
        r = report_of(out, "hd")
        cells = [f"{r['stages'][s]['frames_per_s']:.2f}" if s in r["stages"] else "-"
                 for s in pipeline.STAGES]
        print(f"| {size} | " + " | ".join(cells) + f" | {args.frames / wall:.3f} |", flush=True)
        print(f"(warm-up clip with compiles: {t_warm:.0f} s)", file=sys.stderr)
    print(f"\nload after: {loadavg()}")


def part_flicker(args, tmp: str) -> None:
    ck = os.path.join(tmp, "ck")
    e2e = os.path.join(FIX, "05_e2e")
    convert_hyperstyle(os.path.join(e2e, "hyperstyle_e2e_default.pt"), ck + "/hs",
                       log=lambda *a: None)
    convert_w_encoder(os.path.join(e2e, "w_encoder_narrow_psp.pt"), ck + "/we",
                      log=lambda *a: None)
    clip = synthetic.make_clip(os.path.join(tmp, "pan.mp4"), PHOTO, 30, (320, 180))
    raw = [pipeline.detect_landmarks(f) for f in synthetic.pan_zoom(PHOTO, 30, (320, 180))]
    print(f"\n### Flicker: fixture-05 model, 30 frames 320x180, interfacegan factor 2, "
          f"n_iters {args.n_iters} (load before: {loadavg()})\n")
    print("| track sigma | code sigma | crop jitter px | flicker (out/in) |")
    print("|---|---|---|---|")
    for ts, cs in ((0, 0), (2, 0), (0, 1), (2, 1)):
        out = os.path.join(tmp, f"fl{ts}{cs}")
        edit.main(["interfacegan", "--checkpoint", ck + "/hs", "--w_encoder", ck + "/we",
                   "--video", clip, "--out", out, "--direction", UNIT, "--factors=2",
                   "--n_iters", str(args.n_iters), "--track_sigma", str(ts), "--code_sigma",
                   str(cs)])
        r = report_of(out, "pan")
        jit = tracks.jitter(tracks.quads(tracks.smooth_landmark_track(raw, ts)))
        (flick,) = r["flicker"].values()
        print(f"| {ts} | {cs} | {jit:.2f} | {flick:.3f} |", flush=True)
    print(f"\nload after: {loadavg()}")


def memory_one(n: int, tmp: str) -> None:
    clip = os.path.join(tmp, f"m{n}.mp4")  # made by the parent: only the stages run here
    _, peak = synthetic.stub_run(clip, os.path.join(tmp, f"mo{n}"))
    # VmHWM: this process's own peak (ru_maxrss would carry the parent's across exec)
    with open("/proc/self/status") as f:
        rss = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM")) / 1024
    print(json.dumps({"frames": n, "traced_mb": peak / 2**20, "rss_mb": rss}))


def part_memory(args, tmp: str) -> None:
    print(f"\n### Peak memory vs clip length: stubbed model, 640x360 "
          f"(load before: {loadavg()})\n")
    print("| frames | traced peak MB | peak RSS MB (VmHWM) | frame MB |")
    print("|---|---|---|---|")
    for n in [int(s) for s in args.lengths.split(",")]:
        synthetic.make_clip(os.path.join(tmp, f"m{n}.mp4"), PHOTO, n, (640, 360))
        p = subprocess.run([sys.executable, __file__, "--memory_one", str(n), "--tmp", tmp],
                           capture_output=True, text=True, check=True)
        r = json.loads(p.stdout.strip().splitlines()[-1])
        print(f"| {n} | {r['traced_mb']:.1f} | {r['rss_mb']:.0f} | "
              f"{640 * 360 * 3 / 2**20:.2f} |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="stages,flicker,memory")
    p.add_argument("--sizes", default="256")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--n_iters", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--lengths", default="30,150,600")
    p.add_argument("--memory_one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_one:
        memory_one(args.memory_one, args.tmp)
        return
    with tempfile.TemporaryDirectory() as tmp:
        print(f"machine: {os.cpu_count()} CPU cores, load {loadavg()} (shared with other "
              f"agents' jobs)")
        for part in args.parts.split(","):
            {"stages": part_stages, "flicker": part_flicker, "memory": part_memory}[part](
                args, tmp)


if __name__ == "__main__":
    main()
