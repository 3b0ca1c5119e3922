"""CLIP ViT: tokenizer, Flax model, preprocessing, StyleCLIP text features, converters.

Fixture 11_clip (fixtures README §11): a narrow OpenAI-layout CLIP with random weights (text
width 32 / 2 heads, vision width 64 / 1 head), the official tokens of every StyleCLIP template
for two prompts, encode_text / encode_image / logits, the official preprocessing of two raw
images, StyleCLIP's averaged text features and Δi (first 3 templates), and the full ViT-B/32
key listing. The fixture's encode_text covers 3 templates per prompt; for all 79 the test
compares against a direct torch.nn.functional implementation of OpenAI's text tower
(`_torch_encode_text`, itself checked on those 3). Each tower is jit-compiled once
(`ClipEncoder` runs fixed-size chunks).
"""
import hashlib
import json
import os
import pickle
import sys
import zipfile

import numpy as np
import pytest

from hyperstyle_jax.clip import (
    ClipEncoder,
    load_clip,
    preprocess_batch,
    preprocess_images,
    styleclip_templates,
    tokenize,
)
from hyperstyle_jax.clip.tokenizer import VOCAB_FILE, get_tokenizer
from hyperstyle_jax.convert import clip as cc
from hyperstyle_jax.models.clip import CLIP, CLIPConfig

HERE = os.path.dirname(os.path.abspath(__file__))
FX = os.path.join(HERE, "fixtures", "11_clip")
PT = os.path.join(FX, "clip_narrow_random.pt")
PROMPTS = ("a face", "a smiling face")
ATOL = 1e-5  # fixture README §11: encode_text / encode_image / Δi


@pytest.fixture(scope="module")
def fx():
    return dict(np.load(os.path.join(FX, "clip_io.npz")))


@pytest.fixture(scope="module")
def fx_config():
    with open(os.path.join(FX, "config.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def state_dict():
    return cc.read_clip_file(PT)


@pytest.fixture(scope="module")
def converted(state_dict):
    config, variables, layout = cc.convert_state_dict(state_dict, PT, text_heads=2)
    assert layout == "openai"
    return config, variables


@pytest.fixture(scope="module")
def encoder(converted):
    return ClipEncoder(*converted)


@pytest.fixture(scope="module")
def all_text(encoder, fx):
    """encode_text of the fixture's ids for 2 prompts x 79 templates: [2, 79, embed]."""
    ids = fx["tokens_all_templates"].reshape(-1, 77)
    return encoder.encode_ids(ids).reshape(2, 79, -1)


def _torch_encode_text(sd, ids, heads):
    """OpenAI's text tower written with torch.nn.functional (the oracle for all 79 templates)."""
    import torch
    import torch.nn.functional as F

    t = {k: torch.as_tensor(np.asarray(v)) for k, v in sd.items() if np.asarray(v).ndim}
    ids = torch.as_tensor(np.asarray(ids, np.int64))
    n, d = ids.shape[1], t["ln_final.weight"].shape[0]
    mask = torch.full((n, n), float("-inf")).triu_(1)
    x = (t["token_embedding.weight"][ids] + t["positional_embedding"]).permute(1, 0, 2)
    layers = len({k.split(".")[2] for k in t if k.startswith("transformer.resblocks.")})
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        h = F.layer_norm(x, (d,), t[p + "ln_1.weight"], t[p + "ln_1.bias"], 1e-5)
        x = x + F.multi_head_attention_forward(
            h, h, h, d, heads, t[p + "attn.in_proj_weight"], t[p + "attn.in_proj_bias"], None,
            None, False, 0.0, t[p + "attn.out_proj.weight"], t[p + "attn.out_proj.bias"],
            training=False, need_weights=False, attn_mask=mask)[0]
        h = F.layer_norm(x, (d,), t[p + "ln_2.weight"], t[p + "ln_2.bias"], 1e-5)
        h = F.linear(h, t[p + "mlp.c_fc.weight"], t[p + "mlp.c_fc.bias"])
        x = x + F.linear(h * torch.sigmoid(1.702 * h), t[p + "mlp.c_proj.weight"],
                         t[p + "mlp.c_proj.bias"])
    x = F.layer_norm(x.permute(1, 0, 2), (d,), t["ln_final.weight"], t["ln_final.bias"], 1e-5)
    with torch.no_grad():
        return (x[torch.arange(len(ids)), ids.argmax(-1)] @ t["text_projection"]).numpy()


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_matches_every_template_exactly(fx, fx_config):
    with open(VOCAB_FILE, "rb") as f:
        assert (
            hashlib.sha256(f.read()).hexdigest() == fx_config["provenance"]["clip_bpe_vocab_sha256"]
        )
    assert len(get_tokenizer()) == 49408
    templates = styleclip_templates()
    assert len(templates) == 79
    for i, prompt in enumerate(PROMPTS):
        ids = tokenize([t.format(prompt) for t in templates])
        assert ids.dtype == np.int32 and ids.shape == (79, 77)
        np.testing.assert_array_equal(ids, fx["tokens_all_templates"][i])
    # official simple_tokenizer
    assert tokenize("a face")[0, :5].tolist() == [49406, 320, 1710, 49407, 0]
    # cleaning: html entities, whitespace runs, case; digits one per token
    assert tokenize("A  &amp;\tFACE 12")[0].tolist() == tokenize("a & face 1 2")[0].tolist()
    tok = get_tokenizer()
    assert tok.decode(tok.encode("a smiling face, 2 eyes")) == "a smiling face , 2 eyes "


def test_tokenizer_long_prompt_is_an_error_or_truncated():
    long = "face " * 76  # 76 words + SOT + EOT = 78 > 77
    with pytest.raises(ValueError, match="78 tokens.*77"):
        tokenize(long)
    ids = tokenize(long, truncate=True)[0]
    assert ids[0] == 49406 and ids[-1] == 49407 and (ids[1:-1] == ids[1]).all()
    assert tokenize("face " * 75)[0, -1] == 49407  # exactly 77 fits


# ----------------------------------------------------------------------------- model


def test_config_from_the_checkpoint_shapes(converted, fx_config):
    config, _ = converted
    want = dict(fx_config["model"]["config"])
    want["vision_heads"] = fx_config["model"]["derived"]["vision_heads"]
    assert config == CLIPConfig(**want)
    assert CLIPConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="divisible"):
        CLIPConfig(transformer_width=32, transformer_heads=3)


def test_encode_text_all_templates(all_text, fx, state_dict):
    np.testing.assert_allclose(all_text[:, :3], fx["encode_text_first3"], rtol=0, atol=ATOL)
    # pooled at the EOT token: argmax of the ids
    np.testing.assert_array_equal(fx["tokens_first3"].argmax(-1), fx["eot_index_first3"])
    ref = _torch_encode_text(state_dict, fx["tokens_all_templates"].reshape(-1, 77), 2)
    np.testing.assert_allclose(ref.reshape(2, 79, -1)[:, :3], fx["encode_text_first3"],
                               rtol=0, atol=ATOL)  # the oracle itself
    np.testing.assert_allclose(all_text, ref.reshape(2, 79, -1), rtol=0, atol=ATOL)


def test_encode_image_and_logits(encoder, converted, fx):
    images = fx["image_preprocessed"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
    np.testing.assert_allclose(encoder.encode_images(images), fx["encode_image"], rtol=0, atol=ATOL)
    config, variables = converted
    # forward(): exp(logit_scale) * cosine, not jitted (a narrow model, op by op)
    li, lt = CLIP(config).apply(variables, images, fx["tokens_first3"].reshape(-1, 77))
    np.testing.assert_allclose(np.asarray(li), fx["logits_per_image"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(lt), fx["logits_per_text"], rtol=0, atol=1e-4)


def test_preprocess_raw_images(fx):
    raw = [fx["image_raw_0"], fx["image_raw_1"]]  # 256x300 and 320x240: both branches of the resize
    want = fx["image_preprocessed"].transpose(0, 2, 3, 1)
    got = preprocess_images(raw)
    assert got.shape == (2, 224, 224, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # the jittable resize is not PIL's: same geometry, small differences
    for x, w in zip(raw, want):
        y = np.asarray(preprocess_batch(x[None].astype(np.float32) / 127.5 - 1.0))[0]
        assert np.abs(y - w).mean() < 1e-2 and np.abs(y - w).max() < 0.15


def test_styleclip_text_features_and_delta_i(encoder, all_text, fx):
    three = styleclip_templates()[:3]
    np.testing.assert_allclose(encoder.encode_texts([three[1].format("a smiling face")])[0],
                               all_text[1, 1], rtol=0, atol=1e-6)
    feats = encoder.text_features(["a smiling face", "a face"], three)
    np.testing.assert_allclose(
        feats, fx["styleclip_text_features_target_neutral"], rtol=0, atol=ATOL
    )
    np.testing.assert_allclose(encoder.delta_i("a smiling face", "a face", three),
                               fx["styleclip_delta_i"], rtol=0, atol=ATOL)
    # all 79 templates (StyleCLIP's default) = the formula on the checked embeddings
    e = all_text / np.linalg.norm(all_text, axis=-1, keepdims=True)
    m = e.mean(1)
    m /= np.linalg.norm(m, axis=-1, keepdims=True)
    np.testing.assert_allclose(encoder.text_features(["a face", "a smiling face"]), m,
                               rtol=0, atol=1e-6)
    d = encoder.delta_i("a smiling face", "a face")
    np.testing.assert_allclose(d, (m[1] - m[0]) / np.linalg.norm(m[1] - m[0]), rtol=0, atol=1e-6)
    assert abs(np.linalg.norm(d) - 1) < 1e-6


# ----------------------------------------------------------------------------- converters


def _listing():
    with open(os.path.join(FX, "vit_b32_state_dict_keys.json")) as f:
        return json.load(f)


def test_converter_consumes_the_full_vit_b32_listing():
    listing = _listing()
    zero = np.zeros((), np.float32)
    sd = {
        k: np.broadcast_to(zero, v["shape"])
        for k, v in listing["keys_float32_module_order"].items()
    }
    assert len(sd) == listing["n_keys"] == 302
    sd.update({"input_resolution": np.asarray(224), "context_length": np.asarray(77),
               "vocab_size": np.asarray(49408)})  # the released file's integer entries
    config, variables = cc.openai_from_state_dict(sd, "ViT-B-32")
    assert config == CLIPConfig()  # ViT-B/32: 8 text heads, 12 vision heads by width // 64
    assert config.to_dict() == {**listing["config"], "vision_heads": 12}
    import jax

    leaves = jax.tree_util.tree_leaves(variables)
    assert len(leaves) == 302 and sum(x.size for x in leaves) == listing["n_params"]


def _to_hf(params, config):
    """Our variables -> Hugging Face CLIPModel names/layouts, written here from the HF naming
    (q/k/v split, Linear [out,in], `pre_layrnorm`); used to build the HF-layout test file."""
    p = {k: np.asarray(v) if not isinstance(v, dict) else v for k, v in params.items()}
    out = {
        "text_model.embeddings.token_embedding.weight": p["token_embedding"]["weight"],
        "text_model.embeddings.position_embedding.weight": p["positional_embedding"],
        "text_model.embeddings.position_ids": np.arange(config.context_length)[None],
        "text_model.final_layer_norm.weight": p["ln_final"]["weight"],
        "text_model.final_layer_norm.bias": p["ln_final"]["bias"],
        "text_projection.weight": p["text_projection"].T,
        "logit_scale": p["logit_scale"],
        "vision_model.embeddings.class_embedding": p["visual"]["class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": np.transpose(
            p["visual"]["conv1"]["kernel"], (3, 2, 0, 1)
        ),
        "vision_model.embeddings.position_embedding.weight": p["visual"]["positional_embedding"],
        "vision_model.embeddings.position_ids": np.arange(config.grid**2 + 1)[None],
        "vision_model.pre_layrnorm.weight": p["visual"]["ln_pre"]["weight"],
        "vision_model.pre_layrnorm.bias": p["visual"]["ln_pre"]["bias"],
        "vision_model.post_layernorm.weight": p["visual"]["ln_post"]["weight"],
        "vision_model.post_layernorm.bias": p["visual"]["ln_post"]["bias"],
        "visual_projection.weight": p["visual"]["proj"].T,
    }
    for blocks, prefix in ((p["transformer"], "text_model.encoder.layers."),
                           (p["visual"]["transformer"], "vision_model.encoder.layers.")):
        for name, b in blocks.items():
            q = f"{prefix}{name.split('_')[1]}."
            for n, w, bias in zip(
                "qkv",
                np.split(np.asarray(b["attn"]["in_proj_kernel"]), 3, axis=1),
                np.split(np.asarray(b["attn"]["in_proj_bias"]), 3),
            ):
                out[f"{q}self_attn.{n}_proj.weight"] = w.T
                out[f"{q}self_attn.{n}_proj.bias"] = bias
            out[f"{q}self_attn.out_proj.weight"] = np.asarray(b["attn"]["out_proj"]["kernel"]).T
            out[f"{q}self_attn.out_proj.bias"] = b["attn"]["out_proj"]["bias"]
            for ours, theirs in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2")):
                out[f"{q}{theirs}.weight"] = b[ours]["weight"]
                out[f"{q}{theirs}.bias"] = b[ours]["bias"]
            for ours, theirs in (("c_fc", "fc1"), ("c_proj", "fc2")):
                out[f"{q}mlp.{theirs}.weight"] = np.asarray(b["mlp"][ours]["kernel"]).T
                out[f"{q}mlp.{theirs}.bias"] = b["mlp"][ours]["bias"]
    return {k: np.require(v, requirements="C") for k, v in out.items()}  # keeps 0-d logit_scale


def _assert_same_tree(a, b):
    import jax

    fa, ta = jax.tree_util.tree_flatten_with_path(a)
    fb, tb = jax.tree_util.tree_flatten_with_path(b)
    assert ta == tb
    for (path, x), (_, y) in zip(fa, fb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def test_huggingface_safetensors_layout(converted, tmp_path):
    """A small random CLIPModel-shaped model.safetensors: the fixture's weights (already checked
    against the official outputs) renamed to Hugging Face's keys by `_to_hf` and written with
    `safetensors.numpy.save_file`, as transformers' CLIPModel.save_pretrained lays them out
    (transformers is not installed). It must convert to exactly the same variables."""
    safetensors = pytest.importorskip("safetensors.numpy")
    config, variables = converted
    hf = _to_hf(variables["params"], config)
    path = str(tmp_path / "model.safetensors")
    safetensors.save_file(hf, path)
    with pytest.raises(cc.ConversionError, match="--text-heads"):  # width 32: no config.json yet
        cc.convert_file(path)
    c2, v2, layout = cc.convert_file(path, text_heads=2)
    assert layout == "huggingface" and c2 == config
    _assert_same_tree(v2, variables)
    with open(tmp_path / "config.json", "w") as f:  # HF config.json beside the weights: heads
        json.dump({"text_config": {"num_attention_heads": 2},
                   "vision_config": {"num_attention_heads": 1}}, f)
    assert cc.convert_file(path)[0] == config
    del hf["vision_model.encoder.layers.1.self_attn.k_proj.bias"]
    safetensors.save_file(hf, str(tmp_path / "bad.safetensors"))
    with pytest.raises(
        cc.ConversionError,
        match=r"missing keys \(1\): vision_model.encoder.layers.1.self_attn.k_proj.bias",
    ):
        cc.convert_file(str(tmp_path / "bad.safetensors"), text_heads=2)


def _cli(argv):
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tools"))
    try:
        import convert_weights
    finally:
        sys.path.pop(0)
    return convert_weights.main(argv)


def test_cli_writes_a_folder_that_load_clip_reads(converted, tmp_path, capsys):
    config, variables = converted
    out = str(tmp_path / "clip")
    assert _cli(["clip", PT, out, "--text-heads", "2"]) == 0
    c2, v2 = load_clip(out)
    assert c2 == config
    _assert_same_tree(v2, variables)
    capsys.readouterr()
    assert _cli(["clip", PT, str(tmp_path / "x")]) == 2  # width 32 text tower: heads needed
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--text-heads" in err


@pytest.mark.filterwarnings(
    "ignore::DeprecationWarning"
)  # torch.jit.script / save, to build inputs
def test_cli_bad_keys_and_torchscript_are_one_line_errors(tmp_path, capsys):
    import torch

    sd = torch.load(PT, map_location="cpu", weights_only=True)
    del sd["visual.ln_post.bias"]
    sd["transformer.resblocks.1.mlp.c_fc.weight"] = torch.zeros(128, 31)
    sd["extra.weight"] = torch.zeros(3)
    bad = str(tmp_path / "bad.pt")
    torch.save(sd, bad)
    assert _cli(["clip", bad, str(tmp_path / "o1"), "--text-heads", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and bad in err
    assert "missing keys (1): visual.ln_post.bias" in err
    assert "transformer.resblocks.1.mlp.c_fc.weight: shape (128, 31), expected (128, 32)" in err
    assert "unexpected keys (1): extra.weight" in err

    scripted = str(tmp_path / "linear.pt")  # TorchScript, readable, but not a CLIP
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    assert _cli(["clip", scripted, str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a CLIP checkpoint" in err
    assert not os.path.exists(tmp_path / "o1") and not os.path.exists(tmp_path / "o2")


def _traced_archive(sd, path):
    """A TorchScript archive laid out as the released ViT-B-32.pt: a traced module whose
    attribute tree is the OpenAI state dict (fp16 where `convert_weights` makes it fp16, the
    integer entries as buffers). Built from plain nn.Modules, traced with a trivial forward."""
    import torch

    class Node(torch.nn.Module):
        def forward(self, x):
            return self.logit_scale * x

    root = Node()
    for key, v in sd.items():
        *mods, leaf = key.split(".")
        m = root
        for name in mods:
            if name not in m._modules:
                m.add_module(name, torch.nn.Module())
            m = m._modules[name]
        t = torch.as_tensor(np.asarray(v))
        if t.is_floating_point():
            m.register_parameter(leaf, torch.nn.Parameter(t, requires_grad=False))
        else:
            m.register_buffer(leaf, t)
    torch.jit.save(torch.jit.trace(root, torch.zeros(1)), path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive_tensors_read_without_running_it(state_dict, tmp_path, capsys):
    # dtypes as the released file after clip's convert_weights (the listing's record; the
    # narrow model's blocks 0-1 have the same names as ViT-B/32's)
    fp16 = {k for k, t in _listing()["dtypes_after_build_model_convert_weights"].items()
            if t == "float16"}
    sd = {k: (v.astype(np.float16) if k in fp16 else v) for k, v in state_dict.items()}
    assert sum(v.dtype == np.float16 for v in sd.values()) == 35  # 8 per block x 4, conv1, 2 proj
    path = str(tmp_path / "ViT-B-32.pt")
    _traced_archive(sd, path)
    got = cc.read_clip_file(path)
    assert sorted(got) == sorted(sd)
    for k in sd:
        assert got[k].dtype == sd[k].dtype and got[k].shape == sd[k].shape, k
        np.testing.assert_array_equal(got[k], sd[k], err_msg=k)
    config, variables, _ = cc.convert_file(path, text_heads=2)
    c2, v2, _ = cc.convert_state_dict(
        {k: np.asarray(v, v.dtype if v.dtype.kind != "f" else np.float32) for k, v in sd.items()},
        "fp16-rounded",
        text_heads=2,
    )
    assert config == c2
    _assert_same_tree(variables, v2)

    # a pickle that would run code is refused, and nothing runs
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = str(tmp_path / "evil.pt")
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps(Evil(), protocol=2))
        z.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
        z.writestr("evil/code/__torch__.py", "")
    assert _cli(["clip", evil, str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused global" in err and "state_dict()" in err
    assert not marker.exists()
