"""Face tracks over time: fill detection gaps, Gaussian-smooth over frames, measure jitter.

Both stages are generators over a stream of per-frame records with bounded look-ahead,
so memory does not depend on the clip's length:

    states = fill_gaps(states, max_gap=12)            # .landmarks None -> interpolated/held
    states = gaussian_smooth(states, sigma=2.0, get=..., put=...)   # window 2*ceil(3 sigma)+1

Smoothing the 68 landmarks (as STIT smooths its per-frame landmarks with a Gaussian over
frames) makes the alignment quad, which is a smooth function of them, stop jittering;
the same `gaussian_smooth` smooths codes and weight offsets (`pipeline`, --code_sigma).
A frame without landmarks ends a segment: no window mixes frames across it.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from hyperstyle_jax.align.steps import quad_from_landmarks

DETECTED, INTERPOLATED, HELD, NONE = "detected", "interpolated", "held", "none"


def gaussian_weights(sigma: float) -> np.ndarray:
    """Weights for offsets -r..r, r = ceil(3 sigma) (not normalised; windows cut at a
    segment's ends renormalise). sigma 0: [1]."""
    if sigma <= 0:
        return np.ones(1)
    r = int(math.ceil(3 * sigma))
    x = np.arange(-r, r + 1, dtype=np.float64)
    return np.exp(-0.5 * (x / sigma) ** 2)


def fill_gaps(states: Iterable, max_gap: int) -> Iterator:
    """Give frames without `.landmarks` (None) a track from their neighbours.

    A gap of at most `max_gap` frames between two detections is interpolated linearly
    (`.track = 'interpolated'`); one at the clip's start or end takes the nearest
    detection (`'held'`); longer gaps stay None (`'none'`: passed through unchanged).
    Detected frames get `'detected'`. Holds at most max_gap + 1 records.
    """
    last, pending, gone = None, [], False
    for s in states:
        if s.landmarks is None:
            if gone:  # inside a long gap: through at once
                s.track = NONE
                yield s
                continue
            pending.append(s)
            if len(pending) > max_gap:  # the face is gone: stop waiting for it
                for p in pending:
                    p.track = NONE
                    yield p
                pending, last, gone = [], None, True
            continue
        gone = False
        lm = np.asarray(s.landmarks, np.float64)
        n = len(pending)
        for k, p in enumerate(pending, 1):
            if last is None:
                p.landmarks, p.track = lm.copy(), HELD
            else:
                t = k / (n + 1)
                p.landmarks, p.track = (1 - t) * last + t * lm, INTERPOLATED
            yield p
        pending = []
        s.landmarks, s.track = lm, DETECTED
        last = lm
        yield s
    for p in pending:
        if last is None:
            p.track = NONE
        else:
            p.landmarks, p.track = last.copy(), HELD
        yield p


def gaussian_smooth(states: Iterable, sigma: float, get: Callable, put: Callable) -> Iterator:
    """Replace each record's value by the Gaussian-weighted mean over its neighbours.

    get(record) -> a sequence of arrays (or None: no value, which ends the segment);
    put(record, arrays) stores the smoothed arrays (entries of None stay None). Windows
    are cut at segment ends and renormalised. Holds at most 2r + 1 records, r = ceil(3 sigma).
    """
    w = gaussian_weights(sigma)
    r = len(w) // 2
    if r == 0:
        yield from states
        return
    buf: deque = deque()  # (record, values) of the current segment, at most 2r + 1
    centre = 0  # index in buf of the next record to emit

    def emit(i: int):
        rec, vals = buf[i]
        lo, hi = max(0, i - r), min(len(buf) - 1, i + r)
        ws = w[r - (i - lo): r + (hi - i) + 1]
        ws = ws / ws.sum()
        out = []
        for k, v in enumerate(vals):
            if v is None:
                out.append(None)
                continue
            acc = np.zeros(np.shape(v), np.float64)
            for wj, j in zip(ws, range(lo, hi + 1)):
                acc += wj * np.asarray(buf[j][1][k], np.float64)
            out.append(acc.astype(np.asarray(v).dtype))
        put(rec, out)
        return rec

    for s in states:
        vals = get(s)
        if vals is None:
            while centre < len(buf):
                yield emit(centre)
                centre += 1
            buf.clear()
            centre = 0
            yield s
            continue
        buf.append((s, list(vals)))
        while len(buf) - 1 - centre >= r:
            yield emit(centre)
            centre += 1
        while centre > r:
            buf.popleft()
            centre -= 1
    while centre < len(buf):
        yield emit(centre)
        centre += 1


def quads(landmarks: Sequence[np.ndarray]) -> np.ndarray:
    """[N, 4, 2]: the alignment quad of each frame's landmarks."""
    return np.stack([quad_from_landmarks(np.asarray(lm, np.float64))[0] for lm in landmarks])


def jitter(trajectory: np.ndarray) -> float:
    """Mean length (px) of the second difference over frames of a trajectory [N, ..., 2]
    (e.g. the quads' corners): 0 for motion at constant velocity; the frame-to-frame
    shake that a smooth pan or zoom does not have."""
    t = np.asarray(trajectory, np.float64)
    if len(t) < 3:
        return 0.0
    acc = t[2:] - 2 * t[1:-1] + t[:-2]
    return float(np.linalg.norm(acc, axis=-1).mean())


def smooth_landmark_track(landmarks: Sequence[Optional[np.ndarray]], sigma: float,
                          max_gap: int = 12) -> list:
    """The streaming stages on a whole list (tests, benchmarks): [lm or None] -> [lm or None]."""
    class _S:
        def __init__(self, lm):
            self.landmarks, self.track = lm, None

    recs = [_S(None if lm is None else np.asarray(lm, np.float64)) for lm in landmarks]
    stream = gaussian_smooth(fill_gaps(iter(recs), max_gap), sigma,
                             get=lambda s: None if s.landmarks is None else [s.landmarks],
                             put=lambda s, v: setattr(s, "landmarks", v[0]))
    return [s.landmarks for s in stream]
