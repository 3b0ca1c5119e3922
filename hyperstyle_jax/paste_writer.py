"""The `pasted/` outputs of `invert` and `edit`: rendered faces pasted back into their photos.

    writer = PasteWriter(out, {stem: FaceOrigin}, report=print_to_stderr)
    writer.expect(stem, origin)               # or one more face as it comes
    writer.add(stem, render)                  # invert: OUT/pasted/<photo>.png
    writer.add(stem, render, key="age_3")     # edit:   OUT/pasted/age_3/<photo>.png
    writer.close()                            # photos with a face still missing, as they are

Several faces of one photo (`--face all`) share its name: the photo is written once every
face of it has been added for that key, each pasted with its own transform
(`align.paste_back`), so memory holds the crops of the photos in progress, not photos.
The output has the photo's size, upright per EXIF (`align.read_original`; a mode it
changes, e.g. 16-bit to 8-bit, is reported), as PNG.
A photo that cannot be read or pasted into is one reported line (once per photo); the
other photos go on. Files appear whole (`images.save_image`).
"""
from __future__ import annotations

import collections
import os
from typing import Callable, Mapping, Optional

import numpy as np
from PIL import Image

from hyperstyle_jax import inversion_files
from hyperstyle_jax.align import PasteError, paste_back, read_original
from hyperstyle_jax.inversion_files import FaceOrigin
from hyperstyle_jax.utils import images
from hyperstyle_jax.utils.paths import atomic_write


class PasteWriter:
    """Collects rendered faces per (key, photo) and writes each pasted photo when complete.

    origins: {stem: FaceOrigin} of the faces that can be pasted (stems without one are
    ignored: the caller has said why). report(line): called once per failing photo; the
    lines are also kept in `failed` [(source, line)].
    """

    def __init__(self, out: str, origins: Mapping[str, FaceOrigin],
                 report: Callable[[str], None] = print):
        self.out = out
        self.origins = dict(origins)
        self.report = report
        self.failed: list = []
        self.written: list = []
        self._faces_per_photo = collections.Counter(o.photo for o in self.origins.values())
        self._pending: dict = {}  # (key, name) -> [(origin, uint8 crop)]
        self._expected: dict = {}
        self._photo: tuple = (None, None)  # (source, array): the last photo read
        self._bad: set = set()
        self._noted: set = set()

    def expect(self, stem: str, origin: FaceOrigin) -> None:
        """Register one more face (before its first `add`)."""
        if stem not in self.origins:
            self._faces_per_photo[origin.photo] += 1
        self.origins[stem] = origin

    def add(self, stem: str, image: np.ndarray, key: Optional[str] = None,
            name: Optional[str] = None) -> None:
        """The render of face `stem` (float [-1, 1] or uint8 [n, n, 3]) for edit `key`
        (None: invert's pasted/<photo>.png). name: the output's name when it is not the
        photo's (an interpolation A__B is pasted into A's photo alone)."""
        origin = self.origins.get(stem)
        if origin is None:
            return
        group = (key, name or origin.photo)
        expected = self._faces_per_photo[origin.photo] if name is None else 1
        crop = image if image.dtype == np.uint8 else images.to_uint8(image)
        self._pending.setdefault(group, []).append((origin, crop))
        self._expected[group] = expected
        if len(self._pending[group]) >= expected:
            self._write(group, self._pending.pop(group))

    def close(self) -> None:
        """Write the photos still waiting for a face (it was not inverted): the faces that
        came are pasted, the others stay as in the photo."""
        for group in list(self._pending):
            self._write(group, self._pending.pop(group))
        self._photo = (None, None)

    def _write(self, group: tuple, faces: list) -> None:
        key, name = group
        source = faces[0][0].source
        if source in self._bad:
            return
        try:
            photo = self._read(source)
            for origin, crop in faces:
                photo = paste_back(photo, crop, origin.face)
        except (images.ImageReadError, PasteError, OSError) as e:
            self._bad.add(source)
            msg = _one_line(e)
            line = f"not pasted: {msg if msg.startswith(source) else f'{source}: {msg}'}"
            self.failed.append((source, line))
            self.report(line)
            return
        path = inversion_files.pasted_path(self.out, name, key)
        with atomic_write(path) as f:
            Image.fromarray(photo).save(f, format="PNG", compress_level=3)
        self.written.append(path)

    def _read(self, source: str) -> np.ndarray:
        if self._photo[0] != source:
            self._photo = (None, None)  # one photo in memory at a time
            if not os.path.isfile(source):
                raise OSError(f"{source}: source photo missing")
            photo, changed = read_original(source)
            if changed and source not in self._noted:
                self._noted.add(source)
                self.report(f"note: {source}: pasted into as {changed}")
            self._photo = (source, photo)
        return self._photo[1]


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())
