"""Training losses and evaluation metrics, numerically as the official PyTorch code.

Every function is pure: the frozen network's Flax variables are an argument (never
closed-over constants), images are NHWC float32 in [-1, 1], and everything is jittable,
differentiable and usable inside a sharded train step (params replicated, batch sharded).

    l2_loss(y_hat, y)                        -> scalar   (`F.mse_loss`)
    lpips_loss(lpips_vars, y_hat, y)         -> scalar   (batch mean, official LPIPS v0.1)
    id_loss(arcface_vars, y_hat, y)          -> scalar   (1 - cos, ArcFace IR-SE-50)
    moco_loss(moco_vars, y_hat, y)           -> scalar   (1 - cos, MoCo v2 ResNet-50)
    ms_ssim(img1, img2)                      -> scalar   (official metric, batch quirk)
    per-image versions: l2_per_image, lpips_distance, id_similarity, ms_ssim_per_image -> [B]

The trainer's entry point follows the official `Coach.calc_loss` (SPEC §5):

    weights = LossWeights(l2=1.0, lpips=0.8, id=0.1)          # paper faces command
    nets = LossNets.load(lpips='ckpt/lpips_alex', id='ckpt/arcface_ir_se50')
    total, terms = compute_losses(nets.variables, y_hat, y, weights, x=None)

`compute_losses(loss_vars, y_hat, y, weights, x=None, return_id_logs=False)
-> (total scalar, terms)`:
  * `loss_vars`: `{'lpips': ..., 'id': ..., 'moco': ...}` Flax variable dicts (only the
    ones with a positive weight are needed), e.g. `LossNets.variables`;
  * `weights`: `LossWeights` (static Python floats: they decide which terms exist);
  * `x`: the encoder input for the `id_improve` log (defaults to `y`, HyperStyle's case);
  * each term is computed only when its weight is > 0; `terms` holds the scalars
    `loss_id`, `id_improve` (ID or MoCo), `loss_l2`, `loss_lpips`, `loss_moco` and
    `loss` (= total), named as the official `loss_dict`; with `return_id_logs` it also
    holds `id_logs` = {'diff_target', 'diff_input', 'diff_views'} arrays [B].
  * `id > 0` together with `moco > 0` is an error (as the official Coach); unlike the
    official code, having neither is allowed (the official crashes there), but at least
    one weight must be positive.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax.numpy as jnp

from hyperstyle_jax.checkpoints import load_converted
from hyperstyle_jax.losses.id_loss import id_embed, id_loss, id_loss_terms, id_similarity
from hyperstyle_jax.losses.l2 import l2_loss, l2_per_image
from hyperstyle_jax.losses.lpips import lpips_distance, lpips_loss
from hyperstyle_jax.losses.moco import moco_embed, moco_loss, moco_loss_terms
from hyperstyle_jax.losses.ms_ssim import ms_ssim, ms_ssim_per_image

# Converted-folder kinds (`tools/convert_weights.py lpips|arcface|moco`).
NET_KINDS = {"lpips": "lpips", "id": "arcface", "moco": "moco"}


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """The official lambdas (`--l2_lambda`, `--lpips_lambda`, `--id_lambda`, `--moco_lambda`)."""
    l2: float = 0.0
    lpips: float = 0.0
    id: float = 0.0
    moco: float = 0.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"loss weight {f.name}_lambda = {v!r}: must be a number >= 0")
        if self.id > 0 and self.moco > 0:
            raise ValueError(f"id_lambda = {self.id} and moco_lambda = {self.moco}: both are > 0; "
                             "use only one of the ID and MoCo losses (as the official Coach)")
        if not self.active():
            raise ValueError("every loss weight is 0: set at least one of l2, lpips, id, moco > 0")

    def active(self) -> tuple[str, ...]:
        """Names of the terms with a positive weight, e.g. ('l2', 'lpips', 'id')."""
        return tuple(f.name for f in dataclasses.fields(self) if getattr(self, f.name) > 0)

    def networks(self) -> tuple[str, ...]:
        """Loss networks these weights need, among 'lpips', 'id', 'moco'."""
        return tuple(n for n in self.active() if n in NET_KINDS)

    @classmethod
    def from_config(cls, cfg: Mapping) -> "LossWeights":
        """From a mapping with `l2_lambda`, `lpips_lambda`, ... (missing ones are 0)."""
        return cls(**{n: float(cfg.get(f"{n}_lambda", 0.0)) for n in ("l2", "lpips", "id", "moco")})


@dataclasses.dataclass
class LossNets:
    """Frozen loss networks loaded from converted folders: `variables[name]` per network."""
    variables: dict

    @classmethod
    def load(cls, lpips: str | None = None, id: str | None = None,  # noqa: A002 - official name
             moco: str | None = None) -> "LossNets":
        """Read the folders written by `tools/convert_weights.py` (None = not needed)."""
        out = {}
        for name, path in (("lpips", lpips), ("id", id), ("moco", moco)):
            if path is not None:
                _, tree = load_converted(path, NET_KINDS[name])
                out[name] = tree
        return cls(out)

    def check(self, weights: LossWeights) -> None:
        """Fail naming each network that `weights` needs but that was not loaded."""
        flags = {"lpips": "lpips (--lpips_lambda > 0)", "id": "id (--id_lambda > 0)",
                 "moco": "moco (--moco_lambda > 0)"}
        missing = [flags[n] for n in weights.networks() if n not in self.variables]
        if missing:
            raise ValueError("loss networks needed but not loaded: " + ", ".join(missing)
                             + "; convert them with tools/convert_weights.py and pass their folders")


def compute_losses(loss_vars: Mapping, y_hat: jnp.ndarray, y: jnp.ndarray, weights: LossWeights,
                   x: jnp.ndarray | None = None, return_id_logs: bool = False
                   ) -> tuple[jnp.ndarray, dict]:
    """The official `calc_loss`: weighted sum of the active terms (see the module docstring)."""
    missing = [n for n in weights.networks() if n not in loss_vars]
    if missing:
        raise ValueError(f"compute_losses: no variables for {missing} (weights {weights}); "
                         "load them with LossNets.load")
    terms: dict = {}
    total = jnp.zeros((), jnp.float32)
    logs = None
    if weights.id > 0:
        t = id_loss_terms(loss_vars["id"], y_hat, y, x)
        terms["loss_id"], terms["id_improve"] = t["loss"], t["improve"]
        total = total + weights.id * t["loss"]
        logs = t
    if weights.l2 > 0:
        terms["loss_l2"] = l2_loss(y_hat, y)
        total = total + weights.l2 * terms["loss_l2"]
    if weights.lpips > 0:
        terms["loss_lpips"] = lpips_loss(loss_vars["lpips"], y_hat, y)
        total = total + weights.lpips * terms["loss_lpips"]
    if weights.moco > 0:
        t = moco_loss_terms(loss_vars["moco"], y_hat, y, x)
        terms["loss_moco"], terms["id_improve"] = t["loss"], t["improve"]
        total = total + weights.moco * t["loss"]
        logs = t
    terms["loss"] = total
    if return_id_logs and logs is not None:
        terms["id_logs"] = {k: logs[k] for k in ("diff_target", "diff_input", "diff_views")}
    return total, terms


__all__ = ["LossWeights", "LossNets", "compute_losses", "l2_loss", "l2_per_image", "lpips_loss",
           "lpips_distance", "id_loss", "id_loss_terms", "id_similarity", "id_embed", "moco_loss",
           "moco_loss_terms", "moco_embed", "ms_ssim", "ms_ssim_per_image"]
