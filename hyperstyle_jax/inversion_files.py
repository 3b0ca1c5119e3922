"""The `invert` output folder: the one module that writes and reads its files.

    OUT/iterations/<k>/<stem>.png   k = 0 (the W-encoder's inversion) .. n (final)
    OUT/final/<stem>.png            the last iteration's reconstruction (the refined one
                                    when refined)
    OUT/refined/<stem>.png          with invert --refine_steps: the PTI-style refinement
    OUT/inputs/<stem>.png           the input as the model saw it (aligned, resized)
    OUT/grids/<stem>.png            labelled: input | initial | iteration 1 .. n
    OUT/latents.npz                 {stem: codes float32 [n_styles, D]} (no pickle)
    OUT/latents.part-<p>-of-<P>.npz process p's codes in a run of P processes, the same
                                    format; while the run lasts (merged into latents.npz)
    OUT/deltas/<stem>.npz           'layer_<j>': final offsets [out, in, k, k] per tuned layer
    OUT/arrays/<stem>.npz           'init', 'iter_1' .. 'iter_n' float32 [H, W, 3] un-clipped,
                                    'codes' [n_styles, D], and 'refined' when refined
                                    (latents.npz and deltas/ then hold the refined codes
                                    and offsets: what `edit --inversion` renders)
    OUT/transforms/<stem>.json      aligned inputs: the source photo's path, its name in
                                    pasted/ and the `align.AlignedFace` transform (what
                                    `edit --inversion OUT --paste_back` pastes with)
    OUT/pasted/<photo>.png          with --paste_back: the final reconstruction pasted into
                                    the source photo (every face of it), at its size

Folders written before `latents.npz` hold `latents.npy` (the official script's pickled dict);
`read_codes` still reads them, and that is the only pickle this package loads. Every file
appears whole (`utils.paths.atomic_write`). Readers check what they read against the
generator and fail with `InversionFileError`, one line naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from hyperstyle_jax.align import AlignedFace, AlignError
from hyperstyle_jax.utils import images
from hyperstyle_jax.utils.paths import atomic_write

CODES = "latents.npz"
OLD_CODES = "latents.npy"
ITERATIONS = "iterations"
REFINED = "refined"
ARRAYS = "arrays"
DELTAS = "deltas"
INPUTS = "inputs"
TRANSFORMS = "transforms"
PASTED = "pasted"
TRANSFORM_FORMAT = "hyperstyle_jax.FaceOrigin/1"


class InversionFileError(ValueError):
    """A missing or malformed file of an inversion folder (one line naming it)."""


@dataclasses.dataclass(frozen=True)
class FaceOrigin:
    """Where an aligned input came from: the source photo's path, the name of its pasted
    outputs (the photo's stem: every face of one photo shares it) and the alignment
    transform that `align.paste_back` inverts."""
    source: str
    photo: str
    face: AlignedFace


@dataclasses.dataclass
class InvertedImage:
    """One inverted image: codes [n_styles, D]; deltas: per generator layer None or
    [out, in, k, k]; image: the input as the model saw it, uint8 [h, w, 3] (None when
    unknown); reconstruction: the final render, float32 [H, W, 3] (None when not kept);
    origin: the photo and transform of an aligned input (None when not aligned)."""
    stem: str
    codes: np.ndarray
    deltas: list
    image: Optional[np.ndarray] = None
    reconstruction: Optional[np.ndarray] = None
    origin: Optional[FaceOrigin] = None


# ----------------------------------------------------------------------------- writing


def _save_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def deltas_arrays(deltas: Sequence[Optional[np.ndarray]]) -> dict:
    """Per-layer offsets (None at untuned layers) -> {'layer_<j>': array}."""
    return {f"layer_{j}": np.asarray(d) for j, d in enumerate(deltas) if d is not None}


def deltas_bytes(deltas: Sequence[Optional[np.ndarray]]) -> bytes:
    """The bytes of a deltas/<stem>.npz file (for a download)."""
    buf = io.BytesIO()
    np.savez(buf, **deltas_arrays(deltas))
    return buf.getvalue()


def codes_bytes(codes: Mapping[str, np.ndarray]) -> bytes:
    """The bytes of a latents.npz file {stem: codes [n_styles, D]} (for a download)."""
    buf = io.BytesIO()
    np.savez(buf, **{str(s): np.asarray(c, np.float32) for s, c in codes.items()})
    return buf.getvalue()


def write_codes(out: str, codes: Mapping[str, np.ndarray]) -> str:
    """OUT/latents.npz {stem: codes [n_styles, D]}; returns its path."""
    path = os.path.join(out, CODES)
    _save_npz(path, {str(s): np.asarray(c, np.float32) for s, c in codes.items()})
    return path


def codes_part_path(out: str, index: int, count: int) -> str:
    """OUT/latents.part-<index>-of-<count>.npz: one process's codes in a multi-process run."""
    return os.path.join(out, f"{CODES[:-len('.npz')]}.part-{index}-of-{count}.npz")


def write_codes_part(out: str, codes: Mapping[str, np.ndarray], index: int, count: int) -> str:
    """Process `index` of `count`: its codes (possibly none) as a part file; returns its path."""
    path = codes_part_path(out, index, count)
    _save_npz(path, {str(s): np.asarray(c, np.float32) for s, c in codes.items()})
    return path


def merge_codes(out: str, count: int) -> Optional[str]:
    """Join the `count` part files into OUT/latents.npz, in process order (each part in its
    own order: the order of one process's run when the parts are contiguous blocks of the
    inputs), then remove the parts. Returns the path, or None when no part holds codes (no
    latents.npz, as a one-process run without codes). InversionFileError names a missing
    part or a stem found in two."""
    parts = [codes_part_path(out, p, count) for p in range(count)]
    codes: dict = {}
    for path in parts:
        if not os.path.isfile(path):
            raise InversionFileError(f"{path}: missing (each process writes its part into the "
                                     f"same folder: is it on a file system every host shares?)")
        for k, c in _read_codes_npz(path).items():
            if k in codes:
                raise InversionFileError(f"{path}: stem {k!r} is also in an earlier part")
            codes[k] = c
    written = write_codes(out, codes) if codes else None
    for path in parts:
        os.remove(path)
    return written


def write_deltas(out: str, stem: str, deltas: Sequence[Optional[np.ndarray]]) -> None:
    """OUT/deltas/<stem>.npz: 'layer_<j>' [out, in, k, k] at the tuned layers."""
    _save_npz(os.path.join(out, DELTAS, f"{stem}.npz"), deltas_arrays(deltas))


def write_input(out: str, stem: str, image: np.ndarray) -> None:
    """OUT/inputs/<stem>.png: the input as the model saw it (later edits show it)."""
    images.save_image(os.path.join(out, INPUTS, f"{stem}.png"), image)


def iteration_path(out: str, k: int, stem: str) -> str:
    """OUT/iterations/<k>/<stem>.png."""
    return os.path.join(out, ITERATIONS, str(k), f"{stem}.png")


def final_path(out: str, stem: str) -> str:
    """OUT/final/<stem>.png."""
    return os.path.join(out, "final", f"{stem}.png")


def refined_path(out: str, stem: str) -> str:
    """OUT/refined/<stem>.png."""
    return os.path.join(out, REFINED, f"{stem}.png")


def write_item(out: str, stem: str, image: np.ndarray, iterations: Sequence[np.ndarray],
               codes: np.ndarray, deltas: Optional[Sequence] = None,
               save_arrays: bool = False, refined: Optional[np.ndarray] = None) -> None:
    """Everything `invert` writes for one image but the codes.

    image: uint8 [h, w, 3], the model's input; iterations: float32 [H, W, 3] renders, the
    W-encoder's (0) then each iteration's (1 .. n); codes [n_styles, D]; deltas (written
    when given): per layer None or [out, in, k, k]; save_arrays: arrays/<stem>.npz;
    refined: the refinement's render float32 [H, W, 3] (refined/, final/, a grid column
    and the 'refined' array; codes and deltas are then the refined ones)."""
    n = len(iterations) - 1
    for k, img in enumerate(iterations):
        images.save_image(iteration_path(out, k, stem), img)
    last = iterations[-1] if refined is None else refined
    if refined is not None:
        images.save_image(refined_path(out, stem), refined)
    images.save_image(final_path(out, stem), last)
    write_input(out, stem, image)
    labels = ["input", "initial (W)"] + [f"iteration {k}" for k in range(1, n + 1)]
    cells = [image] + list(iterations)
    if refined is not None:
        labels.append("refined")
        cells.append(refined)
    grid = images.make_grid([cells], cell_hw=iterations[-1].shape[:2], labels=[labels])
    images.save_image(os.path.join(out, "grids", f"{stem}.png"), grid)
    if save_arrays:
        arrays = {"init": np.asarray(iterations[0], np.float32),
                  "codes": np.asarray(codes, np.float32)}
        arrays.update({f"iter_{k}": np.asarray(iterations[k], np.float32)
                       for k in range(1, n + 1)})
        if refined is not None:
            arrays[REFINED] = np.asarray(refined, np.float32)
        _save_npz(os.path.join(out, ARRAYS, f"{stem}.npz"), arrays)
    if deltas is not None:
        write_deltas(out, stem, deltas)


def transform_path(folder: str, stem: str) -> str:
    """OUT/transforms/<stem>.json."""
    return os.path.join(folder, TRANSFORMS, f"{stem}.json")


def write_transform(out: str, stem: str, origin: FaceOrigin) -> None:
    """OUT/transforms/<stem>.json: the source photo (absolute path), its pasted name and
    the AlignedFace record (`AlignedFace.to_dict`)."""
    record = {"format": TRANSFORM_FORMAT, "source": os.path.abspath(origin.source),
              "photo": origin.photo, "face": origin.face.to_dict()}
    with atomic_write(transform_path(out, stem), "w") as f:
        json.dump(record, f, indent=1)


def pasted_path(out: str, photo: str, key: Optional[str] = None) -> str:
    """OUT/pasted/<photo>.png (invert), OUT/pasted/<key>/<photo>.png (edit)."""
    parts = [out, PASTED] + ([key] if key else []) + [f"{photo}.png"]
    return os.path.join(*parts)


def write_inversion(out: str, items: Sequence[InvertedImage], codes: bool = True) -> None:
    """latents.npz, deltas/<stem>.npz, inputs/<stem>.png (when known) and
    transforms/<stem>.json (aligned inputs) of inverted images: what a later
    `edit --inversion OUT` reads. codes=False: all but latents.npz (a multi-process run
    writes it with `inference.write_run_codes`)."""
    for it in items:
        if it.image is not None:
            write_input(out, it.stem, it.image)
        if it.origin is not None:
            write_transform(out, it.stem, it.origin)
        write_deltas(out, it.stem, it.deltas)
    if codes:
        write_codes(out, {it.stem: it.codes for it in items})


# ----------------------------------------------------------------------------- reading


def read_codes(folder: str) -> dict:
    """{stem: codes float32} from latents.npz, else from an older folder's latents.npy."""
    path = os.path.join(folder, CODES)
    if os.path.isfile(path):
        codes = _read_codes_npz(path)
    else:
        path = os.path.join(folder, OLD_CODES)
        if not os.path.isfile(path):
            raise InversionFileError(f"{folder}: no {CODES} (write the inversion with invert "
                                     f"--save_latents --save_deltas)")
        codes = _read_old_codes(path)
    if not codes:
        raise InversionFileError(f"{path}: holds no codes")
    return codes


def _read_codes_npz(path: str) -> dict:
    """{stem: codes float32} of a latents.npz (or a part file of one); no pickle."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: np.asarray(f[k], np.float32) for k in f.files}
    except (OSError, ValueError) as e:
        raise InversionFileError(f"{path}: not a codes file ({_one_line(e)})") from None


def _read_old_codes(path: str) -> dict:
    """latents.npy, the official script's pickled {stem: codes}: the one pickle read here
    (an inversion folder written before latents.npz; only open folders you trust)."""
    try:
        obj = np.load(path, allow_pickle=True).item()
    except (OSError, ValueError, AttributeError) as e:
        raise InversionFileError(f"{path}: not a latents dict ({_one_line(e)})") from None
    if not isinstance(obj, dict):
        raise InversionFileError(f"{path}: expected a dict {{stem: codes}}, got "
                                 f"{type(obj).__name__}")
    return {str(k): np.asarray(v, np.float32) for k, v in obj.items()}


def read_deltas(path: str, shapes: Sequence[Optional[tuple]]) -> list:
    """deltas/<stem>.npz -> per layer None or float32 [out, in, k, k], checked against
    `shapes` (the generator's tuned layers: `HyperStyle.tuned_delta_shapes()`)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            got = {}
            for k in f.files:
                j = k[len("layer_"):]
                if not (k.startswith("layer_") and j.isdigit()):
                    raise InversionFileError(f"{path}: unexpected key {k!r} (expected "
                                             f"layer_<j>)")
                got[int(j)] = np.asarray(f[k], np.float32)
    except (OSError, ValueError) as e:
        if isinstance(e, InversionFileError):
            raise
        raise InversionFileError(f"{path}: not a deltas file ({_one_line(e)})") from None
    tuned = {j for j, s in enumerate(shapes) if s is not None}
    if set(got) != tuned:
        raise InversionFileError(f"{path}: offsets for layers {sorted(got)}, but this "
                                 f"checkpoint tunes layers {sorted(tuned)}")
    deltas = [None] * len(shapes)
    for j, d in got.items():
        if d.shape != tuple(shapes[j]):
            raise InversionFileError(f"{path}: layer_{j} has shape {d.shape}, this checkpoint "
                                     f"needs {tuple(shapes[j])}")
        deltas[j] = d
    return deltas


def read_input(folder: str, stem: str) -> Optional[np.ndarray]:
    """inputs/<stem>.png as uint8, or None when it is missing or unreadable (it is shown,
    never computed with)."""
    path = os.path.join(folder, INPUTS, f"{stem}.png")
    try:
        return images.read_image(path) if os.path.isfile(path) else None
    except images.ImageReadError:
        return None


def read_transform(folder: str, stem: str) -> FaceOrigin:
    """transforms/<stem>.json -> FaceOrigin; InversionFileError (one line naming the file)
    when it is missing or malformed. The source photo itself is not opened here."""
    path = transform_path(folder, stem)
    if not os.path.isfile(path):
        raise InversionFileError(f"{path}: missing (invert with --align or --paste_back "
                                 f"keeps each face's transform)")
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise InversionFileError(f"{path}: not a transform file ({_one_line(e)})") from None
    if not isinstance(record, dict) or record.get("format") != TRANSFORM_FORMAT:
        raise InversionFileError(f"{path}: not a transform file (format {TRANSFORM_FORMAT})")
    try:
        face = AlignedFace.from_dict(record.get("face"), path)
    except AlignError as e:
        raise InversionFileError(str(e)) from None
    source, photo = record.get("source"), record.get("photo")
    if not isinstance(source, str) or not isinstance(photo, str) or not photo:
        raise InversionFileError(f"{path}: needs 'source' (the photo's path) and 'photo' "
                                 f"(its name) strings")
    return FaceOrigin(source, photo, face)


def read_inversion(folder: str, shapes: Sequence[Optional[tuple]], n_styles: int,
                   style_dim: int, select: Optional[Callable[[list], list]] = None) -> list:
    """An inversion folder (codes + deltas) -> [InvertedImage], in the codes file's order.

    shapes: the generator's per-layer offset shapes (None at untuned layers); codes must be
    [n_styles, style_dim]. select: the codes file's stems -> those to read (e.g.
    `parallel.process_shard`: only this process's deltas are read)."""
    codes = read_codes(folder)
    path = os.path.join(folder, CODES if os.path.isfile(os.path.join(folder, CODES))
                        else OLD_CODES)
    items = []
    stems = list(codes) if select is None else select(list(codes))
    for stem, c in ((s, codes[s]) for s in stems):
        if c.shape != (n_styles, style_dim):
            raise InversionFileError(f"{path}: codes of {stem!r} have shape {c.shape}, this "
                                     f"generator needs ({n_styles}, {style_dim})")
        dpath = os.path.join(folder, DELTAS, f"{stem}.npz")
        if not os.path.isfile(dpath):
            raise InversionFileError(f"{folder}: missing {DELTAS}/{stem}.npz (write the "
                                     f"inversion with invert --save_deltas)")
        items.append(InvertedImage(stem, c, read_deltas(dpath, shapes), read_input(folder, stem)))
    return items


def numeric_subfolders(folder: str) -> list:
    """Names of the sub-folders of `folder` that are numbers, in numeric order."""
    subs = [d for d in os.listdir(folder) if d.isdigit() and os.path.isdir(os.path.join(folder, d))]
    return sorted(subs, key=int)


def list_iterations(folder: str) -> list:
    """The iterations an inversion folder holds images of: ['0', '1', ..] ([] if none)."""
    path = os.path.join(folder, ITERATIONS)
    return numeric_subfolders(path) if os.path.isdir(path) else []


def list_stages(folder: str) -> list:
    """The stages an inversion folder holds images of, with their folders: [('0',
    OUT/iterations/0), .., ('refined', OUT/refined) when refined] ([] if none)."""
    stages = [(k, os.path.join(folder, ITERATIONS, k)) for k in list_iterations(folder)]
    if os.path.isdir(os.path.join(folder, REFINED)):
        stages.append((REFINED, os.path.join(folder, REFINED)))
    return stages


def list_arrays(folder: str) -> list:
    """Paths of arrays/<stem>.npz, sorted ([] if none)."""
    path = os.path.join(folder, ARRAYS)
    if not os.path.isdir(path):
        return []
    return [os.path.join(path, f) for f in sorted(os.listdir(path)) if f.endswith(".npz")]


def read_arrays(folder: str, stem: str) -> dict:
    """arrays/<stem>.npz -> {'init', 'iter_<k>', 'codes' (, 'refined'): float32 array}."""
    path = os.path.join(folder, ARRAYS, f"{stem}.npz")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: np.asarray(f[k], np.float32) for k in f.files}
    except (OSError, ValueError) as e:
        raise InversionFileError(f"{path}: not an arrays file ({_one_line(e)})") from None


def array_iterations(keys: Sequence[str]) -> list:
    """The keys of an arrays/<stem>.npz -> [(stage, key)]: ('0', 'init'), ('1', 'iter_1')..,
    then ('refined', 'refined') when refined."""
    out = [("0", "init")] if "init" in keys else []
    its = sorted(int(k[5:]) for k in keys if k.startswith("iter_") and k[5:].isdigit())
    out += [(str(i), f"iter_{i}") for i in its]
    return out + ([(REFINED, REFINED)] if REFINED in keys else [])


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())
