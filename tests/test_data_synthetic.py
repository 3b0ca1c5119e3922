"""Synthetic source: every image is the generator's output for its own latent and offsets.

Checked against the generator called directly (batch of 2, offsets broadcast by hand from
the stored per-channel values), against a second render with another batch size and no
cache (determinism), and through the grain pipeline. Tiny generator, one render each.
"""
import numpy as np
import pytest


def _config(tmp_path, **kw):
    from hyperstyle_jax.data import default_data_config

    c = default_data_config()
    c.generator.size, c.generator.style_dim, c.generator.n_mlp = 16, 16, 1
    c.generator.channels = ((4, 16), (8, 16), (16, 8))
    c.num_train, c.num_eval, c.render_batch = 10, 3, 4
    c.perturb_std, c.perturb_mode, c.truncation = 0.2, "out_in", 0.7
    c.image_hw = (8, 8)  # 16 -> 8: face_pool is a 2x2 mean
    c.data_dir = str(tmp_path)
    for k, v in kw.items():
        setattr(c, k, v)
    return c


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    from hyperstyle_jax.data import synthetic

    c = _config(tmp_path_factory.mktemp("syn"))
    return c, synthetic.synthetic_data(c)


def test_shapes_and_offsets(rendered):
    from hyperstyle_jax.data import synthetic

    c, data = rendered
    gen = data["generator"]
    layers = synthetic.perturbed_layers(gen.config)
    assert layers == [0, 2, 3, 5, 6]  # every non-toRGB conv of a 16 px generator
    tr = data["train"]
    assert tr["image"].shape == (10, 8, 8, 3) and tr["latent"].shape == (10, 16)
    assert data["eval"]["image"].shape == (3, 8, 8, 3)
    assert sorted(tr["deltas"], key=int) == [str(j) for j in layers]
    allv = np.concatenate([d.ravel() for d in tr["deltas"].values()])
    for j in layers:  # one value per (out, in) pair
        out_ch, in_ch = gen.config.delta_shapes()[j][:2]
        assert tr["deltas"][str(j)].shape == (10, out_ch, in_ch)
    assert abs(allv.std() - 0.2) < 0.03 and abs(allv.mean()) < 0.03
    # Random generator rescaled to pixel std ~0.5 (measured on unperturbed images).
    assert 0.3 < tr["image"].std() < 0.8
    # Truncation 0.7 pulls W towards latent_avg.
    assert np.all(np.isfinite(tr["image"])) and gen.latent_avg.shape == (16,)
    expanded = synthetic.expand_deltas({k: v[:2] for k, v in tr["deltas"].items()}, gen.config)
    assert expanded[1] is None and expanded[0].shape == (2, 16, 16, 3, 3)
    e = np.asarray(expanded[0])
    assert np.all(e == e[..., :1, :1]) and not np.all(e == e[:, :1, :1])  # constant on k x k
    inn = synthetic.expand_deltas({"2": np.ones((2, 1, 16))}, gen.config)[2]
    assert inn.shape == (2, 16, 16, 3, 3)  # mode 'in': [B, 1, in] broadcast over 'out'
    assert synthetic.compact_delta_shape(gen.config, 2, "in") == (1, 16)


def test_images_are_generator_outputs(rendered):
    """Re-render images 3 and 7 with the generator directly; Δ=0 gives another image."""
    import jax
    import jax.numpy as jnp

    from hyperstyle_jax.models.pooling import adaptive_avg_pool2d
    from hyperstyle_jax.models.stylegan2 import Generator

    c, data = rendered
    gen, tr = data["generator"], data["train"]
    idx = np.array([3, 7])
    shapes = gen.config.delta_shapes()
    deltas = [None] * gen.config.n_convs
    for j, d in tr["deltas"].items():
        o, i, k, _ = shapes[int(j)]
        deltas[int(j)] = np.broadcast_to(d[idx][:, :, :, None, None], (2, o, i, k, k))

    @jax.jit
    def run(w, deltas):
        img, _ = Generator(gen.config).apply(gen.variables, w, input_space="w",
                                              weights_deltas=deltas)
        return adaptive_avg_pool2d(img, (8, 8))

    got = np.asarray(run(jnp.asarray(tr["latent"][idx]), deltas))
    np.testing.assert_allclose(got, tr["image"][idx], atol=1e-5)
    zero = [None if d is None else np.zeros_like(d) for d in deltas]
    plain = np.asarray(run(jnp.asarray(tr["latent"][idx]), zero))
    assert np.abs(plain - tr["image"][idx]).max() > 0.05  # offsets matter


def test_deterministic_and_cached(rendered, tmp_path):
    """Cache round trip is exact; a fresh render (no memo, no cache) is bitwise equal."""
    import jax

    from hyperstyle_jax.data import synthetic

    c, data = rendered
    synthetic._MEMO.clear()
    cached = synthetic.synthetic_data(c)  # read from <data_dir>/synthetic/*.npz
    assert cached is not data
    np.testing.assert_array_equal(cached["train"]["image"], data["train"]["image"])
    np.testing.assert_array_equal(cached["eval"]["latent"], data["eval"]["latent"])
    synthetic._MEMO.clear()
    again = synthetic.synthetic_data(_config(tmp_path, cache=False))
    assert again is not cached and not (tmp_path / "synthetic").exists()
    for split in ("train", "eval"):
        for a, b in zip(jax.tree.leaves(again[split]), jax.tree.leaves(data[split])):
            np.testing.assert_array_equal(a, b)
    # Per-image randomness does not depend on how images are batched.
    z, d = synthetic.draw(c, data["generator"].config, "train", [7, 3])
    z_all, d_all = synthetic.draw(c, data["generator"].config, "train", range(10))
    np.testing.assert_array_equal(z, z_all[[7, 3]])
    np.testing.assert_array_equal(d["5"], data["train"]["deltas"]["5"][[7, 3]])


def test_through_the_pipeline(rendered):
    from hyperstyle_jax.data import make_eval_iterator, make_train_iterator

    c, data = rendered
    tr = data["train"]
    halves = [next(make_train_iterator(c, global_batch_size=4, process_index=p,
                                       process_count=2, seed=5)) for p in range(2)]
    whole = next(make_train_iterator(c, global_batch_size=4, seed=5))
    for key in ("image", "latent", "index"):
        np.testing.assert_array_equal(whole[key], np.concatenate([h[key] for h in halves]))
    np.testing.assert_array_equal(whole["image"], tr["image"][whole["index"]])  # no flip
    np.testing.assert_array_equal(whole["latent"], tr["latent"][whole["index"]])
    np.testing.assert_array_equal(whole["deltas"]["5"], tr["deltas"]["5"][whole["index"]])
    batches = list(make_eval_iterator(c, global_batch_size=2))
    assert len(batches) == 2 and batches[-1]["mask"].tolist() == [True, False]
    bad = c.copy_and_resolve_references()
    bad.perturb_mode = "out"
    with pytest.raises(ValueError, match="perturb_mode='out'.*demodulation"):
        make_train_iterator(bad, global_batch_size=2)
    bad = c.copy_and_resolve_references()
    bad.flip = True
    with pytest.raises(ValueError, match="flip=True with data.source='synthetic'"):
        make_train_iterator(bad, global_batch_size=2)
