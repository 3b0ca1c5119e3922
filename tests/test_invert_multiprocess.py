"""Inference over several processes: the block arithmetic, the merge of the codes' part
files, one-line errors for process flags that do not fit, and a real two-process run.

The two-process run, once in one process and once as two processes over a loopback
`jax.distributed`:
- `invert`, then `edit interfacegan --images --save_inversion`;
- from the stored inversion, `edit interfacegan --inversion` (a block of the images per
  process) and `edit interpolate --inversion` (a share of the pairs per process);
- `edit interfacegan --video` on three clips (a block of the clips per process);
- `edit interfacegan --paste_back` on three photos (each process aligns and pastes its
  block);
- `edit domain` with random noise, drawn per image from its position in the whole input
  (each process numbers its block from `first_index`).
Every file of all output folders must be the same: latents.npz included (same stems in the
same order, values allclose), the clips' frames within x264's error. The three children
share a compilation cache and the one-process child runs first, so the two others mostly
load compiled code.
"""
import json
import os
import subprocess
import sys
import textwrap

import av
import jax
import numpy as np
import pytest
from helpers import FIXTURES, ROOT, free_port, quiet
from PIL import Image

from hyperstyle_jax import edit, inversion_files, invert, parallel
from hyperstyle_jax.convert.restyle import convert_restyle_e4e
from hyperstyle_jax.convert.stylegan2 import convert_stylegan2
from hyperstyle_jax.video import synthetic

F09 = os.path.join(FIXTURES, "09_editing")
F13 = os.path.join(FIXTURES, "13_restyle_domain")
PHOTO = os.path.join(FIXTURES, "12_alignment", "grace_hopper.jpg")


# ----------------------------------------------------------------------------- blocks


@pytest.mark.parametrize("n", [0, 1, 2, 5, 7, 12])
@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_process_block_is_balanced_contiguous_and_covering(n, count):
    blocks = [parallel.process_block(n, p, count) for p in range(count)]
    assert blocks[0][0] == 0 and blocks[-1][1] == n
    for (_, stop), (start, _) in zip(blocks, blocks[1:]):
        assert stop == start  # contiguous, disjoint, in process order
    sizes = [stop - start for start, stop in blocks]
    # the first n % count processes take one more
    assert sizes == [n // count + (p < n % count) for p in range(count)]


def test_process_shard_joins_back_in_order():
    items = [f"img{i}" for i in range(7)]
    shards = [parallel.process_shard(items, p, 3) for p in range(3)]
    assert shards == [items[0:3], items[3:5], items[5:7]]
    assert parallel.process_shard(items) == items  # this test runs as one process
    with pytest.raises(ValueError, match="process index 3 is not in 0 .. 2"):
        parallel.process_block(7, 3, 3)


# ----------------------------------------------------------------------------- merge


def test_merge_codes_keeps_process_order_and_removes_parts(tmp_path):
    rng = np.random.RandomState(0)
    parts = [{"b": rng.randn(3, 4), "a": rng.randn(3, 4)}, {}, {"c": rng.randn(3, 4)}]
    for p, codes in enumerate(parts):
        inversion_files.write_codes_part(str(tmp_path), codes, p, 3)
    assert (tmp_path / "latents.part-1-of-3.npz").is_file()
    path = inversion_files.merge_codes(str(tmp_path), 3)
    assert path == str(tmp_path / "latents.npz")
    merged = inversion_files.read_codes(str(tmp_path))
    assert list(merged) == ["b", "a", "c"]  # part 0's order, then part 2's
    for codes in parts:
        for k, v in codes.items():
            np.testing.assert_array_equal(merged[k], v.astype(np.float32))
    assert sorted(os.listdir(tmp_path)) == ["latents.npz"]


def test_merge_codes_names_a_missing_part_and_a_repeated_stem(tmp_path):
    c = np.zeros((2, 3), np.float32)
    inversion_files.write_codes_part(str(tmp_path), {"a": c}, 0, 2)
    with pytest.raises(inversion_files.InversionFileError, match="latents.part-1-of-2.npz: "
                       "missing"):
        inversion_files.merge_codes(str(tmp_path), 2)
    inversion_files.write_codes_part(str(tmp_path), {"a": c}, 1, 2)
    with pytest.raises(inversion_files.InversionFileError, match="stem 'a' is also in"):
        inversion_files.merge_codes(str(tmp_path), 2)


def test_merge_codes_without_codes_writes_no_file(tmp_path):
    for p in range(2):
        inversion_files.write_codes_part(str(tmp_path), {}, p, 2)
    assert inversion_files.merge_codes(str(tmp_path), 2) is None
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("flags, expected", [
    (["--num_processes", "2", "--process_id", "2", "--coordinator_address", "127.0.0.1:1"],
     "error: --process_id 2: must be in 0 .. 1 (--num_processes 2)"),
    (["--num_processes", "2", "--process_id", "0"],
     "error: --num_processes 2 needs --coordinator_address HOST:PORT"),
    (["--process_id", "1"], "error: --process_id 1 needs --num_processes"),
    (["--num_processes", "0"], "error: --num_processes 0: must be >= 1"),
    (["--cpu_devices", "0"], "error: --cpu_devices 0: must be >= 1"),
    (["--cpu_devices", "2"], "error: --cpu_devices 2: JAX already runs with 1 CPU device(s) "
                             "in this process; give it before any JAX work"),
])
def test_bad_process_flags_are_one_line(flags, expected, tmp_path, capsys):
    jax.devices()  # JAX has started (a test worker has one CPU device): no flag can change it
    common = ["--checkpoint", str(tmp_path / "none"), "--images", str(tmp_path),
              "--out", str(tmp_path / "out"), *flags]
    codes = [invert.main(["--w_encoder", str(tmp_path / "none"), *common]),
             edit.main(["interfacegan", "--direction", "d.pt", *common])]
    assert codes == [2, 1]  # each CLI's exit status for a user error
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith(expected) for line in lines), lines
    assert not (tmp_path / "out").exists()


def test_train_bad_process_flags_are_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hyperstyle_jax.train", "--workdir",
                          str(tmp_path / "w"), "--num_processes", "2", "--process_id", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "--num_processes 2 needs --coordinator_address" in lines[0]


# ----------------------------------------------------------------------------- two processes

# One child: invert, then edit (both through their command lines' main); the last argument
# before the process flags (none for the one-process reference) is the output root.
CHILD = textwrap.dedent('''
    import glob
    import sys
    from hyperstyle_jax import edit, invert
    hs, we, images, direction, clips, faces, restyle, toon, root, *process = sys.argv[1:]
    models = ["--checkpoint", hs, "--w_encoder", we]
    opts = ["--n_iters", "1", "--batch_size", "2", *process]
    common = [*models, "--images", images, *opts]
    a = invert.main(common + ["--out", root + "/invert", "--save_latents", "--save_deltas",
                              "--save_npy"])
    b = edit.main(["interfacegan", *common, "--out", root + "/edit", "--direction", direction,
                   "--factors", "2", "--save_npy", "--save_inversion"])
    # A stored inversion: each process edits its block of the images, or its pairs' share.
    stored = ["--checkpoint", hs, "--inversion", root + "/invert", *process]
    c = edit.main(["interfacegan", *stored, "--out", root + "/stored", "--direction",
                   direction, "--factors", "2", "--batch_size", "2", "--save_npy"])
    d = edit.main(["interpolate", *stored, "--out", root + "/pairs", "--alphas", "0.5",
                   "--pair", "i0", "i2", "--pair", "i1", "i2", "--pair", "i0", "i1"])
    # Clips: each process edits its block of them, frame by frame.
    video = [arg for clip in sorted(glob.glob(clips + "/*.mp4")) for arg in ("--video", clip)]
    e = edit.main(["interfacegan", *models, *video, *opts, "--out", root + "/video",
                   "--direction", direction, "--factors", "2", "--video_ext", ".mp4"])
    # Photos: each process aligns its block, inverts, edits and pastes back.
    f = edit.main(["interfacegan", *models, "--images", faces, *opts, "--out",
                   root + "/paste", "--direction", direction, "--factors", "2", "--paste_back"])
    # Domain renders with random noise drawn per image position: numbered across processes.
    g = edit.main(["domain", *common, "--out", root + "/domain", "--restyle", restyle,
                   "--generator", toon, "--restyle_iters", "1", "--save_npy"])
    print("EXIT", a, b, c, d, e, f, g, flush=True)
''')


def _spawn(script, args, cache):
    env = dict(os.environ)
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
               JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs, timeout=300):
    """Outputs of the children; a hung one (a barrier never met) fails the test."""
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return outs


def _frames(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(
            np.int16)


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, fs in os.walk(root) for f in fs)


def test_two_processes_write_what_one_process_writes(e2e_checkpoints, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.RandomState(0)
    for i in range(3):  # blocks of 2 and 1 (+ the bad file): a padded batch on each side
        Image.fromarray(rng.randint(0, 256, (64, 64, 3), dtype=np.uint8)).save(imgs / f"i{i}.png")
    (imgs / "z_bad.png").write_text("not an image")  # process 1's: exit 1 there only
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(3):  # blocks of 2 and 1
        synthetic.make_clip(str(clips / f"v{i}.mp4"), PHOTO, n=3 + i, audio=None)
    faces = tmp_path / "faces"
    faces.mkdir()
    photo = Image.open(PHOTO)
    for i, (w, h) in enumerate([(256, 300), (300, 352), (220, 258)]):  # blocks of 2 and 1
        face = photo.resize((w, h))
        (face.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i == 1 else face).save(
            faces / f"p{i}.jpg", quality=95)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    restyle, toon = tmp_path / "restyle", tmp_path / "toon"
    convert_restyle_e4e(os.path.join(F13, "restyle_e4e_narrow.pt"), str(restyle), log=quiet)
    convert_stylegan2(os.path.join(F13, "stylegan2_narrow128_finetuned.pt"), str(toon),
                      log=quiet)
    args = [e2e_checkpoints.hyperstyle(), e2e_checkpoints.w_encoder(), imgs,
            os.path.join(F09, "interfacegan_random_unit.pt"), clips, faces, restyle, toon]
    one, two = tmp_path / "one", tmp_path / "two"
    cache = tmp_path / "jax_cache"
    [ref] = _finish([_spawn(script, args + [one], cache)])
    assert "EXIT 1 1 0 0 0 0 1" in ref, ref[-3000:]  # the bad file fails the two --images runs
    addr = f"127.0.0.1:{free_port()}"
    # Each process also splits its CPU into 2 devices, each running one sample of every
    # batch (`parallel.per_device`): the files must still be the one-device process's.
    outs = _finish([_spawn(script, args + [two, "--num_processes", 2, "--process_id", p,
                                          "--coordinator_address", addr, "--cpu_devices", 2],
                           cache)
                    for p in range(2)])
    assert "EXIT 0 0 0 0 0 0 0" in outs[0], outs[0][-3000:]  # i0, i1
    assert "EXIT 1 1 0 0 0 0 1" in outs[1], outs[1][-3000:]  # i2 and z_bad
    assert "process 0 of 2: inverted 2 of 2 images" in outs[0]
    assert "on 2 cpu device(s)" in outs[0] and "on 2 cpu device(s)" in outs[1]
    assert "process 1 of 2: inverted 1 of 2 images" in outs[1]
    # From the stored inversion: images i0, i1 | i2; pairs (i0, i2), (i1, i2) | (i0, i1).
    assert f"2 input(s) edited into {two / 'stored'}" in outs[0]
    assert f"1 input(s) edited into {two / 'stored'}" in outs[1]
    assert "interpolate: 2/2 img (100%)" in outs[0] and "interpolate: 1/1 img" in outs[1]
    # Clips v0, v1 | v2, each reported by the process that edited it.
    for p, i, n in ((0, 0, 3), (0, 1, 4), (1, 2, 5)):
        assert f"{clips / f'v{i}.mp4'}: {n} frames ({n} edited" in outs[p], outs[p][-3000:]
        assert f"v{i}.mp4: " not in outs[1 - p]
    # Photos p0, p1 | p2, each aligned, edited and pasted back by one process.
    assert f"2 input(s) edited into {two / 'paste'}" in outs[0]
    assert f"1 input(s) edited into {two / 'paste'}" in outs[1]

    files = _files(one)
    assert files == _files(two)  # no part file left, nothing missing or extra
    assert {"invert/latents.npz", "edit/latents.npz", "edit/deltas/i2.npz",
            "invert/final/i2.png", "edit/edits/interfacegan_random_unit_2/i1.png",
            "stored/edits/interfacegan_random_unit_2/i0.png", "stored/arrays/i2.npz",
            "pairs/edits/alpha_0.5/i0__i2.png", "pairs/grids/i0__i1.png",
            "paste/pasted/interfacegan_random_unit_2/p2.png", "domain/arrays/i2.npz"} <= set(files)
    for rel in files:
        a, b = one / rel, two / rel
        if rel.endswith(".npz"):
            with np.load(a) as x, np.load(b) as y:
                assert x.files == y.files, rel  # latents.npz: stems in input order
                for k in x.files:
                    # 2-device processes run batch-1 programs: fp32 sums in another
                    # order (up to 7e-6 on images of magnitude ~2.4)
                    np.testing.assert_allclose(x[k], y[k], rtol=0, atol=2e-5, err_msg=rel)
        elif rel.endswith(".png"):
            x, y = np.asarray(Image.open(a), np.int16), np.asarray(Image.open(b), np.int16)
            assert x.shape == y.shape and np.abs(x - y).max() <= 1, rel
        elif rel.endswith(".mp4"):
            # Frames 1 level apart at most before x264, whose choices then differ here and
            # there (seen: mean 0.44, max 32 levels on one clip, others identical).
            x, y = _frames(a), _frames(b)
            assert x.shape == y.shape and np.abs(x - y).mean() < 1.0, rel
        elif rel.startswith("video/videos/") and rel.endswith(".json"):  # a clip's report
            # (its flicker is measured on the frames before coding)
            x, y = json.loads(a.read_text()), json.loads(b.read_text())
            assert (x["frames"], x["edited"]) == (y["frames"], y["edited"]), rel
            np.testing.assert_allclose(list(x["flicker"].values()), list(y["flicker"].values()),
                                       rtol=1e-4, err_msg=rel)
    with np.load(one / "invert" / "latents.npz") as f:
        assert f.files == ["i0", "i1", "i2"]
