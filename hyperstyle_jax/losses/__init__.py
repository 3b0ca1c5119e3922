"""Training losses and evaluation metrics, numerically as the official PyTorch code.

Pure functions: the frozen network's Flax variables are an argument, images are NHWC
float32 in [-1, 1], and everything is jittable, differentiable and usable in a sharded
train step. `l2_loss`, `lpips_loss`, `id_loss`, `moco_loss`, `ms_ssim` (scalars) and their
per-image [B] versions; `LossWeights`, `LossNets` and `compute_losses` follow the official
`training/coach_hyperstyle.py` `Coach.calc_loss`. Contract: docs/CONTRACTS.md, "Losses".
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
                             + "; convert them with tools/convert_weights.py and pass their "
                             "folders")


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
