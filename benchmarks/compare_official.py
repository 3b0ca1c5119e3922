#!/usr/bin/env python
"""Seconds per image of the full HyperStyle inversion: ours in fp32 and bf16 against the
official PyTorch code, on the same random full-width checkpoint and the same inputs,
alternating the programs in one run (best of --rounds each). Prints one table with the
ratios (best against best, and within each round: median and range), the bf16-vs-fp32
mean relative error of the final images and the load average.

    # ours only (no official repo needed; random JAX weights):
    python benchmarks/compare_official.py --ours_only
    # with an official figure measured elsewhere:
    python benchmarks/compare_official.py --ours_only --official_s_per_image 11.85

    # against the official code:
    python benchmarks/compare_official.py --official ~/hyperstyle \\
        --official_python ~/venv-official/bin/python
    # ... with ours also run on the CPU split into 3 devices (`invert --cpu_devices 3`):
    python benchmarks/compare_official.py --official ~/hyperstyle \\
        --official_python ~/venv-official/bin/python --cpu_devices 3

The official code: `git clone https://github.com/yuval-alaluf/hyperstyle ~/hyperstyle`
(public; its large `.npy` editing directions are not needed: `GIT_LFS_SKIP_SMUDGE=1`).
The official venv (torch + torchvision for CPU, the official README's environment minus
CUDA), exactly as run on this machine:

    python -m venv ~/venv-official
    ~/venv-official/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy scipy pillow \
        matplotlib scikit-image

(about 5.7 GB, a CUDA build that runs on the CPU; from local wheels with `--no-index
--find-links DIR` on an offline machine). The official repo's two CUDA ops
(`models/stylegan2/op/fused_act.py`, `upfirdn2d.py`, JIT-compiled at import) are replaced
by the pure-PyTorch files in benchmarks/official_ops/ (the originals are kept in
`models/stylegan2/op_cuda_orig/`); `.cuda()`, the resnet34 download, its ImageNet weights
file and the `e4e_w_encoder` KeyError are patched in-process by benchmarks/official_side.py.
The random checkpoints are built there along the official from-scratch path and converted
with our converters, so both programs run the same weights (ours needs torch to read them).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402


def load_str() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def inputs(n: int, hw: int, seed: int) -> np.ndarray:
    """Photo-like inputs [n, hw, hw, 3] in [-1, 1]: smooth random colour fields + noise."""
    rng = np.random.RandomState(seed)
    coarse = rng.uniform(-1, 1, (n, 8, 8, 3)).astype(np.float32)
    x = np.repeat(np.repeat(coarse, hw // 8, 1), hw // 8, 2)
    k = np.ones(9, np.float32) / 9
    for ax in (1, 2):  # box-blur the blocks into smooth fields
        x = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), ax, x)
    return np.clip(x + 0.05 * rng.randn(*x.shape), -1, 1).astype(np.float32)


# ----------------------------------------------------------------------------- our side


def ours_random(size: int, precisions, per_sample: str):
    """Inverters on random full-width JAX weights (benchmarks/invert.py's build)."""
    from invert import build

    from hyperstyle_jax.inference import make_inverter

    model, frozen, hyper = build(size)
    return {p: make_inverter(model.config, frozen, hyper, per_sample=per_sample, precision=p)
            for p in precisions}


def ours_converted(work: str, precisions, per_sample: str):
    from hyperstyle_jax.convert.hyperstyle import convert_hyperstyle, convert_w_encoder
    from hyperstyle_jax.inference import load_inverter

    hs, we = os.path.join(work, "jax_hyperstyle"), os.path.join(work, "jax_w_encoder")
    if not os.path.exists(hs):
        convert_hyperstyle(os.path.join(work, "hyperstyle_random.pt"), hs, log=lambda *a: None)
    if not os.path.exists(we):
        convert_w_encoder(os.path.join(work, "w_encoder_random.pt"), we, log=lambda *a: None)
    return {p: load_inverter(hs, we, per_sample=per_sample, precision=p) for p in precisions}


# ----------------------------------------------------------------------------- official side


def install_ops(repo: str):
    """Put benchmarks/official_ops/* over <repo>/models/stylegan2/op/ (originals kept once)."""
    op = os.path.join(repo, "models", "stylegan2", "op")
    keep = os.path.join(repo, "models", "stylegan2", "op_cuda_orig")
    if not os.path.isdir(op):
        raise SystemExit(f"{op}: not found; --official must be the HyperStyle repo root")
    if not os.path.exists(keep):
        shutil.copytree(op, keep)
    for name in ("__init__.py", "fused_act.py", "upfirdn2d.py"):
        shutil.copy(os.path.join(HERE, "official_ops", name), os.path.join(op, name))


class Official:
    """The official inversion in a long-lived subprocess (see official_side.py)."""

    def __init__(self, python: str, repo: str, work: str, size: int, n_iters: int):
        side = os.path.join(HERE, "official_side.py")
        if not os.path.exists(os.path.join(work, "hyperstyle_random.pt")):
            subprocess.run([python, side, "make", "--repo", repo, "--size", str(size),
                            "--n_iters", str(n_iters)], cwd=work, check=True)
        self.proc = subprocess.Popen([python, side, "serve", "--repo", repo, "--n_iters",
                                      str(n_iters)], cwd=work, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.work = work
        self._expect("READY")

    def _expect(self, word: str) -> str:
        for line in self.proc.stdout:
            if line.startswith(word):
                return line
        raise SystemExit(f"official side exited before {word!r} (see its stderr above)")

    def run(self, x_nhwc: np.ndarray) -> tuple[float, np.ndarray]:
        i, o = os.path.join(self.work, "x.npy"), os.path.join(self.work, "y.npy")
        np.save(i, x_nhwc.transpose(0, 3, 1, 2))
        self.proc.stdin.write(f"run {i} {o}\n")
        self.proc.stdin.flush()
        dt = float(self._expect("TIME").split()[1])
        return dt, np.load(o).transpose(0, 2, 3, 1)

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=60)


# ----------------------------------------------------------------------------- main


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).mean() / np.abs(b).mean())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", help="the official HyperStyle repo root (git clone "
                   "https://github.com/yuval-alaluf/hyperstyle; see above)")
    p.add_argument("--official_python", help="python of a venv that runs the official code")
    p.add_argument("--ours_only", action="store_true", help="time ours only (random JAX weights)")
    p.add_argument("--official_s_per_image", type=float,
                   help="with --ours_only: an official figure measured elsewhere, for the ratios")
    p.add_argument("--size", type=int, default=256, help="generator output size")
    p.add_argument("--batch", type=int, default=3)
    p.add_argument("--n_iters", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (best of)")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--per_sample", default="auto")
    p.add_argument("--work", help="folder for the random checkpoints (default: a temp dir)")
    p.add_argument("--cpu_devices", type=int, default=None,
                   help="split the CPU into N JAX devices (as `invert --cpu_devices N`) and "
                        "time each of our precisions twice, on one device and split over N "
                        "(rows 'ours <precision> xN')")
    args = p.parse_args(argv)
    if not args.ours_only and not (args.official and args.official_python):
        p.error("give --official and --official_python, or --ours_only")
    precisions = args.precisions.split(",")
    if args.cpu_devices:
        from hyperstyle_jax import parallel
        parallel.use_cpu_devices(args.cpu_devices)
    work = args.work or tempfile.mkdtemp(prefix="hs_compare_")
    os.makedirs(work, exist_ok=True)

    official = None
    if not args.ours_only:
        install_ops(args.official)
        official = Official(args.official_python, os.path.abspath(args.official), work,
                            args.size, args.n_iters)
        invs = ours_converted(work, precisions, args.per_sample)
    else:
        invs = ours_random(args.size, precisions, args.per_sample)
    h, w = next(iter(invs.values())).input_hw
    x = inputs(args.batch, h, seed=0)

    t0 = time.perf_counter()
    runs = {pr: inv.batched_inverter(args.batch, args.n_iters, max_devices=1)
            for pr, inv in invs.items()}
    if args.cpu_devices and args.cpu_devices > 1:
        if args.batch % args.cpu_devices:
            p.error(f"--batch {args.batch} is not divisible by --cpu_devices {args.cpu_devices}")
        runs.update({f"{pr} x{args.cpu_devices}": inv.batched_inverter(args.batch, args.n_iters)
                     for pr, inv in invs.items()})
    print(f"compiled ours ({', '.join(runs)}) in {time.perf_counter() - t0:.0f} s; "
          f"load {load_str()}", flush=True)
    finals = {}
    for pr, run in runs.items():  # warm-up, and the images the errors are computed on
        finals[pr] = run(x)["images"][-1]
    if official is not None:
        _, finals["official"] = official.run(x)  # warm-up too

    best = {k: float("inf") for k in list(runs) + (["official"] if official else [])}
    times = {k: [] for k in best}
    loads = []
    for r in range(args.rounds):  # alternate the programs: the load hits all of them alike
        for k in best:
            t = time.perf_counter()
            if k == "official":
                dt, _ = official.run(x)
            else:
                runs[k](x)
                dt = time.perf_counter() - t
            best[k] = min(best[k], dt)
            times[k].append(dt)
            loads.append(os.getloadavg()[0])
            print(f"round {r + 1}: {k} {dt / args.batch:.2f} s/image (load {load_str()})",
                  flush=True)
    if official is not None:
        official.close()

    ref = best.get("official")
    ref_label = "official (this run)"
    if ref is None and args.official_s_per_image:
        ref, ref_label = args.official_s_per_image * args.batch, "official (given figure)"
    print(f"\nHyperStyle-{args.size} inversion, {args.n_iters} iterations, batch {args.batch}, "
          f"full width, random weights, best of {args.rounds} alternating rounds; load average "
          f"during the timed calls {min(loads):.1f}-{max(loads):.1f} (1 min), "
          f"{os.cpu_count()} CPUs\n")
    # Best against best moves with one fast round of either side; the ratio within each
    # round (both sides under the same load) is printed beside it: median (min-max).
    print("| program | s / image | speed vs official | per-round speed, median (range) "
          "| final images vs ours fp32 (mean rel. err.) |")
    print("|---|---|---|---|---|")
    if ref is not None and "official" not in best:
        print(f"| {ref_label} | {ref / args.batch:.2f} | 1.00x | | |")
    for k, v in best.items():
        ratio = f"{ref / v:.2f}x" if ref is not None else "—"
        err = ("" if k == "fp32" or "fp32" not in finals
               else f"{rel_err(finals[k], finals['fp32']):.2e}")
        per_round = ""
        if "official" in times and k != "official":
            rr = [o / t for o, t in zip(times["official"], times[k])]
            per_round = f"{np.median(rr):.2f}x ({min(rr):.2f}-{max(rr):.2f})"
        if k == "official":
            ratio = "1.00x"
        name = k if k == "official" else f"ours {k}"
        print(f"| {name} | {v / args.batch:.2f} | {ratio} | {per_round} | {err} |")
    return best


if __name__ == "__main__":
    main()
