#!/usr/bin/env bash
# GPU check of the CuPy backend, in one command of at most 8 minutes:
#
#   bash benchmarks/gpu_check.sh
#
# Needs a CUDA GPU with CuPy installed. It uses no network: what the tests need and
# is missing is installed only from a folder of wheels named by NNBACKENDS_WHEELS,
# else reported. Without a usable GPU it ends at once, saying why.
#
# Stages, each under `timeout` with the limit below (the limits add up to under
# 480 s; tests/test_gpu_check.py checks that):
#   preflight    numpy, safetensors, pytest and hypothesis (needed); the device, CuPy, NVRTC; pytest-benchmark and torch (optional)
#   install      this checkout without dependencies, and that the CUDA source ships with it
#   conformance  every kernel on cupy against the NumPy reference (tests/test_conformance.py)
#   equivalence  training on cupy against NumPy: one step 1e-5, 5-step curves 1e-4, 10,000-epoch spiral >= 0.90
#   gpu-tests    the other gpu-marked tests: graphs kept, edge sizes, the deferred step, two devices
#   stand-in     the cupy tests that need no GPU (NVRTC, launch signatures, the NumPy stand-in)
#   speed        CuPy against PyTorch CUDA eager on the same card (benchmarks/gpu_speed.py)
# CUPY_TF32 is unset (TF32 products would fail every float32 tolerance). A fused step
# that falls back from its CUDA graph raises (GraphCaptureWarning is an error), and any
# other warning counts as a failure. A summary with every figure ends the output; the
# exit status is non-zero when any stage failed.
set -uo pipefail
cd "$(dirname "$0")/.."
unset CUPY_TF32
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

LIMIT_PREFLIGHT=30
LIMIT_INSTALL=30
LIMIT_CONFORMANCE=80
LIMIT_EQUIVALENCE=90
LIMIT_GPU_TESTS=140
LIMIT_STANDIN=40
LIMIT_SPEED=60

SUMMARY=$(mktemp)
LOGS=$(mktemp -d)
status=0
PYTEST=("$PY" -m pytest -o addopts= -p no:cacheprovider -q -rfEs
        -W error::nnbackends.backends.cupy_step.GraphCaptureWarning)

summary() {
    printf '\n=== summary\n'
    cat "$SUMMARY"
    if [ "$status" -eq 0 ]; then echo "GPU check passed"; else echo "GPU check FAILED (see above)"; fi
}

# run_stage NAME LIMIT COMMAND...: run under `timeout`, add a line (and the command's SUMMARY lines) to the summary.
run_stage() {
    local name=$1 limit=$2 start=$SECONDS log="$LOGS/$1.log" verdict=PASS tally
    shift 2
    printf '\n=== %s (limit %s s)\n' "$name" "$limit"
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        verdict="TIMEOUT"
    elif [ "$rc" -ne 0 ]; then
        verdict="FAIL (exit $rc)"
    fi
    tally=$(grep -E '^=*[ ]*[0-9]+ (passed|failed|error|errors|skipped|deselected)' "$log" | tail -1 | tr -d '=')
    if [ "$verdict" = PASS ] && [[ "$tally" == *warning* ]]; then
        verdict="FAIL (warnings)"
    fi
    [ "$verdict" = PASS ] || status=1
    printf '%-12s %-16s %4s s  %s\n' "$name" "$verdict" "$((SECONDS - start))" "${tally# }" >> "$SUMMARY"
    sed -n 's/^SUMMARY /    /p' "$log" >> "$SUMMARY"
}

run_stage preflight "$LIMIT_PREFLIGHT" "$PY" - <<'EOF'
import importlib.util
import os
import subprocess
import sys

needed, optional = ("numpy", "safetensors", "pytest", "hypothesis"), ("pytest_benchmark", "torch")
missing = [m for m in needed if importlib.util.find_spec(m) is None]
wheels = os.environ.get("NNBACKENDS_WHEELS")
if missing and wheels and os.path.isdir(wheels):
    print(f"installing {missing} from {wheels} (no index)")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", wheels,
                    *(m.replace("_", "-") for m in missing)], check=False)
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
if missing:
    print(f"SUMMARY missing {missing}: nnbackends or its tests cannot run. There is no network here: put "
          "their wheels in a folder and set NNBACKENDS_WHEELS to it.")
    sys.exit(1)

from nnbackends.backends import get_backend, unavailable_reason  # noqa: E402  (needs numpy and safetensors)

reason = unavailable_reason("cupy")
if reason:
    print(f"SUMMARY no usable GPU here, nothing to check: {reason}")
    sys.exit(2)
facts = get_backend("cupy").describe()
print("SUMMARY " + ", ".join(f"{k} {v}" for k, v in facts.items()))
for name in optional:
    if importlib.util.find_spec(name) is None:
        print(f"SUMMARY optional {name} is not installed (its figures are left out)")
if importlib.util.find_spec("torch") is not None:
    import torch

    print(f"SUMMARY torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
EOF
if [ "$status" -ne 0 ]; then
    summary
    exit 1
fi

run_stage install "$LIMIT_INSTALL" bash -c '
    "$0" -m pip install --quiet --no-deps --no-build-isolation . || exit 1
    cd /tmp && "$0" -c "
import nnbackends, nnbackends.backends.cupy_device as cd
assert \"__global__\" in cd.kernel_source(), \"the installed package lacks its CUDA source\"
print(\"installed\", nnbackends.__file__, \"- CUDA source shipped\")"' "$PY"

run_stage conformance "$LIMIT_CONFORMANCE" "${PYTEST[@]}" tests/test_conformance.py -m gpu
run_stage equivalence "$LIMIT_EQUIVALENCE" "${PYTEST[@]}" tests/test_equivalence.py -m gpu
run_stage gpu-tests "$LIMIT_GPU_TESTS" "${PYTEST[@]}" tests -m gpu \
    --ignore=tests/test_conformance.py --ignore=tests/test_equivalence.py
run_stage stand-in "$LIMIT_STANDIN" "${PYTEST[@]}" tests/test_cupy.py tests/test_cupy_step.py \
    tests/test_cupy_kernels.py tests/test_gpu_check.py -m "not gpu"
run_stage speed "$LIMIT_SPEED" "$PY" benchmarks/gpu_speed.py

summary
exit "$status"
