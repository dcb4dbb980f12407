"""The CuPy backend against PyTorch CUDA eager on the same card, in one run (a stage of gpu_check.sh).

Two workloads, data already on the device on both sides, medians of three timed runs
after a warm-up (which compiles kernels, captures graphs and loads cuBLAS):

* the spiral model 2-64-3, 300 samples, full batch, Adam: training steps per second
  (target: at least 3x PyTorch eager);
* 784-256-256-10 at batch 4096, SGD: training samples per second (target: at least PyTorch).

Our steps run as a trainer that defers the finite check runs them (``queue`` per
batch, one ``end_epoch`` read per epoch), and the same through ``Model.fit`` as a
user calls it today. A graph that cannot be captured is an error here. Lines
starting with ``SUMMARY`` go to gpu_check.sh's summary.
"""
from __future__ import annotations

import statistics
import time
import warnings

import numpy as np

from nnbackends import Model
from nnbackends.backends.cupy_step import GraphCaptureWarning
from nnbackends.datasets import spiral_data
from nnbackends.layers import Dense, ReLU, Softmax
from nnbackends.optimizers import SGD, Adam

warnings.simplefilter("error", GraphCaptureWarning)


def median_of_three(run):
    run()  # warm-up
    return statistics.median(run() for _ in range(3))


def build(sizes, optimizer):
    model = Model(backend="cupy", seed=0)
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        model.add(Dense(a, b))
        model.add(ReLU() if i < len(sizes) - 2 else Softmax())
    return model.compile(optimizer=optimizer)


def ours(sizes, make_optimizer, X, y, epochs, batch_size):
    """(samples/s through the deferred protocol, samples/s of Model.fit, whether every shape kept its graph)."""
    model = build(sizes, make_optimizer())
    be = model.backend
    step = be.fused_step(model)
    xd, yd = be.asarray(X, "float32"), be.asarray(y.astype(np.int64))
    batches = [(xd[s:s + batch_size], yd[s:s + batch_size]) for s in range(0, len(X), batch_size)]
    opt = model.optimizer

    def deferred():
        be.synchronize()
        start = time.perf_counter()
        for _ in range(epochs):
            for xb, yb in batches:
                opt.pre_update()
                step.queue(xb, yb)
                opt.post_update()
            totals = step.end_epoch()
            assert totals.failed_iteration is None, totals
        be.synchronize()
        return epochs * len(X) / (time.perf_counter() - start)

    def fit():
        again = build(sizes, make_optimizer())
        start = time.perf_counter()
        again.fit(X, y, epochs=epochs, batch_size=batch_size, shuffle=False, verbose=0)
        be.synchronize()
        return epochs * len(X) / (time.perf_counter() - start)

    rate = median_of_three(deferred)
    graphs = all(type(replay).__name__ != "function" for _, replay in step.shapes.values())
    return rate, median_of_three(fit), graphs


def theirs(sizes, make_optimizer, X, y, epochs, batch_size):
    import torch

    if not torch.cuda.is_available():
        return None
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(sizes) - 2 else [])
    net = torch.nn.Sequential(*layers).to("cuda")
    opt = make_optimizer(net.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()
    xt = torch.as_tensor(X, dtype=torch.float32, device="cuda")
    yt = torch.as_tensor(y, dtype=torch.int64, device="cuda")

    def run():
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(epochs):
            for s in range(0, len(X), batch_size):
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(net(xt[s:s + batch_size]), yt[s:s + batch_size])
                loss.backward()
                opt.step()
        torch.cuda.synchronize()
        return epochs * len(X) / (time.perf_counter() - start)

    return median_of_three(run)


def report(what, unit, scale, target, mine, fit_rate, graphs, peer):
    line = f"{what}: cupy {mine / scale:,.0f} {unit} (Model.fit today: {fit_rate / scale:,.0f}), graphs kept: {graphs}"
    if peer is None:
        line += "; PyTorch CUDA not available"
        verdict = True
    else:
        ratio = mine / peer
        verdict = ratio >= target
        meets = "meets" if verdict else "MISSES"
        line += f"; torch {peer / scale:,.0f}, ratio {ratio:.2f} ({meets} the {target:g}x target)"
    print("SUMMARY", line, flush=True)
    return verdict and graphs


def main():
    try:
        import torch  # noqa: F401
    except ImportError:
        torch = None
    ok = True
    X, y = spiral_data(100, 3)
    mine, fit_rate, graphs = ours((2, 64, 3), lambda: Adam(0.05, decay=5e-7), X, y, 2000, len(X))
    peer = theirs((2, 64, 3), lambda p: torch.optim.Adam(p, 0.05), X, y, 2000, len(X)) if torch else None
    ok &= report("spiral 2-64-3, full batch, Adam", "steps/s", len(X), 3.0, mine, fit_rate, graphs, peer)
    r = np.random.default_rng(0)
    Xm, ym = r.random((32_768, 784), dtype=np.float32), r.integers(0, 10, 32_768)
    sizes = (784, 256, 256, 10)
    mine, fit_rate, graphs = ours(sizes, lambda: SGD(0.01), Xm, ym, 3, 4096)
    peer = theirs(sizes, lambda p: torch.optim.SGD(p, 0.01), Xm, ym, 3, 4096) if torch else None
    ok &= report("784-256-256-10, batch 4096, SGD", "samples/s", 1, 1.0, mine, fit_rate, graphs, peer)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
