"""Converted-weight folders: writing, reading and loading them into model variables.

Layout of a folder written by `save_converted(DIR, tree, config, kind)`:
    DIR/config.json   {'kind': ..., model config} (plain JSON: ints, floats, strings, lists)
    DIR/arrays/       orbax StandardCheckpointer of `tree` (nested dict of arrays)
Every converter in `tools/convert_weights.py` writes this; the loaders below read it and
check the arrays against the model's `init_shapes` tree, failing with one message that
names the folder and every mismatching path. No torch here.

    load_generator(DIR) / load_generator_with_latent_avg(DIR)   kind 'stylegan2'
    load_hyperstyle(DIR) -> (configs, {'hypernet', 'generator', 'latent_avg'})
    load_w_encoder(DIR)  -> (config dict, {'params', 'batch_stats'})
    load_hypernet_backbone_init(DIR), merge_backbone_init(variables, tree)   kind 'resnet34'
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from hyperstyle_jax.models import discriminator, e4e, hypernetwork, irse, stylegan2
from hyperstyle_jax.models.stylegan2 import GeneratorConfig, init_shapes
from hyperstyle_jax.utils.trees import leaves_with_paths, set_path, tree_mismatch

KIND_STYLEGAN2 = "stylegan2"
KIND_HYPERSTYLE = "hyperstyle"
KIND_W_ENCODER = "w_encoder"
KIND_BACKBONE_INIT = "hypernet_backbone_init"


class CheckpointError(ValueError):
    """A converted checkpoint folder is missing or unreadable; the message names it."""


def check_loaded(tree: Any, expected: Any, path: str, what: str) -> None:
    problem = tree_mismatch(tree, expected)
    if problem:
        raise CheckpointError(f"{path}: converted {what} do not match the model: {problem}")


def save_converted(out_dir: str, tree: dict, config: dict, kind: str) -> None:
    """Write `tree` (nested dict of numpy/jax arrays) and `config` to `out_dir`."""
    out_dir = os.path.abspath(out_dir)
    arrays = os.path.join(out_dir, "arrays")
    if os.path.exists(arrays):
        raise CheckpointError(f"{out_dir}: already holds a converted checkpoint; "
                              "choose a new folder or delete it first")
    os.makedirs(out_dir, exist_ok=True)
    tree = _as_numpy(tree)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(arrays, tree)
        ckptr.wait_until_finished()
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump({"kind": kind, **config}, f, indent=1, sort_keys=True)


def load_converted(path: str, kind: str | None = None) -> tuple[dict, dict]:
    """Read a folder written by `save_converted`: returns (config, tree of numpy arrays)."""
    path = os.path.abspath(path)
    cfg_path = os.path.join(path, "config.json")
    arrays = os.path.join(path, "arrays")
    if not os.path.isfile(cfg_path) or not os.path.isdir(arrays):
        raise CheckpointError(
            f"{path}: not a converted checkpoint folder (needs config.json and arrays/; "
            "make one with tools/convert_weights.py)")
    try:
        with open(cfg_path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: unreadable config: {e}") from None
    if kind is not None and config.get("kind") != kind:
        raise CheckpointError(
            f"{path}: holds a {config.get('kind')!r} checkpoint, expected {kind!r}")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            meta = ckptr.metadata(arrays)
            tree_meta = getattr(meta, "item_metadata", meta)
            target = _restore_target(tree_meta)
            tree = ckptr.restore(arrays, target)
    except Exception as e:  # orbax raises many types; name the folder either way
        raise CheckpointError(f"{arrays}: cannot restore arrays: {type(e).__name__}: {e}") from None
    return config, _as_numpy(tree)


def _restore_target(meta: Any) -> Any:
    """Host numpy targets from orbax metadata, so restore never needs a device layout."""
    def leaf(m):
        return np.zeros(m.shape, m.dtype) if hasattr(m, "shape") else m

    return jax.tree_util.tree_map(leaf, dict(meta) if hasattr(meta, "keys") else meta)


def _as_numpy(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: np.asarray(x), tree)


# ----------------------------------------------------------------------------- model loaders


def load_generator_with_latent_avg(path: str):
    """A `stylegan2` folder -> (GeneratorConfig, variables {'params', 'noises'}, latent_avg).

    latent_avg is a numpy [style_dim] (or [n_latent, style_dim]) or None when the
    checkpoint had none (Flax rejects a bare array as a collection, so it is separate).
    """
    cfg_dict, tree = load_converted(path, kind=KIND_STYLEGAN2)
    try:
        config = GeneratorConfig.from_dict(cfg_dict)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad generator config.json: {e}") from None
    variables = {"params": tree.get("params", {}), "noises": tree.get("noises", {})}
    check_loaded(variables, init_shapes(config), path, "generator variables")
    latent_avg = tree.get("latent_avg")
    variables = jax.tree_util.tree_map(jnp.asarray, variables)
    return config, variables, (None if latent_avg is None else np.asarray(latent_avg))


def load_generator(path: str):
    """(GeneratorConfig, variables {'params', 'noises'}) for `Generator(config).apply`."""
    config, variables, _ = load_generator_with_latent_avg(path)
    return config, variables


def load_hyperstyle(path: str) -> tuple[dict, dict]:
    """A `hyperstyle` folder -> (configs, variables).

    configs   = {'generator': GeneratorConfig, 'hypernet': HyperNetConfig, 'opts': dict}
    variables = {'hypernet': {'params', 'batch_stats'}, 'generator': {'params', 'noises'},
                 'latent_avg': [n_styles, style_dim]}
    """
    config, tree = load_converted(path, KIND_HYPERSTYLE)
    try:
        gen = stylegan2.GeneratorConfig.from_dict(config["generator"])
        hyper = hypernetwork.HyperNetConfig.from_dict(config["hypernet"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: config.json has no valid generator/hypernet config: "
                              f"{type(e).__name__}: {e}") from None
    for key in ("hypernet", "generator", "latent_avg"):
        if key not in tree:
            raise CheckpointError(f"{path}: arrays hold no {key!r} (found {sorted(tree)})")
    check_loaded(tree["hypernet"], hypernetwork.init_shapes(hyper), path, "hypernet variables")
    check_loaded(tree["generator"], stylegan2.init_shapes(gen), path, "generator variables")
    if tuple(tree["latent_avg"].shape) != (gen.n_latent, gen.style_dim):
        raise CheckpointError(f"{path}: latent_avg has shape {tuple(tree['latent_avg'].shape)}, "
                              f"expected {(gen.n_latent, gen.style_dim)}")
    return {"generator": gen, "hypernet": hyper, "opts": config.get("opts", {})}, tree


def load_w_encoder(path: str) -> tuple[dict, dict]:
    """A `w_encoder` folder -> (config, {'params', 'batch_stats'}); build the module with
    `models.irse.WEncoder.from_config(config)`."""
    config, variables = load_converted(path, KIND_W_ENCODER)
    try:
        shapes = irse.w_encoder_init_shapes(config)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid W-encoder config ({type(e).__name__}: {e}); "
                              "expected n_styles, style_dim, units, input_width, mode") from None
    check_loaded(variables, shapes, path, "W-encoder variables")
    return config, variables


def load_hypernet_backbone_init(path: str) -> tuple[dict, dict]:
    """A `resnet34` conversion folder -> (config, tree); merge it with `merge_backbone_init`."""
    return load_converted(path, KIND_BACKBONE_INIT)


def merge_backbone_init(variables: Mapping, init_tree: Mapping,
                        origin: str = "resnet34 init") -> dict:
    """Copy a `resnet34` folder's tree into fresh HyperNetwork variables, strictly.

    Every path of `init_tree` must exist in `variables` with the same shape (errors name
    each one); paths not in `init_tree` (PReLU, refinement blocks) are kept.
    """
    out = jax.tree_util.tree_map(lambda x: x, dict(variables))
    bad = []
    for collection, tree in init_tree.items():
        for path, leaf in leaves_with_paths(tree):
            node = out.get(collection, {})
            for p in path[:-1]:
                node = node.get(p, {}) if isinstance(node, Mapping) else {}
            if not isinstance(node, Mapping) or path[-1] not in node:
                bad.append(f"{collection}/{'/'.join(path)}: not in the hypernetwork")
            elif tuple(node[path[-1]].shape) != tuple(leaf.shape):
                bad.append(f"{collection}/{'/'.join(path)}: shape {tuple(leaf.shape)} vs "
                           f"{tuple(node[path[-1]].shape)} in the hypernetwork")
            else:
                set_path(out[collection], path, leaf)
    if bad:
        raise CheckpointError(f"{origin}: cannot merge into the hypernetwork: " + "; ".join(bad))
    return out


# ----------------------------------------------------------------------------- ReStyle-e4e

KIND_RESTYLE_E4E = "restyle_e4e"


def load_restyle_e4e(path: str) -> tuple[dict, dict]:
    """A `restyle_e4e` folder (domain adaptation) -> (configs, variables).

    configs   = {'encoder': ProgressiveBackboneEncoder config dict,
                 'generator': GeneratorConfig (the checkpoint's own decoder), 'opts': dict}
    variables = {'encoder': {'params', 'batch_stats'}, 'generator': {'params', 'noises'},
                 'latent_avg': [n_styles, style_dim]}
    """
    config, tree = load_converted(path, KIND_RESTYLE_E4E)
    try:
        gen = stylegan2.GeneratorConfig.from_dict(config["generator"])
        enc_shapes = e4e.init_shapes(config["encoder"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: config.json has no valid encoder/generator config: "
                              f"{type(e).__name__}: {e}") from None
    for key in ("encoder", "generator", "latent_avg"):
        if key not in tree:
            raise CheckpointError(f"{path}: arrays hold no {key!r} (found {sorted(tree)})")
    check_loaded(tree["encoder"], enc_shapes, path, "ReStyle-e4e encoder variables")
    check_loaded(tree["generator"], stylegan2.init_shapes(gen), path, "decoder variables")
    n, d = int(config["encoder"]["n_styles"]), int(config["encoder"]["style_dim"])
    if tuple(tree["latent_avg"].shape) != (n, d):
        raise CheckpointError(f"{path}: latent_avg has shape {tuple(tree['latent_avg'].shape)}, "
                              f"expected {(n, d)}")
    return {"encoder": config["encoder"], "generator": gen, "opts": config.get("opts", {})}, tree


# ----------------------------------------------------------------------------- discriminator

KIND_DISCRIMINATOR = "discriminator"


def load_discriminator(path: str):
    """A `discriminator` folder -> (DiscriminatorConfig, variables {'params'})."""
    cfg_dict, tree = load_converted(path, kind=KIND_DISCRIMINATOR)
    try:
        config = discriminator.DiscriminatorConfig.from_dict(cfg_dict)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad discriminator config.json: {e}") from None
    variables = {"params": tree.get("params", {})}
    check_loaded(variables, discriminator.init_shapes(config), path, "discriminator params")
    return config, jax.tree_util.tree_map(jnp.asarray, variables)
