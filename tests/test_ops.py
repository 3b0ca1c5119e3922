"""ops.py against the official upfirdn2d / Blur / Upsample / ModulatedConv2d fixtures
(tests/fixtures/02_upfirdn2d, made by the official code) and an independent float64
numpy reference of upfirdn2d written from its definition."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FIXTURES, nchw, nhwc

from hyperstyle_jax.models import conv, ops

ATOL = 1e-5  # fixtures README: blur / up / down / ModulatedConv2d units


@pytest.fixture(scope="module")
def npz():
    return dict(np.load(os.path.join(FIXTURES, "02_upfirdn2d", "upfirdn2d_cases.npz")))


def ref_upfirdn2d(x, k, up, down, px0, px1, py0, py1):
    """Float64 numpy, straight from the definition (NCHW): zero-insert, pad/crop, flip, stride."""
    return _ref_xy(x, k, up, up, down, down, (px0, px1, py0, py1))


# (case, input, kernel key, up, down, pad) exactly as fixtures/02_upfirdn2d/config.json says.
UPFIRDN_CASES = [
    ("up_sym", "x_even", "up_sym__kernel_buffer", 2, 1, (2, 1)),
    ("up_asym2d", "x_even", "up_asym2d__kernel_buffer", 2, 1, (2, 1)),
    ("up_asym1d", "x_even", "up_asym1d__kernel_buffer", 2, 1, (2, 1)),
    ("blurup_sym", "x_tr", "blurup_sym__kernel_buffer", 1, 1, (1, 1)),
    ("blurup_asym2d", "x_tr", "blurup_asym2d__kernel_buffer", 1, 1, (1, 1)),
    ("down_sym", "x_odd", "down_sym__kernel_buffer", 1, 2, (1, 1)),
    ("down_asym2d", "x_odd", "down_asym2d__kernel_buffer", 1, 2, (1, 1)),
    ("blur22_sym", "x_odd", "blur22_sym__kernel_buffer", 1, 1, (2, 2)),
    ("raw_up2_pad21", "x_even", "K_raw", 2, 1, (2, 1)),
    ("raw_down2_pad11", "x_odd", "K_raw", 1, 2, (1, 1)),
    ("raw_up2_down2_pad12", "x_odd", "K_raw", 2, 2, (1, 2)),
]


@pytest.mark.parametrize("case,xk,kk,up,down,pad", UPFIRDN_CASES, ids=[c[0] for c in UPFIRDN_CASES])
def test_upfirdn2d_matches_official(npz, case, xk, kk, up, down, pad):
    got = nchw(ops.upfirdn2d(nhwc(npz[xk]), npz[kk], up=up, down=down, pad=pad))
    want = npz["out__" + case]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_kernel_buffers_are_make_kernel(npz):
    """The stored (normalised, scaled) buffers equal make_kernel(taps) * factor**2."""
    sym, asym1d, asym2d = [1, 3, 3, 1], npz["K_asym1d_list"], npz["K_asym2d_list"]
    np.testing.assert_allclose(npz["up_sym__kernel_buffer"], ops.make_kernel(sym) * 4, rtol=1e-6)
    np.testing.assert_allclose(
        npz["up_asym1d__kernel_buffer"], ops.make_kernel(asym1d) * 4, rtol=1e-6
    )
    np.testing.assert_allclose(
        npz["up_asym2d__kernel_buffer"], ops.make_kernel(asym2d) * 4, rtol=1e-6
    )
    np.testing.assert_allclose(npz["down_sym__kernel_buffer"], ops.make_kernel(sym), rtol=1e-6)
    np.testing.assert_allclose(
        npz["blurup_sym__kernel_buffer"], ops.make_kernel(sym) * 4, rtol=1e-6
    )


def test_module_wrappers_match_official(npz):
    np.testing.assert_allclose(nchw(ops.upsample(nhwc(npz["x_even"]), [1, 3, 3, 1])),
                               npz["out__up_sym"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(nchw(ops.upsample(nhwc(npz["x_even"]), npz["K_asym1d_list"])),
                               npz["out__up_asym1d"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(nchw(ops.downsample(nhwc(npz["x_odd"]), [1, 3, 3, 1])),
                               npz["out__down_sym"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(nchw(ops.blur(nhwc(npz["x_tr"]), [1, 3, 3, 1], (1, 1), 2)),
                               npz["out__blurup_sym"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(nchw(ops.blur(nhwc(npz["x_odd"]), [1, 3, 3, 1], (2, 2))),
                               npz["out__blur22_sym"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("up,down,pad,gain", [
    (1, 1, (-1, 2, 0, -2), 1.0),          # negative (cropping) pads, per side
    ((2, 3), (1, 2), (3, -1, -2, 4), 2.5),  # different up/down per axis and a gain
    (3, 2, (0, 0, 1, 1), 1.0),
])
def test_upfirdn2d_general_vs_numpy(up, down, pad, gain):
    rng = np.random.RandomState(0)
    x = rng.randn(2, 3, 7, 6).astype(np.float32)
    k = rng.randn(3, 5).astype(np.float32)  # non-square, asymmetric
    got = nchw(ops.upfirdn2d(nhwc(x), k, up=up, down=down, pad=pad, gain=gain))
    upx, upy = ops._pair(up)
    dnx, dny = ops._pair(down)
    want = _ref_xy(x, k * gain, upx, upy, dnx, dny, pad)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def _ref_xy(x, k, upx, upy, dnx, dny, pad):
    """`ref_upfirdn2d` with separate x and y factors; pad = (px0, px1, py0, py1)."""
    x = np.asarray(x, np.float64)
    k = np.asarray(k, np.float64)
    b, c, h, w = x.shape
    px0, px1, py0, py1 = pad
    z = np.zeros((b, c, h * upy, w * upx))
    z[:, :, ::upy, ::upx] = x
    z = np.pad(z, ((0, 0), (0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))))
    z = z[:, :, max(-py0, 0):z.shape[2] - max(-py1, 0), max(-px0, 0):z.shape[3] - max(-px1, 0)]
    kh, kw = k.shape
    kf = k[::-1, ::-1]
    oh, ow = z.shape[2] - kh + 1, z.shape[3] - kw + 1
    out = np.zeros((b, c, oh, ow))
    for i in range(kh):
        for j in range(kw):
            out += kf[i, j] * z[:, :, i:i + oh, j:j + ow]
    return out[:, :, ::dny, ::dnx]


def test_fused_lrelu_matches_official(npz):
    got = nchw(
        ops.fused_leaky_relu(nhwc(npz["fused_lrelu_x"]), jnp.asarray(npz["fused_lrelu_bias"]))
    )
    np.testing.assert_allclose(got, npz["out__fused_lrelu"], atol=ATOL, rtol=0)


def test_pixel_norm_closed_form():
    x = np.random.RandomState(1).randn(4, 9).astype(np.float32)
    want = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-8)
    np.testing.assert_allclose(ops.pixel_norm(jnp.asarray(x)), want, rtol=1e-6)


# ----------------------------------------------------------------------------- modulated conv

MODCONV = {  # case -> (out, kernel, demodulate, upsample, blur taps)
    "modconv_plain": (7, 3, True, False, (1, 3, 3, 1)),
    "modconv_up": (7, 3, True, True, (1, 3, 3, 1)),
    "modconv_torgb": (3, 1, False, False, (1, 3, 3, 1)),
    "modconv_up_asymblur": (7, 3, True, True, (1, 2, 3, 4)),
}


def _modconv_vars(npz, case):
    w = npz[f"{case}__param__weight"][0]                      # [O, I, k, k]
    return {"params": {
        "weight": jnp.asarray(np.transpose(w, (2, 3, 1, 0))),  # HWIO
        "modulation": {"weight": jnp.asarray(npz[f"{case}__param__modulation.weight"].T),
                       "bias": jnp.asarray(npz[f"{case}__param__modulation.bias"])}}}


@pytest.mark.parametrize("case,form", [(c, "map") for c in MODCONV] +
                         [("modconv_up", "grouped"), ("modconv_up", "loop"),
                          ("modconv_plain", "winograd"), ("modconv_plain", "matmul")])
def test_modulated_conv_matches_official(npz, case, form):
    out_c, k, demod, up, taps = MODCONV[case]
    if up and f"{case}__param__blur.kernel" in npz:
        np.testing.assert_allclose(npz[f"{case}__param__blur.kernel"], ops.make_kernel(taps) * 4,
                                   rtol=1e-6)
    mod = ops.ModulatedConv2d(5, out_c, k, 6, demodulate=demod, upsample=up, blur_kernel=taps,
                              per_sample=form)
    v = _modconv_vars(npz, case)
    x, s = nhwc(npz["modconv_input"]), jnp.asarray(npz["modconv_style"])
    got = nchw(mod.apply(v, x, s))
    np.testing.assert_allclose(got, npz[f"out__{case}"], atol=ATOL, rtol=0)
    delta = jnp.asarray(npz[f"{case}__weights_delta"])
    got = nchw(mod.apply(v, x, s, delta))
    np.testing.assert_allclose(got, npz[f"out__{case}_delta"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", list(MODCONV))
def test_kernel_delta_matches_official(npz, case):
    """Offsets handed over as `KernelDelta` ([B, k, k, I, O], what an inversion carries)
    give the official modulated conv's output; `official()` undoes `from_official`."""
    out_c, k, demod, up, taps = MODCONV[case]
    mod = ops.ModulatedConv2d(5, out_c, k, 6, demodulate=demod, upsample=up, blur_kernel=taps)
    v = _modconv_vars(npz, case)
    x, s = nhwc(npz["modconv_input"]), jnp.asarray(npz["modconv_style"])
    delta = jnp.asarray(npz[f"{case}__weights_delta"])
    kd = ops.KernelDelta.from_official(delta)
    assert kd.value.shape == (delta.shape[0], k, k, 5, out_c)
    assert kd.official_shape == delta.shape
    np.testing.assert_array_equal(kd.official(), delta)
    got = nchw(mod.apply(v, x, s, kd))
    np.testing.assert_allclose(got, npz[f"out__{case}_delta"], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match=r"KernelDelta has shape"):
        mod.apply(v, x, s, ops.KernelDelta(kd.value[:, :, :, :4]))


def test_modulated_conv_shared_delta_equals_batched_copy(npz):
    """An unbatched delta [O,I,k,k] (the cheap shared path) equals the same delta repeated."""
    mod = ops.ModulatedConv2d(5, 7, 3, 6, upsample=True, per_sample="map")
    v = _modconv_vars(npz, "modconv_up")
    x, s = nhwc(npz["modconv_input"]), jnp.asarray(npz["modconv_style"])
    d = jnp.asarray(npz["modconv_up__weights_delta"][0])
    a = mod.apply(v, x, s, d)
    b = mod.apply(v, x, s, jnp.broadcast_to(d, (2,) + d.shape))
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_modulated_conv_downsample_vs_numpy():
    """Downsampling path (blur then stride-2 conv), checked against float64 numpy."""
    rng = np.random.RandomState(2)
    x = rng.randn(2, 5, 9, 8).astype(np.float32)
    s = rng.randn(2, 5).astype(np.float32) + 1
    w = rng.randn(7, 5, 3, 3).astype(np.float32)
    delta = 0.1 * rng.randn(2, 7, 5, 3, 3).astype(np.float32)
    for d in (None, delta):
        got = nchw(ops.modulated_conv2d(nhwc(x), jnp.asarray(np.transpose(w, (2, 3, 1, 0))),
                                        jnp.asarray(s), None if d is None else jnp.asarray(d),
                                        downsample=True, per_sample="map"))
        wt = (w[None] if d is None else w[None] * (1 + d)).astype(np.float64) / np.sqrt(45)
        wt = wt * s[:, None, :, None, None]
        wt = wt / np.sqrt((wt ** 2).sum((2, 3, 4), keepdims=True) + 1e-8)
        xb = ref_upfirdn2d(x, ops.make_kernel([1, 3, 3, 1]), 1, 1, 2, 2, 2, 2)
        oh, ow = (xb.shape[2] - 3) // 2 + 1, (xb.shape[3] - 3) // 2 + 1
        want = np.zeros((2, 7, oh, ow))
        for i in range(3):
            for j in range(3):
                patch = xb[:, :, i:i + 2 * oh - 1:2, j:j + 2 * ow - 1:2]
                want += np.einsum("bchw,boc->bohw", patch, wt[:, :, :, i, j])
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_delta_shape_errors_name_the_shape(npz):
    mod = ops.ModulatedConv2d(5, 7, 3, 6)
    v = _modconv_vars(npz, "modconv_plain")
    x, s = nhwc(npz["modconv_input"]), jnp.asarray(npz["modconv_style"])
    with pytest.raises(ValueError, match=r"\(7, 5, 3, 3\)"):
        mod.apply(v, x, s, jnp.zeros((2, 7, 4, 3, 3)))
    with pytest.raises(ValueError, match="per_sample"):
        conv.resolve_per_sample("vmapp")


@pytest.mark.parametrize("k", [1, 3, 4])
def test_up_conv_equals_torch_conv_transpose(k):
    """The polyphase stride-2 transposed conv against torch.nn.functional.conv_transpose2d."""
    torch = pytest.importorskip("torch")
    rng = np.random.RandomState(k)
    x = rng.randn(2, 3, 5, 4).astype(np.float32)          # NCHW, non-square
    w = rng.randn(2, 3, 6, k, k).astype(np.float32)       # per sample [O? no: I, O, k, k] below
    want = np.stack(
        [
            torch.nn.functional.conv_transpose2d(
                torch.from_numpy(x[b : b + 1]), torch.from_numpy(w[b]), stride=2
            ).numpy()[0]
            for b in range(2)
        ]
    )
    # torch's transposed weight [I, O, k, k] is our modconv weight [O, I, k, k] read as [in, out]:
    w_hwio = jnp.asarray(np.transpose(w, (0, 3, 4, 1, 2)))  # [B, k, k, I, O]
    shared = nchw(conv.shared_conv(nhwc(x[:1]), w_hwio[0], "up", k))
    np.testing.assert_allclose(shared, want[:1], atol=1e-5, rtol=1e-5)
    for form in conv.PER_SAMPLE_FORMS:
        got = nchw(conv.per_sample_conv(nhwc(x), w_hwio, "up", k, form))
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=form)


def test_upfirdn2d_traced_kernel(npz):
    """A kernel that is a traced value (no separability check possible) gives the same result."""
    f = jax.jit(lambda x, k: ops.upfirdn2d(x, k, up=2, down=2, pad=(1, 2)))
    got = nchw(f(nhwc(npz["x_odd"]), jnp.asarray(npz["K_raw"])))
    np.testing.assert_allclose(got, npz["out__raw_up2_down2_pad12"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("form,kh,kw,pad", [
    *[(f, 3, 3, ((1, 1), (1, 1))) for f in conv.PER_SAMPLE_FORMS],
    # the polyphase up-conv's phase kernels, and the 1x1 toRGB
    ("map", 2, 1, ((1, 1), (0, 1))), ("map", 1, 2, ((0, 1), (1, 1))),
    ("map", 1, 1, ((0, 1), (0, 1))), ("map", 1, 1, ((0, 0), (0, 0)))])
def test_conv_s1_custom_vjp_matches_autodiff(form, kh, kw, pad):
    """The hand-written backward pass of conv_s1 equals JAX autodiff of a plain lax conv."""
    rng = np.random.RandomState(kh * 10 + kw)
    x = jnp.asarray(rng.randn(2, 5, 4, 3).astype(np.float32))
    w_ps = jnp.asarray(rng.randn(2, kh, kw, 3, 6).astype(np.float32))
    w_sh = w_ps[0]
    g = jnp.asarray(rng.randn(2, 5 + sum(pad[0]) - kh + 1, 4 + sum(pad[1]) - kw + 1, 6)
                    .astype(np.float32))

    def ref(x, w):
        def conv(xx, ww):
            return jax.lax.conv_general_dilated(
                xx[None], ww, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]

        return jax.vmap(conv)(x, w) if w.ndim == 5 else jax.vmap(conv, (0, None))(x, w)

    for w in (w_ps, w_sh):
        got_y, vjp = jax.vjp(lambda x, w: conv.conv_s1(x, w, pad, form), x, w)
        want_y, vjp_ref = jax.vjp(ref, x, w)
        np.testing.assert_allclose(got_y, want_y, atol=1e-5, rtol=1e-5)
        for a, b in zip(vjp(g), vjp_ref(g)):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)
