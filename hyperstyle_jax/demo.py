r"""The whole pipeline on CPU in minutes, with no download: train -> invert -> edit.

    python -m hyperstyle_jax.demo --workdir workdirs/demo

Stages (each a CLI you can run yourself; the commands are printed):
  1. train a small W-encoder on a seeded 16 px generator's images (`configs/tiny.py:w_encoder`)
  2. train a small HyperStyle on that encoder's codes (`configs/tiny.py:hyperstyle`)
  3. copy both exports to WORKDIR/export/{w_encoder,hyperstyle} (converted folders)
  4. write held-out images to WORKDIR/heldout/*.png and invert them with
     `python -m hyperstyle_jax.invert` -> WORKDIR/inversions
  5. edit with `python -m hyperstyle_jax.edit`: interpolation between two inversions, and
     a GANSpace component computed from the tiny generator
     (`python -m hyperstyle_jax.editing.ganspace_pca`) -> WORKDIR/edits/
  6. WORKDIR/summary.png: one labelled grid (input | W-encoder | iterations | edits)
It prints the held-out L2 of the mean latent, of the W-encoder and after each HyperStyle
iteration. Running it again resumes (finished stages only re-evaluate and re-export).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import time

import numpy as np
from absl import logging

from hyperstyle_jax import edit, inversion_files, invert
from hyperstyle_jax.checkpoints import load_hyperstyle
from hyperstyle_jax.data.synthetic import synthetic_data
from hyperstyle_jax.editing import ganspace_pca
from hyperstyle_jax.train import train_and_evaluate
from hyperstyle_jax.utils import cli, images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")
N_HELDOUT = 8      # held-out images written as PNGs and inverted by the CLI
N_ITERS = 3        # HyperStyle iterations at inversion (as in training)
PC = 0             # the GANSpace component edited
STRENGTHS = (-2.0, 2.0)


def tiny_config(stage: str):
    spec = importlib.util.spec_from_file_location("_tiny_config", TINY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(stage)


def _stage(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def _done(t0: float, timings: dict, key: str) -> None:
    timings[key] = time.perf_counter() - t0
    print(f"--- {key}: {timings[key]:.0f} s", flush=True)


def _cli(module, argv: list) -> None:
    """Run a package CLI in this process (no second start-up and import), echoing it."""
    print("$ python -m " + module.__name__ + " " + " ".join(argv), flush=True)
    rc = module.main(argv)
    if rc:
        raise RuntimeError(f"python -m {module.__name__} exited with status {rc}")


def _copy_export(src: str, dst: str) -> None:
    tmp = dst + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def run(workdir: str, quick: bool = False, progress: bool = True) -> dict:
    """Every stage; returns {'w_encoder': eval, 'hyperstyle': eval, 'invert_l2': [per
    iteration], 'timings': {stage: s}, 'paths': {...}}. `quick`: 10x fewer steps and
    fewer compiles (a smoke run, used by the tests)."""
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    timings, t_all = {}, time.perf_counter()
    wdir, hdir = os.path.join(workdir, "w_encoder"), os.path.join(workdir, "hyperstyle")
    export = os.path.join(workdir, "export")

    def shrink(c):
        if quick:  # fewer steps and compiles: one iteration body, no image grid
            c.total_steps = max(c.total_steps // 10, 1)
            c.val_every_steps = c.ckpt_every_steps = c.total_steps
            c.unroll_iterations, c.num_grid_images = False, 0
        return c

    # ------------------------------------------------------------ 1. W-encoder
    t0 = _stage("1/5 train the W-encoder (python -m hyperstyle_jax.train --config "
                f"configs/tiny.py:w_encoder --workdir {wdir})")
    c1 = shrink(tiny_config("w_encoder"))
    r1 = train_and_evaluate(c1, wdir, progress=progress)
    if r1["status"] != "done":
        raise RuntimeError(f"W-encoder training stopped ({r1['status']}); run again to resume")
    _done(t0, timings, "w_encoder")

    # ------------------------------------------------------------ 2. HyperStyle
    t0 = _stage("2/5 train HyperStyle on the W-encoder's codes (python -m hyperstyle_jax.train "
                f"--config configs/tiny.py:hyperstyle --workdir {hdir} "
                f"--config.checkpoints.w_encoder={wdir}/export)")
    c2 = shrink(tiny_config("hyperstyle"))
    c2.checkpoints.w_encoder = os.path.join(wdir, "export")
    r2 = train_and_evaluate(c2, hdir, progress=progress)
    if r2["status"] != "done":
        raise RuntimeError(f"HyperStyle training stopped ({r2['status']}); run again to resume")
    _done(t0, timings, "hyperstyle")

    os.makedirs(export, exist_ok=True)
    _copy_export(os.path.join(wdir, "export"), os.path.join(export, "w_encoder"))
    _copy_export(os.path.join(hdir, "export"), os.path.join(export, "hyperstyle"))

    # ------------------------------------------------------------ 3. invert held-out images
    t0 = _stage("3/5 invert held-out images with the exports")
    heldout = os.path.join(workdir, "heldout")
    os.makedirs(heldout, exist_ok=True)
    x = synthetic_data(c2.data)["eval"]["image"][:N_HELDOUT]
    stems = [f"heldout_{i:03d}" for i in range(len(x))]
    for stem, img in zip(stems, x):
        images.save_image(os.path.join(heldout, f"{stem}.png"), img)
    inv = os.path.join(workdir, "inversions")
    shutil.rmtree(inv, ignore_errors=True)
    _cli(invert, ["--checkpoint", f"{export}/hyperstyle", "--w_encoder", f"{export}/w_encoder",
                  "--images", heldout, "--out", inv, "--n_iters", str(N_ITERS),
                  "--batch_size", str(N_HELDOUT), "--save_latents", "--save_deltas",
                  "--save_npy"])
    # L2 of what the CLI wrote against the PNGs it read (8-bit, clipped: not the float data)
    target = [images.to_float(images.read_image(os.path.join(heldout, f"{s}.png"))) for s in stems]
    invert_l2 = []
    for t in range(N_ITERS + 1):
        key = "init" if t == 0 else f"iter_{t}"
        errs = []
        for s, y in zip(stems, target):
            errs.append(float(np.mean((inversion_files.read_arrays(inv, s)[key] - y) ** 2)))
        invert_l2.append(float(np.mean(errs)))
    _done(t0, timings, "invert")

    # ------------------------------------------------------------ 4. edit
    t0 = _stage("4/5 edit: interpolation and a GANSpace component of the tiny generator")
    pca = os.path.join(workdir, "ganspace_pca.npz")
    _cli(ganspace_pca, ["--generator", f"{export}/hyperstyle", "--out", pca,
                        "--n_samples", "20000" if quick else "100000",
                        "--n_components", "8", "--batch_size", "10000"])
    edits = os.path.join(workdir, "edits")
    shutil.rmtree(edits, ignore_errors=True)
    n_styles = load_hyperstyle(f"{export}/hyperstyle")[0]["generator"].n_latent
    common = ["--checkpoint", f"{export}/hyperstyle", "--inversion", inv,
              "--batch_size", str(N_HELDOUT)]
    _cli(edit, ["interpolate", *common, "--out", f"{edits}/interpolate",
                "--pair", stems[0], stems[1], "--alphas", "0.25,0.5,0.75"])
    strengths = ",".join(f"{s:g}" for s in STRENGTHS)
    _cli(edit, ["ganspace", *common, "--out", f"{edits}/ganspace", "--pca", pca,
                "--component", str(PC), "--start", "0", "--end", str(n_styles),
                f"--strength={strengths}"])
    _done(t0, timings, "edit")

    # ------------------------------------------------------------ 5. summary grid
    t0 = _stage("5/5 summary grid")
    summary = os.path.join(workdir, "summary.png")
    _summary_grid(summary, heldout, inv, edits, stems[:4], n_styles)
    _done(t0, timings, "summary")
    timings["total"] = time.perf_counter() - t_all

    w_eval, h_eval = r1["eval"], r2["eval"]
    n = c2.n_iters_per_batch
    print("\n=== held-out L2 (64 held-out images, float, as in training)")
    print(f"  mean latent G(latent_avg):            {w_eval['l2/mean_latent']:.5f}")
    print(f"  W-encoder (stage 1):                  {w_eval['l2/iter_0']:.5f}")
    for t in range(1, n + 1):
        print(f"  HyperStyle after iteration {t}:         {h_eval[f'l2/iter_{t}']:.5f}")
    print(f"=== the invert CLI on {len(stems)} held-out PNGs (8-bit): "
          + ", ".join(f"iter {t} {v:.5f}" for t, v in enumerate(invert_l2)))
    print(f"\nexports: {export}/w_encoder, {export}/hyperstyle\n"
          f"inversions: {inv} (grids/, iterations/<k>/, latents.npz, deltas/)\n"
          f"edits: {edits}/interpolate/grids, {edits}/ganspace/grids\n"
          f"summary: {summary}\n"
          "times: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()), flush=True)
    return {"w_encoder": w_eval, "hyperstyle": h_eval, "invert_l2": invert_l2,
            "timings": timings,
            "paths": {"export": export, "heldout": heldout, "inversions": inv, "edits": edits,
                      "summary": summary, "pca": pca}}


def _summary_grid(path, heldout, inv, edits, stems, n_styles, cell=96):
    """Rows: held-out images; columns: input | W-encoder | iterations | GANSpace edits;
    last row: the interpolation between the first two."""
    def read(*p):
        f = os.path.join(*p)
        return images.read_image(f) if os.path.isfile(f) else None

    keys = [k for k in sorted(os.listdir(os.path.join(edits, "ganspace", "edits")))]
    rows, labels = [], []
    for s in stems:
        its = [read(inversion_files.iteration_path(inv, t, s)) for t in range(N_ITERS + 1)]
        rows.append([read(heldout, f"{s}.png")] + its
                    + [read(edits, "ganspace", "edits", k, f"{s}.png") for k in keys])
        labels.append(["input", "W-encoder"] + [f"iter {t}" for t in range(1, N_ITERS + 1)]
                      + [f"PC{PC} {k.rsplit('_', 1)[-1]}" for k in keys])
    pair = f"{stems[0]}__{stems[1]}"
    alphas = sorted(os.listdir(os.path.join(edits, "interpolate", "edits")))
    final = [read(inversion_files.final_path(inv, s)) for s in stems[:2]]
    rows.append([read(heldout, f"{stems[0]}.png"), final[0]]
                + [read(edits, "interpolate", "edits", a, f"{pair}.png") for a in alphas]
                + [final[1], read(heldout, f"{stems[1]}.png")])
    labels.append(["input A", "A"] + [a.replace("_", " ") for a in alphas] + ["B", "input B"])
    images.save_image(path, images.make_grid(rows, cell_hw=(cell, cell), labels=labels))


def main(argv=None) -> int:
    """The CLI's entry point: a failure is one `error:` line (exit status 1)."""
    return cli.run(_main, argv, user_error_code=1)


def _main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m hyperstyle_jax.demo", description=__doc__,
                                formatter_class=cli.HelpFormatter)
    p.add_argument("--workdir", default="workdirs/demo",
                   help="output folder (default: workdirs/demo); a second run resumes")
    p.add_argument("--quick", action="store_true", help="10x fewer training steps (a smoke run)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    run(args.workdir, quick=args.quick, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
