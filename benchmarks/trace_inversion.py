"""Where a whole inversion's time goes, per compiled XLA op: one profiled call, its ops
grouped by model part (from the HLO's op_name metadata) and by kind (GEMM/conv vs the
elementwise fusions around them), printed as a table.

    python benchmarks/trace_inversion.py --precision bf16 [--batch 3] [--top 15]

`profile_inversion.py` times each component compiled on its own; this one looks inside the
compiled 5-iteration inversion, where XLA fuses across components. Times are summed op
durations from the profiler's perfetto trace (ops may overlap on 2 cores, so the total
exceeds wall time). Random full-width HyperStyle-256 weights (benchmarks/invert.py).
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from compare_official import load_str  # noqa: E402
from invert import build  # noqa: E402

from hyperstyle_jax.inference import make_inverter  # noqa: E402
from hyperstyle_jax.models.conv import PER_SAMPLE_FORMS  # noqa: E402

PARTS = (("WEncoder", "W-encoder"), ("shared_weight_hypernet", "shared hypernet"),
         ("refinement_blocks", "refinement heads"), ("HyperNetwork", "hypernet backbone"),
         ("Generator", "generator"))
KERNELS = ("ynn", "convolution", "dot", "custom")   # op names of GEMMs and convs


def op_table(trace_dir: str, hlo: str, top: int) -> tuple[list, list, float]:
    meta = {m.group(1): m.group(2) for m in
            re.finditer(r"^\s+%([\w.\-]+) = .*?op_name=\"([^\"]+)\"", hlo, re.M)}
    path = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)[0]
    events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    by_part, by_op = collections.defaultdict(float), collections.defaultdict(float)
    total = 0.0
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name not in meta and not re.match(r"[\w\-]+\.\d+$", name):
            continue
        if name.startswith(("while", "Pjit", "$")):
            continue  # containers: their ops are counted themselves
        op = meta.get(name, "")
        part = next((label for key, label in PARTS if key in op), "other (no module)")
        kind = "GEMM / conv" if name.startswith(KERNELS) else "elementwise / copies"
        by_part[(part, kind)] += e["dur"]
        m = re.search(r"((?:Generator|HyperNetwork|WEncoder)/[^/]+)", op)
        layer = m.group(1) if m else (op.rsplit("/", 1)[-1] or "?")
        by_op[(layer, re.sub(r"\.\d+$", "", name))] += e["dur"]
        total += e["dur"]
    parts = sorted(by_part.items(), key=lambda kv: -kv[1])
    ops = sorted(by_op.items(), key=lambda kv: -kv[1])[:top]
    return parts, ops, total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    p.add_argument("--batch", type=int, default=3)
    p.add_argument("--n_iters", type=int, default=5)
    p.add_argument("--per_sample", default="auto", choices=("auto",) + PER_SAMPLE_FORMS,
                   help="how per-sample convs run (hyperstyle_jax.models.conv)")
    p.add_argument("--top", type=int, default=15, help="rows of the per-op table")
    args = p.parse_args(argv)

    base, frozen, hyper = build(256)
    inv = make_inverter(base.config, frozen, hyper, precision=args.precision,
                        per_sample=args.per_sample)
    x = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (args.batch, 256, 256, 3)),
                    jnp.float32)
    fn = jax.jit(lambda fr, hv, x: inv.model.invert(fr, hv, x, args.n_iters))
    compiled = fn.lower(frozen, inv.hyper_vars, x).compile()
    jax.block_until_ready(compiled(frozen, inv.hyper_vars, x))
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            t = time.perf_counter()
            jax.block_until_ready(compiled(frozen, inv.hyper_vars, x))
            wall = time.perf_counter() - t
        parts, ops, total = op_table(d, compiled.as_text(), args.top)

    print(f"\n**{args.precision}, per_sample {args.per_sample}, batch {args.batch}, "
          f"{args.n_iters} iterations**: wall "
          f"{wall / args.batch:.2f} s/image under the profiler, summed op time "
          f"{total / 1e6:.2f} s (load {load_str()})\n")
    print("| part | kind | op time (s) | share |\n|---|---|---|---|")
    for (part, kind), us in parts:
        print(f"| {part} | {kind} | {us / 1e6:.2f} | {100 * us / total:.1f} % |")
    print(f"\n| layer / op (top {args.top}) | fusion | op time (s) | share |\n|---|---|---|---|")
    for (layer, fusion), us in ops:
        print(f"| {layer} | {fusion} | {us / 1e6:.2f} | {100 * us / total:.1f} % |")


if __name__ == "__main__":
    main()
