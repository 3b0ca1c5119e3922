"""TFDS builders for the HyperStyle datasets, built offline from a folder the user names.

Every builder writes `array_record` files (random access for grain) with the features

    'image':     the encoded image bytes (JPEG/PNG/... exactly as on disk when the file is
                 already 8-bit RGB; otherwise converted to 8-bit RGB and stored as PNG,
                 losslessly, see `encode_rgb8`)
    'file_name': the path relative to the source folder

Nothing is decoded here beyond validation: decoding, resizing and flipping happen in the
loader (`transforms.py`).

No TensorFlow, when writing either (TFDS documents TF-free *reading* with
`tfds.data_source`; writing was checked here, tfds 4.9.10, and is tested with a fake
`tensorflow` package that must never be imported): `GeneratorBasedBuilder` with
`file_format='array_record'` serialises examples with TFDS's own copy of the tf.Example
protos (`tensorflow_datasets.proto`) and writes through `array_record`. What would pull TF
in, and is avoided: `tfds.features.Image` given a NumPy array (encodes with
`tf.image.encode_png`; we pass the encoded bytes), `dataset_info_from_configs` (needs a
packaged builder folder; we build `DatasetInfo` directly) and `tfds.list_builders()`
(queries the community index through TF's GCS filesystem).

Builders (all take the source folder as TFDS `manual_dir`):

| name            | splits      | source layout                                                  |
|-----------------|-------------|----------------------------------------------------------------|
| `ffhq`          | train       | any tree of images                                             |
| `celeba_hq`     | test        | a folder of test images, or all images plus `file_list`        |
| `stanford_cars` | train, test | `cars_train/` + `cars_test/` (or `train/` + `test/`)           |
| `afhq_wild`     | train, test | `train/wild/` + `val/wild/` (or `test/wild/`; `train/`+`test/`) |
| `image_folder`  | any         | one sub-folder per split, or a flat tree split by seeded ratio |

Bad files never stop a build: each one is recorded in `builder.report` (see `BuildReport`)
and skipped; `build.py` writes the report next to the dataset.
"""
from __future__ import annotations

import dataclasses
import io
import os
import re
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, UnidentifiedImageError

from hyperstyle_jax.utils import cli
from hyperstyle_jax.utils.images import ImageReadError, pil_to_rgb8
from hyperstyle_jax.utils.paths import IMAGE_EXTENSIONS

DATASET_VERSION = "1.0.0"


# ----------------------------------------------------------------------------- encoding
def encode_rgb8(data: bytes, name: str) -> tuple[bytes, str | None]:
    """Validate one encoded image; return (bytes to store, conversion note or None).

    An 8-bit RGB file is returned unchanged (no re-encode, so JPEGs stay bit-exact).
    Anything else PIL can decode (grayscale, RGBA, CMYK, palette, 16-bit, ...) becomes
    8-bit RGB (`utils.images.pil_to_rgb8`) stored as PNG, which is lossless from there on.
    Raises `ImageReadError` naming `name` for empty, truncated or non-image data.
    """
    if not data:
        raise ImageReadError(f"{name}: empty file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, mode = img.format, img.mode
            # PIL opens 16-bit-per-channel RGB PNGs as mode 'RGB' (raw mode 'RGB;16B').
            sixteen_bit = mode == "RGB" and any("16" in str(t.args) for t in (img.tile or []))
            img.load()  # decode now, so truncated files fail here
            if mode == "RGB" and not sixteen_bit:
                return data, None
            rgb = pil_to_rgb8(img)
            buf = io.BytesIO()
            rgb.save(buf, format="PNG")
    except UnidentifiedImageError:
        raise ImageReadError(f"{name}: not an image (unrecognised format)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{name}: unreadable image ({' '.join(str(e).split())})") from None
    kind = f"{mode}{' 16-bit' if sixteen_bit else ''}"
    return buf.getvalue(), f"{fmt} {kind} -> PNG 8-bit RGB"


# ------------------------------------------------------------------------------- report
@dataclasses.dataclass
class BuildReport:
    """What a build did with each file it looked at (relative paths)."""

    written: dict = dataclasses.field(default_factory=dict)     # split -> count
    converted: list = dataclasses.field(default_factory=list)   # (split, path, note)
    skipped: list = dataclasses.field(default_factory=list)     # (split, path, reason)
    ignored: list = dataclasses.field(default_factory=list)     # (path, reason)

    def summary(self, name: str) -> str:
        total = sum(self.written.values())
        per = ", ".join(f"{s} {n}" for s, n in sorted(self.written.items()))
        return (f"{name}: {total} images written ({per}), {len(self.converted)} converted "
                f"to 8-bit RGB PNG, {len(self.skipped)} skipped as unreadable, "
                f"{len(self.ignored)} non-image files ignored")

    def to_text(self, name: str, header: Sequence[str] = ()) -> str:
        lines = [*header, self.summary(name), ""]
        lines.append(f"## skipped ({len(self.skipped)}): unreadable, empty or not images")
        lines += [f"{split}\t{path}\t{reason}" for split, path, reason in self.skipped]
        lines += ["", f"## converted ({len(self.converted)}): re-encoded losslessly as PNG"]
        lines += [f"{split}\t{path}\t{note}" for split, path, note in self.converted]
        lines += ["", f"## ignored ({len(self.ignored)}): not an image file extension"]
        lines += [f"{path}\t{reason}" for path, reason in self.ignored]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- file lists
def _walk(root: str) -> list[str]:
    """All regular files under `root`, relative, sorted; hidden files and folders skipped."""
    out = []
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in files:
            if not f.startswith("."):
                out.append(os.path.relpath(os.path.join(dirpath, f), root))
    return sorted(out)


def _is_image_name(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _check_split_name(split: str, where: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_]+", split):
        raise ValueError(f"{where}: split name {split!r} must be letters, digits or '_' "
                         "(TFDS split names)")
    return split


class _ManualImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared logic: `_split_files(root)` -> {split: [relative paths]} per dataset."""

    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {DATASET_VERSION: "Encoded images as on disk; non-RGB8 files as lossless PNG."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the folder holding the images as manual_dir."
    DESCRIPTION = ""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.report = BuildReport()
        self.progress = True

    # TFDS's own messages say "Downloading and preparing"; nothing is downloaded here.
    def _log_download_bytes(self) -> None:
        print(f"building {self.name} from local files into {self.data_dir} "
              "(nothing is downloaded) ...", flush=True)

    def _log_download_done(self) -> None:
        print(f"{self.name} built in {self.data_dir}", flush=True)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "file_name": tfds.features.Text(),
            }),
        )

    def _split_files(self, root: str) -> dict[str, list[str]]:
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        root = os.fspath(dl_manager.manual_dir)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{self.name}: source folder {root} does not exist")
        splits = self._split_files(root)
        for split, files in splits.items():
            if not files:
                raise ValueError(f"{self.name}: no image files for split '{split}' in {root}")
        return {split: self._generate_examples(root, split, files)
                for split, files in splits.items()}

    def _generate_examples(self, root: str, split: str, files: list[str]) -> Iterator:
        self.report.written.setdefault(split, 0)
        for rel in cli.progress(files, desc=f"{self.name}/{split}", unit="img",
                                enabled=self.progress):
            path = os.path.join(root, rel)
            try:
                with open(path, "rb") as f:
                    data = f.read()
                data, note = encode_rgb8(data, path)
            except (ImageReadError, OSError) as e:
                self.report.skipped.append((split, rel, str(e).replace(path + ": ", "")))
                continue
            if note:
                self.report.converted.append((split, rel, note))
            self.report.written[split] += 1
            yield rel, {"image": data, "file_name": rel}
        if self.report.written[split] == 0:
            raise ValueError(f"{self.name}: every file of split '{split}' under {root} is "
                             "unreadable; nothing to write")

    # -- helpers for subclasses
    def _images_under(self, root: str, sub: str) -> list[str]:
        """Image files under root/sub, relative to root; other files go to `ignored`."""
        base = os.path.join(root, sub) if sub else root
        out = []
        for rel in _walk(base):
            rel = os.path.join(sub, rel) if sub else rel
            if _is_image_name(rel):
                out.append(rel)
            else:
                self.report.ignored.append((rel, "not an image file extension"))
        return out

    def _first_existing(self, root: str, split: str, candidates: Sequence[str]) -> str:
        for c in candidates:
            if os.path.isdir(os.path.join(root, c)):
                return c
        raise FileNotFoundError(
            f"{self.name}: no folder for split '{split}' in {root}; expected one of "
            + ", ".join(os.path.join(root, c) for c in candidates))


class Ffhq(_ManualImageBuilder):
    """FFHQ (train only): every image under the source folder, e.g. images1024x1024/."""

    DESCRIPTION = "FFHQ images (train), for HyperStyle faces."

    def _split_files(self, root):
        return {"train": self._images_under(root, "")}


class CelebaHq(_ManualImageBuilder):
    """CelebA-HQ test split (the official HyperStyle evaluation set).

    Either the source folder holds exactly the test images, or it holds all of CelebA-HQ
    and `file_list` names the test images, one per line: a file name (with or without
    extension) or a path relative to the source folder. Listed names that are not found
    are recorded as skipped.
    """

    DESCRIPTION = "CelebA-HQ test images, for HyperStyle faces evaluation."

    def __init__(self, *, file_list: str | None = None, **kwargs):
        self._file_list = file_list
        super().__init__(**kwargs)

    def _split_files(self, root):
        files = self._images_under(root, "")
        if not self._file_list:
            return {"test": files}
        try:
            with open(self._file_list) as f:
                wanted = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
        except OSError as e:
            raise FileNotFoundError(f"{self._file_list}: cannot read the file list ({e})")
        if not wanted:
            raise ValueError(f"{self._file_list}: the file list is empty")
        by_key: dict[str, str] = {}
        for rel in files:
            for key in (rel, os.path.basename(rel), os.path.splitext(os.path.basename(rel))[0]):
                by_key.setdefault(key, rel)
        out = []
        for w in wanted:
            rel = by_key.get(w) or by_key.get(os.path.splitext(os.path.basename(w))[0])
            if rel is None:
                self.report.skipped.append(("test", w, f"listed in {self._file_list} "
                                            "but not found"))
            else:
                out.append(rel)
        return {"test": sorted(set(out))}


class StanfordCars(_ManualImageBuilder):
    """Stanford Cars train/test: `cars_train/` and `cars_test/` as in the official tarballs."""

    DESCRIPTION = "Stanford Cars images (train/test), for HyperStyle cars."

    def _split_files(self, root):
        return {split: self._images_under(
                    root, self._first_existing(root, split, (f"cars_{split}", split)))
                for split in ("train", "test")}


class AfhqWild(_ManualImageBuilder):
    """AFHQ wild: train = `train/wild`, test = `val/wild` (the AFHQ release's layout)."""

    DESCRIPTION = "AFHQ wild images (train/test), for HyperStyle AFHQ wild."

    def _split_files(self, root):
        cands = {"train": ("train/wild", "train"),
                 "test": ("val/wild", "test/wild", "val", "test")}
        return {split: self._images_under(root, self._first_existing(root, split, c))
                for split, c in cands.items()}


class ImageFolder(_ManualImageBuilder):
    """Any folder tree.

    split_by='folders': each top-level sub-folder is a split (`train/`, `test/`, ...);
    split_by='ratio': all images, a seeded `test_fraction` of them go to 'test', the rest
    to 'train'; split_by='auto' (default): folders when top-level sub-folders hold
    images, else ratio.
    """

    DESCRIPTION = "A user-supplied folder of images."

    def __init__(self, *, split_by: str = "auto", test_fraction: float = 0.1,
                 split_seed: int = 0, **kwargs):
        if split_by not in ("auto", "folders", "ratio"):
            raise ValueError(f"image_folder: split_by={split_by!r}; use auto, folders or ratio")
        if not 0.0 <= test_fraction < 1.0:
            raise ValueError(f"image_folder: test_fraction={test_fraction} not in [0, 1)")
        self._split_by, self._test_fraction, self._split_seed = split_by, test_fraction, split_seed
        super().__init__(**kwargs)

    def _split_files(self, root):
        subdirs = sorted(d for d in os.listdir(root)
                         if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
        mode = self._split_by
        if mode == "auto":
            mode = "folders" if any(
                any(_is_image_name(p) for p in _walk(os.path.join(root, d))) for d in subdirs
            ) else "ratio"
        if mode == "folders":
            for rel in _walk(root):
                if os.sep not in rel:
                    self.report.ignored.append((rel, "not inside a split sub-folder"))
            return {_check_split_name(d, root): self._images_under(root, d) for d in subdirs}
        files = self._images_under(root, "")
        perm = np.random.default_rng(self._split_seed).permutation(len(files))
        n_test = int(round(len(files) * self._test_fraction))
        test = sorted(files[i] for i in perm[:n_test])
        train = sorted(files[i] for i in perm[n_test:])
        return {"train": train, "test": test} if n_test else {"train": train}


BUILDERS = {
    "ffhq": Ffhq,
    "celeba_hq": CelebaHq,
    "stanford_cars": StanfordCars,
    "afhq_wild": AfhqWild,
    "image_folder": ImageFolder,
}


def get_builder_class(name: str):
    try:
        return BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(BUILDERS)}") from None
