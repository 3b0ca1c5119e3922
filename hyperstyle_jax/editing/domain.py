"""Style transfer by domain adaptation (official
`utils/domain_adaptation_utils.run_domain_adaptation`).

    latents = ReStyle-e4e W+ codes of x               (inference.load_restyle)
    deltas  = HyperStyle offsets of x                 (inference.load_inverter; its W codes
                                                       and images are not used here)
    kept    = filter_deltas(deltas)                   (layers 14,15,17,18,20,21,23,24 only:
                                                       the 128-1024 px convs)
    image   = G_ft(latents, weights_deltas=kept, noise)   for each fine-tuned generator G_ft

The offsets learned for the FFHQ generator are applied, unchanged, to a generator
fine-tuned to another domain (toonify, pixar, sketch, ...), which must therefore have the
same size, style dimension and widths at the kept layers (`check_generator`).
Noise: the official render draws random noise (`randomize_noise=True`). Here 'random'
draws image i's noise from `fold_in(PRNGKey(seed), i)`, so a seed reproduces a result
whatever the batch size and every domain of one image gets the same noise; 'const' uses
the fine-tuned generator's noise buffers.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hyperstyle_jax.editing import EditError
from hyperstyle_jax.inference import compile_for_batch
from hyperstyle_jax.models.stylegan2 import Generator

# filter_non_ffhq_layers_in_toonify_model (domain_adaptation_utils.py:20-25).
OFFICIAL_LAYERS = (14, 15, 17, 18, 20, 21, 23, 24)
NOISE_MODES = ("random", "const")


def kept_layers(n_convs: int, tuned: Sequence[int], layers: Sequence[int] = OFFICIAL_LAYERS
                ) -> tuple:
    """The layer indices whose offsets survive: tuned by HyperStyle, in `layers`, and present
    in a generator with `n_convs` layers (at 128 px only 14 and 15 exist)."""
    tuned = set(int(j) for j in tuned)
    return tuple(j for j in sorted(set(layers)) if j < n_convs and j in tuned)


def filter_deltas(deltas: Sequence[Optional[object]], layers: Sequence[int] = OFFICIAL_LAYERS
                  ) -> list:
    """A new list with the offsets outside `layers` set to None (the official filter does it
    in place on run_inversion's list; here the input is left untouched)."""
    keep = set(layers)
    return [d if (j in keep and d is not None) else None for j, d in enumerate(deltas)]


def check_generator(hyperstyle_gen, generator, codes_shape: Sequence[int], name: str,
                    hyperstyle_name: str = "the HyperStyle checkpoint",
                    layers: Sequence[int] = ()) -> None:
    """Raise a one-line `EditError` unless `generator` (a GeneratorConfig) can take the
    HyperStyle offsets at `layers` and the W+ codes of shape (n_styles, style_dim)."""
    hs, g = hyperstyle_gen, generator
    if g.size != hs.size:
        raise EditError(f"{name}: the generator is {g.size}px but {hyperstyle_name}'s is "
                        f"{hs.size}px; HyperStyle offsets only fit a fine-tuned generator of "
                        f"the same size")
    if g.style_dim != hs.style_dim:
        raise EditError(f"{name}: the generator has style dimension {g.style_dim} but "
                        f"{hyperstyle_name}'s has {hs.style_dim}")
    n, d = (int(v) for v in codes_shape)
    if (n, d) != (g.n_latent, g.style_dim):
        raise EditError(f"{name}: the ReStyle-e4e codes are {n} x {d} but this {g.size}px "
                        f"generator takes {g.n_latent} x {g.style_dim}")
    names, got, want = g.layer_names(), g.delta_shapes(), hs.delta_shapes()
    for j in layers:
        if got[j] != want[j]:
            raise EditError(f"{name}: layer {j} ({names[j]}) has weight {got[j]} but "
                            f"{hyperstyle_name}'s has {want[j]} (a different channel "
                            f"multiplier?); its offsets cannot be applied")


def image_noise(config, image_ids: jax.Array, seed) -> list:
    """Per-image random noise [B, H, W, 1] per noise layer: image i uses
    `fold_in(PRNGKey(seed), i)`, so it does not depend on the batch it is in."""
    base = jax.random.PRNGKey(seed)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(image_ids)
    out = []
    for layer, shape in enumerate(config.noise_shapes()):
        draw = lambda k, layer=layer, shape=shape: jax.random.normal(  # noqa: E731
            jax.random.fold_in(k, layer), shape[1:])
        out.append(jax.vmap(draw)(keys))
    return out


def render_domain(generator, gen_vars: dict, codes: jax.Array, kept: Sequence, noise=None
                  ) -> jax.Array:
    """G_ft(codes, weights_deltas=kept, noise) -> [B, size, size, 3] (un-clipped, uncropped).

    generator: a `models.stylegan2.Generator`; kept: `n_convs` entries (None outside the
    kept layers); noise: a list of [B or 1, H, W, 1] (e.g. recorded draws or
    `image_noise`), or None for the generator's noise buffers.
    """
    img, _ = generator.apply(gen_vars, codes, input_space="w+", noise=noise,
                             randomize_noise=False, weights_deltas=list(kept))
    return img


class DomainRenderer:
    """One compiled `render_domain` for a generator architecture and batch size; every
    fine-tuned generator of that architecture reuses it (the variables are an argument)."""

    def __init__(self, config, layers: Sequence[int], batch_size: int, noise: str = "random",
                 per_sample: str = "auto"):
        if noise not in NOISE_MODES:
            raise EditError(f"--noise must be one of {NOISE_MODES}, got {noise!r}")
        self.config, self.layers, self.batch_size = config, tuple(layers), batch_size
        self.noise = noise
        gen = Generator(config, per_sample=per_sample)
        shapes = config.delta_shapes()
        self._shapes = {j: shapes[j] for j in self.layers}

        def fn(codes, kept, ids, gen_vars, seed):
            full = [kept.get(j) for j in range(config.n_convs)]
            nz = image_noise(config, ids, seed) if noise == "random" else None
            return render_domain(gen, gen_vars, codes, full, nz)

        self._fn = fn
        s = jax.ShapeDtypeStruct
        self._batched = (s((config.n_latent, config.style_dim), jnp.float32),
                         {j: s(sh, jnp.float32) for j, sh in self._shapes.items()},
                         s((), jnp.int32))
        self._compiled = {}  # the generator variables' tree structure -> compiled render

    def __call__(self, gen_vars: dict, codes: np.ndarray, deltas: Sequence, image_ids,
                 seed: int = 0) -> np.ndarray:
        """gen_vars: the fine-tuned generator's variables; codes [n, n_styles, D];
        deltas: the HyperStyle offsets (full list, already filtered or not: only the kept
        layers are read); image_ids [n]: global image indices (random noise).
        -> numpy [n, size, size, 3]."""
        n = codes.shape[0]
        kept = {}
        for j, sh in self._shapes.items():
            d = np.asarray(deltas[j], np.float32)
            if d.shape != (n,) + sh:
                raise EditError(f"offsets of layer {j} have shape {d.shape}, expected {(n,) + sh}")
            kept[j] = d
        key = jax.tree_util.tree_structure(gen_vars)
        if key not in self._compiled:
            gv_spec = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32),
                                             gen_vars)
            self._compiled[key] = compile_for_batch(
                self._fn, self.batch_size, batched=self._batched,
                shared=(gv_spec, jax.ShapeDtypeStruct((), jnp.int32)))
        return self._compiled[key](np.asarray(codes, np.float32), kept,
                                   np.asarray(image_ids, np.int32), gen_vars,
                                   np.asarray(seed, np.int32))
