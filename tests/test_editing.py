"""Editing library vs the official editors (fixture 09_editing: FaceEditor.apply_interfacegan,
CarsEditor.apply_ganspace, the notebook's interpolation) on the 05 narrow model, the official
InterFaceGAN files (fixture 08), errors, and the GANSpace PCA tool on small random generators.
Tolerances: fixtures README §9 (images atol 2e-4, codes 1e-5)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import nhwc

from hyperstyle_jax.editing import EditError, ganspace_pca
from hyperstyle_jax.editing import ganspace as gs
from hyperstyle_jax.editing import interfacegan as ig
from hyperstyle_jax.editing import interpolate as ip
from hyperstyle_jax.editing.render import EditRenderer
from hyperstyle_jax.inference import load_renderer

HERE = os.path.join(os.path.dirname(__file__), "fixtures")
F09 = os.path.join(HERE, "09_editing")
F08 = os.path.join(HERE, "08_interfacegan_directions")
IMG_ATOL, CODE_ATOL = 2e-4, 1e-5


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(os.path.join(F09, "editing_io.npz")))


@pytest.fixture(scope="module")
def hs_dir(e2e_checkpoints):
    return e2e_checkpoints.hyperstyle()


@pytest.fixture(scope="module")
def renderer(hs_dir):
    return EditRenderer(load_renderer(hs_dir), batch_size=4)


def image_deltas(ref, renderer, i):
    """Image i's unbatched accumulated deltas from the fixture, None at untuned layers."""
    shapes = renderer.inverter.model.tuned_delta_shapes()
    return [None if s is None else ref[f"deltas_layer{j:02d}"][i] for j, s in enumerate(shapes)]


def maxerr(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def test_interfacegan_parity(ref, renderer):
    unit = ig.check_direction(ig.load_direction(os.path.join(F09, "interfacegan_random_unit.pt")),
                              12, 64)
    pose = ig.check_direction(ig.load_direction(os.path.join(F09, "interfacegan_pose_like.pt")),
                              12, 64)
    np.testing.assert_array_equal(unit, ref["interfacegan_unit_direction"])
    np.testing.assert_array_equal(pose, ref["interfacegan_pose_like_direction"])
    factors = ig.official_factors(-2, 3)  # factor_range=(-2, 3): 3 excluded
    assert factors == list(ref["interfacegan_unit_factors"])
    assert ig.official_factors(1, 2) == list(ref["interfacegan_pose_factors"])
    for i in range(2):
        d = image_deltas(ref, renderer, i)
        codes, d_out = ig.apply(ref["codes"][i], d, unit, factors)
        assert d_out[0] is d[0]  # the image's own deltas for every factor
        np.testing.assert_allclose(codes, ref["interfacegan_unit_latents"][i], atol=CODE_ATOL)
        np.testing.assert_allclose(renderer(codes, d), nhwc(ref["interfacegan_unit_images"][i]),
                                   atol=IMG_ATOL)
        codes, _ = ig.apply(ref["codes"][i], d, pose, [1])
        np.testing.assert_allclose(codes, ref["interfacegan_pose_latents"][i], atol=CODE_ATOL)
        np.testing.assert_allclose(renderer(codes, d), nhwc(ref["interfacegan_pose_images"][i]),
                                   atol=IMG_ATOL)
    # Every factor count, direction and image went through one AOT-compiled function.
    assert list(renderer._compiled) == ["shared"]


def test_ganspace_parity(ref, renderer):
    pca = gs.check_pca(gs.load_pca(os.path.join(F09, "ganspace_random_pca.pt")), 64)
    for k in ("mean", "std", "comp"):
        np.testing.assert_array_equal(pca[k], ref[f"ganspace_pca_{k}"])
    dirs = [gs.named_direction("Pose II"), gs.named_direction("color")]
    np.testing.assert_array_equal(np.asarray(dirs, np.float32), ref["ganspace_directions"])
    dirs = [gs.check_direction(pca, d, 12) for d in dirs]
    for i in range(2):
        d = image_deltas(ref, renderer, i)
        latent = ref["codes"][i]
        for k, (idx, _, _, strength) in enumerate(dirs):
            np.testing.assert_allclose(gs.get_delta(pca, latent, idx, strength),
                                       ref["ganspace_deltas"][i, k], atol=CODE_ATOL)
        edited, _ = gs.apply(latent, d, pca, dirs)
        codes = np.concatenate([latent[None], edited])  # [unedited, Pose II, Color]
        np.testing.assert_allclose(codes, ref["ganspace_latents"][i], atol=CODE_ATOL)
        images = renderer(codes, d)
        np.testing.assert_allclose(images, nhwc(ref["ganspace_images_full"][i]), atol=IMG_ATOL)
        np.testing.assert_allclose(gs.official_crop(images),
                                   nhwc(ref["ganspace_images_official_crop"][i]), atol=IMG_ATOL)
    assert gs.official_crop(images).shape[1] == 64  # rows 64..127 of 128


def test_interpolation_parity(ref, renderer):
    shapes = renderer.inverter.model.tuned_delta_shapes()
    pair = [None if s is None else ref[f"deltas_layer{j:02d}"] for j, s in enumerate(shapes)]
    alphas = [float(a) for a in ref["interp_alphas"]]
    assert alphas == [0.5, 0.25]
    codes, deltas = ip.apply(ref["codes"], pair, alphas)
    j = next(j for j, s in enumerate(shapes) if s is not None)
    np.testing.assert_allclose(deltas[j][1], 0.75 * pair[j][0] + 0.25 * pair[j][1], atol=1e-6)
    np.testing.assert_allclose(renderer(codes, deltas), nhwc(ref["interp_images"]), atol=IMG_ATOL)
    # alpha 0 / 1 are the two reconstructions, exactly.
    c01, d01 = ip.apply(ref["codes"], pair, [0.0, 1.0])
    np.testing.assert_array_equal(c01, ref["codes"])
    np.testing.assert_array_equal(d01[j], pair[j])


def test_official_interfacegan_files_load_and_apply():
    from hyperstyle_jax.models.stylegan2 import Generator, GeneratorConfig, random_init

    rng = np.random.RandomState(0)
    codes18 = rng.randn(18, 512).astype(np.float32)
    for name, shape, norm in [("age", (1, 512), 1.0), ("smile", (1, 512), 1.0),
                              ("pose", (1, 18, 512), 3 * np.sqrt(2))]:
        d = ig.load_direction(os.path.join(F08, f"{name}.pt"))  # pose.pt was saved from CUDA
        np.testing.assert_array_equal(d, np.load(os.path.join(F08, f"{name}.npy")))
        assert d.shape == shape and abs(np.linalg.norm(d) - norm) < 1e-3
        d = ig.check_direction(d, 18, 512, name)
        edited, _ = ig.apply(codes18, [None], d, [-5, 4])
        row = d.reshape(-1, 512)
        np.testing.assert_allclose(edited[1] - codes18, 4 * np.broadcast_to(row, (18, 512)),
                                   atol=1e-5)
    # Rendered on a small random 512-wide generator, age and smile change the image.
    cfg = GeneratorConfig(size=16, style_dim=512, n_mlp=2, channels=((4, 8), (8, 8), (16, 8)))
    gen, variables = Generator(cfg), random_init(cfg, 1)
    render = jax.jit(lambda v, c: gen.apply(v, c, input_space="w+")[0])
    codes6 = codes18[:cfg.n_latent]
    for name in ("age", "smile"):
        d = ig.check_direction(ig.load_direction(os.path.join(F08, f"{name}.pt")),
                               cfg.n_latent, 512, name)
        edited, _ = ig.apply(codes6, [None] * cfg.n_convs, d, [-3, 0, 3])
        img = np.asarray(render(variables, jnp.asarray(edited)))
        assert np.abs(img[0] - img[1]).mean() > 1e-3 and np.abs(img[2] - img[1]).mean() > 1e-3


def test_wrong_width_one_line():
    path = os.path.join(F08, "age.pt")
    with pytest.raises(EditError) as e:
        ig.check_direction(ig.load_direction(path), 12, 64, path)
    msg = str(e.value)
    assert "\n" not in msg and path in msg and "512" in msg and "64" in msg, msg
    with pytest.raises(EditError, match=r"18 W\+ rows.*has 12"):
        ig.check_direction(ig.load_direction(os.path.join(F08, "pose.npy")), 12, 512, "pose")


def test_ganspace_errors():
    pca = gs.check_pca(gs.load_pca(os.path.join(F09, "ganspace_random_pca.pt")), 64)
    with pytest.raises(EditError, match=r"component 80 out of range.*80 components \(0\.\.79\)"):
        gs.check_direction(pca, (80, 0, 5, 1.0), 12, "pca.pt")
    with pytest.raises(EditError, match=r"rows \[3, 13\) out of range"):
        gs.check_direction(pca, (0, 3, 13, 1.0), 12)
    with pytest.raises(EditError, match="PCA of width 64.*512 wide"):
        gs.check_pca(pca, 512, "pca.pt")
    with pytest.raises(EditError, match="unknown GANSpace edit"):
        gs.named_direction("wheels")


def _samples(cfg, params, n, batch, seed):
    """The tool's own z -> w draws, recomputed outside it."""
    from hyperstyle_jax.models.stylegan2 import Generator

    gen, key = Generator(cfg), jax.random.key(seed)
    out = [gen.apply({"params": params},
                     jax.random.normal(jax.random.fold_in(key, i), (batch, cfg.style_dim)),
                     method=Generator.mapping) for i in range(n // batch)]
    return np.asarray(jnp.concatenate(out), np.float64)


def test_ganspace_pca_tool(tmp_path):
    import torch

    from hyperstyle_jax.checkpoints import KIND_STYLEGAN2, save_converted
    from hyperstyle_jax.models.stylegan2 import GeneratorConfig, random_init

    cfg = GeneratorConfig(size=8, style_dim=32, n_mlp=3, channels=((4, 8), (8, 8)))
    variables = random_init(cfg, 3)
    gdir = str(tmp_path / "g")
    save_converted(gdir, dict(variables), cfg.to_dict(), KIND_STYLEGAN2)
    out = str(tmp_path / "pca.pt")
    assert ganspace_pca.main(["--generator", gdir, "--out", out, "--n_samples", "8000",
                              "--n_components", "12", "--batch_size", "2000"]) == 0
    raw = torch.load(out, weights_only=True)  # the official cars_pca.pt structure
    assert sorted(raw) == ["comp", "mean", "std"]
    assert tuple(raw["mean"].shape) == (1, 32) and tuple(raw["std"].shape) == (12,)
    assert tuple(raw["comp"].shape) == (12, 1, 32) and raw["comp"].dtype == torch.float32
    pca = gs.check_pca(gs.load_pca(out), 32, out)
    comp = pca["comp"][:, 0]
    np.testing.assert_allclose(comp @ comp.T, np.eye(12), atol=1e-5)
    assert np.all(np.diff(pca["std"]) < 0) and pca["std"][-1] > 0
    # Same as PCA by SVD of the very same samples (up to each component's sign).
    w = _samples(cfg, variables["params"], 8000, 2000, 0)
    np.testing.assert_allclose(pca["mean"][0], w.mean(0), atol=1e-5)
    _, s, vt = np.linalg.svd(w - w.mean(0), full_matrices=False)
    np.testing.assert_allclose(pca["std"], s[:12] / np.sqrt(len(w) - 1), rtol=1e-4)
    cos = np.abs(np.sum(comp * vt[:12], axis=1))
    np.testing.assert_allclose(cos[:6], 1.0, atol=1e-3)  # well-separated top components


def test_ganspace_tool_components_move_the_image(ref, renderer, hs_dir, tmp_path):
    """Components computed for the fixture generator (64-wide W) edit its images: a target
    coordinate far from the image's moves it; the image's own coordinate leaves it alone."""
    out = str(tmp_path / "pca.npz")
    assert ganspace_pca.main(["--generator", hs_dir, "--out", out, "--n_samples", "20000",
                              "--n_components", "10", "--batch_size", "5000"]) == 0
    pca = gs.check_pca(gs.load_pca(out), 64, out)
    latent, d = ref["codes"][0], image_deltas(ref, renderer, 0)
    own = float(np.sum((latent[0] - pca["mean"][0]) * pca["comp"][0, 0]) / pca["std"][0])
    dirs = [gs.check_direction(pca, (0, 0, 12, s), 12) for s in (own - 3, own, own + 3)]
    edited, _ = gs.apply(latent, d, pca, dirs)
    images = renderer(np.concatenate([latent[None], edited]), d)
    recon = images[0]
    assert maxerr(images[2], recon) < 1e-4  # own coordinate: delta 0
    for k in (1, 3):
        assert np.abs(images[k] - recon).mean() > 0.05, np.abs(images[k] - recon).mean()
    assert np.abs(images[1] - images[3]).mean() > 0.05
