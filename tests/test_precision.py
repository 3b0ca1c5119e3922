"""The 'matmul' conv form against the other forms (fp32, tight), through conv_s1's VJP,
and the bf16 precision option: dtypes, fp32 accumulation, and its error against fp32
on single ops and on the end-to-end fixture (05_e2e)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import E2E

from hyperstyle_jax.models import conv, ops
from hyperstyle_jax.models.layers import conv2d


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).mean() / np.abs(b).mean())


@pytest.fixture(scope="module")
def xw():
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(3, 7, 6, 5).astype(np.float32))
    w = jnp.asarray((rng.randn(3, 3, 3, 5, 4) / 6).astype(np.float32))  # [B, k, k, I, O]
    return x, w


@pytest.mark.parametrize("mode", ["same", "up", "down"])
def test_matmul_form_matches_per_sample_forms(xw, mode):
    x, w = xw
    f = jax.jit(conv.per_sample_conv, static_argnums=(2, 3, 4))
    ref = np.asarray(f(x, w, mode, 3, "map"))
    for form in ("grouped", "matmul"):
        np.testing.assert_allclose(np.asarray(f(x, w, mode, 3, form)), ref, rtol=1e-5,
                                   atol=1e-5, err_msg=form)


@pytest.mark.parametrize("mode", ["same", "up", "down"])
def test_matmul_form_shared_kernel(xw, mode):
    x, w = xw
    f = jax.jit(conv.shared_conv, static_argnums=(2, 3, 4))
    np.testing.assert_allclose(np.asarray(f(x, w[0], mode, 3, "matmul")),
                               np.asarray(f(x, w[0], mode, 3, "map")), rtol=1e-5, atol=1e-5)


def _row_blocks_case(x, w, monkeypatch, rows, stride, pad, per_sample):
    """(kernels, ours, XLA's conv in fp32 HIGHEST, loss) for the row-block tests, with
    blocks of `rows` output rows."""
    wk = w if per_sample else w[0]
    wo = (x.shape[2] + sum(pad[1]) - 3) // stride + 1
    monkeypatch.setattr(conv, "MATMUL_BLOCK_BYTES", rows * wo * w.shape[-1] * 4)

    def ref(x, wk):
        x, wk = x.astype(jnp.float32), wk.astype(jnp.float32)
        one = lambda xi, wi: jax.lax.conv_general_dilated(  # noqa: E731
            xi[None], wi, (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision="highest")[0]
        return jax.vmap(one)(x, wk) if per_sample else jax.vmap(one, (0, None))(x, wk)

    def loss(f, x, wk):
        return jnp.sum(jnp.sin(f(x, wk)))

    ours = lambda x, wk: conv.shifted_matmul_conv(x, wk, pad, stride)  # noqa: E731
    return wk, ours, ref, loss


@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("stride,pad", [(1, ((1, 1), (1, 1))), (1, ((-1, 2), (2, 0))),
                                        (2, ((0, 0), (0, 0)))])
@pytest.mark.parametrize("per_sample", [True, False])
def test_shifted_matmul_row_blocks(xw, monkeypatch, rows, stride, pad, per_sample):
    """The row-blocked shifted-matmul form (a loop over samples and blocks of output rows,
    uneven blocks padded and cropped) against XLA's conv, value and gradient."""
    x, w = xw
    wk, ours, ref, loss = _row_blocks_case(x, w, monkeypatch, rows, stride, pad, per_sample)
    assert "scan" in jax.make_jaxpr(ours)(x, wk).pretty_print()   # the blocked loop ran
    np.testing.assert_allclose(ours(x, wk), ref(x, wk), rtol=1e-5, atol=1e-5)
    for g, g0 in zip(jax.grad(lambda *a: loss(ours, *a), (0, 1))(x, wk),
                     jax.grad(lambda *a: loss(ref, *a), (0, 1))(x, wk)):
        np.testing.assert_allclose(g, g0, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stride,pad", [(1, ((1, 1), (1, 1))), (2, ((0, 0), (0, 0)))])
@pytest.mark.parametrize("per_sample", [True, False])
def test_shifted_matmul_row_blocks_bf16(xw, monkeypatch, stride, pad, per_sample):
    """bf16 operands take the row blocks on their bits (uint16), with tangents through the
    loop on fp32 copies viewed as bf16 per block: value and gradient against XLA's fp32
    conv of the same (bf16-exact) operands. bf16 x bf16 products are exact in fp32, so the
    value matches closely; the gradients come back in bf16."""
    x, w = (a.astype(jnp.bfloat16) for a in xw)
    wk, ours, ref, loss = _row_blocks_case(x, w, monkeypatch, 2, stride, pad, per_sample)
    assert "bitcast_convert_type" in jax.make_jaxpr(ours)(x, wk).pretty_print()
    y = ours(x, wk)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, ref(x, wk), rtol=1e-5, atol=1e-5)
    for g, g0 in zip(jax.jit(jax.grad(lambda *a: loss(ours, *a), (0, 1)))(x, wk),
                     jax.grad(lambda *a: loss(ref, *a), (0, 1))(x, wk)):
        assert g.dtype == jnp.bfloat16   # bf16 rounding of the gradients: ~1-3e-3
        assert rel(g.astype(jnp.float32), g0) < 5e-3


def test_matmul_form_vjp_matches_map(xw):
    x, w = xw
    pad = ((1, 0), (2, 1))  # asymmetric, as in the polyphase up-conv

    def loss(x, w, form):
        return jnp.sum(jnp.sin(conv.conv_s1(x, w, pad, form)))

    g = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
    gx0, gw0 = g(x, w, "map")
    gx1, gw1 = g(x, w, "matmul")
    np.testing.assert_allclose(gx1, gx0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gw1, gw0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", ["map", "matmul"])
def test_bf16_conv_s1_accumulates_in_fp32_and_keeps_grad_dtypes(xw, form):
    x, w = xw
    pad = ((1, 1), (1, 1))
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    y = conv.conv_s1(xb, wb, pad, form)
    assert y.dtype == jnp.float32
    ref = conv.conv_s1(xb.astype(jnp.float32), wb.astype(jnp.float32), pad, form)
    assert rel(y, ref) < 1e-5  # exact products, fp32 sums: only summation order differs
    gx, gw = jax.grad(lambda a, b: jnp.sum(conv.conv_s1(a, b, pad, form) ** 2),
                      argnums=(0, 1))(xb, wb)
    assert gx.dtype == jnp.bfloat16 and gw.dtype == jnp.bfloat16
    gx32, gw32 = jax.grad(lambda a, b: jnp.sum(conv.conv_s1(a, b, pad, form) ** 2),
                          argnums=(0, 1))(x, w)
    assert rel(gx, gx32) < 2e-2 and rel(gw, gw32) < 2e-2


def test_resolve_per_sample_bf16_rule():
    lim = conv.AUTO_MATMUL_MIN_CHANNELS_BF16.get(jax.default_backend())
    auto = conv.AUTO_PER_SAMPLE.get(jax.default_backend(), "grouped")
    assert conv.resolve_per_sample("auto") == auto
    assert conv.resolve_per_sample("auto", jnp.float32, 4096) == auto
    if lim is not None:
        assert conv.resolve_per_sample("auto", jnp.bfloat16, lim) == "matmul"
        assert conv.resolve_per_sample("auto", jnp.bfloat16, lim - 1) == auto
    assert conv.resolve_per_sample("grouped", jnp.bfloat16, 4096) == "grouped"
    with pytest.raises(ValueError, match="per_sample"):
        conv.resolve_per_sample("nope")
    with pytest.raises(ValueError, match="precision"):
        conv.compute_dtype("fp16")


@pytest.mark.parametrize("stride,cin", [(1, 8), (2, 8), (1, 512), (2, 512)])
def test_flax_conv_bf16_close_to_fp32(stride, cin):
    """conv2d(precision='bf16'): same params, fp32 output; 512 input channels take the
    shifted-matmul path on CPU, fewer XLA's conv."""
    rng = np.random.RandomState(1)
    x = jnp.asarray(rng.randn(2, 8, 8, cin).astype(np.float32))
    m32 = conv2d(16, 3, stride, 1)
    m16 = conv2d(16, 3, stride, 1, precision="bf16")
    v = m32.init(jax.random.PRNGKey(0), x)
    v = jax.tree.map(lambda a: a + 0.1, v)  # a non-zero bias
    y32, y16 = m32.apply(v, x), m16.apply(v, x)
    assert y16.dtype == jnp.float32 and y16.shape == y32.shape
    assert rel(y16, y32) < 1e-2


def test_flax_conv_bf16_1x1_rule():
    x = jnp.asarray(np.random.RandomState(4).randn(2, 4, 4, 8).astype(np.float32))
    m32, m16 = conv2d(16, 1, 2, 0), conv2d(16, 1, 2, 0, precision="bf16")
    v = m32.init(jax.random.PRNGKey(0), x)
    y32, y16 = m32.apply(v, x), m16.apply(v, x)
    assert y16.dtype == jnp.float32
    if not conv.BF16_1X1_CONVS.get(jax.default_backend(), True):
        np.testing.assert_array_equal(y16, y32)
    else:
        assert rel(y16, y32) < 1e-2


@pytest.mark.parametrize("delta", ["none", "per_sample"])
@pytest.mark.parametrize("form", ["map", "matmul"])
def test_modulated_conv2d_bf16_close_to_fp32(delta, form):
    rng = np.random.RandomState(2)
    b, cin, cout = 2, 16, 8
    x = jnp.asarray(rng.randn(b, 8, 8, cin).astype(np.float32))
    weight = jnp.asarray(rng.randn(3, 3, cin, cout).astype(np.float32))
    style = jnp.asarray((1 + 0.2 * rng.randn(b, cin)).astype(np.float32))
    d = None if delta == "none" else jnp.asarray(
        (0.05 * rng.randn(b, cout, cin, 3, 3)).astype(np.float32))
    for up in (False, True):
        kw = dict(upsample=up, per_sample=form)
        y32 = ops.modulated_conv2d(x, weight, style, d, **kw)
        y16 = ops.modulated_conv2d(x, weight, style, d, precision="bf16", **kw)
        assert y16.dtype == jnp.float32
        assert rel(y16, y32) < 1e-2


def test_fp32_default_is_unchanged_by_the_precision_option():
    """precision='fp32' (the default) builds exactly the same computation as before."""
    rng = np.random.RandomState(3)
    x = jnp.asarray(rng.randn(2, 8, 8, 16).astype(np.float32))
    weight = jnp.asarray(rng.randn(3, 3, 16, 8).astype(np.float32))
    style = jnp.asarray(rng.randn(2, 16).astype(np.float32))
    d = jnp.asarray((0.05 * rng.randn(2, 8, 16, 3, 3)).astype(np.float32))
    a = jax.jit(lambda *t: ops.modulated_conv2d(*t, per_sample="map")).lower(
        x, weight, style, d).as_text()
    b = jax.jit(lambda *t: ops.modulated_conv2d(*t, per_sample="map", precision="fp32")).lower(
        x, weight, style, d).as_text()
    assert a == b and "bf16" not in a


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def e2e_dirs(e2e_checkpoints):
    return e2e_checkpoints.hyperstyle(), e2e_checkpoints.w_encoder()


@pytest.mark.parametrize("per_sample", ["auto", "matmul"])
def test_e2e_bf16_within_bounds_of_fp32(e2e_dirs, per_sample):
    """bf16 inversion of the fixture's images against our fp32 one (itself parity-tested
    against the official run): final images within 1% mean relative error, deltas within
    3%, and the shared hypernet's w1/w2 stored in bf16."""
    from hyperstyle_jax.inference import load_inverter
    ckpt, wenc = e2e_dirs
    x = np.load(os.path.join(E2E, "e2e_default_io.npz"))["x"].transpose(0, 2, 3, 1)
    n = x.shape[0]
    out = {}
    for prec in ("fp32", "bf16"):
        inv = load_inverter(ckpt, wenc, per_sample=per_sample, precision=prec)
        out[prec] = inv.batched_inverter(batch_size=n, n_iters=3)(x)
    shw = inv.hyper_vars["params"]["shared_weight_hypernet"]
    assert shw["w1"].dtype == jnp.bfloat16 and shw["w2"].dtype == jnp.bfloat16
    a, b = out["bf16"], out["fp32"]
    np.testing.assert_array_equal(a["codes"], b["codes"])  # the W-encoder stays fp32
    assert rel(a["images"][-1], b["images"][-1]) < 1e-2
    assert rel(a["init"], b["init"]) < 1e-2
    for da, db in zip(a["deltas"], b["deltas"]):
        if db is not None:
            assert rel(da, db) < 3e-2
