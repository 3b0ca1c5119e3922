"""Decode and encode clips with PyAV (the `video` extra): frames in, frames out, audio kept.

    clip = Decoder(path, start=2.0, duration=5.0)    # VideoError (one line) if not a video
    for frame in clip.frames():                       # Frame(index, pts, time, rgb uint8)
        ...
    clip.damage                                       # None, or why decoding stopped early
    enc = Encoder(out_path, clip.info, audio_from=path, start=clip.start, end=clip.end)
    enc.write(rgb, frame.pts)                         # pts in the input's time base
    enc.close()                                       # the file appears complete, or not at all

The output keeps the input's frame size, frame rate and every frame's timestamp (variable
frame rates stay variable), and copies the first audio stream's packets unchanged (remux,
no re-encoding) when the output container takes that codec; when it does not, `Encoder`
says so in `warnings` and writes the video alone. Video: H.264 (libx264, CRF 16) when the
wheel has it (PyAV's wheels do), else MPEG-4 part 2. Only a bounded number of packets is
held at a time: audio is read alongside the video, about a second ahead.
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Optional

import numpy as np

from hyperstyle_jax.utils.paths import atomic_write

FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}
H264 = "libx264"
CRF = "16"  # near-transparent: pixels away from the face stay within codec error
AUDIO_LEAD_S = 1.0  # audio packets muxed up to this far ahead of the last video frame


class VideoError(ValueError):
    """A clip that cannot be read or written; the message is one line naming the file."""


class VideoUnavailableError(RuntimeError):
    """PyAV (the `video` extra) is missing; the message says how to install it."""


INSTALL_HINT = "pip install -e '.[video]'  (PyAV, with FFmpeg inside the wheel)"


def require():
    """The `av` module, or VideoUnavailableError with the install hint."""
    try:
        import av  # noqa: PLC0415  optional extra
    except ImportError:
        raise VideoUnavailableError(f"video needs PyAV: {INSTALL_HINT}") from None
    return av


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def video_codec() -> str:
    """The encoder used: 'libx264' (H.264) when the wheel has it, else 'mpeg4'."""
    return H264 if H264 in require().codecs_available else "mpeg4"


def output_format(ext: str) -> str:
    """'.mp4' -> 'mp4' (the muxer); VideoError for extensions we do not write."""
    fmt = FORMATS.get(ext.lower())
    if fmt is None:
        raise VideoError(f"cannot write {ext!r} clips; use one of {', '.join(sorted(FORMATS))}")
    return fmt


@dataclass(frozen=True)
class ClipInfo:
    path: str
    width: int
    height: int
    fps: Fraction  # the average frame rate (the output stream's nominal rate)
    time_base: Fraction  # of the video stream: pts * time_base = seconds
    n_frames: int  # declared by the container (0 when it does not say)
    duration_s: float  # of the container (0 when unknown)
    start_pts: int  # the first frame's pts (streams may not start at 0)
    audio_codec: Optional[str]  # the first audio stream's codec, or None
    pix_fmt: str

    def expected_frames(self) -> int:
        """Frames the container promises: declared, else duration x rate (0 if unknown)."""
        if self.n_frames:
            return self.n_frames
        return int(round(self.duration_s * float(self.fps))) if self.duration_s else 0

    def to_dict(self) -> dict:
        return {"path": self.path, "width": self.width, "height": self.height,
                "fps": float(self.fps), "fps_fraction": str(self.fps),
                "time_base": str(self.time_base), "n_frames": self.n_frames,
                "duration_s": self.duration_s, "audio_codec": self.audio_codec,
                "pix_fmt": self.pix_fmt}


@dataclass
class Frame:
    index: int  # 0-based among the frames decoded (after --start)
    pts: int  # in the input's time base, relative to the first frame written
    time: float  # seconds in the input clip
    rgb: np.ndarray  # uint8 [H, W, 3]


class Decoder:
    """One clip's video frames as RGB, from `start` seconds for `duration` seconds.

    Opening fails with a one-line VideoError (not a video, no video stream). Decoding stops
    at damage (a truncated file, a corrupt packet) without raising: `damage` then says
    where, and the frames before it have been yielded. A stream that ends well before the
    container's stated duration is reported as truncated too.
    """

    def __init__(self, path: str, start: float = 0.0, duration: Optional[float] = None):
        av = require()
        self.path, self.start = path, max(0.0, float(start or 0.0))
        self.end = None if duration is None else self.start + float(duration)
        self.damage: Optional[str] = None
        self.n_decoded = 0
        if not os.path.isfile(path):
            raise VideoError(f"{path}: no such file")
        try:
            self.container = av.open(path)
        except (av.FFmpegError, OSError, ValueError) as e:
            hint = ""
            if path.lower().endswith((".mp4", ".mov", ".m4v")):
                hint = "; an MP4/MOV cut before its index (moov) cannot be recovered"
            raise VideoError(f"{path}: not a readable video ({_one_line(e)}{hint})") from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoError(f"{path}: no video stream (streams: "
                             f"{', '.join(s.type for s in self.container.streams) or 'none'})")
        vs = self.container.streams.video[0]
        self.stream = vs
        audio = self.container.streams.audio
        fps = vs.average_rate or vs.guessed_rate or Fraction(25)
        self.info = ClipInfo(
            path=path, width=vs.codec_context.width, height=vs.codec_context.height,
            fps=Fraction(fps), time_base=Fraction(vs.time_base), n_frames=int(vs.frames or 0),
            duration_s=float(self.container.duration or 0) / 1e6,
            start_pts=int(vs.start_time or 0),
            audio_codec=audio[0].codec_context.name if audio else None,
            pix_fmt=vs.codec_context.pix_fmt or "yuv420p")
        if self.info.width < 2 or self.info.height < 2:
            self.close()
            raise VideoError(f"{path}: the video stream has no frame size")
        self._first_pts: Optional[int] = None

    @property
    def first_pts(self) -> int:
        """pts (input time base) of the first frame yielded: the output's time zero."""
        return self._first_pts or 0

    def frames(self) -> Iterator[Frame]:
        av = require()
        vs, tb = self.stream, self.info.time_base
        if self.start > 0:
            try:
                self.container.seek(int(self.start / tb) + self.info.start_pts, stream=vs,
                                    backward=True)
            except av.FFmpegError:
                pass  # unseekable: decode from the beginning and skip
        last_time = None
        try:
            for fr in self.container.decode(vs):
                if fr.pts is None:
                    continue
                t = float((fr.pts - self.info.start_pts) * tb)
                if t < self.start - 1e-6:
                    continue
                if self.end is not None and t >= self.end - 1e-6:
                    break
                if self._first_pts is None:
                    self._first_pts = fr.pts
                rgb = fr.to_ndarray(format="rgb24")
                last_time = t
                yield Frame(self.n_decoded, fr.pts - self._first_pts, t, rgb)
                self.n_decoded += 1
        except (av.FFmpegError, OSError) as e:
            self.damage = (f"decoding stopped after {self.n_decoded} frame(s) "
                           f"({_one_line(e)})")
            return
        if self.end is None and self.n_decoded and self.info.duration_s:
            # a stream cut short without an error (Matroska, MPEG-TS): the container says more
            frame_s = 1.0 / float(self.info.fps)
            if last_time is not None and last_time + 3 * frame_s < self.info.duration_s - 1e-3:
                self.damage = (f"the stream ends at {last_time + frame_s:.2f} s of the "
                               f"{self.info.duration_s:.2f} s the container states "
                               f"({self.n_decoded} frame(s))")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.container.close()


def audio_fits(fmt: str, src_path: str) -> tuple[bool, str]:
    """(whether the muxer `fmt` takes the first audio stream of src_path as it is, why not)."""
    av = require()
    with av.open(src_path) as src:
        if not src.streams.audio:
            return False, "no audio stream"
        ins = src.streams.audio[0]
        try:
            probe = av.open(io.BytesIO(), "w", format=fmt)
            try:
                out = probe.add_stream_from_template(ins)
                for pk in src.demux(ins):  # one real packet: the muxer checks codec tags
                    if pk.dts is not None:
                        pk.stream = out
                        probe.mux(pk)
                        break
            finally:
                probe.close()
        except (av.FFmpegError, ValueError):
            return False, "the muxer refuses the codec"
    return True, ""


class Encoder:
    """Write RGB frames with the given timestamps into `path` (its extension picks the
    container), with the source's audio remuxed; the file appears only on `close()`."""

    def __init__(self, path: str, info: ClipInfo, audio_from: Optional[str] = None,
                 start: float = 0.0, end: Optional[float] = None, first_pts: int = 0,
                 crf: str = CRF):
        av = require()
        self.path, self.info = path, info
        self.warnings: list[str] = []
        self.codec = video_codec()
        self.n_written = 0
        fmt = output_format(os.path.splitext(path)[1])
        self._stack = contextlib.ExitStack()
        f = self._stack.enter_context(atomic_write(path))
        self.container = av.open(f, "w", format=fmt)
        vs = self.container.add_stream(self.codec, rate=info.fps)
        vs.width, vs.height = info.width, info.height
        # 4:2:0 needs even sizes; keep odd ones (and 4:4:4 input) in 4:4:4
        odd = info.width % 2 or info.height % 2
        vs.pix_fmt = ("yuv444p" if (odd or info.pix_fmt.startswith("yuv444"))
                      and self.codec == H264 else "yuv420p")
        if odd and self.codec != H264:
            raise VideoError(f"{path}: {info.width}x{info.height} needs H.264 4:4:4, "
                             f"this PyAV has no libx264")
        vs.time_base = info.time_base
        vs.codec_context.time_base = info.time_base
        if self.codec == H264:
            vs.options = {"crf": crf, "preset": "medium"}
        else:
            vs.bit_rate = 8_000_000
        self.video = vs
        self.info_audio = None
        self._audio_src = self._audio_packets = None
        if audio_from is not None and info.audio_codec is not None:
            ok, why = audio_fits(fmt, audio_from)
            if ok:
                self._audio_src = av.open(audio_from)
                ins = self._audio_src.streams.audio[0]
                self.audio = self.container.add_stream_from_template(ins)
                self._audio_tb = Fraction(ins.time_base)
                self._audio_start = int(round(start / self._audio_tb)) + int(ins.start_time or 0)
                self._audio_end = (None if end is None
                                   else int(round(end / self._audio_tb)) + int(ins.start_time or 0))
                self._audio_packets = self._audio_src.demux(ins)
                self._pending = None
            else:
                self.warnings.append(f"{path}: the audio ({info.audio_codec}) cannot go into a "
                                     f"{fmt} file ({why}); written without audio (use the "
                                     f"input's container, e.g. --video_ext .mkv)")
        self.audio_packets = 0

    def _mux_audio(self, until_s: Optional[float]) -> None:
        """Copy audio packets whose time (relative to start) is before until_s (all: None)."""
        av = require()
        if self._audio_packets is None:
            return
        try:
            while True:
                pk = self._pending or next(self._audio_packets, None)
                self._pending = None
                if pk is None:
                    self._audio_packets = None
                    return
                if pk.dts is None or pk.pts is None:
                    continue  # the demuxer's flush packet
                if pk.pts < self._audio_start:
                    continue
                if self._audio_end is not None and pk.pts >= self._audio_end:
                    self._audio_packets = None
                    return
                if until_s is not None and float((pk.pts - self._audio_start)
                                                 * self._audio_tb) > until_s:
                    self._pending = pk
                    return
                pk.pts -= self._audio_start
                pk.dts -= self._audio_start
                pk.stream = self.audio
                self.container.mux(pk)
                self.audio_packets += 1
        except (av.FFmpegError, OSError) as e:  # damaged audio: keep what was copied
            self.warnings.append(f"{self.info.path}: audio copy stopped ({_one_line(e)})")
            self._audio_packets = None

    def write(self, rgb: np.ndarray, pts: int) -> None:
        """One frame, uint8 [H, W, 3] of the input's size, pts in the input's time base."""
        av = require()
        if rgb.shape != (self.info.height, self.info.width, 3):
            raise VideoError(f"{self.path}: frame {list(rgb.shape)} is not "
                             f"{self.info.height}x{self.info.width}x3")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = int(pts)
        frame.time_base = self.info.time_base
        self._mux_audio(float(pts * self.info.time_base) + AUDIO_LEAD_S)
        for packet in self.video.encode(frame):
            self.container.mux(packet)
        self.n_written += 1

    def close(self) -> None:
        """Flush the encoder, copy the remaining audio, and let the file appear."""
        try:
            for packet in self.video.encode(None):
                self.container.mux(packet)
            self._mux_audio(None)
            self.container.close()
        except BaseException:
            self.abort()
            raise
        finally:
            if self._audio_src is not None:
                self._audio_src.close()
        self._stack.close()

    def abort(self) -> None:
        """Drop the output (nothing appears at `path`)."""
        with contextlib.suppress(Exception):
            self.container.close()
        if self._audio_src is not None:
            with contextlib.suppress(Exception):
                self._audio_src.close()
        with contextlib.suppress(Exception):
            self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)
