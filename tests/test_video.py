"""`edit <subcommand> --video`: clips generated here (fixture 12's photo with a smooth pan and
zoom, with audio) through the fixture-05 model: frame count, size, rate, audio and
timestamps kept, pixels away from the face within codec error, the smoothed crop jitters
less than the raw one, memory flat in the clip's length, and each bad input one line with
nothing lost."""
import contextlib
import io
import json
import os

import numpy as np
import pytest

av = pytest.importorskip("av")
pytest.importorskip("dlib")

from hyperstyle_jax import edit  # noqa: E402
from hyperstyle_jax.video import pipeline, synthetic, tracks  # noqa: E402

HERE = os.path.join(os.path.dirname(__file__), "fixtures")
PHOTO = os.path.join(HERE, "12_alignment", "grace_hopper.jpg")
UNIT = os.path.join(HERE, "09_editing", "interfacegan_random_unit.pt")
KEY = "interfacegan_random_unit_2"
W, H, FPS = 224, 128, 25
VFR_PTS = [0, 40, 80, 150, 190, 300, 340, 380, 420, 500, 540, 580]  # ms


def pan_zoom(n, face=True):
    return synthetic.pan_zoom(PHOTO, n, (W, H), face)


def make_clip(path, n=30, audio="aac", pts_ms=None, face=True, options=None):
    return synthetic.make_clip(str(path), PHOTO, n, (W, H), FPS, audio, pts_ms, face, options)


def decode(path):
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        frames, times = [], []
        for f in c.decode(vs):
            frames.append(f.to_ndarray(format="rgb24"))
            times.append(float(f.pts * vs.time_base))
        return (np.stack(frames), times, vs.average_rate, [s.type for s in c.streams])


@pytest.fixture(scope="module")
def ckpts(e2e_checkpoints):
    return e2e_checkpoints.hyperstyle(), e2e_checkpoints.w_encoder()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    good = make_clip(d / "pan.mp4")
    vfr = make_clip(d / "vfr.mkv", n=len(VFR_PTS), audio="pcm_s16le", pts_ms=VFR_PTS)
    full = make_clip(d / "full.mp4", n=24, options={"movflags": "faststart"})
    data = open(full, "rb").read()
    cut = d / "cut.mp4"
    cut.write_bytes(data[:int(len(data) * 0.55)])  # index first, media cut mid-stream
    (d / "notes.mp4").write_text("not a video")
    noface = make_clip(d / "noface.mp4", n=8, face=False)
    return {"good": good, "vfr": vfr, "cut": str(cut), "text": str(d / "notes.mp4"),
            "noface": noface}


@pytest.fixture(scope="module")
def run_all(ckpts, clips, tmp_path_factory):
    """One `edit interfacegan --video` run over every clip (one compile): exit status,
    stdout, stderr, output folder."""
    out = tmp_path_factory.mktemp("out")
    so, se = io.StringIO(), io.StringIO()
    argv = ["interfacegan", "--checkpoint", ckpts[0], "--w_encoder", ckpts[1], "--out", out,
            "--direction", UNIT, "--factors", "2", "--n_iters", "1", "--batch_size", "4",
            "--video_ext", ".mp4"]
    for k in ("good", "text", "vfr", "cut", "noface"):
        argv += ["--video", clips[k]]
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        code = edit.main([str(a) for a in argv])
    return code, so.getvalue(), se.getvalue(), out


def test_clip_out_keeps_frames_size_rate_audio(run_all, clips):
    code, stdout, stderr, out = run_all
    path = out / "videos" / KEY / "pan.mp4"
    assert path.is_file(), stderr
    got, times, rate, streams = decode(path)
    want, want_times, want_rate, _ = decode(clips["good"])
    assert got.shape == want.shape == (30, H, W, 3)
    assert rate == want_rate == FPS and streams == ["video", "audio"]
    np.testing.assert_allclose(times, want_times, atol=1e-3)
    report = json.loads((out / "videos" / "pan.json").read_text())
    assert report["frames"] == report["edited"] == 30 and report["audio"][KEY]
    assert report["video_codec"] == "libx264"
    assert 0 < report["flicker"][KEY] < 10 and "flicker" in stdout
    assert set(report["stages"]) == set(pipeline.STAGES)
    # the face changed; pixels far from it (left and right strips) within codec error
    diff = np.abs(got.astype(np.int16) - want)
    face = diff[:, 40:100, 85:140].mean()
    far = np.concatenate([diff[:, :, :24], diff[:, :, -24:]], axis=2)
    assert face > 10 * far.mean(), (face, far.mean())
    assert far.mean() < 2.0 and np.percentile(far, 99) <= 12, (far.mean(), np.percentile(far, 99))


def test_bad_inputs_one_line_each_nothing_lost(run_all, clips):
    code, stdout, stderr, out = run_all
    assert code == 1
    lines = [ln for ln in stderr.splitlines() if ln.startswith(("error:", "warning:"))]
    by_clip = {k: [ln for ln in lines if clips[k] in ln] for k in clips}
    assert len(by_clip["text"]) == 1 and "not a readable video" in by_clip["text"][0]
    assert len(by_clip["noface"]) == 1 and "no face found" in by_clip["noface"][0]
    assert not (out / "videos" / KEY / "noface.mp4").exists()
    # truncated: named once; the frames before the damage are edited and written
    assert len(by_clip["cut"]) == 1 and "damaged" in by_clip["cut"][0]
    cut, _, _, _ = decode(out / "videos" / KEY / "cut.mp4")
    report = json.loads((out / "videos" / "cut.json").read_text())
    assert 0 < len(cut) == report["frames"] < 24 and report["damage"]
    # variable frame rate: every timestamp kept; PCM audio cannot go into MP4: said, video kept
    vfr_warn = [ln for ln in stderr.splitlines() if "vfr" in ln and "audio" in ln]
    assert len(vfr_warn) == 1 and "pcm_s16le" in vfr_warn[0], stderr
    frames, times, _, streams = decode(out / "videos" / KEY / "vfr.mp4")
    assert len(frames) == len(VFR_PTS) and streams == ["video"]
    np.testing.assert_allclose(times, np.array(VFR_PTS) / 1000, atol=1e-3)
    assert (out / "videos" / KEY / "pan.mp4").is_file()  # the good clip is not lost
    assert "3 clip(s) failed" in stderr


def detected_landmarks(frames):
    out = []
    for rgb in frames:
        lm = pipeline.detect_landmarks(rgb)
        assert lm is not None
        out.append(lm)
    return out


def test_smoothed_track_jitters_less():
    raw = detected_landmarks(pan_zoom(30))
    smooth = tracks.smooth_landmark_track(raw, sigma=2.0)
    q_raw, q_smooth = tracks.quads(raw), tracks.quads(smooth)
    j_raw, j_smooth = tracks.jitter(q_raw), tracks.jitter(q_smooth)
    assert j_smooth < 0.5 * j_raw, (j_raw, j_smooth)
    # still the same face: the smoothed quad stays within a few pixels of the raw one
    assert np.abs(q_smooth - q_raw).mean() < 2.0


def test_gaps_filled_and_segments_kept():
    lm = [np.full((68, 2), float(i)) for i in range(10)]
    seq = lm[:3] + [None, None] + lm[5:6] + [None] * 5 + lm[-1:]
    out = tracks.smooth_landmark_track(seq, sigma=0.0, max_gap=3)
    np.testing.assert_allclose(out[3], np.full((68, 2), 3.0))  # interpolated 2 -> 5
    assert all(o is None for o in out[6:11])  # a gap longer than max_gap passes through
    np.testing.assert_allclose(out[11], lm[9])
    held = tracks.smooth_landmark_track([None, None] + lm[:2], sigma=0.0, max_gap=3)
    np.testing.assert_allclose(held[0], lm[0])  # before the first detection: held


def stub_peak(tmp_path, n):
    """Peak traced memory of every streaming stage for an n-frame clip, the model stubbed."""
    clip = make_clip(tmp_path / f"c{n}.mp4", n=n)
    result, peak = synthetic.stub_run(clip, str(tmp_path / f"o{n}"))
    frames, _, _, _ = decode(result.outputs["stub"])
    assert len(frames) == n
    return peak


def test_memory_flat_in_clip_length(tmp_path):
    p30, p300 = stub_peak(tmp_path, 30), stub_peak(tmp_path, 300)
    frame = W * H * 3
    assert p300 < 1.25 * p30 + 8 * frame, (p30, p300)  # not 10x: no frame list grows


def test_frames_before_the_first_face_pass_through(tmp_path):
    """Faceless frames before the first edit (more than the in-memory queue) go to a disk
    spool and come out first, unchanged; the rest is edited."""
    n, k = 40, 2 * pipeline.SPOOL_AFTER
    clip = make_clip(tmp_path / "late.mp4", n=n)
    result, _ = synthetic.stub_run(clip, str(tmp_path / "o"), no_face_frames=k)
    got, _, _, _ = decode(result.outputs["stub"])
    want, _, _, _ = decode(clip)
    assert len(got) == n
    report = json.loads(open(result.report).read())
    assert report["passed_through"] == k and report["edited"] == n - k
    assert report["tracks"]["none"] == k
    diff = np.abs(got.astype(np.int16) - want).mean(axis=(1, 2, 3))
    assert diff[:k].max() < 3.0 and diff[k:].mean() > 2 * diff[:k].mean(), diff  # codec error


def test_start_and_duration(tmp_path):
    clip = make_clip(tmp_path / "long.mp4", n=30)
    result, _ = synthetic.stub_run(clip, str(tmp_path / "o"), start=0.4, duration=0.4)
    frames, times, rate, streams = decode(result.outputs["stub"])
    assert len(frames) == 10 and rate == FPS and streams == ["video", "audio"]
    np.testing.assert_allclose(times, np.arange(10) / FPS, atol=1e-3)
    with av.open(result.outputs["stub"]) as c:
        a = c.streams.audio[0]
        audio_s = sum(p.duration or 0 for p in c.demux(a)) * float(a.time_base)
    assert 0.3 < audio_s < 0.6, audio_s  # the audio of those 0.4 s (whole AAC packets)


def test_ganspace_video_same_options(ckpts, tmp_path, capsys):
    """Another subcommand, its own options unchanged: one clip per edit key."""
    clip = make_clip(tmp_path / "short.mkv", n=6)
    code = edit.main(["ganspace", "--checkpoint", ckpts[0], "--w_encoder", ckpts[1], "--video",
                      clip, "--out", str(tmp_path / "o"), "--n_iters", "1", "--pca",
                      os.path.join(HERE, "09_editing", "ganspace_random_pca.pt"),
                      "--edit", "Pose II", "--edit", "color"])
    assert code == 0, capsys.readouterr().err
    for key in ("pose_ii", "color"):
        frames, _, rate, streams = decode(tmp_path / "o" / "videos" / key / "short.mkv")
        assert len(frames) == 6 and rate == FPS and streams == ["video", "audio"]


def test_unsupported_subcommand_one_line(ckpts, clips, tmp_path, capsys):
    code = edit.main(["interpolate", "--checkpoint", ckpts[0], "--w_encoder", ckpts[1],
                      "--video", clips["good"], "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "--video" in err
