"""Loading converted CLIP weights and the StyleCLIP text pipeline
(official StyleCLIP `global_direction.py`, OpenAI `clip/clip.py`).

    config, variables = load_clip("ckpt/clip_vit_b32")
    clip = ClipEncoder(config, variables)
    feats = clip.encode_texts(["a face"])                    # [1, 512], unnormalised
    t = clip.text_features(["a smiling face", "a face"])     # [2, 512], StyleCLIP's T(p)
    delta_i = clip.delta_i("a smiling face", "a face")        # [512], unit norm
    img = clip.encode_images(preprocess_images([...]))       # [N, 512]

T(p) = normalize(mean_k normalize(encode_text(template_k.format(p)))) over the 79 templates
(`templates.txt` here, read as the official does with readlines(): the trailing newlines do
not change the tokens), and Δi = normalize(T(target) − T(neutral)). The official runs CLIP in
fp16 on CUDA; this is fp32, so expect differences of ~1e-3 from released StyleCLIP numbers.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hyperstyle_jax.checkpoints import CheckpointError, check_loaded, load_converted
from hyperstyle_jax.clip.tokenizer import tokenize
from hyperstyle_jax.models.clip import CLIP, CLIPConfig, init_shapes

KIND = "clip"  # the `kind` in config.json of a converted CLIP folder
TEMPLATES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates.txt")


@functools.lru_cache(maxsize=1)
def styleclip_templates() -> tuple[str, ...]:
    """The 79 StyleCLIP templates ('a bad photo of a {}.', ...), newlines kept as the official."""
    with open(TEMPLATES_FILE) as f:
        return tuple(f.readlines())


def load_clip(path: str):
    """A folder written by `tools/convert_weights.py clip` -> (CLIPConfig, variables {'params'})."""
    cfg, tree = load_converted(path, KIND)
    try:
        config = CLIPConfig.from_dict(cfg)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad CLIP config.json: {e}") from None
    check_loaded(tree, init_shapes(config), path, "CLIP variables")
    return config, jax.tree_util.tree_map(jnp.asarray, tree)


def averaged_text_features(encode_text: Callable, prompts: Sequence[str],
                           templates: Sequence[str]) -> np.ndarray:
    """StyleCLIP's `_get_averaged_text_features`: [P, embed], each row unit norm.

    `encode_text(ids [N, 77]) -> [N, embed]`; all prompts × templates go in one call.
    """
    ids = tokenize([t.format(p) for p in prompts for t in templates])
    emb = np.asarray(encode_text(ids), np.float64).reshape(len(prompts), len(templates), -1)
    emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    mean = emb.mean(axis=1)
    return (mean / np.linalg.norm(mean, axis=-1, keepdims=True)).astype(np.float32)


def delta_i_from_features(target: np.ndarray, neutral: np.ndarray) -> np.ndarray:
    """Δi = normalize(T(target) − T(neutral)) (`get_delta_i`)."""
    d = np.asarray(target, np.float64) - np.asarray(neutral, np.float64)
    return (d / np.linalg.norm(d)).astype(np.float32)


def _chunked(fn: Callable, x: np.ndarray, chunk: int) -> np.ndarray:
    """fn over fixed-size, zero-padded chunks of the batch, so any N reuses one compile."""
    n = x.shape[0]
    pad = (-n) % chunk
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
    return np.concatenate([np.asarray(fn(x[i:i + chunk])) for i in range(0, len(x), chunk)])[:n]


class ClipEncoder:
    """Jitted CLIP encoders over fixed variables.

    Batches run in zero-padded chunks of `text_chunk` prompts / `image_chunk` images, so each
    tower compiles once whatever the batch size (StyleCLIP's 2 x 79 prompts: 3 chunks of 64).
    """

    def __init__(self, config, variables, templates: Sequence[str] | None = None,
                 text_chunk: int = 64, image_chunk: int = 16):
        self.config = config
        self.variables = variables
        self.model = CLIP(config)
        self.templates = tuple(templates) if templates is not None else styleclip_templates()
        self._text = jax.jit(lambda v, ids: self.model.apply(v, ids, method=CLIP.encode_text))
        self._image = jax.jit(lambda v, x: self.model.apply(v, x, method=CLIP.encode_image))
        self.text_chunk, self.image_chunk = int(text_chunk), int(image_chunk)

    @classmethod
    def from_folder(cls, path: str, templates: Sequence[str] | None = None) -> "ClipEncoder":
        return cls(*load_clip(path), templates=templates)

    def encode_ids(self, ids) -> np.ndarray:
        """Token ids [N, context] -> text embeddings [N, embed] (unnormalised)."""
        return _chunked(lambda c: self._text(self.variables, c), np.asarray(ids, np.int32),
                        self.text_chunk)

    def encode_texts(self, prompts: Sequence[str]) -> np.ndarray:
        """Prompts -> text embeddings [N, embed] (unnormalised), as
        `model.encode_text(tokenize(p))`."""
        return self.encode_ids(tokenize(list(prompts), self.config.context_length))

    def encode_images(self, images) -> np.ndarray:
        """CLIP-preprocessed images [N, R, R, 3] -> image embeddings [N, embed] (unnormalised)."""
        return _chunked(lambda c: self._image(self.variables, c), np.asarray(images, np.float32),
                        self.image_chunk)

    def text_features(self, prompts: Sequence[str], templates: Sequence[str] | None = None
                      ) -> np.ndarray:
        """StyleCLIP's averaged text features T(p) [P, embed]."""
        return averaged_text_features(self.encode_ids, prompts,
                                      self.templates if templates is None else templates)

    def delta_i(self, target: str, neutral: str, templates: Sequence[str] | None = None
                ) -> np.ndarray:
        """StyleCLIP's Δi [embed] (unit norm) for `neutral` -> `target`."""
        t, n = self.text_features([target, neutral], templates)
        return delta_i_from_features(t, n)
