"""Invert real images with a converted HyperStyle checkpoint.

    python -m hyperstyle_jax.invert --checkpoint ckpt/hyperstyle_ffhq \\
        --w_encoder ckpt/w_encoder_faces --images photos/ --out out/ [--n_iters 5]

Output layout (OUT/...):
    iterations/<k>/<stem>.png   k = 0 (initial W inversion) .. n (final)
    final/<stem>.png            the last iteration's reconstruction
    inputs/<stem>.png           the input as the model saw it (aligned, resized)
    grids/<stem>.png            labelled: input | initial | iteration 1 .. n
    latents.npy                 {stem: codes [n_styles, 512]} (with --save_latents; the
                                official script's format, a pickled dict: np.load(...,
                                allow_pickle=True).item())
    deltas/<stem>.npz           final accumulated offsets per tuned layer, 'layer_<j>'
                                [out, in, k, k] (with --save_deltas)
    arrays/<stem>.npz           'init', 'iter_1' .. 'iter_n' float32 [H, W, 3] un-clipped,
                                'codes' [n_styles, 512] (with --save_npy)
Images are read with PIL (any format; converted to RGB) and resized as the official
transforms do. A file that cannot be read is reported in one line and skipped; the exit
status is 1 if any file failed.
With --align, each image is first aligned in memory as the official FFHQ crop (1024, the
largest face; needs `pip install -e '.[align]'`), then resized; the grids show the aligned
input, and a file with no face is reported and skipped like an unreadable one.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from hyperstyle_jax.utils import cli
from hyperstyle_jax.utils import images as imio
from hyperstyle_jax.utils.paths import list_images, unique_stems


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m hyperstyle_jax.invert", description=__doc__,
        formatter_class=cli.HelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="converted HyperStyle folder (tools/convert_weights.py hyperstyle)")
    p.add_argument("--w_encoder", required=True,
                   help="converted W-encoder folder (tools/convert_weights.py w_encoder)")
    p.add_argument("--images", required=True, help="an image file, a folder or a glob")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--n_iters", type=int, default=5, help="hypernetwork iterations")
    p.add_argument("--batch_size", type=int, default=4,
                   help="images per batch; the last batch is padded")
    p.add_argument("--save_latents", action="store_true", help="write latents.npy")
    p.add_argument("--save_deltas", action="store_true", help="write deltas/<stem>.npz")
    p.add_argument("--save_npy", action="store_true",
                   help="write arrays/<stem>.npz with float32 un-clipped images and codes")
    p.add_argument("--resize_outputs", action="store_true",
                   help="save outputs at the feedback size (256) instead of the generator's")
    p.add_argument("--align", action="store_true",
                   help="align faces first (official FFHQ crop, largest face; hyperstyle_jax.align)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: convs and large matmuls on bf16 operands with fp32 accumulation "
                        "(faster on AVX-512 BF16 / AMX CPUs and accelerators; ~0.5%% from fp32)")
    args = p.parse_args(argv)
    if args.n_iters < 1:
        p.error(f"--n_iters must be >= 1, got {args.n_iters}")
    if args.batch_size < 1:
        p.error(f"--batch_size must be >= 1, got {args.batch_size}")
    return args


def _read_batch(paths, hw, load=imio.read_image, errors=(imio.ImageReadError,)):
    """Read (load: path -> uint8 [H, W, 3]) and resize; returns (ok_paths, uint8 [n, h, w, 3],
    [(path, reason)]) where reason is the one-line message of one of `errors`."""
    ok, arrs, bad = [], [], []
    for path in paths:
        try:
            img = load(path)
            if img.shape[0] < hw[0] or img.shape[1] < hw[1]:
                print(f"warning: {path}: {img.shape[1]}x{img.shape[0]} is smaller than the "
                      f"model's {hw[1]}x{hw[0]} input; upscaled (expect a blurry result)",
                      file=sys.stderr)
            arrs.append(imio.resize(img, hw))
            ok.append(path)
        except errors as e:
            bad.append((path, str(e)))
    return ok, arrs, bad


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cli.out_dir(args.out)
    except cli.UserError as e:
        return cli.fail(str(e))
    paths = list_images(args.images)
    if not paths:
        print(f"error: no images found at {args.images!r}", file=sys.stderr)
        return 2
    load, read_errors = imio.read_image, (imio.ImageReadError,)
    if args.align:
        from hyperstyle_jax import align

        try:
            align.require()
        except align.AlignUnavailableError as e:
            print(f"error: --align: {e}", file=sys.stderr)
            return 2
        load = lambda path: align.align_image(path, size=1024)[0]  # noqa: E731
        read_errors = (imio.ImageReadError, align.AlignError)

    # Imported here so that --help stays fast.
    import jax

    from hyperstyle_jax.checkpoints import CheckpointError
    from hyperstyle_jax.inference import load_inverter

    try:
        inverter = load_inverter(args.checkpoint, args.w_encoder, precision=args.precision)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    out = args.out
    n = args.n_iters
    for sub in ["inputs", "final", "grids"] + [f"iterations/{k}" for k in range(n + 1)]:
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    stems = dict(zip(paths, unique_stems(paths)))
    print(f"compiling the {n}-iteration inversion for batches of {args.batch_size} ...", flush=True)
    run = inverter.batched_inverter(args.batch_size, n, resize_outputs=args.resize_outputs)

    latents, failed = {}, []
    t_run, n_done = 0.0, 0
    bar = cli.progress_bar(len(paths), desc="invert", unit="img")
    for start in range(0, len(paths), args.batch_size):
        ok, arrs, bad = _read_batch(paths[start:start + args.batch_size], inverter.input_hw,
                                    load, read_errors)
        for path, reason in bad:
            cli.write_line(bar, f"skipped: {reason}")
        failed += bad
        bar.update(len(bad))
        if not ok:
            continue
        x = imio.to_float(np.stack(arrs))
        t0 = time.perf_counter()
        res = run(x)  # numpy dict, padded batch already removed; compiled ahead of time
        t_run += time.perf_counter() - t0
        n_done += len(ok)
        for i, path in enumerate(ok):
            _write_outputs(out, stems[path], arrs[i], res, i, n, args)
            latents[stems[path]] = res["codes"][i]
        bar.update(len(ok))
        if t_run > 0:
            bar.set_postfix_str(f"{n_done / t_run:.2f} img/s")
    bar.close()

    if args.save_latents and latents:
        np.save(os.path.join(out, "latents.npy"), latents, allow_pickle=True)
    n_ok = len(paths) - len(failed)
    per_img = f"{1000 * t_run / n_done:.1f} ms per image" if n_done else "no image inverted"
    print(f"inverted {n_ok} of {len(paths)} images into {out} ({n} iterations); "
          f"{per_img} excluding compilation, on {jax.device_count()} {jax.default_backend()} device(s)")
    if failed:
        print(f"{len(failed)} file(s) failed: " + ", ".join(p for p, _ in failed), file=sys.stderr)
        return 1
    return 0


def _write_outputs(out, stem, x_uint8, res, i, n, args):
    """Everything for one image; each file is complete when written."""
    iters = [res["init"][i]] + [res["images"][k][i] for k in range(n)]
    for k, img in enumerate(iters):
        imio.save_image(os.path.join(out, "iterations", str(k), f"{stem}.png"), img)
    imio.save_image(os.path.join(out, "final", f"{stem}.png"), iters[-1])
    imio.save_image(os.path.join(out, "inputs", f"{stem}.png"), x_uint8)  # as the model saw it
    cell = iters[-1].shape[:2]
    labels = ["input", "initial (W)"] + [f"iteration {k}" for k in range(1, n + 1)]
    grid = imio.make_grid([[x_uint8] + iters], cell_hw=cell, labels=[labels])
    imio.save_image(os.path.join(out, "grids", f"{stem}.png"), grid)
    if args.save_npy:
        os.makedirs(os.path.join(out, "arrays"), exist_ok=True)
        arrays = {"init": iters[0].astype(np.float32), "codes": res["codes"][i].astype(np.float32)}
        arrays.update({f"iter_{k}": iters[k].astype(np.float32) for k in range(1, n + 1)})
        np.savez(os.path.join(out, "arrays", f"{stem}.npz"), **arrays)
    if args.save_deltas:
        os.makedirs(os.path.join(out, "deltas"), exist_ok=True)
        d = {f"layer_{j}": np.asarray(v[i]) for j, v in enumerate(res["deltas"]) if v is not None}
        np.savez(os.path.join(out, "deltas", f"{stem}.npz"), **d)


if __name__ == "__main__":
    sys.exit(cli.run(main))
