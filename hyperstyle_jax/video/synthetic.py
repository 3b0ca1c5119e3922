"""Synthetic clips for tests and benchmarks: a photo seen through a window that pans and
zooms in smoothly, encoded with PyAV (H.264) with a sine-tone audio track; and `stub_run`,
the streaming stages with the model stubbed (the memory checks).

    make_clip("pan.mp4", photo, n=30, size=(224, 128))            # 25 fps, AAC audio
    make_clip("vfr.mkv", photo, n=12, pts_ms=[0, 40, 80, 150, ...], audio="pcm_s16le")
"""
from __future__ import annotations

import fractions
import os
from types import SimpleNamespace
from typing import Iterator, Optional, Sequence

import numpy as np
from PIL import Image

from hyperstyle_jax import align
from hyperstyle_jax.video import pipeline
from hyperstyle_jax.video.io import require


def pan_zoom(photo: str, n: int, size=(224, 128), face: bool = True,
             start_width: float = 500.0, zoom: float = 70.0, centre=(256.0, 250.0),
             pan=(14.0, 12.0)) -> Iterator[np.ndarray]:
    """n uint8 [h, w, 3] frames: a window of start_width -> start_width - zoom photo pixels
    moving from `centre` by `pan`; face=False: a fixed corner of the photo (no face, for
    the fixture-12 photo)."""
    w, h = size
    img = Image.open(photo).convert("RGB")
    for i in range(n):
        t = i / max(1, n - 1)
        ww = start_width - zoom * t
        hh = ww * h / w
        cx, cy = centre[0] + pan[0] * t, centre[1] + pan[1] * t
        box = (cx - ww / 2, cy - hh / 2, cx + ww / 2, cy + hh / 2)
        if not face:
            box = (0, 480, 120, 480 + 120 * h / w)
        yield np.asarray(img.resize((w, h), Image.Resampling.BILINEAR, box=box))


def make_clip(path: str, photo: str, n: int = 30, size=(224, 128), fps: int = 25,
              audio: Optional[str] = "aac", pts_ms: Optional[Sequence[int]] = None,
              face: bool = True, options: Optional[dict] = None, crf: str = "12") -> str:
    """Write the pan-and-zoom clip; pts_ms: per-frame timestamps (variable frame rate);
    audio: 'aac', 'pcm_s16le' (which MP4 cannot hold) or None; options: muxer options
    (e.g. {'movflags': 'faststart'})."""
    av = require()
    w, h = size
    c = av.open(str(path), "w", options=options or {})
    v = c.add_stream("libx264", rate=fps)
    v.width, v.height, v.pix_fmt, v.options = w, h, "yuv420p", {"crf": crf}
    if pts_ms is not None:
        v.time_base = v.codec_context.time_base = fractions.Fraction(1, 1000)
    a = c.add_stream(audio, rate=16000) if audio else None
    for i, rgb in enumerate(pan_zoom(photo, n, size, face)):
        f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        if pts_ms is not None:
            f.pts, f.time_base = int(pts_ms[i]), fractions.Fraction(1, 1000)
        for p in v.encode(f):
            c.mux(p)
    for p in v.encode():
        c.mux(p)
    if a is not None:
        seconds = n / fps if pts_ms is None else pts_ms[-1] / 1000 + 1 / fps
        s = 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(16000 * seconds)) / 16000)
        fmt = "fltp" if audio == "aac" else "s16"
        arr = s[None].astype(np.float32) if fmt == "fltp" else (s * 3e4).astype(np.int16)[None]
        af = av.AudioFrame.from_ndarray(arr, format=fmt, layout="mono")
        af.sample_rate, af.pts = 16000, 0
        for p in list(a.encode(af)) + list(a.encode()):
            c.mux(p)
    c.close()
    return str(path)


def stub_run(clip: str, out_dir: str, code_sigma: float = 1.0, track_sigma: float = 2.0,
             input_size: int = 64, no_face_frames: int = 0, **options):
    """Every streaming stage on `clip` with the model stubbed (landmarks: the first frame's
    plus noise; alignment: the first frame's transform; inversion: zero codes; the edit:
    the aligned crop itself; no face in the first `no_face_frames`), decoding, smoothing,
    paste-back and encoding real; options: more `pipeline.VideoOptions` ->
    (`pipeline.ClipResult`, peak bytes traced by tracemalloc). What the memory checks run."""
    with require().open(clip) as c:
        first = next(c.decode(video=0)).to_ndarray(format="rgb24")
    lm = pipeline.detect_landmarks(first)
    if lm is None:
        raise ValueError(f"{clip}: no face in the first frame")
    face = align.align_landmarks(Image.fromarray(first), lm, input_size)
    gen = SimpleNamespace(n_latent=2, style_dim=4, size=input_size)
    inverter = SimpleNamespace(generator_config=gen, input_hw=(input_size, input_size),
                               model=SimpleNamespace(config=SimpleNamespace(cars_crop=False)))
    args = SimpleNamespace(out=out_dir, batch_size=4, command="stub")

    def run(args, ctx):
        for item in ctx.progress(ctx.items, "stub"):
            im = item.image.astype(np.float32) / 127.5 - 1
            ctx.write_standard(item, im, [[("stub", "stub", im)]])

    def invert(x):
        return {"codes": np.zeros((len(x), 2, 4), np.float32), "deltas": []}

    rng = np.random.default_rng(0)
    calls = [0]

    def landmarker(rgb):
        calls[0] += 1
        return None if calls[0] <= no_face_frames else lm + rng.normal(0, 0.5, lm.shape)

    args.run = run
    opts = pipeline.VideoOptions(track_sigma=track_sigma, code_sigma=code_sigma, **options)
    ctx = pipeline.VideoContext(args, inverter)
    stem = os.path.splitext(os.path.basename(clip))[0]
    return pipeline.peak_traced(pipeline.edit_clip, clip, stem, args, ctx, opts, invert,
                                landmarker=landmarker,
                                aligner=lambda rgb, lm_: face, progress=False)
