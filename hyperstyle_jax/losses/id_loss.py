"""Identity loss (official `criteria/id_loss.py`) on an ArcFace IR / IR-SE backbone.

    L_id = mean_i (1 - <f(y_hat_i), stop_gradient(f(y_i))>)

f: crop rows 35:223, cols 32:220 of the 256x256 image (188x188), PyTorch's adaptive
average pooling to 112x112 (188/112 is not an integer: overlapping bins
[floor(i*188/112), ceil((i+1)*188/112)), see `models/pooling.py`), then the ArcFace
`Backbone`, whose output is already L2-normalized. The loss uses IR-SE-50
(`model_ir_se50.pth`); the same code runs IR-101 (`CurricularFace_Backbone.pth`, used
by the official ID *metric*, there after MTCNN alignment, which is not ported here).
The network always runs in eval mode (running BatchNorm statistics, no dropout).

Variables: `{'params', 'batch_stats'}` of `models.irse.Backbone`, written by
`tools/convert_weights.py arcface`; depth / mode / affinity are read from their structure.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from hyperstyle_jax.losses.similarity import deinterleave, interleave, similarity_terms
from hyperstyle_jax.models.irse import Backbone, get_blocks
from hyperstyle_jax.models.pooling import adaptive_avg_pool2d

ID_CROP = (slice(35, 223), slice(32, 220))  # rows, cols of the 256x256 image
ID_INPUT = 112


def arcface_config_from_variables(variables: Mapping) -> dict:
    """{'num_layers', 'mode', 'affine', 'input_size'} from converted Backbone variables."""
    try:
        params = variables["params"]
        n_units = sum(1 for k in params if k.startswith("body_"))
        mode = "ir_se" if "res_layer_5" in params["body_0"] else "ir"
        affine = "weight" in params.get("output_layer_4", {})
    except (KeyError, TypeError):
        raise ValueError("ArcFace variables must look like {'params': {'input_layer_0': ..., "
                         "'body_0': ..., ...}, 'batch_stats': ...} (convert with "
                         "tools/convert_weights.py arcface)") from None
    depth = {len(get_blocks(d)): d for d in (50, 100, 152)}.get(n_units)
    if depth is None:
        raise ValueError(f"ArcFace variables have {n_units} body units: no IR depth has that many")
    return {"num_layers": depth, "mode": mode, "affine": affine, "input_size": ID_INPUT}


def arcface_module(config: Mapping) -> Backbone:
    return Backbone(input_size=config.get("input_size", ID_INPUT), num_layers=config["num_layers"],
                    mode=config["mode"], drop_ratio=0.6, affine=config.get("affine", True))


def arcface_eval_shape(config: Mapping) -> dict:
    """Shapes of the Backbone variables for `config` (no computation)."""
    s = config.get("input_size", ID_INPUT)
    x = jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32)
    return jax.eval_shape(lambda a: arcface_module(config).init(jax.random.PRNGKey(0), a), x)


def id_preprocess(x: jnp.ndarray) -> jnp.ndarray:
    """[B, 256, 256, 3] -> the 188x188 face crop pooled to [B, 112, 112, 3]."""
    if x.shape[1:3] != (256, 256):
        raise ValueError(f"ID loss: expects 256x256 images (the official crop [35:223, 32:220] "
                         f"is fixed), got shape {x.shape}")
    return adaptive_avg_pool2d(x[:, ID_CROP[0], ID_CROP[1], :], (ID_INPUT, ID_INPUT))


def id_embed(variables: Mapping, x: jnp.ndarray) -> jnp.ndarray:
    """[B, 256, 256, 3] in [-1, 1] -> unit-norm ArcFace embeddings [B, 512]."""
    net = arcface_module(arcface_config_from_variables(variables))
    return net.apply(variables, id_preprocess(x), train=False)


def id_similarity(variables: Mapping, y_hat: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """[B] cosine similarity <f(y_hat_i), f(y_i)> (one forward on the stacked batch)."""
    e_hat, e_y = deinterleave(id_embed(variables, interleave(y_hat, y)), 2)
    return jnp.sum(e_hat * e_y, axis=1)


def id_loss_terms(variables: Mapping, y_hat: jnp.ndarray, y: jnp.ndarray,
                  x: jnp.ndarray | None = None) -> dict:
    """The official `IDLoss.forward(y_hat, y, x)` as arrays.

    Returns {'loss': mean(1 - diff_target), 'improve': mean(diff_target - diff_views),
    'diff_target' [B], 'diff_input' [B], 'diff_views' [B]}. Target features are under
    `stop_gradient`. `x` (the encoder input) defaults to `y`, as in HyperStyle's datasets
    (source = target); then only y_hat and y are embedded.
    """
    return similarity_terms(id_embed, variables, y_hat, y, x)


def id_loss(variables: Mapping, y_hat: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Scalar mean_i (1 - <f(y_hat_i), sg(f(y_i))>)."""
    return id_loss_terms(variables, y_hat, y)["loss"]
