#!/usr/bin/env bash
# GPU check for the CuPy backend, in one command (well under ten minutes):
#
#   bash benchmarks/gpu_check.sh
#
# Needs a CUDA GPU with CuPy already installed; uses no network. It installs
# this checkout without dependencies, runs every gpu-marked test (the cupy
# cases of the conformance and equivalence suites and tests/test_cupy.py),
# runs the GPU benchmarks of benchmarks/ (or `nnbackends bench`), and times
# the CuPy backend against PyTorch CUDA eager on the same card (the issue's
# speed targets). Exits non-zero when a test fails.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
stage() { printf '\n=== %s\n' "$*"; }

stage "device"
python3 - <<'EOF' || exit 1
import cupy
props = cupy.cuda.runtime.getDeviceProperties(0)
print("CuPy", cupy.__version__, "on", props["name"].decode(), "| CUDA runtime",
      cupy.cuda.runtime.runtimeGetVersion(), "| driver", cupy.cuda.runtime.driverGetVersion())
EOF

stage "install without dependencies (no build isolation: nothing is downloaded)"
python3 -m pip install --quiet --no-deps --no-build-isolation . || status=1
(cd /tmp && python3 -c "
import nnbackends, nnbackends.backends.cupy_device as cd
assert '__global__' in cd.kernel_source(), 'the installed package lacks its CUDA source'
print('installed', nnbackends.__file__, '- CUDA source shipped')") || status=1

stage "gpu-marked tests (conformance, equivalence and test_cupy for the cupy backend)"
timeout 330 python3 -m pytest tests -m gpu -q -p no:cacheprovider -rfEs || status=1

stage "the other tests that name cupy (NVRTC checks, NumPy stand-in, any unmarked cupy case)"
timeout 120 python3 -m pytest tests -k cupy -m "not gpu" -q -p no:cacheprovider -rfE || status=1

stage "GPU benchmarks (nnbackends bench: cupy beside numpy and PyTorch CUDA eager)"
timeout 150 python3 -m nnbackends bench --backends cupy,numpy,torch-cuda --quick || status=1

stage "CuPy backend vs PyTorch CUDA eager, same card, same run (medians of 3, data on the device)"
timeout 150 python3 - <<'EOF' || status=1
import statistics, time
import numpy as np
import cupy
from nnbackends import Model
from nnbackends.datasets import spiral_data
from nnbackends.layers import Dense, ReLU, Softmax
from nnbackends.optimizers import SGD, Adam

try:
    import torch
    cuda = torch.cuda.is_available()
except ImportError:
    torch, cuda = None, False


def median(fn, repeats=3):
    fn()  # warm-up: compiles, captures graphs, loads cuBLAS
    return statistics.median(fn() for _ in range(repeats))


def ours_rate(sizes, opt, X, y, epochs, batch_size):
    """Samples/s of steady-state training steps, data already on the device (as for PyTorch)."""
    model = Model(backend="cupy", seed=0)
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        model.add(Dense(a, b))
        model.add(ReLU() if i < len(sizes) - 2 else Softmax())
    model.compile(optimizer=opt)
    model.fit(X[:batch_size or len(X)], y[:batch_size or len(X)], epochs=1, verbose=0)  # builds the step
    step = model._step_function(None)
    print(f"  compiled step for {sizes}: {type(step).__name__}")
    be, bs = model.backend, batch_size or len(X)
    xd, yd = be.asarray(X, "float32"), be.asarray(y.astype(np.int64))
    batches = [(xd[s:s + bs], yd[s:s + bs]) for s in range(0, len(X), bs)]

    def run():
        be.synchronize()
        start = time.perf_counter()
        for _ in range(epochs):
            for xb, yb in batches:
                opt.pre_update()
                step(xb, yb)
                opt.post_update()
        be.synchronize()
        return epochs * len(X) / (time.perf_counter() - start)

    return median(run)


def torch_rate(sizes, make_opt, X, y, epochs, batch_size):
    dev = "cuda"
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(sizes) - 2 else [])
    net = torch.nn.Sequential(*layers).to(dev)
    opt = make_opt(net.parameters())
    lossf = torch.nn.CrossEntropyLoss()
    xt = torch.as_tensor(X, dtype=torch.float32, device=dev)
    yt = torch.as_tensor(y, dtype=torch.int64, device=dev)
    bs = batch_size or len(X)

    def run():
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(epochs):
            for s in range(0, len(X), bs):
                opt.zero_grad(set_to_none=True)
                loss = lossf(net(xt[s:s + bs]), yt[s:s + bs])
                loss.backward()
                opt.step()
        torch.cuda.synchronize()
        return epochs * len(X) / (time.perf_counter() - start)

    return median(run)


rows = []
X, y = spiral_data(100, 3)
ours = ours_rate((2, 64, 3), Adam(0.05, decay=5e-7), X, y, 2000, None) / len(X)
theirs = torch_rate((2, 64, 3), lambda p: torch.optim.Adam(p, 0.05), X, y, 2000, None) / len(X) if cuda else None
rows.append(("spiral 2-64-3, 300 samples, full batch, Adam: training steps/s", ours, theirs, 3.0))

r = np.random.default_rng(0)
Xm, ym = r.random((60_000, 784), dtype=np.float32), r.integers(0, 10, 60_000)
ours = ours_rate((784, 256, 256, 10), SGD(0.01), Xm, ym, 3, 4096)
theirs = torch_rate((784, 256, 256, 10), lambda p: torch.optim.SGD(p, 0.01), Xm, ym, 3, 4096) if cuda else None
rows.append(("784-256-256-10, batch 4096, SGD: training samples/s", ours, theirs, 1.0))

for what, ours, theirs, target in rows:
    if theirs is None:
        print(f"{what}: cupy {ours:,.0f} (PyTorch CUDA not available)")
    else:
        ratio = ours / theirs
        verdict = "meets" if ratio >= target else "MISSES"
        print(f"{what}: cupy {ours:,.0f}, torch {theirs:,.0f}, ratio {ratio:.2f} ({verdict} the {target:g}x target)")
EOF

stage "done"
[ "$status" -eq 0 ] && echo "GPU check passed" || echo "GPU check FAILED (see above)"
exit "$status"
