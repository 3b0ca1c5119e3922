"""MS-SSIM exactly as the official metric (`criteria/ms_ssim.py`, from jorge-pessoa/pytorch-msssim).

The official function has two behaviours that a textbook MS-SSIM does not, and all
both are reproduced here because the paper's numbers come from it:

1. **Batch quirk.** With `size_average=True` the ssim and cs maps are averaged over the
   whole batch (and channels and pixels) at each level *before* the product over levels,
   so MS-SSIM of a batch is not the mean of the per-image values. `ms_ssim` does that;
   `ms_ssim_per_image` calls it once per image (what `calc_losses_on_images.py` does).
2. **Per-level dynamic range.** L is inferred from `img1` alone, at *every* level, from
   the (pooled) image: max > 128 -> 255 else 1; min < -0.5 -> -1 else 0; L = max - min.
   For [-1, 1] images L is normally 2, but average pooling can lift the minimum above
   -0.5 at a coarse level, which then uses L = 1 (C1, C2 four times smaller).

The result is prod_{i<4}(cs_i ** w_i) * ssim_4 ** w_4 (checked against the fixture's
per-level values).

Other details: 11x11 Gaussian window (sigma 1.5; `min(11, H, W)` taps at small levels),
no padding ('VALID'), one window per channel (applied separably here), 2x2 average pooling between
the five levels (floor: odd rows/cols dropped), weights [0.0448, 0.2856, 0.3001, 0.2363,
0.1333]. A negative cs or ssim raised to a fractional power is NaN, as in PyTorch;
`calc_losses_on_images` drops such scores and so does `hyperstyle_jax.evaluate`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def gaussian_taps(size: int, sigma: float = 1.5) -> np.ndarray:
    """[size] float32 normalised 1-D Gaussian, built as the official `gaussian()`.

    The taps are computed in Python floats, stored as float32 and normalised in float32;
    the official 2-D window is their float32 outer product.
    """
    g = np.asarray([math.exp(-(x - size // 2) ** 2 / float(2 * sigma ** 2)) for x in range(size)],
                   np.float32)
    return g / g.sum(dtype=np.float32)


def dynamic_range(img1: jnp.ndarray) -> jnp.ndarray:
    """The official `val_range=None` rule, from img1 only: scalar L in {1, 2, 255, 256}."""
    max_val = jnp.where(jnp.max(img1) > 128, 255.0, 1.0)
    min_val = jnp.where(jnp.min(img1) < -0.5, -1.0, 0.0)
    return max_val - min_val


def _band(n: int, taps: np.ndarray) -> np.ndarray:
    """[n - k + 1, n] matrix whose row i holds the taps at columns i..i+k-1 ('VALID')."""
    k = len(taps)
    m = np.zeros((n - k + 1, n), np.float32)
    for i in range(n - k + 1):
        m[i, i:i + k] = taps
    return m


def _filter(x: jnp.ndarray, taps: np.ndarray) -> jnp.ndarray:
    """'VALID' per-channel correlation with outer(taps, taps): [B, H, W, C] -> [B, H-k+1, W-k+1, C].

    The same window as the official grouped 2-D conv, applied separably as two banded
    matrix products (differences ~1e-7, rounding only). On CPU this is ~10x faster than
    XLA's grouped convolution and compiles (and differentiates) quickly.
    """
    th = jnp.asarray(_band(x.shape[1], taps), x.dtype)
    tw = jnp.asarray(_band(x.shape[2], taps), x.dtype)
    y = jnp.einsum("ih,bhwc->biwc", th, x, precision=jax.lax.Precision.HIGHEST)
    return jnp.einsum("jw,biwc->bijc", tw, y, precision=jax.lax.Precision.HIGHEST)


def ssim_and_cs(img1: jnp.ndarray, img2: jnp.ndarray, window_size: int = 11,
                val_range: float | None = None) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """One level of the official `ssim(..., size_average=True, full=True)`.

    img1, img2: [B, H, W, C]. Returns (ssim, cs, L), scalars averaged over everything.
    """
    L = dynamic_range(img1) if val_range is None else jnp.asarray(val_range, jnp.float32)
    _, h, w, _ = img1.shape
    window = gaussian_taps(min(window_size, h, w))
    # The five filtered maps in one pass: E[x1], E[x2], E[x1^2], E[x2^2], E[x1 x2].
    maps = _filter(jnp.concatenate([img1, img2, img1 * img1, img2 * img2, img1 * img2], -1), window)
    mu1, mu2, e11, e22, e12 = jnp.split(maps, 5, axis=-1)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = e11 - mu1_sq
    sigma2_sq = e22 - mu2_sq
    sigma12 = e12 - mu1_mu2
    c1 = (0.01 * L) ** 2
    c2 = (0.03 * L) ** 2
    v1 = 2.0 * sigma12 + c2
    v2 = sigma1_sq + sigma2_sq + c2
    cs = jnp.mean(v1 / v2)
    ssim = jnp.mean(((2 * mu1_mu2 + c1) * v1) / ((mu1_sq + mu2_sq + c1) * v2))
    return ssim, cs, L


def _avg_pool2(x: jnp.ndarray) -> jnp.ndarray:
    """`F.avg_pool2d(x, (2, 2))`: floor mode, so an odd last row/column is dropped."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def ms_ssim_levels(img1: jnp.ndarray, img2: jnp.ndarray, window_size: int = 11,
                   val_range: float | None = None) -> jnp.ndarray:
    """[5, 3] per-level (ssim, cs, L) of the official pyramid, batch-averaged."""
    rows = []
    for _ in range(len(MS_SSIM_WEIGHTS)):
        rows.append(jnp.stack(ssim_and_cs(img1, img2, window_size, val_range)))
        img1, img2 = _avg_pool2(img1), _avg_pool2(img2)
    return jnp.stack(rows)


def ms_ssim(img1: jnp.ndarray, img2: jnp.ndarray, window_size: int = 11,
            val_range: float | None = None) -> jnp.ndarray:
    """Official `MSSSIM()(img1, img2)` on a batch: scalar (batch quirk included).

    img1, img2: [B, H, W, C] in [-1, 1] (img1 is the prediction in the official calls:
    L is inferred from it). Images must be at least 16x16 at the coarsest level's input
    (e.g. >= 176 px) for every level to use the full 11x11 window, as at 256x256.
    """
    if img1.shape != img2.shape:
        raise ValueError(f"ms_ssim: image shapes differ: {img1.shape} vs {img2.shape}")
    levels = ms_ssim_levels(img1, img2, window_size, val_range)
    w = jnp.asarray(MS_SSIM_WEIGHTS, jnp.float32)
    pow_cs = levels[:, 1] ** w
    pow_ssim = levels[:, 0] ** w
    return jnp.prod(pow_cs[:-1]) * pow_ssim[-1]


def ms_ssim_per_image(img1: jnp.ndarray, img2: jnp.ndarray, window_size: int = 11,
                      val_range: float | None = None) -> jnp.ndarray:
    """[B] official MS-SSIM of each pair called as a batch of one (the metric's usage)."""
    return jax.vmap(lambda a, b: ms_ssim(a[None], b[None], window_size, val_range))(img1, img2)
