"""The `--refine_*` options of `invert` and of every `edit` subcommand: PTI-style refinement
(`pivotal_tuning`) of each batch after HyperStyle, and `--export_generator`.

    add_arguments(parser, export=True)            # the options (export: invert's two more)
    refiner = Refiner.from_args(args, inverter, batch_size)   # None without --refine_steps
    out = refiner(target float [n, h, w, 3] in [-1, 1], codes, deltas)  # pivotal_tuning's dict
    export_generators(args, inverter, stems, deltas_per_image)

Bad input is one line (`utils.cli.UserError`): --refine_steps not an integer or negative,
--refine_lr not > 0, a --refine_lpips folder missing or not a converted LPIPS folder, a
batch whose compiled refinement needs more memory than is available (XLA's memory analysis
of the step loop against the device's free memory, or the host's MemAvailable on CPU; the
message names the batch size that would fit). Without --refine_lpips the objective is L2
alone (no LPIPS term, no early stop) and one line says so.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Optional, Sequence

import jax
import numpy as np

from hyperstyle_jax import pivotal_tuning
from hyperstyle_jax.checkpoints import CheckpointError, load_converted
from hyperstyle_jax.utils import cli

GIB = 1 << 30


def add_arguments(p: argparse.ArgumentParser, export: bool = False) -> None:
    """The refinement options (a group of `p`); export: also --export_generator/--export_pt."""
    g = p.add_argument_group("refinement (PTI-style pivotal tuning after HyperStyle)")
    g.add_argument("--refine_steps", default=None, metavar="N",
                   help="refine each image's offsets with N Adam steps of PTI's objective "
                        "(0: render HyperStyle's result through the refiner); off by default")
    g.add_argument("--refine_lr", default="3e-4", metavar="X",
                   help="Adam learning rate of the refinement (PTI's pti_learning_rate)")
    g.add_argument("--refine_lpips", metavar="DIR",
                   help="converted LPIPS AlexNet folder (tools/convert_weights.py lpips): adds "
                        "PTI's LPIPS term and its early stop; without it the objective is L2")
    g.add_argument("--refine_codes", action="store_true",
                   help="also tune the W+ codes (PTI keeps its pivot fixed)")
    if export:
        g.add_argument("--export_generator", metavar="DIR",
                       help="write each image's tuned generator θ·(1+D) as a converted "
                            "generator folder DIR/<stem>/ (generate --checkpoint reads it)")
        g.add_argument("--export_pt", action="store_true",
                       help="with --export_generator: also DIR/<stem>.pt, a rosinality "
                            "checkpoint of plain tensors (needs torch)")


def parse_steps(value) -> Optional[int]:
    """--refine_steps -> int >= 0 (None when not given); UserError in one line otherwise."""
    if value is None:
        return None
    try:
        steps = int(str(value).strip())
    except ValueError:
        raise cli.UserError(f"--refine_steps {value!r}: not an integer") from None
    if steps < 0:
        raise cli.UserError(f"--refine_steps {steps}: must be >= 0")
    return steps


def parse_lr(value) -> float:
    try:
        lr = float(value)
    except ValueError:
        raise cli.UserError(f"--refine_lr {value!r}: not a number") from None
    if not lr > 0 or not np.isfinite(lr):
        raise cli.UserError(f"--refine_lr {value}: must be > 0")
    return lr


def load_lpips(path: Optional[str]):
    """--refine_lpips DIR -> LPIPS variables (None without it); UserError in one line."""
    if path is None:
        return None
    if not os.path.isdir(path):
        raise cli.UserError(f"--refine_lpips {path}: no such folder (convert the LPIPS "
                            f"weights with tools/convert_weights.py lpips alexnet.pth alex.pth "
                            f"DIR)")
    try:
        _, tree = load_converted(path, "lpips")
    except CheckpointError as e:
        raise cli.UserError(f"--refine_lpips: {cli.one_line(e)}") from None
    return tree


def check_export(args: argparse.Namespace) -> None:
    """--export_generator / --export_pt checked before anything runs."""
    if getattr(args, "export_pt", False) and not getattr(args, "export_generator", None):
        raise cli.UserError("--export_pt needs --export_generator DIR")
    if getattr(args, "export_pt", False):
        try:
            import torch  # noqa: F401, PLC0415  optional extra (the convert extra)
        except ImportError:
            raise cli.UserError("--export_pt needs torch (pip install -e '.[convert]')") from None
    if getattr(args, "export_generator", None):
        cli.out_dir(args.export_generator, "--export_generator")


def available_bytes() -> int:
    """Free memory for the refinement: the first local device's (bytes_limit - bytes_in_use)
    where it reports them (GPU, TPU), else the host's MemAvailable."""
    stats = None
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _tree_bytes(tree) -> int:
    return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(tree))


class Refiner:
    """One compiled refiner for batches of `batch_size` (see the module docstring)."""

    def __init__(self, inverter, batch_size: int, steps: int, lr: float = 3e-4,
                 lpips=None, tune_codes: bool = False, say=print):
        self.inverter, self.batch_size, self.steps = inverter, batch_size, steps
        self.config = pivotal_tuning.RefineConfig(steps=steps, lr=lr, tune_codes=tune_codes)
        self.lpips = lpips
        self.fixed_bytes = _tree_bytes(inverter.frozen["generator"]) + _tree_bytes(lpips or {})
        if lpips is None:
            say("refine: no --refine_lpips, so the objective is L2 alone (no LPIPS term, no "
                "early stop)")
        self.run = pivotal_tuning.batched_refiner(inverter, batch_size, self.config, lpips,
                                                  check_memory=self.check_memory)
        self.seconds = 0.0

    @classmethod
    def from_args(cls, args: argparse.Namespace, inverter, batch_size: int,
                  say=print) -> Optional["Refiner"]:
        steps = parse_steps(getattr(args, "refine_steps", None))
        lr = parse_lr(getattr(args, "refine_lr", "3e-4"))
        if steps is None:
            if getattr(args, "refine_lpips", None) or getattr(args, "refine_codes", False):
                raise cli.UserError("--refine_lpips / --refine_codes need --refine_steps N")
            return None
        lpips = load_lpips(getattr(args, "refine_lpips", None))
        return cls(inverter, batch_size, steps, lr, lpips,
                   getattr(args, "refine_codes", False), say)

    def check_memory(self, stats) -> None:
        """Refuse (one line naming a batch size that fits) a compiled step loop whose memory
        (arguments + outputs - donated + temporaries, by XLA) exceeds what is free."""
        need = (stats.argument_size_in_bytes + stats.output_size_in_bytes
                - stats.alias_size_in_bytes + stats.temp_size_in_bytes)
        avail = available_bytes()
        if need <= avail:
            return
        b = self.batch_size
        per_image = max(1, (need - self.fixed_bytes) / b)
        fit = int((avail - self.fixed_bytes) // per_image)
        gcfg = self.inverter.generator_config
        layers = pivotal_tuning.tuned_layer_indices(
            self.config.layers, [s is not None for s in self.inverter.model.tuned_delta_shapes()],
            gcfg)
        state = pivotal_tuning.state_bytes(gcfg, layers, b, self.config.tune_codes)
        hint = (f"--batch_size {fit} would fit" if fit >= 1 else
                "not even one image fits; free memory or use a smaller model")
        raise cli.UserError(
            f"refinement of a batch of {b} needs about {need / GIB:.2f} GiB ({state / GIB:.2f} "
            f"GiB of offsets, gradients and Adam moments), only {avail / GIB:.2f} GiB is "
            f"available: {hint}")

    def __call__(self, target: np.ndarray, codes: np.ndarray, deltas: Sequence) -> dict:
        """Refine n <= batch_size images, with a progress bar (steps/s, the running loss)."""
        bar = cli.progress_bar(self.steps, desc=f"refine {len(codes)} img", unit="step")
        done = [0]

        def progress(k, total, info):
            bar.set_postfix_str(f"loss {info['loss']:.4f}, {info['active']} running")
            bar.update(k - done[0])
            done[0] = k

        t0 = time.perf_counter()
        try:
            out = self.run(target, codes, deltas, progress=progress)
        finally:
            bar.close()
        self.seconds += time.perf_counter() - t0
        return out

    def summary(self, out: dict) -> str:
        """One line: mean L2 (and LPIPS) before -> after, steps applied."""
        line = f"refined: L2 {np.mean(out['l2_start']):.4f} -> {np.mean(out['l2']):.4f}"
        if self.lpips is not None:
            line += f", LPIPS {np.mean(out['lpips_start']):.4f} -> {np.mean(out['lpips']):.4f}"
        return line + f" ({int(np.max(out['steps'], initial=0))} steps)"


def export_generators(args: argparse.Namespace, inverter, stems: Sequence[str],
                      deltas: Sequence[Sequence]) -> None:
    """--export_generator DIR: DIR/<stem>/ (and DIR/<stem>.pt with --export_pt) per image;
    deltas: per image the generator's list (None or [out, in, k, k])."""
    root = getattr(args, "export_generator", None)
    if not root:
        return
    for stem, d in zip(stems, deltas):
        try:
            pivotal_tuning.export_generator(
                os.path.join(root, stem), inverter.generator_config,
                inverter.frozen["generator"], list(d),
                latent_avg=np.asarray(inverter.frozen["latent_avg"]),
                pt_path=os.path.join(root, f"{stem}.pt") if args.export_pt else None)
        except CheckpointError as e:
            raise cli.UserError(f"--export_generator: {cli.one_line(e)}") from None
