"""The shared half of `python -m hyperstyle_jax.edit`: inputs, outputs, progress, errors.

Subcommand contract (a module listed in `hyperstyle_jax.edit.SUBCOMMANDS`):

    def register(subparsers) -> None
        p = subparsers.add_parser("<name>", parents=[cli.common_parser()],
                                  formatter_class=cli.HelpFormatter, help=..., description=...)
        p.add_argument(...)              # the edit's own options
        p.set_defaults(run=run)
    def run(args: argparse.Namespace, ctx: cli.EditContext) -> None

`run` validates its own options and files against the generator first (ctx.n_styles,
ctx.style_dim, ctx.inverter are ready before any image is inverted), then reads
`ctx.items` ([InvertedImage(stem, codes [n_styles, D], deltas, image)]; the first access inverts
`--images`, aligned with --align, or reads `--inversion DIR`), edits each item with pure
functions, renders with `ctx.render(codes [K, n_styles, D], deltas)` (deltas unbatched =
shared by the K codes, or [K, ...] per code) and writes with
`ctx.write_standard(item, reconstruction, rows)`, rows = per grid row a list of
(key, label, image) (or the lower-level `write_edit(key, stem, image, source=None)`,
`write_grid(stem, rows of (label, image))`, `write_arrays(stem, {key: image})`), looping
over `ctx.progress(items, name)`. The common options (input, --checkpoint, --w_encoder,
--n_iters, --batch_size, --align, --face, --detector, --paste_back, --out, --save_npy,
--save_inversion, and `refine_cli`'s --refine_steps/--refine_lr/--refine_lpips/--refine_codes)
come from `common_parser()`; a new subcommand adds its module to
`SUBCOMMANDS`. Errors: raise `EditError` with a one-line message; `main` prints
`error: <message>` and exits 1, and everything already written stays (each file is
complete when it appears). Images are float32 [H, W, 3] in [-1, 1], un-clipped.

With --refine_steps N the items are refined (PTI-style, `pivotal_tuning`) before any edit:
each inverted batch of --images, or with --inversion the stored codes and offsets against
the folder's inputs/<stem>.png, in batches of --batch_size; the edits then render with the
refined offsets (and --save_inversion saves them).

Output layout under --out:
    edits/<key>/<stem>.png     one per edit (key e.g. age_-3, pose_ii, alpha_0.25)
    grids/<stem>.png           labelled rows: input | reconstruction | one column per edit
    arrays/<stem>.npz          with --save_npy: float32 [H, W, 3] per key + 'reconstruction'
    latents.npz, deltas/,      with --save_inversion (and --images): the `invert` format
    inputs/<stem>.png,         (`inversion_files`), so later edits can use --inversion OUT
    transforms/<stem>.json     (transforms of aligned inputs)
    pasted/<key>/<photo>.png   with --paste_back: each edit pasted into the source photo
                               (every face of it), its size, upright per EXIF, PNG
                               (`paste_writer`); an edit written for stem S is pasted into
                               S's photo (`write_edit(..., source=)` names another item's)

Several processes or hosts (`parallel.add_process_arguments`: --num_processes,
--process_id, --coordinator_address; one command per process, the same --out): by default
each process takes a contiguous block of the inputs (`ctx.items` holds only its block;
`ctx.first_index` is the block's position in the whole input, for anything numbered by
it) and writes those images' files; --save_inversion's latents.npz is merged from the
processes' parts (`inference.write_run_codes`). A subcommand whose outputs pair images
sets `split='pairs'` (p.set_defaults): every process then holds every item and the
subcommand shares out its pairs with `parallel.process_shard`. --video splits clips
(`video.pipeline`).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Iterable, Sequence

import numpy as np

from hyperstyle_jax import align, inversion_files, parallel, refine_cli
from hyperstyle_jax.align import detect
from hyperstyle_jax.editing import EditError
from hyperstyle_jax.editing.render import EditRenderer
from hyperstyle_jax.inference import (
    add_precision_argument,
    image_loader,
    invert_paths,
    load_inverter,
    load_renderer,
    shard_inputs,
    write_run_codes,
)
from hyperstyle_jax.inversion_files import InvertedImage
from hyperstyle_jax.invert import face_arg
from hyperstyle_jax.paste_writer import PasteWriter
from hyperstyle_jax.utils import cli, images
from hyperstyle_jax.utils.paths import atomic_write, list_images
from hyperstyle_jax.video import pipeline as video_pipeline

HelpFormatter = cli.HelpFormatter  # the subcommands' name for the shared formatter


def common_parser() -> argparse.ArgumentParser:
    """Options every edit subcommand shares (use as `parents=[common_parser()]`)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("input (one of --images / --inversion)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="image file, folder or glob: inverted first")
    src.add_argument("--inversion",
                     help="an `invert` output folder written with --save_latents --save_deltas")
    src.add_argument("--video", action="append", metavar="CLIP",
                     help="a video clip, edited frame by frame (repeatable; hyperstyle_jax.video)")
    g.add_argument("--checkpoint", required=True,
                   help="converted HyperStyle folder (its generator renders the edits)")
    g.add_argument("--w_encoder", help="converted W-encoder folder (needed with --images)")
    g.add_argument("--n_iters", type=int, default=5, help="hypernetwork iterations for --images")
    g.add_argument("--batch_size", type=int, default=4,
                   help="images per inversion batch and codes per render batch")
    g.add_argument("--align", action="store_true",
                   help="with --images: align faces first (official FFHQ crop, largest face, "
                        "1024; hyperstyle_jax.align, needs the align extra)")
    g.add_argument("--face", type=face_arg, default="largest",
                   help="with --align: which face ('largest', 'all': each edited as "
                        "<stem>_face<k> and pasted into the same photo, or an index K)")
    g.add_argument("--detector", choices=detect.DETECTORS, default="hog",
                   help="with --align: dlib's HOG (the official's) or its CNN (tilted and "
                        "turned faces; seconds per photo on a CPU)")
    add_precision_argument(g)
    o = p.add_argument_group("output")
    o.add_argument("--out", required=True, help="output folder (created)")
    o.add_argument("--save_npy", action="store_true",
                   help="write arrays/<stem>.npz: float32 un-clipped images per edit")
    o.add_argument("--save_inversion", action="store_true",
                   help="with --images: also write latents.npz, deltas/ and, aligned, "
                        "transforms/ (the invert format)")
    o.add_argument("--paste_back", action="store_true",
                   help="also write pasted/<key>/<photo>.png: each edit pasted into the "
                        "original photo at its size (with --images it implies --align; with "
                        "--inversion the folder's transforms/ are used)")
    video_pipeline.add_options(p)
    refine_cli.add_arguments(p)
    parallel.add_process_arguments(p)
    return p


# ----------------------------------------------------------------------------- inputs


def find_item(items: Sequence[InvertedImage], name: str) -> InvertedImage:
    """The item named by its stem or by its input's file name ('chelsea' or 'chelsea.png',
    also a path to it); EditError listing the stems when absent."""
    for it in items:
        if it.stem == name:
            return it
    stem = os.path.splitext(os.path.basename(name))[0]
    for it in items:
        if it.stem == stem:
            return it
    raise EditError(f"no image {name!r} in the input (have: "
                    + ", ".join(it.stem for it in items[:20]) + ")")


# ----------------------------------------------------------------------------- context


class EditContext:
    """What a subcommand's `run(args, ctx)` gets: the model, the items, a renderer, writers.

    inverter     `hyperstyle_jax.inference.Inverter` (render-only with --inversion)
    n_styles, style_dim, size, cars_crop   the generator's code shape / output size
    items        [InvertedImage]; first access inverts --images or reads --inversion
    item(name)   one item by stem or file name (EditError listing the stems when absent)
    render(codes [K, n_styles, D], deltas) -> float32 [K, H, W, 3]  (editing.render)
    progress(seq, desc)   iterate with the progress bar
    failed       [(path, reason)] of unreadable inputs (exit status 1 at the end)
    first_index  position of items[0] among the items of every process (0 with one)
    """

    def __init__(self, args: argparse.Namespace, inverter):
        self.args = args
        self.out = args.out
        self.inverter = inverter
        g = inverter.generator_config
        self.n_styles, self.style_dim, self.size = g.n_latent, g.style_dim, g.size
        self.cars_crop = bool(inverter.model.config.cars_crop)
        self.renderer = EditRenderer(inverter, args.batch_size)
        self.refiner = refine_cli.Refiner.from_args(args, inverter, args.batch_size)
        self.failed: list = []
        self.first_index = 0
        self._items = None
        self.paster = None
        if getattr(args, "paste_back", False):
            self.paster = PasteWriter(self.out, {}, report=self._say)
        os.makedirs(self.out, exist_ok=True)

    # inputs

    @property
    def items(self) -> list:
        if self._items is None:
            self._items = self._load_items()
        return self._items

    def _load_items(self) -> list:
        a = self.args
        # One process's block of the inputs, unless the subcommand pairs them (then every
        # process holds them all and splits its pairs).
        by_image = getattr(a, "split", "images") == "images"
        if a.inversion:
            items = inversion_files.read_inversion(
                a.inversion, self.inverter.model.tuned_delta_shapes(), self.n_styles,
                self.style_dim, select=parallel.process_shard if by_image else None)
            if self.paster is not None:
                self._read_transforms(items)
            if self.refiner is not None:
                for start in range(0, len(items), a.batch_size):
                    self._refine_stored(items[start:start + a.batch_size])
            if by_image:
                self.first_index = parallel.global_offset(len(items))[0]
            return items
        all_paths = list_images(a.images)
        if not all_paths:
            raise EditError(f"no images found at {a.images!r}")
        paths, stems = shard_inputs(all_paths) if by_image else (all_paths, None)
        items = []
        for batch in invert_paths(self.inverter, paths, a.n_iters, a.batch_size,
                                  align_faces=getattr(a, "align", False),
                                  face=getattr(a, "face", "largest"),
                                  detector=getattr(a, "detector", "hog"), stems=stems):
            self.failed += batch.skipped
            new = [InvertedImage(stem, np.asarray(batch.result["codes"][i]), batch.deltas(i),
                                 batch.inputs[i], origin=batch.origins[i])
                   for i, stem in enumerate(batch.stems)]
            if self.refiner is not None and new:
                self._refine(new, images.to_float(batch.inputs))
            items += new
        # Every process counts the items of all (a collective), so all of them agree on
        # whether anything was read and each knows where its block starts.
        self.first_index, total = (parallel.global_offset(len(items)) if by_image
                                   else (0, len(items)))
        if a.save_inversion:
            # Each item's files are written once: by the process whose block holds it.
            own = items if by_image else parallel.process_shard(items)
            inversion_files.write_inversion(self.out, own, codes=False)
            write_run_codes(self.out, {it.stem: it.codes for it in own})
        if not total:
            raise EditError(f"none of the {len(all_paths)} input files could be read")
        if self.paster is not None:
            for it in items:
                if it.origin is not None:
                    self.paster.expect(it.stem, it.origin)
        return items

    def _refine(self, items: Sequence[InvertedImage], target: np.ndarray) -> None:
        """Refine items in place (codes, deltas): target float32 [n, h, w, 3]."""
        codes = np.stack([it.codes for it in items])
        deltas = [None if items[0].deltas[j] is None else
                  np.stack([it.deltas[j] for it in items]) for j in range(len(items[0].deltas))]
        out = self.refiner(target, codes, deltas)
        print(self.refiner.summary(out), flush=True)
        for i, it in enumerate(items):
            it.codes = np.asarray(out["codes"][i])
            it.deltas = [None if d is None else np.asarray(d[i]) for d in out["deltas"]]

    def _refine_stored(self, items: Sequence[InvertedImage]) -> None:
        """--inversion with --refine_steps: refine against the folder's inputs/<stem>.png."""
        for it in items:
            if it.image is None:
                raise EditError(f"--refine_steps: {self.args.inversion}/"
                                f"{inversion_files.INPUTS}/{it.stem}.png is missing or "
                                f"unreadable (the image to refine against)")
        hw = self.inverter.input_hw
        target = np.stack([images.to_float(images.resize(it.image, hw)) for it in items])
        self._refine(items, target)

    def _read_transforms(self, items: list) -> None:
        """--inversion with --paste_back: each item's transforms/<stem>.json (and its source
        photo) or one line saying which file is missing; those items are edited, not pasted."""
        for it in items:
            try:
                it.origin = inversion_files.read_transform(self.args.inversion, it.stem)
            except inversion_files.InversionFileError as e:
                self._not_pasted(it.stem, f"{e}; {it.stem} is edited but not pasted back")
                continue
            if not os.path.isfile(it.origin.source):
                where = inversion_files.transform_path(self.args.inversion, it.stem)
                self._not_pasted(it.stem, f"{it.origin.source}: source photo missing (named "
                                          f"in {where}); {it.stem} is edited but not pasted "
                                          f"back")
                continue
            self.paster.expect(it.stem, it.origin)

    def _not_pasted(self, stem: str, line: str) -> None:
        self._say(f"not pasted: {line}")
        self.failed.append((stem, line))

    @staticmethod
    def _say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def item(self, name: str) -> InvertedImage:
        return find_item(self.items, name)

    def render(self, codes: np.ndarray, deltas) -> np.ndarray:
        return self.renderer(codes, deltas)

    def progress(self, seq: Sequence, desc: str) -> Iterable:
        return cli.progress(seq, desc=desc, unit="img")

    # outputs; each file is written under a temporary name and renamed, so a file that
    # exists is complete even if the run is killed.

    def write_edit(self, key: str, stem: str, image: np.ndarray,
                   source: str | None = None) -> None:
        """edits/<key>/<stem>.png; with --paste_back also pasted into the photo of item
        `source` (default: the item `stem`): pasted/<key>/<photo>.png, or <stem>.png when
        `source` is given (one face in another name, e.g. an interpolation A__B)."""
        images.save_image(os.path.join(self.out, "edits", key, f"{stem}.png"), image)
        if self.paster is not None:
            if source is None:
                self.paster.add(stem, image, key)
            else:
                self.paster.add(source, image, key, name=stem)

    def close(self) -> None:
        """Write what is still pending (pasted photos waiting for a face)."""
        if self.paster is not None:
            self.paster.close()
            self.failed += self.paster.failed

    def write_grid(self, stem: str, rows: Sequence[Sequence[tuple]]) -> None:
        """rows of (label, image or None) cells; cells take the largest image's size (the
        renders; a smaller input is scaled up to it)."""
        cells = [[im for _, im in r] for r in rows]
        labels = [[lab for lab, _ in r] for r in rows]
        hw = max((im.shape[:2] for r in cells for im in r if im is not None),
                 key=lambda s: s[0] * s[1])
        grid = images.make_grid(cells, cell_hw=hw, labels=labels)
        images.save_image(os.path.join(self.out, "grids", f"{stem}.png"), grid)

    def write_arrays(self, stem: str, arrays: dict) -> None:
        if self.args.save_npy:
            with atomic_write(os.path.join(self.out, "arrays", f"{stem}.npz")) as f:
                np.savez(f, **{k: np.asarray(v, np.float32) for k, v in arrays.items()})

    def write_standard(self, item: InvertedImage, reconstruction: np.ndarray,
                       rows: Sequence[Sequence[tuple]]) -> None:
        """The usual outputs of one image. rows: per grid row, (key, label, image) edits;
        each row is drawn as input | reconstruction | edits."""
        arrays = {"reconstruction": reconstruction}
        grid = []
        for row in rows:
            for key, _, im in row:
                self.write_edit(key, item.stem, im)
                arrays[key] = im
            grid.append([("input" if item.image is not None else "input (n/a)", item.image),
                         ("reconstruction", reconstruction)]
                        + [(label, im) for _, label, im in row])
        self.write_grid(item.stem, grid)
        self.write_arrays(item.stem, arrays)


def parse_numbers(spec: str, option: str) -> list:
    try:
        vals = [float(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise EditError(f"{option} {spec!r}: expected comma-separated numbers") from None
    if not vals:
        raise EditError(f"{option} {spec!r}: no values")
    return vals


def number_label(v: float) -> str:
    """3.0 -> '3', -0.5 -> '-0.5' (keys and labels)."""
    return f"{float(v):g}"


# ----------------------------------------------------------------------------- running


def load_model(args: argparse.Namespace):
    """--checkpoint (+ --w_encoder with --images) -> Inverter."""
    precision = getattr(args, "precision", "fp32")
    refine_cli.parse_steps(getattr(args, "refine_steps", None))  # fail before loading
    refine_cli.parse_lr(getattr(args, "refine_lr", "3e-4"))
    refine_cli.load_lpips(getattr(args, "refine_lpips", None))
    if getattr(args, "paste_back", False) and args.images:
        args.align = True
    if args.align and not args.images:
        raise EditError("--align applies to --images (an --inversion folder is already aligned)")
    if args.images:
        try:  # fail before loading the model if the extra is missing
            image_loader(args.align, getattr(args, "face", "largest"),
                         getattr(args, "detector", "hog"))
        except align.AlignUnavailableError as e:
            raise EditError(f"--align: {e}") from None
        if not args.w_encoder:
            raise EditError("--images needs --w_encoder (or pass --inversion DIR from invert)")
        return load_inverter(args.checkpoint, args.w_encoder, precision=precision)
    return load_renderer(args.checkpoint, precision=precision)


def run_subcommand(args: argparse.Namespace) -> int:
    """Load the model and call the subcommand. Errors (EditError, CheckpointError,
    ImageReadError: ValueErrors) propagate to `cli.run`, which prints the one line."""
    if args.n_iters < 1 or args.batch_size < 1:
        raise cli.UserError(f"--n_iters and --batch_size must be >= 1 (got {args.n_iters}, "
                            f"{args.batch_size})")
    t0 = time.perf_counter()
    parallel.initialize_distributed(args.coordinator_address, args.num_processes,
                                    args.process_id, args.cpu_devices)
    cli.out_dir(args.out)  # before loading: a file in the way is a one-line error
    if args.video:
        return video_pipeline.edit_videos(args)
    ctx = EditContext(args, load_model(args))
    try:
        args.run(args, ctx)
    finally:
        ctx.close()
    n = len(ctx._items or [])
    print(f"{args.command}: {n} input(s) edited into {args.out} in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    if ctx.failed:
        print(f"{len(ctx.failed)} file(s) failed: " + ", ".join(p for p, _ in ctx.failed),
              file=sys.stderr)
        return 1
    return 0
