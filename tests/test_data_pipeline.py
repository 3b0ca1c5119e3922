"""The grain pipeline over a built TFDS dataset: shards, shuffling, flips, resume, no TF.

Invariants checked (no stored numbers): per-process shards are disjoint and cover the
epoch; the global batch does not depend on the process count; a restored iterator
continues exactly; a training image is its eval image or that image mirrored; eval images
equal PIL's bilinear resize of the stored file, scaled to [-1, 1].
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

N = 22
HW = (12, 16)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    from hyperstyle_jax.data import default_data_config
    from hyperstyle_jax.data.build import build_dataset

    src = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(0)
    for i in range(N):  # asymmetric content, so a flip always changes the image
        img = rng.integers(0, 256, (18, 24, 3), dtype=np.uint8)
        Image.fromarray(img).save(src / f"{i:03d}.png")
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    build_dataset("ffhq", str(src), data_dir, progress=False)
    c = default_data_config()
    c.source, c.name, c.data_dir = "tfds", "ffhq", data_dir
    c.eval_split = "train"
    c.image_hw = HW
    return c


def _batches(it, n=None):
    out = []
    for b in it:
        out.append(b)
        if n is not None and len(out) == n:
            break
    return out


@pytest.fixture(scope="module")
def eval_images(cfg):
    from hyperstyle_jax.data import make_eval_iterator

    imgs = {}
    for b in make_eval_iterator(cfg, global_batch_size=N):
        for img, i in zip(b["image"], b["index"]):
            imgs[int(i)] = img
    assert sorted(imgs) == list(range(N))
    return imgs


@pytest.mark.parametrize("global_batch", [2, 4])
def test_two_processes_disjoint_and_covering(cfg, global_batch):
    from hyperstyle_jax.data import make_train_iterator

    def run(p, count):
        return _batches(make_train_iterator(cfg, global_batch_size=global_batch,
                                            process_index=p, process_count=count, seed=7,
                                            num_epochs=2))

    single = run(0, 1)
    shards = [run(p, 2) for p in range(2)]
    steps = N // global_batch
    assert len(single) == 2 * steps and all(len(s) == 2 * steps for s in shards)
    for epoch in range(2):
        per_proc = [np.concatenate([b["index"] for b in s[epoch * steps:(epoch + 1) * steps]])
                    for s in shards]
        assert not set(per_proc[0]) & set(per_proc[1])  # disjoint
        seen = np.concatenate(per_proc)
        assert len(seen) == len(set(seen)) == steps * global_batch  # each record at most once
        if N % global_batch == 0:
            assert sorted(seen) == list(range(N))  # exactly once per epoch
    # The global batch is the same whatever the process count: indices and pixels.
    for s, b in enumerate(single):
        both = [shards[0][s], shards[1][s]]
        np.testing.assert_array_equal(b["index"], np.concatenate([x["index"] for x in both]))
        np.testing.assert_array_equal(b["image"], np.concatenate([x["image"] for x in both]))
        assert b["image"].shape == (global_batch, *HW, 3)
        assert shards[0][s]["image"].shape == (global_batch // 2, *HW, 3)
    # A new permutation each epoch.
    e0 = np.concatenate([b["index"] for b in single[:steps]])
    e1 = np.concatenate([b["index"] for b in single[steps:]])
    assert not np.array_equal(e0, e1)


def test_flip_and_transforms(cfg, eval_images):
    from hyperstyle_jax.data import make_train_iterator

    flips = []
    for b in _batches(make_train_iterator(cfg, global_batch_size=2, seed=1, num_epochs=2)):
        for img, i in zip(b["image"], b["index"]):
            ref = eval_images[int(i)]
            if np.array_equal(img, ref):
                flips.append(False)
            else:
                np.testing.assert_array_equal(img, ref[:, ::-1])
                flips.append(True)
    assert len(flips) == 2 * N and 0.25 < np.mean(flips) < 0.75
    cfg2 = cfg.copy_and_resolve_references()
    cfg2.flip = False
    for b in _batches(make_train_iterator(cfg2, global_batch_size=2, seed=1), 4):
        for img, i in zip(b["image"], b["index"]):
            np.testing.assert_array_equal(img, eval_images[int(i)])


def test_eval_images_match_pil(cfg, eval_images):
    import io

    import tensorflow_datasets as tfds

    ds = tfds.data_source("ffhq", split="train", data_dir=cfg.data_dir, download=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
    for i in (0, 5, N - 1):
        pil = Image.open(io.BytesIO(ds[i]["image"])).convert("RGB")
        ref = np.asarray(pil.resize((HW[1], HW[0]), Image.BILINEAR), np.float32) / 127.5 - 1
        np.testing.assert_allclose(eval_images[i], ref, atol=1e-6)


def test_resume_exactly(cfg):
    from hyperstyle_jax.data import make_train_iterator

    kw = dict(global_batch_size=4, seed=3)
    full = _batches(make_train_iterator(cfg, **kw), 9)  # 5 steps/epoch: crosses an epoch
    it = make_train_iterator(cfg, **kw)
    _batches(it, 3)
    state = json.loads(json.dumps(it.get_state()))
    assert state["step"] == 3
    resumed = make_train_iterator(cfg, **kw)
    resumed.set_state(state)
    for want, got in zip(full[3:], _batches(resumed, 6)):
        np.testing.assert_array_equal(want["index"], got["index"])
        np.testing.assert_array_equal(want["image"], got["image"])
    _batches(it, 4)  # the same iterator, moved on and then rewound, continues identically
    it.set_state(state)
    np.testing.assert_array_equal(next(it)["image"], full[3]["image"])
    # The same state resumes under two processes: their blocks make the same global batch.
    halves = []
    for p in range(2):
        r = make_train_iterator(cfg, process_index=p, process_count=2, **kw)
        r.set_state(state)
        halves.append(_batches(r, 2))
    for s in range(2):
        np.testing.assert_array_equal(
            full[3 + s]["image"], np.concatenate([halves[0][s]["image"], halves[1][s]["image"]]))
    other = make_train_iterator(cfg, global_batch_size=4, seed=4)
    with pytest.raises(ValueError, match="seed=3.*seed=4"):
        other.set_state(state)


def test_eval_padding_and_drop(cfg):
    from hyperstyle_jax.data import make_eval_iterator

    shards = [_batches(make_eval_iterator(cfg, global_batch_size=8, process_index=p,
                                          process_count=2)) for p in range(2)]
    assert [len(s) for s in shards] == [3, 3]  # ceil(22 / 8), same count on every process
    idx = np.concatenate([np.stack([s[k]["index"] for s in shards]).ravel() for k in range(3)])
    mask = np.concatenate([np.stack([s[k]["mask"] for s in shards]).ravel() for k in range(3)])
    np.testing.assert_array_equal(idx[mask], np.arange(N))  # stored order, once
    assert mask.sum() == N and not mask[N:].any()
    dropped = _batches(make_eval_iterator(cfg, global_batch_size=8, drop_remainder=True))
    assert len(dropped) == 2 and all(b["mask"].all() for b in dropped)


def test_errors_name_the_values(cfg, tmp_path):
    from hyperstyle_jax.data import make_eval_iterator, make_train_iterator

    with pytest.raises(ValueError, match="global_batch_size=6 is not divisible by "
                                         "process_count=4"):
        make_train_iterator(cfg, global_batch_size=6, process_index=0, process_count=4)
    bad = cfg.copy_and_resolve_references()
    bad.data_dir = str(tmp_path)
    with pytest.raises(
        FileNotFoundError, match="dataset 'ffhq' not found.*hyperstyle_jax.data.build"
    ):
        make_train_iterator(bad, global_batch_size=2)
    bad = cfg.copy_and_resolve_references()
    bad.eval_split = "validation"
    with pytest.raises(ValueError, match="no split 'validation'; it has: train"):
        make_eval_iterator(bad, global_batch_size=2)
    bad = cfg.copy_and_resolve_references()
    bad.image_hw = (0, 16)
    with pytest.raises(ValueError, match=r"data.image_hw=\(0, 16\)"):
        make_train_iterator(bad, global_batch_size=2)


def _run_without_tf(code, tmp_path):
    """Run `code` in a fresh interpreter where `tensorflow` is importable but fake.

    The fake package shadows any real TensorFlow, so the check means the same on machines
    with and without it: importing it (even lazily, even via a probe-then-import) would put
    'tensorflow' into sys.modules.
    """
    fake = tmp_path / "fake_tf" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("__version__ = '0.0.0-fake'\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}
    check = ("\nimport sys\nassert 'tensorflow' not in sys.modules, 'TensorFlow was imported'"
             "\nprint('ok')\n")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code) + check],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_no_tensorflow_at_run_time(cfg, tmp_path):
    """The loader, in a subprocess: 'tensorflow' never enters sys.modules."""
    _run_without_tf(f"""
        from hyperstyle_jax.data import default_data_config, make_train_iterator
        c = default_data_config()
        c.source, c.name, c.data_dir, c.image_hw = 'tfds', 'ffhq', {cfg.data_dir!r}, (12, 16)
        b = next(make_train_iterator(c, global_batch_size=2))
        assert b['image'].shape == (2, 12, 16, 3), b['image'].shape
    """, tmp_path)


def test_no_tensorflow_when_building(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(src / f"{i}.png")
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(src / "gray.jpg")  # converted
    _run_without_tf(f"""
        from hyperstyle_jax.data.build import build_dataset
        rep = build_dataset('ffhq', {str(src)!r},
                            {str(tmp_path / 'tfds')!r}, progress=False)
        assert rep.written == {{'train': 4}} and len(rep.converted) == 1, rep
    """, tmp_path)
