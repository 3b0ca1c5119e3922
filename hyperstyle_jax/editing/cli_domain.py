"""`python -m hyperstyle_jax.edit domain`: style transfer by domain adaptation (official
`scripts/run_domain_adaptation.py`).

    python -m hyperstyle_jax.edit domain --checkpoint ckpt/hyperstyle_ffhq \\
        --w_encoder ckpt/w_encoder_faces --restyle ckpt/restyle_e4e_ffhq \\
        --generator ckpt/toonify --generator ckpt/pixar --images photos/ --out out/domain

Each image is inverted once: HyperStyle (--n_iters) gives the offsets, ReStyle-e4e
(--restyle_iters) the W+ codes; then every --generator renders it (editing.domain).
Grid row: input | reconstruction (HyperStyle's, on the FFHQ generator) | one column per
generator; edits/domain_<generator folder name>/<stem>.png, and with --save_npy the same
keys in arrays/<stem>.npz. Random noise (the official default) is drawn per image from
--noise_seed and the image's position in the input, so reruns reproduce it (with several
processes too: a process's block starts at `ctx.first_index`).
"""
from __future__ import annotations

import os

import numpy as np

from hyperstyle_jax.checkpoints import load_generator
from hyperstyle_jax.editing import EditError, domain
from hyperstyle_jax.editing.cli import common_parser
from hyperstyle_jax.inference import load_restyle
from hyperstyle_jax.utils import images
from hyperstyle_jax.utils.cli import HelpFormatter


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "domain", parents=[common_parser()], formatter_class=HelpFormatter,
        help="style transfer: HyperStyle offsets on fine-tuned generators (toonify, pixar, ...)",
        description=__doc__)
    p.add_argument("--restyle", required=True,
                   help="converted ReStyle-e4e folder (tools/convert_weights.py restyle_e4e)")
    p.add_argument("--generator", action="append", required=True, metavar="DIR",
                   help="converted fine-tuned generator folder (tools/convert_weights.py "
                        "stylegan2), same size as the HyperStyle generator; repeat for several")
    p.add_argument("--restyle_iters", type=int, default=2,
                   help="ReStyle-e4e iterations (official --restyle_n_iterations)")
    p.add_argument("--noise", choices=domain.NOISE_MODES, default="random",
                   help="noise of the domain renders: seeded random (as the official script) "
                        "or the generator's constant noise buffers")
    p.add_argument("--noise_seed", type=int, default=0, help="seed of --noise random")
    p.set_defaults(run=run)


def _keys(dirs) -> list:
    """domain_<folder name>, made unique (a/toon and b/toon -> domain_toon, domain_toon_1)."""
    keys = []
    for d in dirs:
        base = "domain_" + (os.path.basename(os.path.normpath(d)) or "generator")
        key, n = base, 0
        while key in keys:
            n += 1
            key = f"{base}_{n}"
        keys.append(key)
    return keys


def load_generators(dirs, hyperstyle_gen, codes_shape, layers, hyperstyle_name):
    """[(key, config, variables)] for each --generator, each checked against HyperStyle's."""
    out = []
    for key, d in zip(_keys(dirs), dirs):
        config, variables = load_generator(d)
        domain.check_generator(hyperstyle_gen, config, codes_shape, d, hyperstyle_name, layers)
        out.append((key, config, variables))
    return out


def run(args, ctx) -> None:
    if args.restyle_iters < 1:
        raise EditError(f"--restyle_iters must be >= 1, got {args.restyle_iters}")
    # Everything is loaded and checked before the first image is inverted.
    restyle = load_restyle(args.restyle)
    inv = ctx.inverter
    tuned = [j for j, s in enumerate(inv.model.tuned_delta_shapes()) if s is not None]
    layers = domain.kept_layers(inv.generator_config.n_convs, tuned)
    rs_gen = restyle.generator_config
    gens = load_generators(args.generator, inv.generator_config,
                           (rs_gen.n_latent, rs_gen.style_dim), layers, args.checkpoint)
    b = args.batch_size
    run_restyle = restyle.batched_runner(b, args.restyle_iters)
    renderers = {}
    for _, config, _ in gens:
        if config not in renderers:  # one compiled render per architecture
            renderers[config] = domain.DomainRenderer(config, layers, b, noise=args.noise)

    items = ctx.items
    for it in items:
        if it.image is None:
            raise EditError(f"{it.stem}: the input image is not available (ReStyle-e4e inverts "
                            f"the image itself); pass --images")
    hw = restyle.input_hw
    for s in ctx.progress(range(0, len(items), b), "domain"):
        chunk = items[s:s + b]
        x = np.stack([it.image if it.image.shape[:2] == hw else images.resize(it.image, hw)
                      for it in chunk])
        latents = run_restyle(images.to_float(x))["latent"]
        deltas = [None if chunk[0].deltas[j] is None else np.stack([it.deltas[j] for it in chunk])
                  for j in range(len(chunk[0].deltas))]
        recon = ctx.render(np.stack([it.codes for it in chunk]), deltas)
        ids = ctx.first_index + np.arange(s, s + len(chunk))  # positions in the whole input
        renders = [(key, renderers[config](variables, latents, deltas, ids, args.noise_seed))
                   for key, config, variables in gens]
        for i, it in enumerate(chunk):
            row = [(key, key[len("domain_"):], img[i]) for key, img in renders]
            ctx.write_standard(it, recon[i], [row])
