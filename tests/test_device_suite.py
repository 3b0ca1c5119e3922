"""benchmarks/device_suite.sh --smoke: the accelerator suite end to end on tiny sizes."""
import os
import subprocess
import sys

from helpers import ROOT


def test_device_suite_smoke():
    env = dict(os.environ, PYTHON=sys.executable)
    r = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "device_suite.sh"), "--smoke"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = [line for line in r.stdout.splitlines() if line.startswith("| ")]
    labels = [row.split("|")[1].strip() for row in table[1:]]
    assert any(s.startswith("invert 16 b2 bf16 matmul") for s in labels), labels
    assert any(s.startswith("train ") for s in labels) and any(
        s.startswith("render") for s in labels
    )
    assert len(table) == 1 + 2 + 4 + 6 + 2, table  # header + render + invert + forms + train
