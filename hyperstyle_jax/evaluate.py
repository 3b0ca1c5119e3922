"""Score reconstructions against ground truth with the paper's metrics (official
`scripts/calc_losses_on_images.py`).

    python -m hyperstyle_jax.evaluate --pred out/ --gt data/celeba_test/ \\
        --metrics l2,lpips,msssim --lpips_weights ckpt/lpips_alex [--id_weights ckpt/curricularface]

--pred can be
  (a) an output folder of `python -m hyperstyle_jax.invert`: its `iterations/<k>/` folders
      (k = 0 is the initial W inversion) and, refined (`invert --refine_steps`), `refined/`
      as the stage 'refined'; or with `--pred_format npz` its `arrays/<stem>.npz` (float32
      un-clipped images 'init', 'iter_1'..'iter_n', 'refined'; needs `invert --save_npy`);
  (b) a folder whose numeric sub-folders are iterations (the official script's layout);
  (c) a plain folder of images (scored as one set, named 'images').
Predictions are matched to ground-truth images (a flat folder) by file stem
(`00012.png` <-> `00012.jpg`).

Metrics are computed as the official `scripts/calc_losses_on_images.py`: each image is
resized to 256x256 (torchvision `Resize((256,256))` on PIL: bilinear with antialiasing;
npz arrays that are not 256x256 go through the same filter in float) and normalized to
[-1, 1], then scored one image at a time:
  l2      mean squared error                                   (lower is better)
  lpips   LPIPS v0.1 AlexNet (official port)                   (lower is better)
  msssim  official MS-SSIM (L inferred from the prediction)   (higher is better; NaN
          scores, from negative contrast terms, are dropped and counted, as officially)
  id      cosine similarity of ArcFace embeddings              (higher is better)
          NOTE: the official ID metric aligns faces with MTCNN before CurricularFace
          IR-101; that is not ported. Here the face is the ID loss's fixed crop
          [35:223, 32:220] pooled to 112, which fits FFHQ-aligned 256 images, so the
          numbers are close to but not the same measurement as the paper's.
Per iteration, each metric's mean ± std (population std, as numpy.std) over images.
Every matched image is scored (the official script's DataLoader uses drop_last=True and so
silently skips the last partial batch; that is not reproduced).

Output: a markdown table on stdout; JSON (--out, default <pred>/metrics.json) with the
summary, every per-image score and every skipped file with its reason; the same table as
markdown beside it (<out>.md). Files that cannot be scored (no ground truth with the same
stem, unreadable prediction or ground truth) are reported one per line and skipped; the
exit status is then 1 (2 for usage errors). Batches run on all local devices (the batch
axis sharded over a device mesh; the last batch is padded).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
from typing import Callable

import jax
import numpy as np
from PIL import Image

from hyperstyle_jax import inversion_files, parallel
from hyperstyle_jax.checkpoints import CheckpointError, load_converted
from hyperstyle_jax.losses import id_similarity, l2_per_image, lpips_distance, ms_ssim_per_image
from hyperstyle_jax.utils import cli, images
from hyperstyle_jax.utils.paths import IMAGE_EXTENSIONS

METRICS = ("l2", "lpips", "msssim", "id")
HIGHER_IS_BETTER = {"l2": False, "lpips": False, "msssim": True, "id": True}
EVAL_HW = (256, 256)


class EvalError(ValueError):
    """A usage problem (bad folder, missing weights); the message names the flag or path."""


# ----------------------------------------------------------------------------- discovery


@dataclasses.dataclass(frozen=True)
class Pred:
    """One prediction to score: an image file, or one array of an npz file."""
    iteration: str
    stem: str
    path: str
    key: str | None = None  # npz array name; None for an image file


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _images_in(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if _is_image(f) and os.path.isfile(os.path.join(folder, f)))


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def discover(pred: str, pred_format: str) -> tuple[str, list[Pred], list[dict]]:
    """(description of the layout, predictions, skipped files) for a --pred folder."""
    if not os.path.isdir(pred):
        raise EvalError(f"--pred {pred}: not a folder")
    skipped: list[dict] = []
    iterations_dir = os.path.join(pred, inversion_files.ITERATIONS)
    if pred_format == "npz":
        arrays = os.path.join(pred, inversion_files.ARRAYS)
        if not os.path.isdir(arrays):
            raise EvalError(f"--pred_format npz: {arrays} not found (write it with "
                            "`python -m hyperstyle_jax.invert ... --save_npy`)")
        preds = []
        for path in inversion_files.list_arrays(pred):
            try:
                with np.load(path) as z:
                    keys = list(z.files)
            except Exception as e:  # zip / pickle / OS errors: name the file, go on
                skipped.append({"iteration": "*", "file": path,
                                "reason": f"unreadable npz ({type(e).__name__}: {e})"})
                continue
            iters = inversion_files.array_iterations(keys)
            if not iters:
                skipped.append({"iteration": "*", "file": path,
                                "reason": f"no 'init' / 'iter_<k>' / 'refined' arrays "
                                          f"(keys: {keys})"})
            preds += [Pred(k, _stem(path), path, key) for k, key in iters]
        return f"invert output, float arrays ({arrays})", preds, skipped
    if os.path.isdir(iterations_dir):
        if not inversion_files.list_iterations(pred):
            raise EvalError(f"--pred {pred}: {iterations_dir} holds no numeric iteration folders")
        stages = inversion_files.list_stages(pred)
        preds = [Pred(k, _stem(p), p) for k, folder in stages for p in _images_in(folder)]
        refined = " and refined/" if any(k == inversion_files.REFINED for k, _ in stages) else ""
        return f"invert output, images ({iterations_dir}/<k>{refined})", preds, skipped
    subs = inversion_files.numeric_subfolders(pred)
    if subs:
        preds = [Pred(k, _stem(p), p) for k in subs for p in _images_in(os.path.join(pred, k))]
        return f"iteration folders ({pred}/<k>)", preds, skipped
    preds = [Pred("images", _stem(p), p) for p in _images_in(pred)]
    return f"image folder ({pred})", preds, skipped


def ground_truth_index(gt: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """{stem: path} of the images in a flat --gt folder, and {stem: paths} of ambiguous stems."""
    if not os.path.isdir(gt):
        raise EvalError(f"--gt {gt}: not a folder")
    by_stem: dict[str, list[str]] = {}
    for p in _images_in(gt):
        by_stem.setdefault(_stem(p), []).append(p)
    unique = {s: ps[0] for s, ps in by_stem.items() if len(ps) == 1}
    return unique, {s: ps for s, ps in by_stem.items() if len(ps) > 1}


# ----------------------------------------------------------------------------- reading


def resize_float(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """float32 [H, W, 3] -> [h, w, 3] with PIL's bilinear (antialiased) filter per channel:
    the filter `Resize` applies to the saved images, without the 8-bit rounding."""
    if x.shape[:2] == hw:
        return x.astype(np.float32)
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(x[..., c], np.float32), mode="F")
                        .resize((hw[1], hw[0]), Image.BILINEAR)) for c in range(x.shape[-1])]
    return np.stack(chans, axis=-1).astype(np.float32)


def load_image_256(path: str) -> np.ndarray:
    """Image file -> float32 [256, 256, 3] in [-1, 1] (Resize((256,256)), ToTensor, Normalize)."""
    return images.to_float(images.resize(images.read_image(path), EVAL_HW))


def load_pred(p: Pred) -> np.ndarray:
    if p.key is None:
        return load_image_256(p.path)
    try:
        with np.load(p.path) as z:
            arr = np.asarray(z[p.key], np.float32)
    except Exception as e:
        raise images.ImageReadError(f"{p.path}: array {p.key!r} unreadable "
                                    f"({type(e).__name__}: {e})") from None
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise images.ImageReadError(f"{p.path}: array {p.key!r} has shape {arr.shape}, "
                                    f"expected [H, W, 3]")
    if not np.all(np.isfinite(arr)):
        raise images.ImageReadError(f"{p.path}: array {p.key!r} holds NaN or inf values")
    return resize_float(arr, EVAL_HW)


# ----------------------------------------------------------------------------- metrics


def make_metric_fn(metrics: tuple[str, ...]) -> Callable:
    """fn(nets, pred [B,256,256,3], gt [B,256,256,3]) -> {metric: [B]}, pure and jittable."""
    def fn(nets, pred, gt):
        out = {}
        if "l2" in metrics:
            out["l2"] = l2_per_image(pred, gt)
        if "lpips" in metrics:
            out["lpips"] = lpips_distance(nets["lpips"], pred, gt)
        if "msssim" in metrics:
            out["msssim"] = ms_ssim_per_image(pred, gt)
        if "id" in metrics:
            out["id"] = id_similarity(nets["id"], pred, gt)
        return out

    return fn


@functools.lru_cache(maxsize=8)
def _sharded_metric_fn(metrics: tuple[str, ...], devices: tuple):
    """(jitted metric fn, batch sharding, replicated sharding) on the local devices' mesh.

    Cached so that repeated runs in one process (tests, notebooks) compile once."""
    mesh = parallel.make_mesh(list(devices))
    batch, repl = parallel.batch_sharded(mesh), parallel.replicated(mesh)
    fn = jax.jit(make_metric_fn(metrics), in_shardings=(repl, batch, batch), out_shardings=batch)
    return fn, batch, repl


class ShardedScorer:
    """Runs the metric function on batches sharded over every local device."""

    def __init__(self, metrics: tuple[str, ...], nets: dict, batch_size: int):
        devices = tuple(jax.local_devices())
        n = len(devices)
        self.batch_size = max(n, -(-batch_size // n) * n)  # a multiple of the device count
        self.fn, self.batch_sharding, repl = _sharded_metric_fn(tuple(metrics), devices)
        self.nets = jax.device_put(nets, repl)

    def __call__(self, pred: np.ndarray, gt: np.ndarray):
        """Dispatch one (padded) batch; returns device arrays (call np.asarray to wait)."""
        k = pred.shape[0]
        if k < self.batch_size:  # pad the last batch; padded rows are dropped by the caller
            pad = ((0, self.batch_size - k), (0, 0), (0, 0), (0, 0))
            pred, gt = np.pad(pred, pad), np.pad(gt, pad)
        with jax.default_matmul_precision("highest"):
            return self.fn(self.nets, jax.device_put(pred, self.batch_sharding),
                           jax.device_put(gt, self.batch_sharding))


def load_nets(metrics: tuple[str, ...], lpips_weights: str | None, id_weights: str | None) -> dict:
    nets = {}
    for metric, flag, path, kind, cmd in (
            ("lpips", "--lpips_weights", lpips_weights, "lpips",
             "tools/convert_weights.py lpips alexnet.pth alex.pth DIR"),
            ("id", "--id_weights", id_weights, "arcface",
             "tools/convert_weights.py arcface CurricularFace_Backbone.pth DIR")):
        if metric not in metrics:
            continue
        if not path:
            raise EvalError(f"metric '{metric}' needs {flag} DIR (a converted folder: {cmd}); "
                            f"or leave '{metric}' out of --metrics")
        try:
            _, nets[metric] = load_converted(path, kind)
        except CheckpointError as e:
            raise EvalError(f"{flag}: {e}") from None
    return nets


# ----------------------------------------------------------------------------- run


def summarize(values: list[float]) -> dict:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return {"mean": None, "std": None, "n": 0, "n_nan": len(values)}
    return {"mean": float(np.mean(finite)), "std": float(np.std(finite)), "n": len(finite),
            "n_nan": len(values) - len(finite)}


def evaluate(pred: str, gt: str, metrics: tuple[str, ...], nets: dict, batch_size: int = 8,
             pred_format: str = "png", progress: bool = True) -> dict:
    """Score every prediction; returns the JSON-ready report (see the module docstring)."""
    layout, preds, skipped = discover(pred, pred_format)
    gt_index, ambiguous = ground_truth_index(gt)
    pairs = []
    for p in preds:
        if p.stem in ambiguous:
            skipped.append({"iteration": p.iteration, "file": p.path,
                            "reason": "ambiguous ground truth: " + ", ".join(ambiguous[p.stem])})
        elif p.stem not in gt_index:
            skipped.append({"iteration": p.iteration, "file": p.path,
                            "reason": f"no ground truth named '{p.stem}.*' in {gt}"})
        else:
            pairs.append((p, gt_index[p.stem]))
    pairs.sort(key=lambda t: (t[0].stem, _iter_key(t[0].iteration)))  # GT reads stay cached

    scorer = ShardedScorer(metrics, nets, batch_size) if pairs else None
    read_gt = functools.lru_cache(maxsize=16)(load_image_256)
    per_image: dict[str, dict[str, dict]] = {}
    pending = None
    bar = cli.progress_bar(len(pairs), desc="evaluate", unit="img", enabled=progress)

    def collect(done):
        batch_preds, out = done
        host = {m: np.asarray(v) for m, v in out.items()}
        for i, p in enumerate(batch_preds):
            per_image.setdefault(p.iteration, {})[p.stem] = {m: float(host[m][i]) for m in metrics}
        bar.update(len(batch_preds))

    i = 0
    while i < len(pairs):
        ok, xs, ys = [], [], []
        while i < len(pairs) and len(ok) < scorer.batch_size:
            p, g = pairs[i]
            i += 1
            try:
                x = load_pred(p)
            except images.ImageReadError as e:
                skipped.append({"iteration": p.iteration, "file": p.path,
                                "reason": f"unreadable: {e}"})
                bar.update(1)
                continue
            try:
                y = read_gt(g)
            except images.ImageReadError as e:
                skipped.append({"iteration": p.iteration, "file": p.path,
                                "reason": f"ground truth unreadable: {e}"})
                bar.update(1)
                continue
            ok.append(p)
            xs.append(x)
            ys.append(y)
        if ok:
            out = scorer(np.stack(xs), np.stack(ys))  # async: read the next batch meanwhile
            if pending is not None:
                collect(pending)
            pending = (ok, out)
    if pending is not None:
        collect(pending)
    bar.close()

    iterations = sorted({p.iteration for p in preds} | set(per_image), key=_iter_key)
    summary = {}
    for it in iterations:
        scores = per_image.get(it, {})
        summary[it] = {"n_images": len(scores),
                       "n_skipped": sum(1 for s in skipped if s["iteration"] in (it, "*")),
                       "metrics": {m: summarize([v[m] for v in scores.values()]) for m in metrics}}
    reasons: dict[str, int] = {}
    for s in skipped:
        key = s["reason"].split(":")[0]
        reasons[key] = reasons.get(key, 0) + 1
    report = {
        "pred": os.path.abspath(pred), "gt": os.path.abspath(gt), "layout": layout,
        "metrics": list(metrics), "resolution": list(EVAL_HW),
        "devices": _device_count(), "batch_size": scorer.batch_size if scorer else None,
        "higher_is_better": {m: HIGHER_IS_BETTER[m] for m in metrics},
        "iterations": summary,
        "counts": {"scored": sum(len(v) for v in per_image.values()), "skipped": len(skipped),
                   "skipped_by_reason": reasons},
        "skipped": skipped,
        "per_image": per_image,
    }
    if "id" in metrics:
        report["id_note"] = ("cosine similarity on the ID loss's fixed crop [35:223, 32:220] "
                             "-> 112; the official metric aligns with MTCNN first (not ported)")
    return report


def _device_count() -> int:
    return len(jax.local_devices())


def _iter_key(it: str):
    return (0, int(it), "") if it.isdigit() else (1, 0, it)


def markdown_table(report: dict) -> str:
    metrics = report["metrics"]
    arrows = {m: "↑" if HIGHER_IS_BETTER[m] else "↓" for m in metrics}
    head = " | ".join(f"{m} {arrows[m]}" for m in metrics)
    lines = ["| iteration | images | skipped | " + head + " |",
             "|---|---|---|" + "---|" * len(metrics)]
    for it, s in report["iterations"].items():
        cells = []
        for m in metrics:
            v = s["metrics"][m]
            cell = "–" if v["mean"] is None else f"{v['mean']:.4f} ± {v['std']:.4f}"
            if v["n_nan"]:
                cell += f" ({v['n_nan']} NaN dropped)"
            cells.append(cell)
        lines.append(f"| {it} | {s['n_images']} | {s['n_skipped']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(report: dict, out: str) -> str:
    """Write JSON to `out` and markdown to `<out without .json>.md`; returns the .md path."""
    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, out)
    md = (out[:-5] if out.endswith(".json") else out) + ".md"
    text = [f"# Metrics: {report['pred']}", "",
            f"Ground truth: {report['gt']}  ", f"Layout: {report['layout']}  ",
            f"Scored {report['counts']['scored']} images at 256x256, skipped "
            f"{report['counts']['skipped']} files.", "", markdown_table(report), ""]
    if report.get("id_note"):
        text += [f"id: {report['id_note']}.", ""]
    if report["skipped"]:
        text += ["## Skipped", ""] + [f"- `{s['file']}` (iteration {s['iteration']}): {s['reason']}"
                                      for s in report["skipped"]] + [""]
    with open(md, "w") as f:
        f.write("\n".join(text))
    return md


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hyperstyle_jax.evaluate", description=__doc__,
                                formatter_class=cli.HelpFormatter)
    p.add_argument("--pred", required=True, help="predictions: invert output folder, folder of "
                                                 "numeric iteration folders, or folder of images")
    p.add_argument("--gt", required=True, help="ground-truth images (flat folder), matched by stem")
    p.add_argument("--metrics", default="l2,lpips,msssim",
                   help=f"comma-separated, from {','.join(METRICS)}")
    p.add_argument("--lpips_weights",
                   help="converted LPIPS folder (tools/convert_weights.py lpips)")
    p.add_argument("--id_weights", help="converted ArcFace/CurricularFace folder "
                                        "(tools/convert_weights.py arcface)")
    p.add_argument("--pred_format", choices=("png", "npz"), default="png",
                   help="for invert outputs: saved images (png, as the official metric) "
                        "or the float arrays of --save_npy (npz)")
    p.add_argument("--batch_size", type=int, default=8,
                   help="images per batch over all devices (rounded up to a multiple of the "
                        "device count)")
    p.add_argument("--out",
                   help="JSON report path (default <pred>/metrics.json); markdown beside it")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        p.error(f"--metrics {args.metrics!r}: unknown {bad}; choose from {', '.join(METRICS)}")
    args.metrics = tuple(dict.fromkeys(metrics))
    if args.batch_size < 1:
        p.error(f"--batch_size must be >= 1, got {args.batch_size}")
    return args


def main(argv=None) -> int:
    """The CLI's entry point: a bad input is one `error:` line and exit status 2."""
    return cli.run(_main, argv)


def _main(argv) -> int:
    args = parse_args(argv)
    if args.out and os.path.isdir(args.out):
        raise cli.UserError(f"--out {args.out}: is an existing folder; give the JSON "
                            "report's file path")
    nets = load_nets(args.metrics, args.lpips_weights, args.id_weights)
    report = evaluate(args.pred, args.gt, args.metrics, nets, args.batch_size,
                      args.pred_format, progress=not args.no_progress)
    out = args.out or os.path.join(args.pred, "metrics.json")
    md = write_report(report, out)
    for s in report["skipped"]:
        print(f"skipped {s['file']} (iteration {s['iteration']}): {s['reason']}", file=sys.stderr)
    print(markdown_table(report))
    c = report["counts"]
    print(f"scored {c['scored']} images, skipped {c['skipped']} files; wrote {out} and {md}")
    if c["scored"] == 0:
        print("nothing was scored", file=sys.stderr)
    return 1 if c["skipped"] or c["scored"] == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
