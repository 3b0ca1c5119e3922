"""The model side of the editing page: uploads -> inversions -> edited renders.

Everything here is the same inference and editing code the CLIs call
(`inference.Inverter`, `editing.interfacegan / ganspace / interpolate / styleclip /
domain`); the web layer (`app.server`) only parses requests and calls these methods.

    eng = Engine(load_inverter(ckpt, wenc), directions=load_directions("dirs/"))
    eng.warm_up()                                     # every compiled call, once
    prep = eng.prepare(data, "me.jpg", align=True)    # decode, align, resize (CPU only)
    inv = eng.invert(prep, on_step=show)              # W-encoder, then n iterations
    img = eng.render(inv, EditSpec.parse({...}))      # one compiled call per edit
    png = eng.full_photo(inv, spec)                   # aligned: the edit pasted into the upload

Serving rules kept here: every compiled function is built (and run once) in `warm_up`,
so no request compiles; every device call holds `self.device` (one lock), so concurrent
requests queue instead of competing for memory, and a waiting render goes before the
next inversion step (a slider move does not wait for another user's whole inversion);
uploads stay in memory (bytes), never on disk.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import threading
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np
from PIL import Image

from hyperstyle_jax import align, inversion_files, pivotal_tuning
from hyperstyle_jax.align import detect
from hyperstyle_jax.app.inversion_cache import Inversion, InversionCache, content_key
from hyperstyle_jax.editing import EditError, domain, ganspace, interfacegan, interpolate, styleclip
from hyperstyle_jax.inference import StepwiseInverter, compile_for_batch
from hyperstyle_jax.models import stylespace
from hyperstyle_jax.utils import images

DIRECTION_EXTENSIONS = (".pt", ".pth", ".npy")


class DeviceLock:
    """One lock around the device with two classes of callers: foreground (renders, what
    a user waits for after a slider move) and background (inversion steps). A background
    caller also waits while any foreground one is waiting; each class is served in turn."""

    def __init__(self):
        self._cv = threading.Condition()
        self._busy = False
        self._foreground_waiting = 0

    @contextlib.contextmanager
    def __call__(self, background: bool = False):
        with self._cv:
            if not background:
                self._foreground_waiting += 1
            try:
                while self._busy or (background and self._foreground_waiting):
                    self._cv.wait()
            finally:
                if not background:
                    self._foreground_waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            with self._cv:
                self._busy = False
                self._cv.notify_all()


class UploadError(ValueError):
    """A bad upload (not an image, too large, truncated); one line naming the file."""


# ----------------------------------------------------------------------------- edits


@dataclasses.dataclass
class EditSpec:
    """What the page's controls say; every field's neutral value means 'no edit'.

    interfacegan: {direction name: factor}; ganspace: edit name ('' none) and strength;
    styleclip: neutral / target prompts, alpha, beta; domain: generator key ('' none);
    mix_with / mix_alpha: interpolate towards another inversion (0 = this one).
    """
    interfacegan: dict = dataclasses.field(default_factory=dict)
    ganspace: str = ""
    ganspace_strength: float = 0.0
    neutral: str = ""
    target: str = ""
    alpha: float = 0.0
    beta: float = 0.13
    domain: str = ""
    mix_with: str = ""
    mix_alpha: float = 0.0

    @classmethod
    def parse(cls, obj: dict) -> "EditSpec":
        if not isinstance(obj, dict):
            raise EditError("edits must be a JSON object")
        unknown = set(obj) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise EditError(f"unknown edit fields: {', '.join(sorted(unknown))}")
        spec = cls()
        for f in dataclasses.fields(cls):
            if f.name not in obj:
                continue
            v = obj[f.name]
            try:
                if f.name == "interfacegan":
                    v = {str(k): _finite(x, f"interfacegan {k}") for k, x in dict(v).items()}
                elif f.type in ("float", float):
                    v = _finite(v, f.name)
                else:
                    v = str(v)
            except (TypeError, ValueError) as e:
                raise EditError(f"edit field {f.name}: {e}") from None
            setattr(spec, f.name, v)
        return spec


def _finite(x, what: str) -> float:
    v = float(x)
    if not np.isfinite(v):
        raise EditError(f"{what}: not a finite number")
    return v


@dataclasses.dataclass
class GanspaceEdit:
    name: str        # key used by the page ('pose_i', 'pc_3')
    label: str
    component: int
    start: int
    end: int
    strength: float  # the default (official strength for the named cars edits)


def load_directions(folder: str, n_styles: int, style_dim: int) -> dict:
    """Every InterFaceGAN direction file (.pt / .npy) in a folder -> {stem: (1, [n_styles,] D)}."""
    if not os.path.isdir(folder):
        raise EditError(f"--directions {folder}: no such folder")
    out = {}
    for fn in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(fn)
        if ext.lower() not in DIRECTION_EXTENSIONS:
            continue
        path = os.path.join(folder, fn)
        d = interfacegan.check_direction(interfacegan.load_direction(path), n_styles, style_dim,
                                         path)
        while stem in out:  # age.pt and age.npy
            stem += "_"
        out[stem] = d
    if not out:
        raise EditError(f"--directions {folder}: no .pt or .npy direction files")
    return out


def ganspace_edits(pca: dict, n_styles: int, n_components: int = 8) -> list:
    """The official named edits that fit this PCA file and generator, then one edit per
    leading component over every W+ row (strength 2: two stds along it)."""
    out = []
    for key, d in ganspace.OFFICIAL_DIRECTIONS.items():
        try:
            idx, s, e, st = ganspace.check_direction(pca, d, n_styles)
        except EditError:
            continue
        out.append(GanspaceEdit(key, ganspace.OFFICIAL_LABELS[key], idx, s, e, st))
    for i in range(min(n_components, pca["comp"].shape[0])):
        out.append(GanspaceEdit(f"pc_{i}", f"PC {i}", i, 0, n_styles, 2.0))
    return out


@dataclasses.dataclass
class StyleClipParts:
    """What StyleCLIP needs: a CLIP text encoder (`clip.ClipEncoder`), fs3 and S stds."""
    encoder: object
    fs3: np.ndarray
    s_std: list


@dataclasses.dataclass
class Prepared:
    """A decoded (and maybe aligned) upload at the model's input size; aligned, also the
    face's transform and the uploaded bytes (what `full_photo` pastes into)."""
    key: str
    name: str
    image: np.ndarray  # uint8 [h, w, 3]
    note: str = ""
    face: Optional[align.AlignedFace] = None
    photo: Optional[bytes] = None


# ----------------------------------------------------------------------------- engine


class Engine:
    def __init__(self, inverter, n_iters: int = 5, directions: Optional[dict] = None,
                 pca: Optional[dict] = None, styleclip_parts: Optional[StyleClipParts] = None,
                 restyle=None, generators: Sequence = (), restyle_iters: int = 2,
                 examples: Optional[dict] = None, n_generated_examples: int = 0,
                 max_upload_bytes: int = 20 << 20, max_pixels: int = 50_000_000,
                 cache: Optional[InversionCache] = None, detector: str = "hog",
                 refine_steps: int = 0, refine_lpips=None):
        if n_iters < 1:
            raise ValueError(f"n_iters must be >= 1, got {n_iters}")
        self.inverter = inverter
        g = inverter.generator_config
        self.n_styles, self.style_dim, self.size = g.n_latent, g.style_dim, g.size
        self.n_iters = int(n_iters)
        self.directions = dict(directions or {})
        self.pca = None if pca is None else ganspace.check_pca(pca, self.style_dim)
        self.ganspace = ganspace_edits(self.pca, self.n_styles) if self.pca is not None else []
        self.styleclip = styleclip_parts
        self.restyle = restyle
        self.generators = list(generators)  # [(key, GeneratorConfig, variables)]
        if self.generators and restyle is None:
            raise EditError("--generator needs --restyle (the domain edit renders ReStyle-e4e "
                            "codes)")
        self.restyle_iters = int(restyle_iters)
        self.examples = dict(examples or {})  # name -> path or encoded bytes
        self.n_generated_examples = int(n_generated_examples)
        self.max_upload_bytes, self.max_pixels = int(max_upload_bytes), int(max_pixels)
        self.cache = cache or InversionCache()
        self.detector = detect.check_detector(detector)
        if isinstance(refine_steps, bool) or not isinstance(refine_steps, int) \
                or refine_steps < 0:
            raise ValueError(f"refine_steps must be an integer >= 0, got {refine_steps!r}")
        self.refine_steps = refine_steps   # 0: no "refine" button
        self.refine_lpips = refine_lpips   # LPIPS variables or None (L2 alone)
        self.device = DeviceLock()
        self._delta_s: dict = {}  # (neutral, target, beta) -> StyleSpace direction
        self._built = False
        self.timings: dict = {}

    # ---- the controls the page shows

    def info(self) -> dict:
        h, w = self.inverter.input_hw
        return {
            "size": self.size, "input_hw": [h, w], "n_iters": self.n_iters,
            "precision": self.inverter.model.precision,
            "directions": sorted(self.directions),
            "ganspace": [dataclasses.asdict(e) for e in self.ganspace],
            "styleclip": self.styleclip is not None,
            "domains": [k for k, _, _ in self.generators],
            "examples": sorted(self.examples),
            "max_upload_mb": round(self.max_upload_bytes / 2 ** 20, 2),
            "refine_steps": self.refine_steps,
        }

    # ---- compiled functions, built once

    def build(self) -> None:
        """Compile every device function the page can call (ahead of time)."""
        if self._built:
            return
        t0 = time.perf_counter()
        self._steps = StepwiseInverter(self.inverter)
        self._render = self.inverter.shared_delta_renderer(1)
        if self.styleclip is not None:
            self._lay = stylespace.layout(self.inverter.generator_config)
            styleclip.check_files(self.styleclip.fs3, self.styleclip.s_std, self._lay)
            config = self.inverter.generator_config
            params = self.inverter.frozen["generator"]["params"]
            self._styles = compile_for_batch(
                lambda p, w: stylespace.styles_from_w(p, config, w), 1, bound=(params,),
                batched=(jax.ShapeDtypeStruct((self.n_styles, self.style_dim), np.float32),))
            self._s_render = styleclip.StyleSpaceRenderer(self.inverter, 1)
        if self.generators:
            tuned = [j for j, s in enumerate(self.inverter.model.tuned_delta_shapes())
                     if s is not None]
            self._domain_layers = domain.kept_layers(self.inverter.generator_config.n_convs,
                                                     tuned)
            self._domain = {}
            for _, config, _ in self.generators:
                if config not in self._domain:
                    self._domain[config] = domain.DomainRenderer(config, self._domain_layers, 1)
            self._restyle_run = self.restyle.batched_runner(1, self.restyle_iters)
        if self.refine_steps:
            self._refiner = pivotal_tuning.batched_refiner(
                self.inverter, 1, pivotal_tuning.RefineConfig(steps=self.refine_steps),
                self.refine_lpips)
        self._built = True
        self.timings["compile_s"] = time.perf_counter() - t0

    def warm_up(self) -> None:
        """Build, then run every compiled call once on a blank image, so the first request
        does neither (some compiled functions finish their setup on the first call)."""
        self.build()
        t0 = time.perf_counter()
        h, w = self.inverter.input_hw
        blank = Prepared("warm-up", "warm-up", np.full((h, w, 3), 128, np.uint8))
        inv = self.invert(blank, cache=False)
        spec = EditSpec(interfacegan={k: 1.0 for k in self.directions})
        self.render(inv, spec)
        if self.ganspace:
            self.render(inv, EditSpec(ganspace=self.ganspace[0].name, ganspace_strength=1.0))
        if self.styleclip is not None:
            self.render(inv, EditSpec(neutral="a face", target="a smiling face", alpha=1.0))
            self._delta_s.clear()
        for key, _, _ in self.generators:
            self.render(inv, EditSpec(domain=key))
        self.render(inv, EditSpec(mix_with="warm-up", mix_alpha=0.5), other=inv)
        if self.refine_steps:  # compiles the refiner (steps > 0 runs its step loop once)
            self.refine(inv, cache=False)
        if self.n_generated_examples and not self.examples:
            self.examples.update(self.generate_examples(self.n_generated_examples))
        self.timings["warm_up_s"] = time.perf_counter() - t0

    def generate_examples(self, n: int, seed: int = 0) -> dict:
        """n generator samples (truncation 0.7) as PNG bytes: examples with no real faces."""
        rng = np.random.RandomState(seed)
        lat = np.asarray(self.inverter.frozen["latent_avg"], np.float32)
        out = {}
        for i in range(n):
            # A random W+ code near the average one, rendered without offsets: no extra
            # compiled function (the mapping network is not needed for an example).
            codes = lat + 0.7 * rng.randn(*lat.shape).astype(np.float32) * lat.std()
            with self.device():
                untuned = [None] * len(self.inverter.model.tuned_delta_shapes())
                img = self._render(codes[None], untuned)[0]
            out[f"generated_{i}.png"] = png_bytes(img)
        return out

    # ---- uploads (CPU only; no device lock)

    def prepare(self, data: bytes, name: str, align: bool = False) -> Prepared:
        """Encoded bytes -> model-size uint8 input. UploadError for a bad file; with align,
        a photo where no face is found is used whole, with a note saying so."""
        name = os.path.basename(name or "upload") or "upload"
        if len(data) > self.max_upload_bytes:
            raise UploadError(f"{name}: file too large ({len(data) / 2 ** 20:.1f} MB; the "
                              f"limit is {self.max_upload_bytes / 2 ** 20:.0f} MB)")
        img = self._decode(data, name)
        note, face = "", None
        if align:
            img, face, note = self._align(data, img, name)
        image = images.resize(img, tuple(self.inverter.input_hw))
        return Prepared(content_key(data, align), name, image, note, face,
                        data if face is not None else None)

    def _decode(self, data: bytes, name: str) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(data)) as im:  # header only: refuse huge images early
                w, h = im.size
        except Exception:
            w = h = 0  # decode_image_bytes below names the problem
        if w * h > self.max_pixels:
            raise UploadError(f"{name}: image too large ({w}x{h} pixels; the limit is "
                              f"{self.max_pixels / 1e6:.0f} megapixels)")
        try:
            return images.decode_image_bytes(data, name)
        except images.ImageReadError as e:
            raise UploadError(str(e)) from None
        except Exception as e:  # PIL raises other kinds on odd files (e.g. bomb checks)
            raise UploadError(f"{name}: unreadable image ({type(e).__name__}: "
                              f"{' '.join(str(e).split())})") from None

    def _align(self, data: bytes, img: np.ndarray, name: str) -> tuple:
        """-> (crop or the whole image, AlignedFace or None, note). The upload is aligned
        upright per EXIF (as `full_photo` reads it back), the largest face."""
        try:
            align.require(self.detector)
        except align.AlignUnavailableError as e:
            return img, None, f"alignment unavailable ({e}); the whole image was used"
        try:
            with Image.open(io.BytesIO(data)) as pil:
                face = align.align_faces(pil, size=1024, name=name, detector=self.detector)[0]
            return face.image, face, "aligned (FFHQ crop)"
        except align.NoFaceError:
            return img, None, f"no face found in {name}; the whole image was used"
        except (align.AlignError, images.ImageReadError, OSError) as e:
            return img, None, f"could not align ({e}); the whole image was used"

    # ---- inversion

    def invert(self, prep: Prepared, on_step: Optional[Callable] = None,
               cache: bool = True) -> Inversion:
        """W-encoder, then n hypernetwork iterations, one device call each (under the lock,
        so renders of other users go between the steps). on_step(k, n, uint8 image) after
        each: k = 0 is the W-encoder's reconstruction."""
        if cache:
            hit = self.cache.get(prep.key)
            if hit is not None:
                return hit
        self.build()
        x = images.to_float(prep.image[None])
        iterations = []

        def shown(k, y):
            img = images.to_uint8(y[0])
            iterations.append(img)
            if on_step is not None:
                on_step(k, self.n_iters, img)

        with self.device(background=True):
            state = self._steps.start(x)
        shown(0, state.image())
        for k in range(1, self.n_iters + 1):
            with self.device(background=True):
                state = self._steps.step(state)
            shown(k, state.image())
        with self.device(background=True):
            codes, deltas = state.result()
            restyle_codes = None
            if self.generators:
                xr = images.to_float(images.resize(prep.image, tuple(self.restyle.input_hw))[None])
                restyle_codes = np.asarray(self._restyle_run(xr)["latent"][0], np.float32)
        inv = Inversion(prep.key, prep.name, prep.image, codes, deltas, iterations,
                        state.image()[0], restyle_codes, prep.note, prep.face, prep.photo)
        if cache:
            self.cache.put(inv)
        return inv

    def refine(self, inv: Inversion, cache: bool = True) -> Inversion:
        """PTI-style refinement (`pivotal_tuning`, `refine_steps` steps) of an inversion:
        a new `Inversion` (key `<key>-r`) with the refined codes, offsets and
        reconstruction, its note giving L2 (and LPIPS) before -> after. One device call,
        under the lock as an inversion."""
        if not self.refine_steps:
            raise EditError("refinement is off (start the page with --refine_steps N)")
        key = inv.key + "-r"
        if cache:
            hit = self.cache.get(key)
            if hit is not None:
                return hit
        self.build()
        deltas = [None if d is None else np.asarray(d)[None] for d in inv.deltas]
        with self.device(background=True):
            out = self._refiner(images.to_float(inv.image[None]), inv.codes[None], deltas)
        note = f"refined ({self.refine_steps} steps): L2 {out['l2_start'][0]:.4f} -> " \
               f"{out['l2'][0]:.4f}"
        if self.refine_lpips is not None:
            note += f", LPIPS {out['lpips_start'][0]:.4f} -> {out['lpips'][0]:.4f}"
        image = out["image"][0]
        refined = Inversion(key, inv.name, inv.image, np.asarray(out["codes"][0]),
                            [None if d is None else np.asarray(d[0]) for d in out["deltas"]],
                            list(inv.iterations) + [images.to_uint8(image)], image,
                            inv.restyle_codes, note, inv.face, inv.photo)
        if cache:
            self.cache.put(refined)
        return refined

    # ---- edits

    def edited_codes(self, codes: np.ndarray, deltas: list, spec: EditSpec) -> np.ndarray:
        """The W+ edits (pure functions of editing/): InterFaceGAN directions added with
        their factors, then the GANSpace edit (which sets one PCA coordinate)."""
        for name, f in spec.interfacegan.items():
            if name not in self.directions:
                raise EditError(f"unknown InterFaceGAN direction {name!r} (have: "
                                f"{', '.join(sorted(self.directions)) or 'none'})")
            if f != 0:
                codes = interfacegan.apply(codes, deltas, self.directions[name], [f])[0][0]
        if spec.ganspace:
            e = next((e for e in self.ganspace if e.name == spec.ganspace), None)
            if e is None:
                raise EditError(f"unknown GANSpace edit {spec.ganspace!r}"
                                + ("" if self.ganspace else " (no --pca was given)"))
            d = (e.component, e.start, e.end, spec.ganspace_strength)
            codes = ganspace.apply(codes, deltas, self.pca, [d])[0][0]
        return codes

    def render(self, inv: Inversion, spec: EditSpec, other: Optional[Inversion] = None
               ) -> np.ndarray:
        """One edited image, float32 [H, W, 3] un-clipped; a single compiled call.

        Order: interpolate towards `other` (codes and offsets), W+ edits, then either the
        domain render (ReStyle codes on a fine-tuned generator) or the StyleCLIP StyleSpace
        edit or the plain render, all with this image's (mixed) offsets."""
        self.build()
        codes, deltas = inv.codes, list(inv.deltas)
        mix = spec.mix_alpha if spec.mix_with else 0.0
        if mix != 0.0:
            if other is None:
                raise EditError("interpolation needs the second image")
            pair = [None if d is None else np.stack([d, other.deltas[j]])
                    for j, d in enumerate(deltas)]
            c, ds = interpolate.apply(np.stack([codes, other.codes]), pair, [mix])
            codes, deltas = c[0], [None if d is None else d[0] for d in ds]
        if spec.domain:
            return self._render_domain(inv, other, mix, deltas, spec)
        codes = self.edited_codes(codes, deltas, spec)
        if spec.alpha != 0.0 and (spec.neutral.strip() or spec.target.strip()):
            if self.styleclip is None:
                raise EditError("StyleCLIP edits need --clip, --fs3 and --s_stats")
            direction = self._styleclip_direction(spec.neutral, spec.target, spec.beta)
            with self.device():
                s = [x[0] for x in self._styles(codes[None])]
            styles = styleclip.apply(s, direction, [spec.alpha])
            with self.device():
                return self._s_render(styles, deltas)[0]
        with self.device():
            return self._render(codes[None], deltas)[0]

    def _render_domain(self, inv, other, mix, deltas, spec) -> np.ndarray:
        gen = next((g for g in self.generators if g[0] == spec.domain), None)
        if gen is None:
            raise EditError(f"unknown domain {spec.domain!r} (have: "
                            f"{', '.join(k for k, _, _ in self.generators) or 'none'})")
        key, config, variables = gen
        codes = inv.restyle_codes
        if mix != 0.0:
            codes = interpolate.apply(np.stack([codes, other.restyle_codes]), [None], [mix])[0][0]
        codes = self.edited_codes(codes, deltas, spec)
        batched = [None if d is None else d[None] for d in deltas]
        with self.device():
            return self._domain[config](variables, codes[None], batched, [0])[0]

    def _styleclip_direction(self, neutral: str, target: str, beta: float) -> list:
        if neutral.strip().lower() == target.strip().lower():
            raise EditError("the neutral and target prompts are the same")
        k = (neutral, target, float(beta))
        if k not in self._delta_s:
            if len(self._delta_s) > 64:
                self._delta_s.clear()
            with self.device():
                delta_i = self.styleclip.encoder.delta_i(target, neutral)
            self._delta_s[k] = styleclip.get_delta_s(self.styleclip.fs3, delta_i,
                                                     self.styleclip.s_std, beta, self._lay)
        return self._delta_s[k]

    def full_photo(self, inv: Inversion, spec: EditSpec, other: Optional[Inversion] = None
                   ) -> bytes:
        """PNG bytes of the uploaded photo (its size, upright per EXIF) with the edited
        render pasted over the face (`align.paste_back`): the render is the one compiled
        call of `render`, the paste is CPU work outside the device lock."""
        if inv.face is None or inv.photo is None:
            raise EditError(f"{inv.name}: the full photo needs an aligned upload (tick "
                            f"'align faces first' and upload it again)")
        edited = images.to_uint8(self.render(inv, spec, other))
        try:
            with Image.open(io.BytesIO(inv.photo)) as pil:
                photo, _ = align.read_original(pil)
            pasted = align.paste_back(photo, edited, inv.face)
        except (align.PasteError, images.ImageReadError, OSError) as e:
            raise EditError(f"{inv.name}: could not paste back ({' '.join(str(e).split())})"
                            ) from None
        return png_bytes(pasted)

    # ---- downloads, in the `invert` formats (`inversion_files`)

    @staticmethod
    def latents_bytes(invs: Sequence[Inversion]) -> bytes:
        """latents.npz: {stem: codes [n_styles, D]} (`invert --save_latents`)."""
        return inversion_files.codes_bytes({stem_of(i.name): i.codes for i in invs})

    @staticmethod
    def deltas_bytes(inv: Inversion) -> bytes:
        """deltas/<stem>.npz: layer_<j> = [out, in, k, k] at the tuned layers (`--save_deltas`)."""
        return inversion_files.deltas_bytes(inv.deltas)


def stem_of(name: str) -> str:
    return os.path.splitext(os.path.basename(name))[0] or "upload"


def png_bytes(img: np.ndarray, max_side: int = 0) -> bytes:
    """float [-1, 1] or uint8 [H, W, 3] ([H, W] or [H, W, 4] photos too) -> PNG bytes
    (optionally shrunk to max_side)."""
    arr = img if img.dtype == np.uint8 else images.to_uint8(img)
    if max_side and max(arr.shape[:2]) > max_side:
        s = max_side / max(arr.shape[:2])
        arr = images.resize(arr, (max(1, round(arr.shape[0] * s)), max(1, round(arr.shape[1] * s))))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)  # speed over size: local
    return buf.getvalue()
