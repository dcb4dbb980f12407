"""Is the PyTorch row fair? PyTorch timed again alone, in a process of its own, in the same run.

Thread pools that spin after their last call (OpenBLAS's, OpenMP's) can slow
whatever runs next on the same cores, so the suite lets each pool go idle
before a block of rounds. This check shows whether that was enough: the
PyTorch rows of the run against PyTorch timed in a fresh process that loads
no other numeric library's pool.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

#: How far the suite's PyTorch row may be from PyTorch timed alone and still count as agreeing.
AGREEMENT = 0.10


def torch_alone(plan, workloads, timeout=1800) -> dict:
    """``{workload: median_s}`` of the PyTorch peer alone on the training ``workloads`` of ``plan``,
    or ``{"error": why}`` when the separate run failed."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "alone.json")
        command = [sys.executable, "-m", "nnbackends", "bench", "--suite", "train", "--backends", "torch",
                   "--workloads", ",".join(workloads), "--dtype", plan.dtype, "--json", path, "--no-peer-check"]
        command += ["--quick"] * plan.quick + ["--smoke"] * plan.smoke
        command += ["--threads", str(plan.threads)] if plan.threads else []
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
        with open(path) as f:
            report = json.load(f)
    return {r["workload"]: r["median_s"] for r in report["results"]}


def agreement(results, alone) -> list[dict]:
    """Per PyTorch training row: its median, PyTorch's alone, their ratio and whether they agree."""
    rows = []
    for r in results:
        if r["backend"] == "torch" and r["suite"] == "train" and r["workload"] in alone:
            ratio = r["median_s"] / alone[r["workload"]]
            rows.append({"workload": r["workload"], "suite_median_s": r["median_s"],
                         "alone_median_s": alone[r["workload"]], "ratio": ratio,
                         "agrees": abs(ratio - 1.0) <= AGREEMENT})
    return rows
