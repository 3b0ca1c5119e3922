"""StyleSpace: the per-layer style vectors s of the generator, and rendering from given s.

Official code: HyperStyle `editing/styleclip/model.py` `Generator` and
`editing/styleclip/stylespace_utils.py`. There, every `ModulatedConv2d` returns
its style `s = modulation(w)` (the EqualLinear output, *before* the 1/sqrt(fan_in) weight
scale) and accepts a given s instead (`input_is_stylespace`); the HyperStyle offsets Δ
still enter as `scale * W * (1 + Δ) * s`, independently of the style edit.

Here the generator is left untouched:
  * `styles_from_w` computes s per layer from W / W+ with each layer's `modulation`
    params (a pure function of the params tree);
  * `render_styles` runs `Generator.apply` with a Flax method interceptor that replaces
    the output of every layer's `modulation` EqualLinear by the given s, so rendering
    from s is the generator's own forward (noise, deltas, per-sample conv form).

Layer index j is the official one (`models/hypernetworks/refinement_blocks.py`
`PARAMETERS`): 0 = conv1, 1 = to_rgb1, then per block b
2+3b = convs_{2b} (up), 3+3b = convs_{2b+1}, 4+3b = to_rgbs_{b}; toRGB at j = 1, 4, 7, ...
s_j has the conv's *input* channels, and uses W+ row 0, 1, then 1+2b, 2+2b, 3+2b.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from hyperstyle_jax.models.stylegan2 import Generator, GeneratorConfig

Array = Any

# ----------------------------------------------------------------------------- constants

# stylespace_utils.py:3-6 (written for the 1024 generator, 26 layers).
STYLESPACE_DIMENSIONS = tuple([512] * 15 + [256] * 3 + [128] * 3 + [64] * 3 + [32] * 2)
TORGB_INDICES = tuple(range(1, len(STYLESPACE_DIMENSIONS), 3))
STYLESPACE_INDICES_WITHOUT_TORGB = tuple(
    [j for j in range(len(STYLESPACE_DIMENSIONS)) if j not in TORGB_INDICES][:11])
# The number of non-toRGB layers that StyleCLIP's global directions edit.
N_EDITED_LAYERS = 11


def official_constants(size: int) -> dict:
    """The official constants as they apply to a 1024, 512 or 256 FFHQ-config generator.

    The per-layer dimensions depend only on j, so a 512 (256) generator uses the first
    23 (20) entries; the 11 edited layers (4..128 px) exist at every size.
    Returns {'STYLESPACE_DIMENSIONS', 'TORGB_INDICES', 'STYLESPACE_INDICES_WITHOUT_TORGB'}.
    """
    n = {1024: 26, 512: 23, 256: 20}.get(size)
    if n is None:
        raise ValueError(f"official StyleSpace constants exist for sizes 1024, 512 and 256, "
                         f"got {size!r}")
    return {"STYLESPACE_DIMENSIONS": STYLESPACE_DIMENSIONS[:n],
            "TORGB_INDICES": tuple(j for j in TORGB_INDICES if j < n),
            "STYLESPACE_INDICES_WITHOUT_TORGB": STYLESPACE_INDICES_WITHOUT_TORGB}


@dataclasses.dataclass(frozen=True)
class StyleSpaceLayout:
    """The StyleSpace of one generator config, in official layer order j.

    names: module name per j ('conv1', 'to_rgb1', 'convs_0', ...); dims: channels of s_j
    (the conv's input channels); is_torgb: toRGB layers; w_rows: the W+ row feeding j.
    """
    names: tuple
    dims: tuple
    is_torgb: tuple
    w_rows: tuple

    @classmethod
    def from_config(cls, config: GeneratorConfig) -> "StyleSpaceLayout":
        names = tuple(config.layer_names())
        dims = tuple(shape[1] for shape in config.delta_shapes())  # (out, in, k, k) -> in
        is_torgb = tuple(n.startswith("to_rgb") for n in names)
        rows = [0, 1]
        for b in range(config.log_size - 2):
            rows += [1 + 2 * b, 2 + 2 * b, 3 + 2 * b]
        return cls(names, dims, is_torgb, tuple(rows))

    @property
    def n_layers(self) -> int:
        return len(self.names)

    @property
    def torgb_indices(self) -> tuple:
        return tuple(j for j, t in enumerate(self.is_torgb) if t)

    @property
    def non_torgb_indices(self) -> tuple:
        """All non-toRGB layers: the rows of StyleCLIP's fs3, in this order."""
        return tuple(j for j, t in enumerate(self.is_torgb) if not t)

    @property
    def edited_indices(self) -> tuple:
        """`STYLESPACE_INDICES_WITHOUT_TORGB`: the first 11 non-toRGB layers."""
        return self.non_torgb_indices[:N_EDITED_LAYERS]

    @property
    def n_fs3_rows(self) -> int:
        """Channels of all non-toRGB layers (6048 at 1024)."""
        return sum(self.dims[j] for j in self.non_torgb_indices)

    def fs3_offsets(self) -> dict:
        """{j: first fs3 row of layer j} over the non-toRGB layers, in j order."""
        out, start = {}, 0
        for j in self.non_torgb_indices:
            out[j] = start
            start += self.dims[j]
        return out


def layout(config: GeneratorConfig) -> StyleSpaceLayout:
    return StyleSpaceLayout.from_config(config)


# ----------------------------------------------------------------------------- W -> s


def styles_from_w(params: Any, config: GeneratorConfig, w: Array) -> list:
    """s_j = modulation_j(w row of j) for every layer j, as the official forward does.

    params: the generator's 'params' tree (or the full variables, {'params': ...}).
    w: W [B, style_dim] (every layer uses it) or W+ [B, n_latent, style_dim].
    Returns a list of n_convs arrays [B, dims_j], in official order j.
    """
    params = params.get("params", params)
    w = jnp.asarray(w)
    if w.ndim == 2:
        w = jnp.broadcast_to(w[:, None], (w.shape[0], config.n_latent, w.shape[-1]))
    if w.ndim != 3 or w.shape[1:] != (config.n_latent, config.style_dim):
        raise ValueError(f"styles_from_w: w has shape {tuple(w.shape)}; expected "
                         f"[B, {config.style_dim}] or [B, {config.n_latent}, {config.style_dim}]")
    lay = layout(config)
    scale = 1.0 / math.sqrt(config.style_dim)  # EqualLinear, lr_mul 1
    out = []
    for name, row in zip(lay.names, lay.w_rows):
        mod = params[name]["conv"]["modulation"]
        # Same op order as ops.EqualLinear: x @ (W * scale) + b.
        out.append(jnp.matmul(w[:, row], mod["weight"] * scale) + mod["bias"])
    return out


def check_styles(styles: Sequence, config: GeneratorConfig, what: str = "styles") -> int:
    """Validate a list of per-layer s [B, dims_j]; return B."""
    lay = layout(config)
    styles = list(styles)
    if len(styles) != lay.n_layers:
        raise ValueError(f"{what}: {len(styles)} style vectors, the generator has "
                         f"{lay.n_layers} layers")
    batch = styles[0].shape[0] if styles and styles[0].ndim == 2 else None
    for j, (s, c) in enumerate(zip(styles, lay.dims)):
        if s.ndim != 2 or s.shape != (batch, c):
            raise ValueError(f"{what}[{j}] ({lay.names[j]}) has shape {tuple(s.shape)}; "
                             f"expected [{batch if batch is not None else 'B'}, {c}]")
    return batch


# ----------------------------------------------------------------------------- s -> image


def render_styles(generator: Generator, variables: Any, styles: Sequence, *,
                  weights_deltas: Optional[Sequence] = None, noise: Optional[Sequence] = None,
                  randomize_noise: bool = False, rngs: Any = None) -> Array:
    """Render from per-layer styles (`input_is_stylespace=True`), with HyperStyle deltas.

    styles: n_convs arrays [B, dims_j] in official order (toRGB layers included).
    weights_deltas / noise / randomize_noise: as `Generator.__call__`. Like the official
    model, the batch size comes from the styles and the mapping network is not run.
    Returns the image [B, size, size, 3] (un-clipped).
    """
    config = generator.config
    batch = check_styles(styles, config)
    lay = layout(config)
    index = {name: j for j, name in enumerate(lay.names)}
    used = []

    def give_style(next_fun, args, kwargs, context):
        m = context.module
        path = m.path
        # Matched by the official parameter path <layer>/conv/modulation, which every
        # refactor of the modules keeps (the converter's table depends on it).
        if (context.method_name == "__call__" and len(path) >= 3 and path[-1] == "modulation"
                and path[-2] == "conv" and path[-3] in index):
            j = index[path[-3]]
            used.append(j)
            return jnp.asarray(styles[j]).astype(args[0].dtype if args else jnp.float32)
        return next_fun(*args, **kwargs)

    # The W+ input only sets shapes: every layer's modulation output is replaced.
    placeholder = jnp.zeros((batch, config.n_latent, config.style_dim), jnp.float32)
    with nn.intercept_methods(give_style):
        img, _ = generator.apply(variables, placeholder, input_space="w+", noise=noise,
                                 randomize_noise=randomize_noise, weights_deltas=weights_deltas,
                                 rngs=rngs)
    if sorted(used) != list(range(lay.n_layers)):
        # The generator's structure changed (a layer no longer calls `conv/modulation`).
        raise RuntimeError(f"render_styles: replaced the style of layers {sorted(used)}, "
                           f"expected each of 0..{lay.n_layers - 1} once")
    return img


def edit_styles(styles: Sequence, direction: Sequence, alpha) -> list:
    """s'_j = s_j + alpha * direction_j (direction_j [dims_j] or [B, dims_j])."""
    if len(styles) != len(direction):
        raise ValueError(f"edit_styles: {len(styles)} style vectors but {len(direction)} "
                         "direction entries")
    return [s + alpha * jnp.asarray(d, s.dtype) for s, d in zip(styles, direction)]
