"""The `invert` folder format (`hyperstyle_jax.inversion_files`): a round trip, folders
written before latents.npz still read, and one clear line for a missing or misshaped file."""
import os

import numpy as np
import pytest

from hyperstyle_jax import inversion_files
from hyperstyle_jax.editing import EditError
from hyperstyle_jax.editing.cli import find_item
from hyperstyle_jax.inversion_files import InversionFileError, InvertedImage

SHAPES = [(4, 3, 3, 3), None, (2, 4, 1, 1)]  # layer 1 untuned
N_STYLES, DIM = 5, 8
PACKAGE = os.path.join(os.path.dirname(__file__), "..", "hyperstyle_jax")


def _item(stem, seed):
    rng = np.random.RandomState(seed)
    deltas = [None if s is None else rng.randn(*s).astype(np.float32) for s in SHAPES]
    return InvertedImage(stem, rng.randn(N_STYLES, DIM).astype(np.float32), deltas,
                         rng.randint(0, 256, (16, 16, 3), dtype=np.uint8))


def test_round_trip(tmp_path):
    out = str(tmp_path)
    items = [_item("b", 0), _item("a.v2", 1)]
    rng = np.random.RandomState(2)
    for it in items:
        iterations = [rng.uniform(-1.2, 1.2, (32, 32, 3)).astype(np.float32) for _ in range(3)]
        inversion_files.write_item(out, it.stem, it.image, iterations, it.codes,
                                   deltas=it.deltas, save_arrays=True)
        arrays = inversion_files.read_arrays(out, it.stem)
        assert set(arrays) == {"init", "iter_1", "iter_2", "codes"}
        np.testing.assert_array_equal(arrays["iter_2"], iterations[2])
        assert os.path.isfile(inversion_files.final_path(out, it.stem))
        assert os.path.isfile(os.path.join(out, "grids", f"{it.stem}.png"))
    inversion_files.write_codes(out, {it.stem: it.codes for it in items})
    with np.load(os.path.join(out, "latents.npz"), allow_pickle=False) as f:  # no pickle
        assert f.files == ["b", "a.v2"]
    got = inversion_files.read_inversion(out, SHAPES, N_STYLES, DIM)
    assert [g.stem for g in got] == ["b", "a.v2"]  # the codes file's order
    for g, it in zip(got, items):
        np.testing.assert_array_equal(g.codes, it.codes)
        np.testing.assert_array_equal(g.image, it.image)
        assert g.deltas[1] is None
        for j in (0, 2):
            np.testing.assert_array_equal(g.deltas[j], it.deltas[j])
    assert inversion_files.list_iterations(out) == ["0", "1", "2"]
    assert [os.path.basename(p) for p in inversion_files.list_arrays(out)] == ["a.v2.npz",
                                                                             "b.npz"]
    assert inversion_files.array_iterations(["codes", "iter_2", "init", "iter_10"]) == [
        ("0", "init"), ("2", "iter_2"), ("10", "iter_10")]
    # No temporary files are left behind.
    left = [f for _, _, fs in os.walk(out) for f in fs if f.startswith(".tmp")]
    assert not left


def test_write_inversion_and_downloads(tmp_path):
    items = [_item("x", 3)]
    inversion_files.write_inversion(str(tmp_path), items)
    got = inversion_files.read_inversion(str(tmp_path), SHAPES, N_STYLES, DIM)
    np.testing.assert_array_equal(got[0].codes, items[0].codes)
    (tmp_path / "dl.npz").write_bytes(inversion_files.codes_bytes({"x": items[0].codes}))
    np.testing.assert_array_equal(np.load(tmp_path / "dl.npz")["x"], items[0].codes)
    (tmp_path / "d.npz").write_bytes(inversion_files.deltas_bytes(items[0].deltas))
    assert np.load(tmp_path / "d.npz").files == ["layer_0", "layer_2"]


def test_old_latents_npy_still_reads(tmp_path):
    it = _item("old", 4)
    np.save(tmp_path / "latents.npy", {"old": it.codes}, allow_pickle=True)  # official format
    inversion_files.write_deltas(str(tmp_path), "old", it.deltas)
    [got] = inversion_files.read_inversion(str(tmp_path), SHAPES, N_STYLES, DIM)
    np.testing.assert_array_equal(got.codes, it.codes)
    assert got.image is None  # no inputs/old.png


def _one_line_error(folder, shapes=SHAPES, n_styles=N_STYLES):
    with pytest.raises(InversionFileError) as e:
        inversion_files.read_inversion(str(folder), shapes, n_styles, DIM)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_clear_errors(tmp_path):
    assert "no latents.npz" in _one_line_error(tmp_path) and "--save_latents" in _one_line_error(
        tmp_path)
    it = _item("img0", 5)
    inversion_files.write_codes(str(tmp_path), {"img0": it.codes})
    msg = _one_line_error(tmp_path)
    assert "missing deltas/img0.npz" in msg and "--save_deltas" in msg, msg

    dpath = os.path.join(str(tmp_path), "deltas", "img0.npz")
    bad = list(it.deltas)
    bad[2] = np.zeros((2, 4, 3, 3), np.float32)
    inversion_files.write_deltas(str(tmp_path), "img0", bad)
    msg = _one_line_error(tmp_path)
    assert dpath in msg and "layer_2" in msg and "(2, 4, 3, 3)" in msg and "(2, 4, 1, 1)" in msg

    inversion_files.write_deltas(str(tmp_path), "img0", [it.deltas[0], None, None])
    msg = _one_line_error(tmp_path)
    assert dpath in msg and "layers [0]" in msg and "[0, 2]" in msg, msg

    np.savez(dpath, layer_0=it.deltas[0], extra=np.zeros(1))
    assert "unexpected key 'extra'" in _one_line_error(tmp_path)

    with open(dpath, "wb") as f:
        f.write(b"not a zip")
    assert dpath in _one_line_error(tmp_path)

    inversion_files.write_deltas(str(tmp_path), "img0", it.deltas)
    msg = _one_line_error(tmp_path, n_styles=6)
    assert "latents.npz" in msg and "'img0'" in msg and "(6, 8)" in msg, msg


def test_find_item_by_stem_or_file_name():
    items = [_item("astronaut", 0), _item("chelsea", 1)]
    assert find_item(items, "chelsea").stem == "chelsea"
    assert find_item(items, "chelsea.png").stem == "chelsea"
    assert find_item(items, "photos/astronaut.jpg").stem == "astronaut"
    with pytest.raises(EditError, match="no image 'coffee.png'.*astronaut, chelsea"):
        find_item(items, "coffee.png")


def test_only_the_old_folder_reader_unpickles():
    hits = []
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                with open(path) as fh:
                    hits += [(f, i) for i, line in enumerate(fh) if "allow_pickle=True" in line]
    assert [f for f, _ in hits] == ["inversion_files.py"], hits
