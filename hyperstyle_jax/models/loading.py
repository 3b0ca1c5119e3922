"""Load converted HyperStyle / W-encoder folders (written by `tools/convert_weights.py`).

    configs, variables = load_hyperstyle(DIR)
      configs   = {'generator': GeneratorConfig, 'hypernet': HyperNetConfig, 'opts': dict}
      variables = {'hypernet': {'params', 'batch_stats'}, 'generator': {'params', 'noises'},
                   'latent_avg': [n_styles, style_dim]}
    config, variables = load_w_encoder(DIR)      # variables = {'params', 'batch_stats'}
      w_encoder = build_w_encoder(config)        # irse.WEncoder
    config, tree = load_hypernet_backbone_init(DIR)   # from `convert_weights.py resnet34`
    variables = merge_backbone_init(fresh_hypernet_variables, tree)

Each loader checks the arrays against the model's `jax.eval_shape(init)` tree and fails
naming the folder and every mismatching path. No torch needed.
"""
from __future__ import annotations

from typing import Any, Mapping

from hyperstyle_jax.utils.checkpoints import CheckpointError, load_converted
from hyperstyle_jax.utils.trees import leaves_with_paths, set_path

KIND_HYPERSTYLE = "hyperstyle"
KIND_W_ENCODER = "w_encoder"
KIND_BACKBONE_INIT = "hypernet_backbone_init"


def _check(tree: Any, expected: Any, path: str, what: str) -> None:
    from hyperstyle_jax.convert.common import ConversionError, check_tree_matches

    try:
        check_tree_matches(tree, expected, path, what)
    except ConversionError as e:
        raise CheckpointError(str(e)) from None


def load_hyperstyle(path: str) -> tuple[dict, dict]:
    """A `hyperstyle` folder -> (configs, variables); see the module docstring."""
    import jax
    import jax.numpy as jnp

    from hyperstyle_jax.models.hypernetwork import HyperNetConfig, feature_input_hw, init_shapes
    from hyperstyle_jax.models.stylegan2 import Generator, GeneratorConfig

    config, tree = load_converted(path, KIND_HYPERSTYLE)
    try:
        gen = GeneratorConfig.from_dict(config["generator"])
        hyper = HyperNetConfig.from_dict(config["hypernet"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: config.json has no valid generator/hypernet config: "
                              f"{type(e).__name__}: {e}") from None
    for key in ("hypernet", "generator", "latent_avg"):
        if key not in tree:
            raise CheckpointError(f"{path}: arrays hold no {key!r} (found {sorted(tree)})")
    _check(tree["hypernet"], init_shapes(hyper, feature_input_hw(hyper)), path, "hypernet variables")
    z = jnp.zeros((1, gen.style_dim), jnp.float32)
    gen_shapes = jax.eval_shape(lambda: Generator(gen).init(jax.random.PRNGKey(0), z, input_space="z"))
    _check(tree["generator"], gen_shapes, path, "generator variables")
    if tuple(tree["latent_avg"].shape) != (gen.n_latent, gen.style_dim):
        raise CheckpointError(f"{path}: latent_avg has shape {tuple(tree['latent_avg'].shape)}, "
                              f"expected {(gen.n_latent, gen.style_dim)}")
    return {"generator": gen, "hypernet": hyper, "opts": config.get("opts", {})}, tree


def build_w_encoder(config: dict):
    """The `irse.WEncoder` described by a w_encoder folder's config."""
    from hyperstyle_jax.models.irse import WEncoder

    try:
        return WEncoder(n_styles=int(config["n_styles"]), style_dim=int(config["style_dim"]),
                        units=tuple(tuple(int(v) for v in u) for u in config["units"]),
                        input_width=int(config["input_width"]), mode=config.get("mode", "ir_se"))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"invalid W-encoder config ({type(e).__name__}: {e}); expected "
                              f"n_styles, style_dim, units, input_width, mode") from None


def load_w_encoder(path: str) -> tuple[dict, dict]:
    """A `w_encoder` folder -> (config, {'params', 'batch_stats'}); `build_w_encoder(config)`."""
    import jax
    import jax.numpy as jnp

    config, variables = load_converted(path, KIND_W_ENCODER)
    model = build_w_encoder(config)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
    _check(variables, shapes, path, "W-encoder variables")
    return config, variables


def load_hypernet_backbone_init(path: str) -> tuple[dict, dict]:
    """A `resnet34` conversion folder -> (config, tree); merge it with
    `hyperstyle_jax.convert.hyperstyle.merge_backbone_init` (or the same strict rule)."""
    return load_converted(path, KIND_BACKBONE_INIT)


def merge_backbone_init(variables: Mapping, init_tree: Mapping, origin: str = "resnet34 init") -> dict:
    """Copy a `resnet34` folder's tree into fresh HyperNetwork variables, strictly.

    Every path of `init_tree` must exist in `variables` with the same shape (errors name
    each one); paths not in `init_tree` (PReLU, refinement blocks) are kept.
    """
    import jax

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
