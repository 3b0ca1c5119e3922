"""End to end on a converted NVIDIA StyleGAN2-ADA generator (the conditional 32 px fixture).

`tools/convert_weights.py stylegan2_ada cond32.pkl` -> `generate --class`; a few steps of
the W-encoder (with its latent discriminator, whose real codes need the class label) and of
HyperStyle (with the image discriminator) on synthetic data rendered by that generator for
`config.data.class_index`; then `invert` and `edit interpolate` with the exports.
"""
import importlib.util
import json
import os

import numpy as np
import pytest
from helpers import ROOT

from hyperstyle_jax import edit, generate, invert
from hyperstyle_jax.data.synthetic import synthetic_data
from hyperstyle_jax.train import train_and_evaluate
from hyperstyle_jax.training.config import base_config, check_config
from hyperstyle_jax.utils.images import save_image, to_uint8

PKL = os.path.join(ROOT, "tests", "fixtures", "14_stylegan2_ada", "cond32.pkl")
CLASS = 3


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    spec = importlib.util.spec_from_file_location(
        "convert_weights", os.path.join(ROOT, "tools", "convert_weights.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path_factory.mktemp("ada") / "cond32"
    assert mod.main(["stylegan2_ada", PKL, str(out)]) == 0
    return out


def _config(tmp, generator_dir, task, steps=2):
    c = base_config()
    c.task = task
    c.batch_size = c.eval_batch_size = 4
    c.n_iters_per_batch = 1
    c.total_steps = steps
    c.log_every_steps = 1
    c.val_every_steps = c.ckpt_every_steps = 1000
    c.num_grid_images = 0
    c.max_val_batches = 1
    c.optim.name, c.optim.lr = "adam", 1e-3
    c.loss.l2_lambda, c.loss.lpips_lambda = 1.0, 0.0
    c.checkpoints.generator = str(generator_dir)
    c.data.generator_dir = str(generator_dir)
    c.data.class_index = CLASS
    c.data.image_hw = (32, 32)
    c.data.num_train, c.data.num_eval = 8, 4
    c.data.render_batch = 4
    c.data.data_dir = str(tmp / "data")
    c.data.num_threads = 0
    c.model.feedback_hw = (32, 32)
    c.model.per_sample = "map"
    c.model.layers_to_tune = "0,2,3"          # the generator's channels are 32 throughout
    c.model.hypernet = dict(stem_width=8, stages=((8, 1, 2),), hypernet_z_dim=8,
                            hypernet_in_size=32, hypernet_out_size=32, hyper_block_inner_c=8,
                            refine_block_inner_c=8, refine_block_out_c=8, spatial=8)
    c.w_encoder.input_width, c.w_encoder.stages = 8, ((16, 1),)
    c.w_encoder.w_norm_lambda = 0.1            # the method summary's W-mean regulariser
    c.w_encoder.disc_lambda, c.w_encoder.disc_layers = 0.1, 2
    return c


def test_generate_needs_a_class_for_a_conditional_generator(converted, tmp_path, capsys):
    out = tmp_path / "gen"
    assert generate.main(["--checkpoint", str(converted), "--seeds", "0-1", "--class",
                          str(CLASS), "--out", str(out), "--truncation", "0.7"]) == 0
    assert json.load(open(out / "info.json"))["class"] == CLASS
    other = tmp_path / "gen_other"
    assert generate.main(["--checkpoint", str(converted), "--seeds", "0-1", "--class", "4",
                          "--out", str(other), "--save_npy", "--truncation", "0.7"]) == 0
    assert generate.main(["--checkpoint", str(converted), "--seeds", "0-1", "--class",
                          str(CLASS), "--out", str(out), "--save_npy",
                          "--truncation", "0.7"]) == 0
    a, b = np.load(out / "seed0000.npy"), np.load(other / "seed0000.npy")
    assert np.max(np.abs(a - b)) > 1e-3             # the class changes the image
    capsys.readouterr()
    assert generate.main(["--checkpoint", str(converted), "--seeds", "0",
                          "--out", str(tmp_path / "x")]) == 2
    assert "pass --class K" in capsys.readouterr().err
    assert generate.main(["--checkpoint", str(converted), "--seeds", "0", "--class", "10",
                          "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "--class 10: out of range" in err and len(err.strip().splitlines()) == 1


def test_a_conditional_generator_needs_its_class_in_the_config(converted, tmp_path):
    c = _config(tmp_path, converted, "w_encoder")
    c.data.class_index = -1
    check_config(c)
    with pytest.raises(ValueError, match=r"config.data.class_index=-1: the generator is "
                                         r"conditional with 10 classes"):
        synthetic_data(c.data)
    c.data.class_index = 10
    with pytest.raises(ValueError, match=r"set it to a class in \[0, 10\)"):
        synthetic_data(c.data)


def test_train_w_encoder_and_hyperstyle_then_invert_and_edit(converted, tmp_path):
    w_dir = tmp_path / "w_encoder"
    c = _config(tmp_path, converted, "w_encoder")
    check_config(c)
    result = train_and_evaluate(c, str(w_dir), progress=False)
    assert result["status"] == "done" and result["step"] == 2
    assert (w_dir / "export" / "config.json").exists()

    h_dir = tmp_path / "hyperstyle"
    c = _config(tmp_path, converted, "hyperstyle")
    c.checkpoints.w_encoder = str(w_dir / "export")
    c.loss.adv_lambda = 0.1                    # the method summary's image discriminator
    c.discriminator.channels = ((4, 8), (8, 8), (16, 8), (32, 8))
    check_config(c)
    result = train_and_evaluate(c, str(h_dir), progress=False)
    assert result["status"] == "done" and result["step"] == 2
    rows = [json.loads(line) for line in open(h_dir / "metrics.jsonl")]
    train = [r for r in rows if r["split"] == "train"]
    assert all(np.isfinite(r["d_loss"]) and np.isfinite(r["loss_adv"]) for r in train)

    images = tmp_path / "images"
    images.mkdir()
    for i, img in enumerate(synthetic_data(c.data)["eval"]["image"][:2]):
        save_image(str(images / f"img{i}.png"), to_uint8(img))
    inv = tmp_path / "inv"
    assert invert.main(["--checkpoint", str(h_dir / "export"), "--w_encoder",
                        str(w_dir / "export"), "--images", str(images), "--out", str(inv),
                        "--n_iters", "1", "--batch_size", "2"]) == 0
    assert any(p.endswith(".png") for _, _, files in os.walk(inv) for p in files)
    out = tmp_path / "edit"
    assert edit.main(["interpolate", "--checkpoint", str(h_dir / "export"), "--w_encoder",
                      str(w_dir / "export"), "--images", str(images), "--out", str(out),
                      "--n_iters", "1", "--batch_size", "2", "--alphas", "0.5"]) == 0
    assert any(p.endswith(".png") for _, _, files in os.walk(out) for p in files)
