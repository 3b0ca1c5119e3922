"""Invert real images with a converted HyperStyle checkpoint.

    python -m hyperstyle_jax.invert --checkpoint ckpt/hyperstyle_ffhq \\
        --w_encoder ckpt/w_encoder_faces --images photos/ --out out/ [--n_iters 5]

Output layout (OUT/...; `hyperstyle_jax.inversion_files` writes and reads it):
    iterations/<k>/<stem>.png   k = 0 (initial W inversion) .. n (final)
    final/<stem>.png            the last iteration's reconstruction (the refined one with
                                --refine_steps)
    refined/<stem>.png          with --refine_steps: the PTI-style refinement's render
    inputs/<stem>.png           the input as the model saw it (aligned, resized)
    grids/<stem>.png            labelled: input | initial | iteration 1 .. n (| refined)
    latents.npz                 {stem: codes [n_styles, 512]} (with --save_latents;
                                np.load(...)[stem], no pickle)
    deltas/<stem>.npz           final accumulated offsets per tuned layer, 'layer_<j>'
                                [out, in, k, k] (with --save_deltas)
    arrays/<stem>.npz           'init', 'iter_1' .. 'iter_n' float32 [H, W, 3] un-clipped,
                                'codes' [n_styles, 512] (with --save_npy), 'refined'
                                with --refine_steps
    transforms/<stem>.json      with --align: the source photo's path and the face's
                                alignment transform (`edit --inversion OUT --paste_back`)
    pasted/<photo>.png          with --paste_back: the final reconstruction of each face
                                pasted into the photo, at its size, upright per EXIF (PNG)
Images are read with PIL (any format; converted to RGB) and resized as the official
transforms do. A file that cannot be read is reported in one line and skipped; the exit
status is 1 if any file failed.
With --align, each image is first aligned in memory as the official FFHQ crop (1024, the
largest face or --face; needs `pip install -e '.[align]'`), then resized; the grids show the
aligned input, and a file with no face is reported and skipped like an unreadable one.
With --face all every face is inverted as <stem>_face<k> (k: dlib's detection index).
--paste_back implies --align.

With --refine_steps N each batch is then refined: N Adam steps of PTI's objective (L2, plus
LPIPS with --refine_lpips) on the batch's weight offsets (`hyperstyle_jax.pivotal_tuning`);
final/, latents.npz, deltas/ and pasted/ then hold the refined result (what `edit
--inversion OUT` edits), iterations/ keep HyperStyle's. --export_generator DIR writes each
image's tuned generator θ·(1+D) as DIR/<stem>/ (a converted generator folder; DIR/<stem>.pt
too with --export_pt).

Several processes or hosts (--num_processes P --process_id p --coordinator_address
HOST:PORT, one command per process, the same --out): process p inverts the p-th contiguous
block of the sorted inputs on its own devices and writes those images' files; with
--save_latents each writes latents.part-<p>-of-<P>.npz and process 0 merges them into the
latents.npz one process would write. --out must be a folder every host sees.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from hyperstyle_jax import align, inversion_files, parallel, refine_cli
from hyperstyle_jax.align import detect
from hyperstyle_jax.inference import (
    add_precision_argument,
    image_loader,
    invert_paths,
    load_inverter,
    shard_inputs,
    write_run_codes,
)
from hyperstyle_jax.models.pooling import adaptive_avg_pool2d
from hyperstyle_jax.paste_writer import PasteWriter
from hyperstyle_jax.utils import cli, images
from hyperstyle_jax.utils.paths import list_images


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
    p.add_argument("--save_latents", action="store_true", help="write latents.npz")
    p.add_argument("--save_deltas", action="store_true", help="write deltas/<stem>.npz")
    p.add_argument("--save_npy", action="store_true",
                   help="write arrays/<stem>.npz with float32 un-clipped images and codes")
    p.add_argument("--resize_outputs", action="store_true",
                   help="save outputs at the feedback size (256) instead of the generator's")
    p.add_argument("--align", action="store_true",
                   help="align faces first (official FFHQ crop, largest face; "
                        "hyperstyle_jax.align)")
    p.add_argument("--face", type=face_arg, default="largest",
                   help="with --align: which face ('largest', 'all': each as <stem>_face<k>, "
                        "or an index K in dlib's order)")
    p.add_argument("--detector", choices=detect.DETECTORS, default="hog",
                   help="with --align: dlib's HOG (the official's) or its CNN (finds tilted "
                        "and turned faces; seconds per photo on a CPU)")
    p.add_argument("--paste_back", action="store_true",
                   help="also write pasted/<photo>.png: the reconstruction pasted into the "
                        "original photo at its size (implies --align)")
    add_precision_argument(p)
    refine_cli.add_arguments(p, export=True)
    parallel.add_process_arguments(p)
    args = p.parse_args(argv)
    if args.n_iters < 1:
        p.error(f"--n_iters must be >= 1, got {args.n_iters}")
    if args.batch_size < 1:
        p.error(f"--batch_size must be >= 1, got {args.batch_size}")
    args.align = args.align or args.paste_back
    return args


def face_arg(value: str):
    """--face: 'largest' | 'last' | 'all' | an index K (argparse type)."""
    try:
        return align.parse_face(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv=None) -> int:
    """The CLI's entry point: a bad input is one `error:` line and exit status 2."""
    return cli.run(_main, argv)


def _main(argv) -> int:
    args = parse_args(argv)
    parallel.initialize_distributed(args.coordinator_address, args.num_processes,
                                    args.process_id, args.cpu_devices)
    cli.out_dir(args.out)
    all_paths = list_images(args.images)
    if not all_paths:
        raise cli.UserError(f"no images found at {args.images!r}")
    paths, stems = shard_inputs(all_paths)
    if args.align:
        try:
            image_loader(align_faces=True, face=args.face, detector=args.detector)
        except align.AlignUnavailableError as e:
            raise cli.UserError(f"--align: {e}") from None
    refine_cli.parse_steps(args.refine_steps)   # bad refine options fail before loading
    refine_cli.parse_lr(args.refine_lr)
    refine_cli.load_lpips(args.refine_lpips)
    refine_cli.check_export(args)
    inverter = load_inverter(args.checkpoint, args.w_encoder, precision=args.precision)
    refiner = refine_cli.Refiner.from_args(args, inverter, args.batch_size)

    out, n = args.out, args.n_iters
    print(f"compiling the {n}-iteration inversion for batches of {args.batch_size} ...", flush=True)
    run = inverter.batched_inverter(args.batch_size, n, resize_outputs=args.resize_outputs)
    codes, failed = {}, []
    t_run, n_done = 0.0, 0
    paster = PasteWriter(out, {}, report=lambda line: print(line, file=sys.stderr))
    for batch in invert_paths(inverter, paths, n, args.batch_size, align_faces=args.align,
                              run=run, face=args.face, detector=args.detector, stems=stems):
        failed += batch.skipped
        t_run, n_done = t_run + batch.seconds, n_done + len(batch.stems)
        res = batch.result
        if not batch.stems:  # every file of this batch was skipped
            continue
        final_codes = res["codes"]
        final_deltas = [batch.deltas(i) for i in range(len(batch.stems))]
        refined = None
        if refiner is not None:
            ref = refiner(images.to_float(batch.inputs), res["codes"], res["deltas"])
            print(refiner.summary(ref), flush=True)
            final_codes, refined = ref["codes"], ref["image"]
            final_deltas = [[None if d is None else d[i] for d in ref["deltas"]]
                            for i in range(len(batch.stems))]
            hw = res["images"].shape[2:4]
            if refined.shape[1:3] != hw:  # --resize_outputs: the iterations' size
                refined = np.asarray(adaptive_avg_pool2d(jnp.asarray(refined), tuple(hw)))
        refine_cli.export_generators(args, inverter, batch.stems, final_deltas)
        for i, stem in enumerate(batch.stems):
            if batch.origins[i] is not None:
                inversion_files.write_transform(out, stem, batch.origins[i])
                if args.paste_back:
                    paster.expect(stem, batch.origins[i])
        for i, stem in enumerate(batch.stems):
            iterations = [res["init"][i]] + [res["images"][k][i] for k in range(n)]
            final = iterations[-1] if refined is None else refined[i]
            inversion_files.write_item(
                out, stem, batch.inputs[i], iterations, final_codes[i],
                deltas=final_deltas[i] if args.save_deltas else None, save_arrays=args.save_npy,
                refined=None if refined is None else refined[i])
            paster.add(stem, final)
            codes[stem] = final_codes[i]
    paster.close()

    if args.save_latents:
        write_run_codes(out, codes)
    n_ok = len(paths) - len(failed)
    per_img = f"{1000 * t_run / n_done:.1f} ms per image" if n_done else "no image inverted"
    if args.paste_back:
        print(f"pasted {len(paster.written)} photo(s) into "
              f"{os.path.join(out, inversion_files.PASTED)}")
    if refiner is not None:
        print(f"refined {n_done} image(s) with {refiner.steps} steps in "
              f"{refiner.seconds:.1f} s (compilation included)")
    if args.export_generator:
        print(f"exported {n_done} tuned generator(s) into {args.export_generator}")
    share = (f"process {jax.process_index()} of {jax.process_count()}: "
             if jax.process_count() > 1 else "")
    print(f"{share}inverted {n_ok} of {len(paths)} images into {out} ({n} iterations); "
          f"{per_img} excluding compilation, on {jax.local_device_count()} "
          f"{jax.default_backend()} device(s)")
    if failed or paster.failed:
        if failed:
            print(f"{len(failed)} file(s) failed: " + ", ".join(p for p, _ in failed),
                  file=sys.stderr)
        if paster.failed:
            print(f"{len(paster.failed)} photo(s) not pasted: "
                  + ", ".join(p for p, _ in paster.failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
