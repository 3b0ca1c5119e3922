"""OpenAI CLIP (ViT branch) in Flax Linen, as StyleCLIP uses it (official `clip/model.py`).

Parameter names mirror OpenAI's `clip/model.py` state dict so the converter's table is one
line per key family: `token_embedding/weight`, `positional_embedding`,
`transformer/resblocks_N/{attn/{in_proj_kernel,in_proj_bias,out_proj},ln_1,mlp/{c_fc,c_proj},ln_2}`,
`ln_final`, `text_projection`, `logit_scale`, and `visual/{conv1,class_embedding,
positional_embedding,ln_pre,transformer/...,ln_post,proj}`. Dense kernels are [in, out], the
patch conv is HWIO, `in_proj_kernel` is the packed [q|k|v] projection [width, 3*width].

    model = CLIP(config)
    text_features  = model.apply(variables, ids [B, 77] int, method=CLIP.encode_text)  # [B, embed]
    image_features = model.apply(variables, images [B, 224, 224, 3], method=CLIP.encode_image)
    logits_per_image, logits_per_text = model.apply(variables, images, ids)

Everything runs in float32 (the official StyleCLIP path runs fp16 on CUDA; the fixtures and
this port are fp32). Matmuls use JAX's default precision, so tests that set
`jax_default_matmul_precision="highest"` get exact fp32 on every backend.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """Architecture of a CLIP ViT; defaults are ViT-B/32.

    Heads are stored, not derived: OpenAI's `build_model` uses width // 64, which is wrong for
    narrow models (the fixture's text tower is width 32 with 2 heads).
    """
    embed_dim: int = 512
    image_resolution: int = 224
    vision_layers: int = 12
    vision_width: int = 768
    vision_patch_size: int = 32
    vision_heads: int = 12
    context_length: int = 77
    vocab_size: int = 49408
    transformer_width: int = 512
    transformer_heads: int = 8
    transformer_layers: int = 12

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"CLIPConfig.{f.name} must be a positive int, got {v!r}")
        if self.vision_width % self.vision_heads:
            raise ValueError(f"CLIPConfig: vision_width {self.vision_width} is not divisible by "
                             f"vision_heads {self.vision_heads}")
        if self.transformer_width % self.transformer_heads:
            raise ValueError(f"CLIPConfig: transformer_width {self.transformer_width} is not "
                             f"divisible by transformer_heads {self.transformer_heads}")
        if self.image_resolution % self.vision_patch_size:
            raise ValueError(f"CLIPConfig: image_resolution {self.image_resolution} is not a "
                             f"multiple of vision_patch_size {self.vision_patch_size}")

    @property
    def grid(self) -> int:
        return self.image_resolution // self.vision_patch_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CLIPConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - {"kind", "source", "source_layout"})
        if unknown:
            raise ValueError(f"CLIPConfig: unknown fields {unknown}")
        return cls(**{k: int(v) for k, v in d.items() if k in names})


class LayerNorm(nn.Module):
    """torch.nn.LayerNorm (eps 1e-5) with torch's names `weight`/`bias`, computed in float32."""
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        w = self.param("weight", nn.initializers.ones, (c,), jnp.float32)
        b = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * w + b
        return y.astype(x.dtype)


def quick_gelu(x):
    """CLIP's activation x·σ(1.702x) (not erf GELU)."""
    return x * jax.nn.sigmoid(1.702 * x)


class MultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention(width, heads) on batch-first [B, L, D], eval mode.

    `mask` is an additive [L, L] float mask (0 / -inf), as the official causal mask.
    """
    width: int
    heads: int

    @nn.compact
    def __call__(self, x, mask=None):
        b, n, d = x.shape
        hd = d // self.heads
        w = self.param("in_proj_kernel", nn.initializers.normal(d ** -0.5), (d, 3 * d), jnp.float32)
        bias = self.param("in_proj_bias", nn.initializers.zeros, (3 * d,), jnp.float32)
        qkv = jnp.einsum("bld,de->ble", x, w) + bias
        q, k, v = (t.reshape(b, n, self.heads, hd) for t in jnp.split(qkv, 3, axis=-1))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (hd ** -0.5)
        if mask is not None:
            scores = scores + mask
        attn = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, n, d)
        return nn.Dense(d, name="out_proj")(out)


class MLP(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(4 * self.width, name="c_fc")(x)
        return nn.Dense(self.width, name="c_proj")(quick_gelu(x))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x += attn(ln_1(x)); x += mlp(ln_2(x))."""
    width: int
    heads: int

    @nn.compact
    def __call__(self, x, mask=None):
        attn = MultiheadAttention(self.width, self.heads, name="attn")
        x = x + attn(LayerNorm(name="ln_1")(x), mask)
        return x + MLP(self.width, name="mlp")(LayerNorm(name="ln_2")(x))


class Transformer(nn.Module):
    """`resblocks_0..N-1`, shared by both towers."""
    width: int
    layers: int
    heads: int

    @nn.compact
    def __call__(self, x, mask=None):
        for i in range(self.layers):
            x = ResidualAttentionBlock(self.width, self.heads, name=f"resblocks_{i}")(x, mask)
        return x


class VisionTransformer(nn.Module):
    """images [B, R, R, 3] (CLIP-normalised, NHWC) -> [B, embed_dim]."""
    input_resolution: int
    patch_size: int
    width: int
    layers: int
    heads: int
    output_dim: int

    @nn.compact
    def __call__(self, x):
        scale = self.width ** -0.5
        grid = self.input_resolution // self.patch_size
        x = nn.Conv(self.width, (self.patch_size, self.patch_size), strides=self.patch_size,
                    padding="VALID", use_bias=False, name="conv1")(x)
        b = x.shape[0]
        x = x.reshape(b, grid * grid, self.width)  # row-major over (h, w), as torch's flatten
        cls = self.param("class_embedding", nn.initializers.normal(scale), (self.width,),
                         jnp.float32)
        pos = self.param("positional_embedding", nn.initializers.normal(scale),
                         (grid * grid + 1, self.width), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, self.width)), x], axis=1)
        x = LayerNorm(name="ln_pre")(x + pos)
        x = Transformer(self.width, self.layers, self.heads, name="transformer")(x)
        x = LayerNorm(name="ln_post")(x[:, 0])
        proj = self.param("proj", nn.initializers.normal(scale), (self.width, self.output_dim),
                          jnp.float32)
        return x @ proj


class Embedding(nn.Module):
    """torch.nn.Embedding: `weight` [num, features]."""
    num: int
    features: int

    @nn.compact
    def __call__(self, ids):
        w = self.param("weight", nn.initializers.normal(0.02), (self.num, self.features),
                       jnp.float32)
        return jnp.take(w, ids, axis=0)


def causal_mask(n: int) -> jnp.ndarray:
    """Additive [n, n] mask, -inf strictly above the diagonal (`full(-inf).triu_(1)`)."""
    return jnp.where(jnp.triu(jnp.ones((n, n), bool), 1), -jnp.inf, 0.0).astype(jnp.float32)


class CLIP(nn.Module):
    config: CLIPConfig

    def setup(self):
        c = self.config
        w = c.transformer_width
        self.visual = VisionTransformer(c.image_resolution, c.vision_patch_size, c.vision_width,
                                        c.vision_layers, c.vision_heads, c.embed_dim)
        self.transformer = Transformer(w, c.transformer_layers, c.transformer_heads)
        self.token_embedding = Embedding(c.vocab_size, w)
        self.positional_embedding = self.param("positional_embedding", nn.initializers.normal(0.01),
                                               (c.context_length, w), jnp.float32)
        self.ln_final = LayerNorm()
        self.text_projection = self.param("text_projection", nn.initializers.normal(w ** -0.5),
                                          (w, c.embed_dim), jnp.float32)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(math.log(1 / 0.07)),
                                      (), jnp.float32)

    def encode_image(self, images):
        """images [B, R, R, 3] float, already CLIP-preprocessed -> [B, embed_dim] (unnormalised)."""
        return self.visual(images)

    def encode_text(self, ids):
        """ids [B, context_length] int (SOT ... EOT, zero padded) -> [B, embed_dim] (unnormalised).

        Pooled at argmax(ids): EOT (49407) is the largest id, as the official.
        """
        n = ids.shape[-1]
        x = self.token_embedding(ids) + self.positional_embedding[:n]
        x = self.transformer(x, causal_mask(n))
        x = self.ln_final(x)
        x = x[jnp.arange(x.shape[0]), jnp.argmax(ids, axis=-1)]
        return x @ self.text_projection

    def __call__(self, images, ids):
        """(logits_per_image [B_img, B_txt], logits_per_text [B_txt, B_img]) = exp(s)·cosine."""
        img = normalize(self.encode_image(images))
        txt = normalize(self.encode_text(ids))
        logits = jnp.exp(self.logit_scale) * img @ txt.T
        return logits, logits.T


def normalize(x, axis: int = -1):
    """x / ||x|| along `axis` (the official `x / x.norm(dim=-1, keepdim=True)`, no epsilon)."""
    return x / jnp.linalg.norm(x, axis=axis, keepdims=True)


def _dummy_inputs(config: CLIPConfig) -> tuple[Any, Any]:
    r = config.image_resolution
    return (jax.ShapeDtypeStruct((1, r, r, 3), jnp.float32),
            jax.ShapeDtypeStruct((1, config.context_length), jnp.int32))


def init_shapes(config: CLIPConfig) -> dict:
    """`jax.eval_shape` of `CLIP(config).init`: {'params': ...} of ShapeDtypeStructs."""
    model = CLIP(config)
    return jax.eval_shape(lambda k, a, b: model.init(k, a, b), jax.random.key(0),
                          *_dummy_inputs(config))


def random_init(config: CLIPConfig, seed: int = 0) -> dict:
    """Random variables (normal inits roughly as CLIP's `initialize_parameters`), for tests."""
    model = CLIP(config)
    r = config.image_resolution
    return jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, r, r, 3), jnp.float32),
                               jnp.zeros((1, config.context_length), jnp.int32))
