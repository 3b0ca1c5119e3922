"""`python -m hyperstyle_jax.app`: the editing page (see hyperstyle_jax/app/__init__.py).

    python -m hyperstyle_jax.app --demo workdirs/demo          # the embedded demo's exports
    python -m hyperstyle_jax.app --checkpoint ckpt/hyperstyle_ffhq \\
        --w_encoder ckpt/w_encoder_faces --directions editing/interfacegan_directions/ \\
        [--pca cars_pca.pt] \\
        [--clip ckpt/clip_vit_b32 --fs3 fs3.npy --s_stats S_mean_std] \\
        [--restyle ckpt/restyle_e4e_ffhq --generator ckpt/toonify --generator ckpt/pixar] \\
        [--precision bf16]

then open http://127.0.0.1:7860. Everything is loaded and compiled before the server
answers (it prints `serving on ...` when ready). Uploads are kept in memory; the one
temporary folder (where the multipart parser may spool a large upload) is removed on exit.
"""
from __future__ import annotations

import argparse
import atexit
import ipaddress
import os
import shutil
import sys
import tempfile
import time

from hyperstyle_jax import refine_cli
from hyperstyle_jax.align import detect
from hyperstyle_jax.app.engine import Engine, StyleClipParts, load_directions
from hyperstyle_jax.app.inversion_cache import InversionCache
from hyperstyle_jax.app.server import serve
from hyperstyle_jax.clip import ClipEncoder
from hyperstyle_jax.editing import EditError, cli_domain, domain, ganspace, styleclip
from hyperstyle_jax.inference import add_precision_argument, load_inverter, load_restyle
from hyperstyle_jax.utils import paths
from hyperstyle_jax.utils.cli import HelpFormatter, UserError, run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hyperstyle_jax.app", description=__doc__,
                                formatter_class=HelpFormatter)
    m = p.add_argument_group("model (either --demo or --checkpoint with --w_encoder)")
    m.add_argument("--demo", metavar="WORKDIR",
                   help="serve `python -m hyperstyle_jax.demo --workdir WORKDIR`'s exports "
                        "(export/hyperstyle, export/w_encoder, ganspace_pca.npz, heldout/)")
    m.add_argument("--checkpoint", help="converted HyperStyle folder")
    m.add_argument("--w_encoder", help="converted W-encoder folder")
    m.add_argument("--n_iters", type=int, default=None,
                   help="hypernetwork iterations per upload (default 5; --demo: 3, as trained)")
    add_precision_argument(m, extra_help=". The HyperStyle generator (renders, StyleCLIP, "
                           "refinement) and hypernetwork follow it; the W-encoder, ReStyle-e4e "
                           "and the --generator domain renders stay fp32")
    e = p.add_argument_group("edits (each control appears when its files are given)")
    e.add_argument("--directions", metavar="DIR",
                   help="folder of InterFaceGAN directions (.pt / .npy): one slider each")
    e.add_argument("--pca", metavar="FILE", help="GANSpace PCA file (.pt / .npz)")
    e.add_argument("--clip", metavar="DIR", help="converted CLIP folder (StyleCLIP)")
    e.add_argument("--fs3", metavar="FILE", help="StyleCLIP fs3.npy")
    e.add_argument("--s_stats", metavar="FILE", help="StyleCLIP S_mean_std")
    e.add_argument("--restyle", metavar="DIR", help="converted ReStyle-e4e folder (domains)")
    e.add_argument("--generator", action="append", default=[], metavar="DIR",
                   help="converted fine-tuned generator (a domain); repeatable")
    e.add_argument("--restyle_iters", type=int, default=2, help="ReStyle-e4e iterations")
    e.add_argument("--detector", choices=detect.DETECTORS, default="hog",
                   help="face detector for 'align faces first': dlib's HOG or its CNN (tilted "
                        "and turned faces; seconds per photo on a CPU)")
    e.add_argument("--examples", metavar="DIR",
                   help="folder of example images offered on the page (default with --demo: "
                        "its held-out images; else a few generated ones)")
    r = p.add_argument_group("refinement (a 'Refine' button: PTI-style tuning after HyperStyle)")
    r.add_argument("--refine_steps", default=None, metavar="N",
                   help="Adam steps of the Refine button (off without it)")
    r.add_argument("--refine_lpips", metavar="DIR",
                   help="converted LPIPS AlexNet folder: PTI's LPIPS term (else L2 alone)")
    s = p.add_argument_group("serving")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind (anything but loopback exposes your uploads)")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--max_upload_mb", type=float, default=20.0, help="largest accepted file")
    s.add_argument("--max_megapixels", type=float, default=50.0, help="largest accepted image")
    s.add_argument("--cache_items", type=int, default=16, help="inversions kept in memory")
    s.add_argument("--cache_mb", type=float, default=2048.0,
                   help="memory bound of the kept inversions")
    s.add_argument("--debug", action="store_true", help="tracebacks instead of one-line errors")
    return p


def _demo_paths(args) -> None:
    d = args.demo
    exp = os.path.join(d, "export")
    need = [os.path.join(exp, "hyperstyle"), os.path.join(exp, "w_encoder")]
    missing = [x for x in need if not os.path.isdir(x)]
    if missing:
        raise UserError(f"--demo {d}: no {', '.join(missing)}; run python -m "
                        f"hyperstyle_jax.demo --workdir {d} first")
    args.checkpoint, args.w_encoder = need
    pca = os.path.join(d, "ganspace_pca.npz")
    if args.pca is None and os.path.isfile(pca):
        args.pca = pca
    heldout = os.path.join(d, "heldout")
    if args.examples is None and os.path.isdir(heldout):
        args.examples = heldout
    if args.n_iters is None:
        args.n_iters = 3


def build_engine(args):
    """The options -> a built `Engine` (every file read and checked first)."""
    refine_steps = refine_cli.parse_steps(args.refine_steps) or 0
    if args.refine_lpips and not refine_steps:
        raise UserError("--refine_lpips needs --refine_steps N (N > 0)")
    if args.demo:
        _demo_paths(args)
    if not (args.checkpoint and args.w_encoder):
        raise UserError("give --demo WORKDIR, or --checkpoint and --w_encoder")
    clip_opts = [args.clip, args.fs3, args.s_stats]
    if any(clip_opts) and not all(clip_opts):
        raise UserError("StyleCLIP needs all of --clip, --fs3 and --s_stats")
    if args.generator and not args.restyle:
        raise UserError("--generator needs --restyle (domain renders use ReStyle-e4e codes)")
    inverter = load_inverter(args.checkpoint, args.w_encoder, precision=args.precision)
    g = inverter.generator_config
    directions = (load_directions(args.directions, g.n_latent, g.style_dim)
                  if args.directions else {})
    pca = ganspace.load_pca(args.pca) if args.pca else None
    parts = None
    if all(clip_opts):
        _, s_std = styleclip.load_s_mean_std(args.s_stats)
        parts = StyleClipParts(ClipEncoder.from_folder(args.clip), styleclip.load_fs3(args.fs3),
                               s_std)
    restyle, gens = None, []
    if args.restyle:
        restyle = load_restyle(args.restyle)
        tuned = [j for j, s in enumerate(inverter.model.tuned_delta_shapes()) if s is not None]
        layers = domain.kept_layers(g.n_convs, tuned)
        rg = restyle.generator_config
        gens = cli_domain.load_generators(args.generator, g, (rg.n_latent, rg.style_dim), layers,
                                          args.checkpoint)
    examples = {}
    if args.examples:
        found = paths.list_images(args.examples)
        if not found:
            raise EditError(f"--examples {args.examples}: no images")
        examples = {os.path.basename(p): p for p in found[:24]}
    cache = InversionCache(args.cache_items, int(args.cache_mb * 2 ** 20))
    return Engine(inverter, n_iters=args.n_iters, directions=directions, pca=pca,
                  styleclip_parts=parts, restyle=restyle, generators=gens,
                  restyle_iters=args.restyle_iters, examples=examples,
                  n_generated_examples=0 if examples else 3,
                  max_upload_bytes=int(args.max_upload_mb * 2 ** 20),
                  max_pixels=int(args.max_megapixels * 1e6), cache=cache,
                  detector=args.detector, refine_steps=refine_steps,
                  refine_lpips=refine_cli.load_lpips(args.refine_lpips))


def _private_tempdir() -> str:
    """A temporary folder for this process only (multipart spooling goes there), removed
    at exit."""
    d = tempfile.mkdtemp(prefix="hyperstyle_app_")
    tempfile.tempdir = d  # SpooledTemporaryFile and friends use it from now on
    atexit.register(shutil.rmtree, d, True)
    return d


def main(argv=None) -> int:
    """The command line; a bad option or file is one line on stderr (`cli.run`)."""
    return run(_main, argv)


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    if args.n_iters is None and not args.demo:
        args.n_iters = 5
    if args.n_iters is not None and args.n_iters < 1:
        raise UserError(f"--n_iters must be >= 1, got {args.n_iters}")
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        print(f"warning: binding {args.host}: other machines can reach this page and its "
              f"uploads", file=sys.stderr)
    tmp = _private_tempdir()
    t0 = time.perf_counter()
    engine = build_engine(args)
    print("loading done; compiling and warming up ...", flush=True)
    engine.warm_up()
    print(f"ready in {time.perf_counter() - t0:.1f} s (compile "
          f"{engine.timings['compile_s']:.1f} s); temp folder {tmp}", flush=True)
    print(f"serving on http://{args.host}:{args.port}", flush=True)
    serve(engine, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
