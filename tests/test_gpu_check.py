"""benchmarks/gpu_check.sh: one command that fits a short GPU loan, and ends at once without a GPU."""
from __future__ import annotations

import pathlib
import py_compile
import re
import subprocess

import pytest

from nnbackends.backends import unavailable_reason

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
#: What one device command may take (the issue's limit), in seconds.
DEVICE_COMMAND = 8 * 60


def script():
    return SCRIPT.read_text()


def test_every_stage_runs_under_its_own_limit_and_the_limits_fit_one_device_command():
    text = script()
    limits = {name: int(value) for name, value in re.findall(r"^(LIMIT_\w+)=(\d+)$", text, re.M)}
    stages = re.findall(r'^run_stage [\w-]+ "\$(LIMIT_\w+)"', text, re.M)
    assert sorted(stages) == sorted(limits), "each stage has its own limit, and each limit a stage"
    assert sum(limits.values()) < DEVICE_COMMAND
    assert "timeout --kill-after=5" in text and 'if [ "$rc" -eq 124 ]' in text


def test_pytest_runs_without_the_projects_addopts_and_with_capture_fallbacks_as_errors():
    text = script()
    invocations = [line for line in text.splitlines() if "-m pytest" in line]
    assert len(invocations) == 1 and "-o addopts=" in invocations[0]  # the PYTEST array every stage uses
    assert "-W error::nnbackends.backends.cupy_step.GraphCaptureWarning" in text
    assert re.search(r"^unset CUPY_TF32$", text, re.M)
    assert text.count('"${PYTEST[@]}"') == 4


def test_the_speed_stage_compiles():
    py_compile.compile(str(ROOT / "benchmarks" / "gpu_speed.py"), doraise=True)


def test_without_a_gpu_the_check_ends_at_once_saying_why(tmp_path):
    reason = unavailable_reason("cupy")
    if reason is None:
        pytest.skip("a CUDA device answers here: the script would run the whole check")
    done = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    out = done.stdout
    assert "no usable GPU here, nothing to check" in out and reason.split(".")[0] in out
    assert "=== install" not in out and "GPU check FAILED" in out
    assert re.search(r"^preflight\s+FAIL \(exit 2\)", out, re.M)
