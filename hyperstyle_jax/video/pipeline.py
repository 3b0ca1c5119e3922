"""`edit <subcommand> --video CLIP`: a clip edited frame by frame as a stream.

    decode -> landmarks -> fill gaps -> smooth tracks -> align -> invert (batches)
      -> [smooth codes] -> the subcommand's own `run(args, ctx)` -> paste back -> encode

Each stage is a generator holding a bounded number of frames (the smoothing windows, one
inversion batch, a short queue), so memory does not grow with the clip's length. The
edit is the subcommand's unchanged `run(args, ctx)`: `VideoContext.items` is the lazy
stream of inverted frames (stems 'f000000', ...) and `ctx.write_standard` hands each
frame's rendered edits to `ClipWriter`, which pastes them back into the frame with the
frame's smoothed `AlignedFace` and encodes one clip per edit key:
`OUT/videos/<key>/<clip stem>.<ext>`, and a report `OUT/videos/<clip stem>.json`.
Frames without a face track pass through unchanged. Subcommands that need the items as a
list (several passes, pairs) are refused with one line (`UNSUPPORTED`).

With several processes (edit's --num_processes/--process_id/--coordinator_address) the
clips are shared out, a contiguous block per process (`inference.shard_inputs`); a clip is
one stream and is never split, so a single clip runs on process 0 and the others have
nothing to do. Each clip's files are its own; nothing is merged.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional

import jax
import numpy as np
from PIL import Image

from hyperstyle_jax import align
from hyperstyle_jax.align import detect
from hyperstyle_jax.align.paste import paste_back, quad_region
from hyperstyle_jax.editing import EditError
from hyperstyle_jax.editing.render import EditRenderer
from hyperstyle_jax.inference import load_inverter, shard_inputs
from hyperstyle_jax.inversion_files import InvertedImage
from hyperstyle_jax.utils import cli, images
from hyperstyle_jax.utils.paths import atomic_write
from hyperstyle_jax.video import io as video_io
from hyperstyle_jax.video import tracks
from hyperstyle_jax.video.io import Decoder, Encoder, VideoError

UNSUPPORTED = {
    "interpolate": "interpolate mixes two inverted images; a clip is one stream of frames",
    "domain": "domain reads all inputs up front (ReStyle-e4e per batch); not streamed yet",
}
STAGES = ("decode", "landmarks", "align", "invert", "edit", "paste", "encode")
DETECT_MAX_SIDE = 640  # longer frame side faces are searched at (HOG upsamples it 2x)
SPOOL_AFTER = 16  # frames queued before the edit keys are known go to disk past this


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of --video (the input itself is in editing.cli's input group)."""
    g = parser.add_argument_group("video (with --video CLIP)")
    g.add_argument("--video_start", type=float, default=0.0,
                   help="seconds into the clip to begin")
    g.add_argument("--video_duration", type=float,
                   help="seconds to edit (default: to the end)")
    g.add_argument("--track_sigma", type=float, default=2.0,
                   help="Gaussian sigma (frames) smoothing the landmark tracks; 0: raw")
    g.add_argument("--code_sigma", type=float, default=0.0,
                   help="Gaussian sigma (frames) smoothing codes and weight offsets; 0: off")
    g.add_argument("--max_gap", type=int, default=12,
                   help="frames without a detection bridged from their neighbours; longer "
                        "gaps pass through unchanged")
    g.add_argument("--video_ext", help="output container, e.g. .mp4 or .mkv (default: the "
                                       "input's, .mp4 for others)")


@dataclass
class VideoOptions:
    start: float = 0.0
    duration: Optional[float] = None
    track_sigma: float = 2.0
    code_sigma: float = 0.0
    max_gap: int = 12
    detector: str = "hog"
    video_ext: Optional[str] = None
    batch_size: int = 4
    n_iters: int = 5

    @classmethod
    def from_args(cls, a) -> VideoOptions:
        o = cls(a.video_start, a.video_duration, a.track_sigma, a.code_sigma, a.max_gap, a.detector,
                a.video_ext, a.batch_size, a.n_iters)
        if o.start < 0 or (o.duration is not None and o.duration <= 0):
            raise EditError(f"--video_start must be >= 0 and --video_duration > 0 (got {o.start}, "
                            f"{o.duration})")
        if o.track_sigma < 0 or o.code_sigma < 0 or o.max_gap < 0:
            raise EditError("--track_sigma, --code_sigma and --max_gap must be >= 0")
        if o.video_ext is not None:
            o.video_ext = o.video_ext if o.video_ext.startswith(".") else "." + o.video_ext
            video_io.output_format(o.video_ext)
        return o


@dataclass(eq=False)
class FrameState:
    """One frame on its way through the stages."""
    frame: video_io.Frame
    landmarks: Optional[np.ndarray] = None
    track: str = tracks.NONE
    face: Optional[align.AlignedFace] = None
    item: Optional[InvertedImage] = None


# ----------------------------------------------------------------------------- timing


class Meters:
    """Per stage: a progress bar (frames, frames/s of the stage's own seconds) and totals."""

    def __init__(self, total: Optional[int], enabled: bool = True):
        self.total, self.enabled = total or None, enabled
        self.frames = {s: 0 for s in STAGES}
        self.seconds = {s: 0.0 for s in STAGES}
        self.bars: dict = {}

    def add(self, stage: str, seconds: float, frames: int = 1) -> None:
        self.seconds[stage] += seconds
        self.frames[stage] += frames
        bar = self.bars.get(stage)
        if bar is None:
            every = max(1, (self.total or 100) // 4)  # plain lines: 7 stages, every 25 %
            bar = self.bars[stage] = cli.progress_bar(self.total, desc=f"video {stage}",
                                                      unit="frame", every=every,
                                                      enabled=self.enabled)
        if self.seconds[stage] > 0:
            bar.set_postfix_str(f"{self.frames[stage] / self.seconds[stage]:.1f} frames/s "
                                f"in-stage")
        bar.update(frames)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()

    def summary(self) -> dict:
        return {s: {"frames": self.frames[s], "seconds": round(self.seconds[s], 3),
                    "frames_per_s": (round(self.frames[s] / self.seconds[s], 2)
                                     if self.seconds[s] > 0 else None)}
                for s in STAGES if self.frames[s]}


# ----------------------------------------------------------------------------- stages


def detect_landmarks(rgb: np.ndarray, detector: str = "hog",
                     max_side: int = DETECT_MAX_SIDE) -> Optional[np.ndarray]:
    """The largest face's 68 landmarks float64 [68, 2] in uint8 RGB [H, W, 3], or None.
    Faces are searched at a copy of at most max_side px (video faces are large; HOG then
    costs the same at 1080p as at 640x360); landmarks come from the full frame."""
    dets = detect.detect(rgb, max_side, detector)
    if not dets:
        return None
    d = max(dets, key=lambda x: (x.area, -x.index))
    if detector == "cnn":
        return detect.upright_landmarks(rgb, d.box)
    return detect.landmarks(rgb, d.box).astype(np.float64)


def decode_stage(decoder: Decoder, meters: Meters) -> Iterator[FrameState]:
    frames = decoder.frames()
    while True:
        t0 = time.perf_counter()
        frame = next(frames, None)
        if frame is None:
            return
        meters.add("decode", time.perf_counter() - t0)
        yield FrameState(frame)


def landmark_stage(states: Iterable[FrameState], landmarker: Callable,
                   meters: Meters) -> Iterator[FrameState]:
    for s in states:
        t0 = time.perf_counter()
        s.landmarks = landmarker(s.frame.rgb)
        meters.add("landmarks", time.perf_counter() - t0)
        yield s


def align_stage(states: Iterable[FrameState], aligner: Callable,
                meters: Meters) -> Iterator[FrameState]:
    """Each tracked frame's crop and transform at the smoothed landmarks
    (aligner(rgb, landmarks) -> AlignedFace)."""
    for s in states:
        if s.landmarks is not None:
            t0 = time.perf_counter()
            s.face = aligner(s.frame.rgb, s.landmarks)
            meters.add("align", time.perf_counter() - t0)
        yield s


def invert_stage(states: Iterable[FrameState], invert: Callable, batch_size: int,
                 input_hw: tuple, meters: Meters) -> Iterator[FrameState]:
    """Invert the tracked frames `batch_size` at a time (`invert`: the compiled batched
    inverter, float32 [n, h, w, 3] -> its outputs), frames in order. A batch goes early
    when faceless frames pile up behind it (4 x batch_size frames held at most)."""
    held: list[FrameState] = []

    def run():
        todo = [s for s in held if s.face is not None]
        if todo:
            x = np.stack([images.resize(s.face.image, input_hw) for s in todo])
            t0 = time.perf_counter()
            r = invert(images.to_float(x))
            meters.add("invert", time.perf_counter() - t0, len(todo))
            for i, s in enumerate(todo):
                deltas = [None if d is None else np.asarray(d[i]) for d in r["deltas"]]
                s.item = InvertedImage(f"f{s.frame.index:06d}", np.asarray(r["codes"][i]),
                                       deltas, x[i])
        out = list(held)
        held.clear()
        return out

    n_faces = 0
    for s in states:
        held.append(s)
        n_faces += s.face is not None
        if n_faces >= batch_size or len(held) >= 4 * batch_size:
            yield from run()
            n_faces = 0
    yield from run()


def code_smooth_stage(states: Iterable[FrameState], sigma: float) -> Iterator[FrameState]:
    """Gaussian over neighbouring frames' codes and weight offsets (0: unchanged)."""
    def get(s):
        return None if s.item is None else [s.item.codes] + list(s.item.deltas)

    def put(s, vals):
        s.item = InvertedImage(s.item.stem, vals[0], vals[1:], s.item.image)

    return tracks.gaussian_smooth(states, sigma, get, put)


def frame_states(decoder: Decoder, opts: VideoOptions, invert: Callable, input_hw: tuple,
                 meters: Meters, landmarker: Optional[Callable] = None,
                 aligner: Optional[Callable] = None) -> Iterator[FrameState]:
    """All stages up to the inversion, chained (each a bounded generator). landmarker
    (rgb -> [68, 2] or None) and aligner ((rgb, landmarks) -> AlignedFace) default to
    dlib and `align.align_landmarks` at the model's input size; tests stub them."""
    if landmarker is None:
        def landmarker(rgb):
            return detect_landmarks(rgb, opts.detector)
    if aligner is None:
        def aligner(rgb, lm):
            return align.align_landmarks(Image.fromarray(rgb), lm, max(input_hw),
                                         detector=opts.detector)
    s = decode_stage(decoder, meters)
    s = landmark_stage(s, landmarker, meters)
    s = tracks.fill_gaps(s, opts.max_gap)
    s = tracks.gaussian_smooth(s, opts.track_sigma,
                               get=lambda st: None if st.landmarks is None else [st.landmarks],
                               put=lambda st, v: setattr(st, "landmarks", v[0]))
    s = align_stage(s, aligner, meters)
    s = invert_stage(s, invert, opts.batch_size, input_hw, meters)
    return code_smooth_stage(s, opts.code_sigma)


# ----------------------------------------------------------------------------- output


class Flicker:
    """Mean absolute frame-to-frame change inside the face box of the output, over the
    same for the input (1: flickers as much as the input moves; > 1: the edit adds
    flicker). The box is the frame's alignment quad's bounding box; only consecutive
    frames that both have a face count."""

    def __init__(self):
        self.num = self.den = 0.0
        self.prev = None  # (input, output) of the last frame with a face

    def add(self, inp: np.ndarray, out: np.ndarray, face) -> None:
        if face is None:
            self.prev = None
            return
        if self.prev is not None:
            x0, y0, x1, y1 = quad_region(face)
            if x1 > x0 and y1 > y0:
                pin, pout = self.prev
                sl = (slice(y0, y1), slice(x0, x1))
                self.num += float(np.abs(out[sl].astype(np.int16) - pout[sl]).sum())
                self.den += float(np.abs(inp[sl].astype(np.int16) - pin[sl]).sum())
        self.prev = (inp, out)

    def ratio(self) -> Optional[float]:
        return self.num / self.den if self.den > 0 else None


class _Spool:
    """Frames (rgb, pts) kept on disk, in order: the pass-through frames that come before
    the first edit says which outputs exist."""

    def __init__(self):
        self.file = tempfile.TemporaryFile()
        self.entries: list = []  # (pts, shape) per frame: a few bytes each

    def add(self, rgb: np.ndarray, pts: int) -> None:
        self.file.write(np.ascontiguousarray(rgb).tobytes())
        self.entries.append((pts, rgb.shape))

    def __iter__(self):
        self.file.seek(0)
        for pts, shape in self.entries:
            n = int(np.prod(shape))
            yield np.frombuffer(self.file.read(n), np.uint8).reshape(shape), pts
        self.file.close()
        self.entries = []


class ClipWriter:
    """Receives every frame in order: tracked frames with their rendered edits (`edit`),
    the others unchanged (`queue` then `flush`); pastes back and encodes one clip per key."""

    def __init__(self, out_dir: str, stem: str, ext: str, decoder: Decoder, meters: Meters):
        self.out_dir, self.stem, self.ext = out_dir, stem, ext
        self.decoder, self.meters = decoder, meters
        self.queue: list[FrameState] = []  # frames handed out, not yet written
        self.spool = _Spool()
        self.encoders: dict = {}  # key -> Encoder
        self.flicker: dict = {}
        self.keys: Optional[list] = None
        self.tracks = {t: 0 for t in (tracks.DETECTED, tracks.INTERPOLATED, tracks.HELD,
                                      tracks.NONE)}
        self.edited = self.passed = 0

    def path(self, key: str) -> str:
        return os.path.join(self.out_dir, "videos", key, f"{self.stem}{self.ext}")

    def _open(self, keys: list) -> None:
        self.keys = keys
        d = self.decoder
        for k in keys:
            self.encoders[k] = Encoder(self.path(k), d.info, audio_from=d.path, start=d.start,
                                       end=d.end)
            self.flicker[k] = Flicker()
        for rgb, pts in self.spool:  # the frames that came before the first face
            self._write_all({k: rgb for k in keys}, pts, rgb, None)

    def _write_all(self, outs: dict, pts: int, inp: np.ndarray, face) -> None:
        t0 = time.perf_counter()
        for k, rgb in outs.items():
            self.encoders[k].write(rgb, pts)
            self.flicker[k].add(inp, rgb, face)
        self.meters.add("encode", time.perf_counter() - t0)

    def add(self, state: FrameState) -> None:
        """A frame leaves the stages (in order); it waits here until written."""
        self.tracks[state.track if state.face is not None else tracks.NONE] += 1
        self.queue.append(state)
        if self.keys is None and len(self.queue) > SPOOL_AFTER:
            head = self.queue[0]
            if head.item is None:  # never edited: to disk until the keys are known
                self.queue.pop(0)
                self.spool.add(head.frame.rgb, head.frame.pts)
                self.passed += 1

    def _pass(self, s: FrameState) -> None:
        self.passed += 1
        if self.keys is None:
            self.spool.add(s.frame.rgb, s.frame.pts)
        else:
            self._write_all({k: s.frame.rgb for k in self.keys}, s.frame.pts, s.frame.rgb, None)

    def edit(self, stem: str, rows) -> None:
        """A tracked frame's edits: rows of (key, label, float image [-1, 1])."""
        edits = {key: im for row in rows for key, _, im in row}
        while self.queue and (self.queue[0].item is None or self.queue[0].item.stem != stem):
            self._pass(self.queue.pop(0))  # earlier frames: faceless, or never edited
        if not self.queue:
            raise EditError(f"video: an edit arrived for frame {stem}, which is not pending")
        s = self.queue.pop(0)
        if self.keys is None:
            self._open(list(edits))
        elif set(edits) != set(self.keys):
            raise EditError(f"video: frame {stem} has edits {sorted(edits)}, the clip "
                            f"{sorted(self.keys)}")
        t0 = time.perf_counter()
        outs = {k: paste_back(s.frame.rgb, images.to_uint8(edits[k]), s.face)
                for k in self.keys}
        self.meters.add("paste", time.perf_counter() - t0)
        self._write_all(outs, s.frame.pts, s.frame.rgb, s.face)
        self.edited += 1

    def finish(self) -> dict:
        """Write what is left and close the clips -> {key: path}."""
        while self.queue:
            self._pass(self.queue.pop(0))
        out = {}
        for k, enc in self.encoders.items():
            enc.close()
            out[k] = enc.path
        return out

    def abort(self) -> None:
        for enc in self.encoders.values():
            enc.abort()


# ----------------------------------------------------------------------------- context


class VideoContext:
    """What a subcommand's run(args, ctx) gets for a clip: the `editing.cli.EditContext`
    interface (model, code shape, render, progress, writers), where `items` is the lazy
    stream of the clip's inverted frames and write_standard / write_edit hand the rendered
    edits to the clip's writer instead of writing PNGs; grids and arrays are not written.
    One context serves every clip of a run (one compiled renderer)."""

    def __init__(self, args: argparse.Namespace, inverter):
        self.args, self.out, self.inverter = args, args.out, inverter
        g = inverter.generator_config
        self.n_styles, self.style_dim, self.size = g.n_latent, g.style_dim, g.size
        self.cars_crop = bool(inverter.model.config.cars_crop)
        self.renderer = EditRenderer(inverter, args.batch_size)
        self._renderers = {args.batch_size: self.renderer}
        self.failed: list = []
        self.writer: Optional[ClipWriter] = None
        self.meters: Optional[Meters] = None
        self._stream = None
        self._total = None
        self._handed_out = 0.0
        os.makedirs(self.out, exist_ok=True)

    def start_clip(self, stream: Iterator[FrameState], writer: ClipWriter, meters: Meters,
                   total: Optional[int]) -> None:
        self.writer, self.meters, self._total = writer, meters, total
        self._stream = self._items_of(stream)

    def _items_of(self, stream):
        for s in stream:
            self.writer.add(s)
            if s.item is not None:
                self._handed_out = time.perf_counter()
                yield s.item

    @property
    def items(self):
        return self._stream

    def item(self, name: str):
        raise EditError(f"--video: the items are a clip's frames, not named images ({name!r})")

    def drain(self) -> None:
        """Frames the subcommand did not ask for pass through unchanged."""
        for _ in self._stream:
            pass

    def render(self, codes: np.ndarray, deltas) -> np.ndarray:
        """As EditContext.render, compiled for min(K, --batch_size) codes: a frame's K
        edits (often 2: reconstruction and edit) then fill the batch, no padding."""
        k = max(1, min(len(codes), self.args.batch_size))
        if k not in self._renderers:
            self._renderers[k] = EditRenderer(self.inverter, k)
        return self._renderers[k](codes, deltas)

    def progress(self, seq, desc: str):
        return cli.progress(seq, total=self._total, desc=f"{desc} (video)", unit="frame")

    def write_edit(self, key: str, stem: str, image: np.ndarray) -> None:
        self.writer.edit(stem, [[(key, key, image)]])

    def write_grid(self, stem: str, rows) -> None:
        pass

    def write_arrays(self, stem: str, arrays: dict) -> None:
        pass

    def write_standard(self, item: InvertedImage, reconstruction: np.ndarray, rows) -> None:
        # the edit stage: from handing the item out to its edits coming back
        self.meters.add("edit", time.perf_counter() - self._handed_out)
        self.writer.edit(item.stem, rows)


# ----------------------------------------------------------------------------- running


def output_ext(path: str, opts: VideoOptions) -> str:
    if opts.video_ext:
        return opts.video_ext
    ext = os.path.splitext(path)[1].lower()
    return ext if ext in video_io.FORMATS else ".mp4"


@dataclass
class ClipResult:
    path: str
    outputs: dict = field(default_factory=dict)
    report: Optional[str] = None
    problem: Optional[str] = None  # one line when the clip is not fully edited


def edit_clip(path: str, stem: str, args, ctx: VideoContext, opts: VideoOptions,
              invert: Callable, landmarker: Optional[Callable] = None,
              aligner: Optional[Callable] = None, progress: bool = True) -> ClipResult:
    """One clip through every stage and the subcommand's run(args, ctx)."""
    t_start = time.perf_counter()
    decoder = Decoder(path, opts.start, opts.duration)
    try:
        info = decoder.info
        total = info.expected_frames()
        if opts.duration is not None:
            total = int(round(opts.duration * float(info.fps)))
        elif opts.start:
            total = max(0, total - int(round(opts.start * float(info.fps))))
        meters = Meters(total, progress)
        ext = output_ext(path, opts)
        writer = ClipWriter(ctx.out, stem, ext, decoder, meters)
        ctx.start_clip(frame_states(decoder, opts, invert, ctx.inverter.input_hw, meters,
                                    landmarker, aligner), writer, meters, total)
        try:
            args.run(args, ctx)
            ctx.drain()
            if writer.keys is None:
                n = decoder.n_decoded
                if n == 0:
                    why = decoder.damage or "no frames in the requested range"
                    raise VideoError(f"{path}: nothing decoded ({why})")
                raise VideoError(f"{path}: no face found in any of its {n} frame(s); "
                                 f"nothing written")
            outputs = writer.finish()
        except BaseException:
            writer.abort()
            raise
        finally:
            meters.close()
        warnings = [w for e in writer.encoders.values() for w in e.warnings]
        problem = None
        if decoder.damage:
            problem = (f"{path}: damaged: {decoder.damage}; the {decoder.n_decoded} frame(s) "
                       f"before it are edited and written")
        report = {
            "clip": info.to_dict(),
            "command": args.command,
            "options": {k: getattr(opts, k) for k in opts.__dataclass_fields__},
            "frames": decoder.n_decoded, "edited": writer.edited, "passed_through": writer.passed,
            "tracks": writer.tracks, "damage": decoder.damage, "warnings": warnings,
            "video_codec": next(iter(writer.encoders.values())).codec,
            "audio": {k: e.audio_packets > 0 for k, e in writer.encoders.items()},
            "outputs": outputs,
            "flicker": {k: f.ratio() for k, f in writer.flicker.items()},
            "stages": meters.summary(),
            "seconds": round(time.perf_counter() - t_start, 2),
        }
        report_path = os.path.join(ctx.out, "videos", f"{stem}.json")
        with atomic_write(report_path, "w") as f:
            json.dump(report, f, indent=1)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr, flush=True)
        flick = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a"
                          for k, v in report["flicker"].items())
        print(f"{path}: {decoder.n_decoded} frames ({writer.edited} edited, {writer.passed} "
              f"unchanged) -> {os.path.join(ctx.out, 'videos')}; flicker (output/input "
              f"change in the face box): {flick}", flush=True)
        return ClipResult(path, outputs, report_path, problem)
    finally:
        decoder.close()


def edit_videos(args: argparse.Namespace, inverter=None) -> int:
    """`edit <subcommand> --video CLIP ...`: each clip in turn; a clip that fails is one
    line on stderr and the others go on. Exit status 1 when any clip failed or was damaged.
    inverter: None loads --checkpoint and --w_encoder."""
    if args.command in UNSUPPORTED:
        raise EditError(f"--video: {UNSUPPORTED[args.command]}")
    if args.align:
        raise EditError("--align applies to --images (--video always aligns each frame)")
    opts = VideoOptions.from_args(args)
    try:
        video_io.require()
        align.require(opts.detector)
    except (video_io.VideoUnavailableError, align.AlignUnavailableError) as e:
        raise EditError(f"--video: {e}") from None
    if inverter is None:
        if not args.w_encoder:
            raise EditError("--video needs --w_encoder (each frame is inverted)")
        inverter = load_inverter(args.checkpoint, args.w_encoder,
                                 precision=getattr(args, "precision", "fp32"))
    ctx = VideoContext(args, inverter)
    compiled = {}

    def invert(x):
        if "run" not in compiled:
            compiled["run"] = inverter.batched_inverter(opts.batch_size, opts.n_iters)
        return compiled["run"](x)

    failed = []
    # Stems over every clip first, so a clip's outputs are named as in a one-process run.
    mine = list(zip(*shard_inputs(args.video)))
    if not mine:
        print(f"process {jax.process_index()}: no clip to edit ({len(args.video)} "
              f"clip(s) shared by {jax.process_count()} processes)", flush=True)
    for path, stem in mine:
        try:
            result = edit_clip(path, stem, args, ctx, opts, invert)
        except VideoError as e:
            cli.fail(cli.one_line(e))  # this clip's one line; the others go on
            failed.append(path)
            continue
        if result.problem:
            cli.fail(result.problem)
            failed.append(path)
    if failed:
        print(f"{len(failed)} clip(s) failed: {', '.join(failed)}", file=sys.stderr, flush=True)
    return 1 if failed else 0


def peak_traced(fn: Callable, *a, **kw) -> tuple:
    """(fn's result, peak bytes traced by tracemalloc while it ran): Python and NumPy
    allocations (numpy reports its buffers to tracemalloc)."""
    tracemalloc.start()
    try:
        out = fn(*a, **kw)
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
