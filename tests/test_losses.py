"""L2, LPIPS and MS-SSIM against the official-code fixtures (06_metrics), closed forms,
gradients, the resampling helpers against torch, and `compute_losses`' rules.

Tolerances: fixtures README (LPIPS rtol 1e-4 atol 1e-6; MS-SSIM atol 1e-5; L2 rtol 1e-6).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import FIXTURES, nhwc

from hyperstyle_jax.convert.common import load_torch_file, to_numpy_state_dict
from hyperstyle_jax.convert.losses import lpips_from_state_dict
from hyperstyle_jax.losses import (
    LossWeights,
    compute_losses,
    l2_loss,
    l2_per_image,
    lpips_distance,
    lpips_loss,
    ms_ssim,
    ms_ssim_per_image,
)
from hyperstyle_jax.losses.lpips import LPIPS, init_lpips
from hyperstyle_jax.losses.moco import nearest_indices, resize_nearest
from hyperstyle_jax.losses.ms_ssim import ms_ssim_levels
from hyperstyle_jax.models.pooling import adaptive_avg_pool2d

D = os.path.join(FIXTURES, "06_metrics")


@pytest.fixture(scope="module")
def io():
    return dict(np.load(os.path.join(D, "metrics_io.npz")))


def _sd(name):
    path = os.path.join(D, name)
    return to_numpy_state_dict(load_torch_file(path), path)


@pytest.fixture(scope="module")
def lpips_vars():
    """Random torchvision AlexNet features + the real v0.1 lin weights (lpips wheel file)."""
    v, cfg = lpips_from_state_dict(_sd("alexnet_features_random_torchvision.pt"),
                                   _sd("lpips_v0.1_alex_lin_ORIGINAL.pth"))
    assert cfg == {"net_type": "alex"}
    return v


@pytest.fixture(scope="module")
def lpips_fns(lpips_vars):
    """One compiled per-layer LPIPS, and one compiled value-and-grad of the batch loss."""
    per_layer = jax.jit(lambda v, a, b: LPIPS().apply(v, a, b))
    loss_grad = jax.jit(jax.value_and_grad(lpips_loss, argnums=1))
    return per_layer, loss_grad


# ----------------------------------------------------------------------------- LPIPS


@pytest.mark.parametrize("res", ["256", "64"])
def test_lpips_parity(io, lpips_vars, lpips_fns, res):
    per_layer_fn, _ = lpips_fns
    a, b = nhwc(io[f"img_a{res}"]), nhwc(io[f"img_b{res}"])
    per_layer = np.asarray(per_layer_fn(lpips_vars, a, b))
    np.testing.assert_allclose(per_layer, io[f"lpips{res}_per_layer"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(per_layer.sum(1), io[f"lpips{res}_per_pair"], rtol=1e-4, atol=1e-6)
    # The official batch call: sum over layers and batch / B.
    np.testing.assert_allclose(per_layer.sum() / a.shape[0], io[f"lpips{res}_batch_mean"],
                               rtol=1e-4, atol=1e-6)


def test_lpips_public_functions(io, lpips_vars):
    a, b = nhwc(io["img_a64"][:2]), nhwc(io["img_b64"][:2])
    d = np.asarray(lpips_distance(lpips_vars, a, b))
    np.testing.assert_allclose(d, io["lpips64_per_pair"][:2], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(lpips_loss(lpips_vars, a, b)), d.mean(), rtol=1e-6)


def test_lpips_renamed_lin_keys_give_same_weights(lpips_vars):
    """The official port's renamed file ({i}.1.weight) converts to the same tree."""
    v2, _ = lpips_from_state_dict(_sd("alexnet_features_random_torchvision.pt"),
                                  _sd("lpips_lin_renamed.pt"))
    jax.tree_util.tree_map(np.testing.assert_array_equal, lpips_vars, v2)


def test_lpips_identity_is_zero_and_grad_finite(io, lpips_vars, lpips_fns):
    _, loss_grad = lpips_fns
    a, b = nhwc(io["img_a64"]), nhwc(io["img_b64"])
    val, _ = loss_grad(lpips_vars, a, a)
    assert abs(float(val)) < 1e-9  # (not bit-exact 0: x and y are rows of one batched conv)
    val, g = loss_grad(lpips_vars, a, b)
    g = np.asarray(g)
    np.testing.assert_allclose(float(val), io["lpips64_batch_mean"], rtol=1e-4)
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0


class _TorchLPIPS(torch.nn.Module):
    """Independent torch reference of the official LPIPS forward, for the VGG trunk."""

    def __init__(self, sd):
        super().__init__()
        self.sd = sd

    def forward(self, x, y):
        shift = torch.tensor([-.030, -.088, -.188])[None, :, None, None]
        scale = torch.tensor([.458, .448, .450])[None, :, None, None]
        convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
        taps = {3, 8, 15, 22, 29}

        def feats(z):
            z, out = (z - shift) / scale, []
            for i in range(30):
                if i in convs:
                    z = F.conv2d(
                        z, self.sd[f"features.{i}.weight"], self.sd[f"features.{i}.bias"], padding=1
                    )
                elif i in (4, 9, 16, 23):
                    z = F.max_pool2d(z, 2, 2)
                else:
                    z = F.relu(z)
                if i in taps:
                    out.append(z / (torch.sqrt((z ** 2).sum(1, keepdim=True)) + 1e-10))
            return out

        res = [F.conv2d((fx - fy) ** 2, self.sd[f"lin{i}.model.1.weight"]).mean((2, 3), True)
               for i, (fx, fy) in enumerate(zip(feats(x), feats(y)))]
        return torch.sum(torch.cat(res, 0)) / x.shape[0]


def test_lpips_vgg_against_torch_reference():
    """VGG-16 trunk (torchvision feature indices) at 32x32 with random weights."""
    g = torch.Generator().manual_seed(0)
    widths = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
              (14, 256, 256), (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512),
              (26, 512, 512), (28, 512, 512)]
    sd = {}
    for i, cin, cout in widths:
        sd[f"features.{i}.weight"] = (
            torch.randn(cout, cin, 3, 3, generator=g) * (2.0 / (9 * cin)) ** 0.5
        )
        sd[f"features.{i}.bias"] = torch.randn(cout, generator=g) * 0.1
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g)
           for i, c in enumerate((64, 128, 256, 512, 512))}
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    y = (x + 0.2 * torch.randn(2, 3, 32, 32, generator=g)).clamp(-1, 1)
    with torch.no_grad():
        want = float(_TorchLPIPS({**sd, **lin})(x, y))
    sd_np = {k: v.numpy() for k, v in {**sd, "classifier.0.weight": torch.zeros(4, 4)}.items()}
    v, cfg = lpips_from_state_dict(sd_np, {k: t.numpy() for k, t in lin.items()})
    assert cfg["net_type"] == "vgg"
    got = float(lpips_loss(v, nhwc(x.numpy()), nhwc(y.numpy())))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- MS-SSIM


@pytest.fixture(scope="module")
def ms_ssim_out(io):
    """One compile: per-image, batch and per-level values on the fixture pairs."""
    a, b = nhwc(io["img_a256"]), nhwc(io["img_b256"])

    @jax.jit
    def run(a, b):
        return {"per_pair": ms_ssim_per_image(a[:3], b[:3]), "batch": ms_ssim(a[:3], b[:3]),
                "pair3": ms_ssim(a[3:], b[3:]), "self": ms_ssim_per_image(a, a),
                "levels": jax.vmap(lambda u, v: ms_ssim_levels(u[None], v[None]))(a[:3], b[:3])}

    return jax.tree_util.tree_map(np.asarray, run(a, b))


def test_ms_ssim_parity(io, ms_ssim_out):
    np.testing.assert_allclose(ms_ssim_out["per_pair"], io["msssim256_per_pair"], atol=1e-5)
    # Batch quirk: ssim/cs averaged over the batch per level before the product.
    np.testing.assert_allclose(ms_ssim_out["batch"], io["msssim256_batch"], atol=1e-5)
    assert abs(float(io["msssim256_batch"]) - io["msssim256_per_pair"].mean()) > 1e-3
    np.testing.assert_allclose(ms_ssim_out["pair3"], io["msssim256_pair3_unrelated"], atol=1e-5)


def test_ms_ssim_levels_and_dynamic_range_quirk(io, ms_ssim_out):
    """Per-level (ssim, cs, L); pair 2 has L = 2 at level 0 and L = 1 at levels 1-4."""
    got = ms_ssim_out["levels"]
    np.testing.assert_allclose(got, io["msssim256_levels_sim_cs_L"], atol=1e-5)
    np.testing.assert_array_equal(got[2, :, 2], [2, 1, 1, 1, 1])


def test_ms_ssim_closed_forms(ms_ssim_out):
    np.testing.assert_allclose(ms_ssim_out["self"], 1.0, atol=1e-6)  # MS-SSIM(x, x) = 1
    # Constant images: sigma = 0, so cs = 1 and ssim = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1) at
    # every level, MS-SSIM = ssim ** 0.1333. L comes from img1 alone: values in [0, 1] give
    # L = 1; a minimum below -0.5 gives L = 2. Opposite-sign means make ssim < 0 and the
    # fractional power NaN, as in PyTorch.
    const = lambda v: jnp.full((1, 32, 32, 3), v, jnp.float32)  # noqa: E731
    f = jax.jit(ms_ssim)
    for m1, m2, L in ((0.2, 0.5, 1.0), (-0.8, -0.3, 2.0), (-0.4, -0.9, 1.0)):
        c1 = (0.01 * L) ** 2
        s = (2 * m1 * m2 + c1) / (m1 * m1 + m2 * m2 + c1)
        # rtol 1e-4: E[x^2] - mu^2 cancels to ~1e-7 instead of 0, against C2 ~ 1e-3.
        np.testing.assert_allclose(float(f(const(m1), const(m2))), s ** 0.1333, rtol=1e-4)
    assert np.isnan(float(f(const(0.2), const(-0.3))))


def test_ms_ssim_grad_finite():
    g = jax.grad(lambda a, b: ms_ssim(a, b))
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    x = jax.random.uniform(k1, (1, 180, 180, 3), minval=-1, maxval=1)
    y = jnp.clip(x + 0.1 * jax.random.normal(k2, x.shape), -1, 1)
    gx = np.asarray(jax.jit(g)(y, x))
    assert np.all(np.isfinite(gx)) and np.abs(gx).max() > 0


# ----------------------------------------------------------------------------- L2


@pytest.mark.parametrize("res", ["256", "64"])
def test_l2_parity(io, res):
    a, b = nhwc(io[f"img_a{res}"]), nhwc(io[f"img_b{res}"])
    np.testing.assert_allclose(np.asarray(l2_per_image(a, b)), io[f"l2_{res}_per_pair"], rtol=1e-6)
    np.testing.assert_allclose(float(l2_loss(a, b)), io[f"l2_{res}_batch"], rtol=1e-6)


def test_l2_constants_and_grad():
    a = jnp.full((2, 8, 8, 3), 0.5)
    b = jnp.concatenate([jnp.full((1, 8, 8, 3), -0.5), jnp.full((1, 8, 8, 3), 0.25)])
    np.testing.assert_allclose(np.asarray(l2_per_image(a, b)), [1.0, 0.0625], rtol=1e-7)
    np.testing.assert_allclose(float(l2_loss(a, b)), (1.0 + 0.0625) / 2, rtol=1e-7)
    g = np.asarray(jax.grad(l2_loss)(a, b))  # d/dy_hat mean((y_hat - y)^2) = 2 (y_hat - y) / N
    np.testing.assert_allclose(g[0], 2 * 1.0 / a.size, rtol=1e-6)
    np.testing.assert_allclose(g[1], 2 * 0.25 / a.size, rtol=1e-6)


# ----------------------------------------------------------------------------- resampling vs torch


@pytest.mark.parametrize("n_in,n_out", [(188, 112), (256, 112), (7, 3)])
def test_adaptive_avg_pool_matches_torch(n_in, n_out):
    """The ID loss's AdaptiveAvgPool2d(112) from the 188x188 crop: overlapping bins."""
    x = np.random.default_rng(0).standard_normal((2, 3, n_in, n_in + 5)).astype(np.float32)
    want = F.adaptive_avg_pool2d(torch.from_numpy(x), (n_out, n_out + 2)).numpy()
    got = np.asarray(adaptive_avg_pool2d(nhwc(x), (n_out, n_out + 2)))
    np.testing.assert_allclose(got, np.transpose(want, (0, 2, 3, 1)), atol=1e-6)


@pytest.mark.parametrize("n_in", [256, 192, 1024, 112, 224, 300, 97])
def test_nearest_resize_matches_torch(n_in):
    """MoCo's F.interpolate(x, size=224) (mode 'nearest', float32 index arithmetic)."""
    x = np.arange(2 * 3 * n_in * (n_in + 1), dtype=np.float32).reshape(2, 3, n_in, n_in + 1)
    want = F.interpolate(torch.from_numpy(x), size=224).numpy()
    got = np.asarray(resize_nearest(nhwc(x), 224))
    np.testing.assert_array_equal(got, np.transpose(want, (0, 2, 3, 1)))
    ramp = torch.arange(n_in, dtype=torch.float32)[None, None, :, None].expand(1, 1, n_in, 1)
    np.testing.assert_array_equal(
        nearest_indices(n_in, 224), F.interpolate(ramp, size=(224, 1))[0, 0, :, 0].long().numpy())


# ----------------------------------------------------------------------------- compute_losses


def test_loss_weights_rules():
    with pytest.raises(ValueError, match="id_lambda = 0.1 and moco_lambda = 0.5"):
        LossWeights(id=0.1, moco=0.5)
    with pytest.raises(ValueError, match="every loss weight is 0"):
        LossWeights()
    with pytest.raises(ValueError, match="l2_lambda = -1"):
        LossWeights(l2=-1)
    w = LossWeights.from_config({"l2_lambda": 1, "lpips_lambda": 0.8, "id_lambda": 0.1})
    assert w.active() == ("l2", "lpips", "id") and w.networks() == ("lpips", "id")
    assert LossWeights(l2=1.0).networks() == ()


def test_compute_losses_l2_lpips(io, lpips_vars):
    a, b = nhwc(io["img_a64"]), nhwc(io["img_b64"])
    w = LossWeights(l2=1.0, lpips=0.8)
    fn = jax.jit(lambda v, yh, y: compute_losses(v, yh, y, w))
    total, terms = fn({"lpips": lpips_vars}, a, b)
    assert set(terms) == {"loss_l2", "loss_lpips", "loss"}
    np.testing.assert_allclose(float(terms["loss_l2"]), io["l2_64_batch"], rtol=1e-6)
    np.testing.assert_allclose(float(terms["loss_lpips"]), io["lpips64_batch_mean"], rtol=1e-4)
    np.testing.assert_allclose(
        float(total), io["l2_64_batch"] + 0.8 * io["lpips64_batch_mean"], rtol=1e-4
    )
    assert float(terms["loss"]) == float(total)
    with pytest.raises(ValueError, match=r"no variables for \['lpips'\]"):
        compute_losses({}, a, b, w)
    # Only l2: no network needed, and no other term appears.
    total, terms = compute_losses({}, a, b, LossWeights(l2=2.0))
    assert set(terms) == {"loss_l2", "loss"}
    np.testing.assert_allclose(float(total), 2 * io["l2_64_batch"], rtol=1e-6)


def test_init_lpips_shapes_match_converted(lpips_vars):
    shapes = jax.eval_shape(lambda: init_lpips("alex"))
    assert (jax.tree_util.tree_map(lambda x: x.shape, shapes)
            == jax.tree_util.tree_map(lambda x: x.shape, lpips_vars))
