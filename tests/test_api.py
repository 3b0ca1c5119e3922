"""The public Python API (`hyperstyle_jax.load`) on the fixture-05 model: it gives the
numbers of the batched inverter the CLIs use, renders and edits, and saves a folder the
edit CLI reads; the stepwise inverter of the page gives the same numbers."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import hyperstyle_jax
from hyperstyle_jax.editing import interfacegan
from hyperstyle_jax.inference import StepwiseInverter, compile_for_batch
from hyperstyle_jax.utils import images

N_ITERS = 2


@pytest.fixture(scope="module")
def ckpts(e2e_checkpoints):
    return e2e_checkpoints.hyperstyle(), e2e_checkpoints.w_encoder()


@pytest.fixture(scope="module")
def model(ckpts):
    return hyperstyle_jax.load(*ckpts, batch_size=2)


@pytest.fixture(scope="module")
def photos():
    rng = np.random.RandomState(0)
    return [rng.randint(0, 256, (80, 72, 3), dtype=np.uint8) for _ in range(3)]


@pytest.fixture(scope="module")
def ref(model, photos):
    """The batched inverter on the three photos at once (batch 3)."""
    x = np.stack([images.resize(p, model.input_hw) for p in photos])
    return x, model.inverter.batched_inverter(3, N_ITERS)(images.to_float(x))


def test_invert_matches_the_batched_inverter(model, photos, ref, tmp_path):
    path = str(tmp_path / "chelsea.png")
    Image.fromarray(photos[0]).save(path)
    # A file and two arrays; the arrays go through the batch-2 function as 2 + 1 (padded).
    items = model.invert([path] + photos[1:], n_iters=N_ITERS)
    assert [it.stem for it in items] == ["chelsea", "image_1", "image_2"]
    x, ref = ref
    for i, it in enumerate(items):
        np.testing.assert_array_equal(it.image, x[i])
        np.testing.assert_allclose(it.codes, ref["codes"][i], atol=1e-5)
        np.testing.assert_allclose(it.reconstruction, ref["images"][-1][i], atol=1e-4)
        for j, d in enumerate(ref["deltas"]):
            assert (d is None) == (it.deltas[j] is None)
            if d is not None:
                np.testing.assert_allclose(it.deltas[j], d[i], atol=1e-5)
    # render(codes, deltas) reproduces the reconstruction; a zero edit renders the same.
    np.testing.assert_allclose(model.render(items[0].codes, items[0].deltas),
                               items[0].reconstruction, atol=1e-4)
    direction = np.random.RandomState(1).randn(1, items[0].codes.shape[-1]).astype(np.float32)
    edited = model.edit(items[0], interfacegan.apply, direction, [0.0, 2.0])
    assert edited.shape == (2,) + items[0].reconstruction.shape
    np.testing.assert_allclose(edited[0], items[0].reconstruction, atol=1e-4)
    assert np.abs(edited[1] - edited[0]).max() > 1e-3
    # The saved folder reads back (as `edit --inversion` does).
    model.save(str(tmp_path / "inv"), items)
    back = model.load_inversion(str(tmp_path / "inv"))
    assert [b.stem for b in back] == [it.stem for it in items]
    np.testing.assert_array_equal(back[2].codes, items[2].codes)
    with pytest.raises(ValueError, match="nope.png"):
        model.invert([str(tmp_path / "nope.png")], n_iters=N_ITERS)


def test_render_only_model(ckpts, model, photos):
    renderer = hyperstyle_jax.load(ckpts[0])
    [it] = model.invert(photos[0], n_iters=N_ITERS)
    np.testing.assert_allclose(renderer.render(it.codes, it.deltas), it.reconstruction,
                               atol=1e-4)
    with pytest.raises(ValueError, match="without a W-encoder"):
        renderer.invert(photos[0])


def test_stepwise_inverter_equals_batched(model, ref):
    x, ref = ref
    steps = StepwiseInverter(model.inverter)
    state = steps.start(images.to_float(x[1:2]))
    np.testing.assert_allclose(state.image(), ref["init"][1:2], atol=1e-4)
    for k in range(N_ITERS):
        state = steps.step(state)
        np.testing.assert_allclose(state.image(), ref["images"][k][1:2], atol=1e-4)
    codes, deltas = state.result()
    np.testing.assert_allclose(codes, ref["codes"][1], atol=1e-5)
    for j, d in enumerate(ref["deltas"]):
        if d is not None:
            np.testing.assert_allclose(deltas[j], d[1], atol=1e-5)


def _pads_and_chunks(batch_size: int, max_devices=None):
    """5 examples through a batch-`batch_size` function: full chunks + a padded one,
    outputs cut along out_axes; None leaves pass through; shared arguments reach every
    chunk. Returns the compiled function."""
    def fn(w, x, ds, s):
        return {"a": x * w + s, "b": jnp.stack([x.sum(1), x.sum(1)]), "c": w,
                "d": [None if d is None else d * 2 for d in ds]}

    def f32(*shape):
        return jax.ShapeDtypeStruct(shape, jnp.float32)

    f = compile_for_batch(fn, batch_size, bound=(np.float32(2),),
                          batched=(f32(3), [None, f32(2)]), shared=(f32(),),
                          out_axes={"a": 0, "b": 1, "c": None, "d": 0},
                          max_devices=max_devices)
    x = np.arange(15, dtype=np.float32).reshape(5, 3)
    out = f(x, [None, np.ones((5, 2), np.float32)], np.float32(1))
    np.testing.assert_array_equal(out["a"], x * 2 + 1)
    np.testing.assert_array_equal(out["b"], np.stack([x.sum(1)] * 2))
    assert out["c"] == 2 and out["d"][0] is None
    np.testing.assert_array_equal(out["d"][1], np.full((5, 2), 2, np.float32))
    return f


def test_compile_for_batch_pads_and_chunks():
    _pads_and_chunks(3)


def test_compile_for_batch_on_two_devices():
    """In a process with 2 CPU devices, a batch of 4 runs as one program per device
    (`parallel.per_device`) with the same results, outputs split along out_axes (axis 1
    included); max_devices=1 keeps it on one device; an odd batch stays on one."""
    import subprocess
    import sys
    code = (
        "from hyperstyle_jax import parallel; parallel.use_cpu_devices(2)\n"
        "from tests.test_api import _pads_and_chunks\n"
        "n = lambda f: f.sharded.mesh.devices.size\n"
        "assert n(_pads_and_chunks(4)) == 2\n"
        "assert n(_pads_and_chunks(4, max_devices=1)) == 1\n"
        "assert n(_pads_and_chunks(3)) == 1\n"
        "print('OK')\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]
