"""The Python API: load converted checkpoints, invert images, edit and render them.

    import hyperstyle_jax
    from hyperstyle_jax.editing import interfacegan

    model = hyperstyle_jax.load("ckpt/hyperstyle_ffhq", "ckpt/w_encoder_faces")
    [me] = model.invert(["me.jpg"], align=True)       # InvertedImage: codes, deltas, ...
    older = model.edit(me, interfacegan.apply, interfacegan.load_direction("age.pt"), [3])
    photo = model.paste_back(me, older[0])            # uint8: me.jpg, the face edited
    model.save("out/", [me])                          # the `invert` folder (--inversion)

Everything runs through the inference layer the CLIs and the page use
(`inference.invert_paths`, `Inverter.batched_inverter`, `editing.render.EditRenderer`);
compiled functions are kept per batch size and iteration count, so a notebook compiles
once. Images are float32 [H, W, 3] in [-1, 1], un-clipped (`utils.images.to_uint8`).
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence, Union

import numpy as np

from hyperstyle_jax import align, inversion_files
from hyperstyle_jax.editing.render import EditRenderer
from hyperstyle_jax.inference import Inverter, invert_paths, load_inverter, load_renderer
from hyperstyle_jax.inversion_files import InvertedImage
from hyperstyle_jax.utils import images

ImageInput = Union[str, np.ndarray]


class Model:
    """A loaded HyperStyle (+ W-encoder): `invert`, `render`, `edit`, `save`, `load_inversion`.

    inverter: the `inference.Inverter` underneath (its `model`, `frozen`, compiled helpers).
    """

    def __init__(self, inverter: Inverter, batch_size: int = 4, can_invert: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.inverter = inverter
        self.batch_size = int(batch_size)
        self.can_invert = can_invert
        self.renderer = EditRenderer(inverter, self.batch_size)
        self._inverters: dict = {}

    @property
    def input_hw(self) -> tuple:
        """The size images are resized to before inversion."""
        return tuple(self.inverter.input_hw)

    def _run(self, n_iters: int):
        if not self.can_invert:
            raise ValueError("this model was loaded without a W-encoder: it renders and "
                             "edits saved inversions only (pass w_encoder to load)")
        if n_iters not in self._inverters:
            self._inverters[n_iters] = self.inverter.batched_inverter(self.batch_size, n_iters)
        return self._inverters[n_iters]

    def invert(self, inputs: Union[ImageInput, Sequence[ImageInput]], n_iters: int = 5,
               align: bool = False, detector: str = "hog") -> list:
        """Image files and/or arrays (uint8 [H, W, 3], or float in [-1, 1]) -> one
        `InvertedImage` each (stem from the file name, else 'image_<i>'), with its final
        reconstruction. A file that cannot be read (or, with align, has no face) raises
        its one-line ValueError; align applies to files (the largest face, found by
        `detector` 'hog' or 'cnn'), and keeps its transform in `item.origin` (what
        `paste_back` and `save` use)."""
        if isinstance(inputs, (str, np.ndarray)) and not (
                isinstance(inputs, np.ndarray) and inputs.ndim == 4):
            inputs = [inputs]
        run = self._run(n_iters)
        paths = [x for x in inputs if isinstance(x, str)]
        by_path: dict = {}
        for batch in invert_paths(self.inverter, paths, n_iters, self.batch_size,
                                  align_faces=align, skip_unreadable=False, run=run,
                                  desc="invert", detector=detector):
            for i, (path, stem) in enumerate(zip(batch.paths, batch.stems)):
                by_path[path] = _item(stem, batch.result, i, batch.inputs[i],
                                      batch.origins[i])
        index = [i for i, x in enumerate(inputs) if not isinstance(x, str)]
        by_index: dict = {}
        if index:  # the compiled inverter takes them in batches, the last one padded
            x = np.stack([images.resize(_as_uint8(inputs[i]), self.input_hw) for i in index])
            result = run(images.to_float(x))
            by_index = {i: _item(f"image_{i}", result, k, x[k]) for k, i in enumerate(index)}
        return [by_path[x] if isinstance(x, str) else by_index[i] for i, x in enumerate(inputs)]

    def render(self, codes: np.ndarray, deltas: Sequence[Optional[np.ndarray]]) -> np.ndarray:
        """G(codes, deltas): codes [n_styles, D] or [K, n_styles, D]; deltas per layer None
        or [out, in, k, k] (shared by the K codes) or [K, out, in, k, k] -> float32
        [K, H, W, 3] ([H, W, 3] for one unbatched code)."""
        codes = np.asarray(codes, np.float32)
        if codes.ndim == 2:
            return self.renderer(codes[None], deltas)[0]
        return self.renderer(codes, deltas)

    def edit(self, item: InvertedImage, edit_fn: Callable, *args, **kwargs) -> np.ndarray:
        """Apply a pure edit of `hyperstyle_jax.editing` (e.g. `interfacegan.apply`,
        `ganspace.apply`: (codes, deltas, ...) -> (codes' [K, ...], deltas')) to one
        inverted image and render the K results -> float32 [K, H, W, 3]."""
        codes, deltas = edit_fn(item.codes, item.deltas, *args, **kwargs)
        return self.render(codes, deltas)

    def paste_back(self, item: InvertedImage, image: Optional[np.ndarray] = None,
                   photo: Optional[np.ndarray] = None) -> np.ndarray:
        """An aligned item's photo with `image` (float [-1, 1] or uint8 [n, n, 3]; default
        its reconstruction) pasted over its face -> uint8, the photo's size, upright per
        EXIF. photo: the photo to paste into (default: read from `item.origin.source`;
        pass the result of a previous call to paste several faces)."""
        if item.origin is None:
            raise ValueError(f"{item.stem}: no alignment transform (invert with align=True, "
                             f"or load_inversion of a folder with transforms/)")
        image = item.reconstruction if image is None else np.asarray(image)
        if image is None:
            raise ValueError(f"{item.stem}: no image to paste (pass image=)")
        if image.dtype != np.uint8:
            image = images.to_uint8(image)
        if photo is None:
            photo, _ = align.read_original(item.origin.source)
        return align.paste_back(photo, image, item.origin.face)

    def save(self, folder: str, items: Sequence[InvertedImage]) -> None:
        """Write latents.npz, deltas/, inputs/ and transforms/ (aligned items;
        `inversion_files`), so that `python -m hyperstyle_jax.edit ... --inversion folder`
        (with --paste_back) and `load_inversion` read them."""
        inversion_files.write_inversion(folder, items)

    def load_inversion(self, folder: str) -> list:
        """An `invert --save_latents --save_deltas` folder -> [InvertedImage]; items whose
        transforms/<stem>.json exists get their `origin` (for `paste_back`)."""
        g = self.inverter.generator_config
        items = inversion_files.read_inversion(folder, self.inverter.model.tuned_delta_shapes(),
                                               g.n_latent, g.style_dim)
        for it in items:
            if os.path.isfile(inversion_files.transform_path(folder, it.stem)):
                it.origin = inversion_files.read_transform(folder, it.stem)
        return items


def _as_uint8(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 2:
        x = np.stack([x] * 3, axis=-1)
    if x.ndim != 3 or x.shape[-1] not in (3, 4):
        raise ValueError(f"an image array must be [H, W, 3], got shape {x.shape}")
    x = x[..., :3]
    return x if x.dtype == np.uint8 else images.to_uint8(x)


def _item(stem: str, result: dict, i: int, image: np.ndarray, origin=None) -> InvertedImage:
    deltas = [None if d is None else np.asarray(d[i]) for d in result["deltas"]]
    return InvertedImage(stem, np.asarray(result["codes"][i]), deltas, image,
                         np.asarray(result["images"][-1][i]), origin)


def load(checkpoint: str, w_encoder: Optional[str] = None, precision: str = "fp32",
         batch_size: int = 4) -> Model:
    """Converted folders (`tools/convert_weights.py hyperstyle` and `w_encoder`) -> `Model`.

    Without w_encoder the model renders and edits saved inversions but does not invert.
    precision: 'fp32' (the parity-tested numbers) or 'bf16' (see `inference.load_inverter`).
    """
    if w_encoder is None:
        return Model(load_renderer(checkpoint, precision=precision), batch_size,
                     can_invert=False)
    return Model(load_inverter(checkpoint, w_encoder, precision=precision), batch_size)
