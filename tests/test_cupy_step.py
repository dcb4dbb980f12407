"""The CuPy fused step without a host sync per step, shown on the NumPy stand-ins.

A trainer that finds ``step.defers_finite_check`` calls ``step.queue(x, y)``
for every batch and ``step.end_epoch()`` once per epoch (``cupy_step``'s
docstring). ``train_deferred`` below drives a step that way, as
``Trainer.train_epoch`` will. The checks: the epochs give the per-layer
path's numbers; a step that is not finite leaves every later update undone
and is reported with its iteration; an epoch reads the device once however
many steps it has, and the learning rate reaches the device without a write
per step; a graph that cannot be captured or launched falls back with a
``GraphCaptureWarning`` and the same numbers.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_close
from nnbackends.backends import cupy_backend as cb
from nnbackends.backends.cupy_step import GraphCaptureWarning
from nnbackends.datasets import spiral_data
from test_cupy import STEP_MODELS, LaunchChecker, checked_backend, sine_data, sine_model, spiral_model

MODELS = {**STEP_MODELS, "mse-regression": sine_model}


def data_for(build):
    return sine_data() if build == "mse-regression" else spiral_data(50, 3)


def device_data(model, X, y):
    """The model's device arrays of (X, y), as ``fit`` prepares them."""
    x, y_dev, y_host = model._prepare(X, y)
    if model.metric:
        model.metric.adapt(y_host)
    return x, y_dev


def train_deferred(model, X, y, epochs, batch_size=None):
    """Train with the step's deferred protocol; return the step and each epoch's ``EpochTotals``."""
    step = model.backend.fused_step(model)
    assert step.defers_finite_check
    x, labels = device_data(model, X, y)
    batch_size = batch_size or len(X)
    opt, totals = model.optimizer, []
    for _ in range(epochs):
        for start in range(0, len(X), batch_size):
            opt.pre_update()
            step.queue(x[start:start + batch_size], labels[start:start + batch_size])
            opt.post_update()
        totals.append(step.end_epoch())
    return step, totals


@pytest.mark.parametrize("batch_size", [None, 64])
@pytest.mark.parametrize("build", list(MODELS))
def test_deferred_epochs_match_the_per_layer_path(build, batch_size):
    X, y = data_for(build)
    want = MODELS[build]("numpy", "float64")
    history = want.fit(X, y, epochs=4, batch_size=batch_size, shuffle=False, verbose=0)
    got = MODELS[build](cb.CupyArrayCode(), "float64")
    _, totals = train_deferred(got, X, y, 4, batch_size)
    assert all(t.failed_iteration is None and t.failed_loss is None for t in totals)
    assert_close([t.data_loss for t in totals], history["data_loss"], "float64", "data loss")
    assert_close([t.regularization for t in totals], history["regularization_loss"], "float64", "regularization")
    assert_close([t.accuracy for t in totals], history["accuracy"], "float64", "accuracy")
    for g, w in zip(got.get_weights(), want.get_weights()):
        assert_close(g, w, "float64", "weights")


def _state(model):
    return [a.copy() for p in model.params() for a in (p.value, *p.state.values())]


def test_a_step_that_is_not_finite_leaves_every_later_update_undone():
    model = spiral_model(cb.CupyArrayCode(), "float64")
    step = model.backend.fused_step(model)
    X, y = spiral_data(10, 3)
    x, labels = device_data(model, X, y)
    bad = x.copy()
    bad[0, 0] = np.nan
    opt = model.optimizer
    with np.errstate(invalid="ignore"):  # NaN in, NaN out: the warning is expected
        for batch in (x, x, bad, x, x):
            if batch is bad:
                kept = _state(model)
            opt.pre_update()
            step.queue(batch, labels)
            opt.post_update()
    totals = step.end_epoch()
    assert totals.failed_iteration == 2  # the optimizer's iterations at the third step
    assert np.isnan(totals.failed_loss)
    for k, a in zip(kept, _state(model)):
        np.testing.assert_array_equal(k, a)
    opt.iterations = totals.failed_iteration  # what the trainer does: the bad step is not counted
    opt.pre_update()
    step.queue(x, labels)  # the read cleared the flag: training goes on
    opt.post_update()
    assert step.end_epoch().failed_iteration is None
    assert not np.array_equal(kept[0], model.params()[0].value)


def test_the_classic_call_reports_each_step_and_clears_the_flag():
    model = spiral_model(cb.CupyArrayCode(), "float64")
    step = model.backend.fused_step(model)
    X, y = spiral_data(10, 3)
    x, labels = device_data(model, X, y)
    want = model.loss.forward(model.forward(x), labels)
    loss, accuracy, finite = step(x, labels)
    assert finite is True and type(loss) is np.float64
    assert_close(loss, want, "float64")
    assert step.end_epoch().data_loss == 0  # the call read and cleared its totals


# ---------------------------------------------------------------------- host reads
def _counted(name):
    """ndarray's method ``name``, counting a read each call."""
    def method(self, *args):
        DeviceArray.reads += 1
        return getattr(super(DeviceArray, self), name)(*args)

    return method


class DeviceArray(np.ndarray):
    """A NumPy array standing in for a CuPy one that counts the reads that would wait for the GPU."""

    reads = 0
    __bool__, __int__, __float__, __index__, item, tolist = map(
        _counted, ("__bool__", "__int__", "__float__", "__index__", "item", "tolist"))

    def __getitem__(self, key):
        out = super().__getitem__(key)
        if not isinstance(out, np.ndarray):  # a scalar: its value came to the host
            DeviceArray.reads += 1
        return out


def counting_backend():
    """The CuPy backend with checked no-op kernels (``test_cupy.checked_backend``) on counting arrays."""
    be = checked_backend(LaunchChecker())
    be.asarray = lambda x, dtype=None: np.array(x, dtype=dtype).view(DeviceArray)
    be.zeros = lambda shape, dtype: np.zeros(shape, dtype).view(DeviceArray)
    be._empty = lambda shape, dtype: np.empty(shape, dtype).view(DeviceArray)

    def to_numpy(x):
        DeviceArray.reads += 1
        return np.asarray(x)

    be.to_numpy = to_numpy
    be.uploads = 0
    upload = be._upload

    def counted_upload(dst, src):
        be.uploads += 1
        upload(dst, src)

    be._upload = counted_upload
    return be


@pytest.mark.parametrize("steps", [1, 7])
def test_an_epoch_reads_the_device_once(steps):
    be = counting_backend()
    model = spiral_model(be, "float32")
    X, y = spiral_data(35, 3)  # 105 rows: 7 steps of 16 end with a partial batch of 9
    step = be.fused_step(model)
    x, labels = device_data(model, X, y)
    batch = -(-len(X) // steps)
    opt = model.optimizer
    with np.errstate(all="ignore"):  # the no-op kernels leave the buffers as they were allocated
        for epoch in range(3):
            DeviceArray.reads = 0
            for start in range(0, len(X), batch):
                opt.pre_update()  # Adam with decay: a new learning rate every step
                step.queue(x[start:start + batch], labels[start:start + batch])
                opt.post_update()
            assert DeviceArray.reads == 0, f"epoch {epoch}: the steps read the device"
            step.end_epoch()
            assert DeviceArray.reads == 1, f"epoch {epoch}: {DeviceArray.reads} reads"
    assert be.uploads == 1  # the schedule was written once; the device derived every later rate
    assert opt.decay and opt.iterations == 3 * steps


def test_a_learning_rate_set_by_hand_reaches_the_step():
    X, y = spiral_data(20, 3)
    models = [spiral_model(cb.CupyArrayCode(), "float64") for _ in range(2)]
    steps = [m.backend.fused_step(m) for m in models]
    for model, step in zip(models, steps):
        x, labels = device_data(model, X, y)
        step.queue(x, labels)
    models[1].optimizer.current_learning_rate = 0.0
    moved = []
    for model, step in zip(models, steps):
        before = model.get_weights()[0]
        step.queue(x, labels)
        moved.append(np.abs(model.get_weights()[0] - before).max())
    assert moved[0] > 0 and moved[1] == 0


# ---------------------------------------------------------------------- graphs that fail
class CaptureFails(cb.CupyArrayCode):
    def _capture(self, body):
        raise RuntimeError("cudaErrorStreamCaptureUnsupported: operation not permitted when stream is capturing")


class Graph:
    """A captured graph: launching it runs the recorded work, or fails as ``error`` says."""

    def __init__(self, body, error=None):
        self.body, self.error = body, error

    def __call__(self):
        if self.error:
            raise self.error
        self.body()


class FirstLaunchFails(cb.CupyArrayCode):
    """A capture whose graph fails at its first launch, as newer CuPy instantiates a graph there."""

    def _capture(self, body):
        return Graph(body, RuntimeError("cudaErrorInvalidValue: graph instantiation failed"))


class Replays(cb.CupyArrayCode):
    def _capture(self, body):
        return Graph(body)


@pytest.mark.parametrize("backend, falls_back", [(CaptureFails, True), (FirstLaunchFails, True), (Replays, False)])
def test_a_graph_that_cannot_be_made_falls_back_with_a_warning(backend, falls_back):
    X, y = spiral_data(20, 3)
    want = spiral_model("numpy", "float64")
    want.fit(X, y, epochs=4, verbose=0)
    got = spiral_model(backend(), "float64")
    if falls_back:
        with pytest.warns(GraphCaptureWarning, match="without a graph"):
            step, totals = train_deferred(got, X, y, 4)
    else:
        step, totals = train_deferred(got, X, y, 4)
    assert all(t.failed_iteration is None for t in totals)
    for g, w in zip(got.get_weights(), want.get_weights()):
        assert_close(g, w, "float64")
    (_, replay), = step.shapes.values()
    assert isinstance(replay, Graph) != falls_back


def test_fit_reads_the_device_once_per_epoch():
    """The trainer drives the graph step through queue/end_epoch: one host read an epoch, whatever its steps."""
    model = spiral_model(counting_backend(), "float32")
    X, y = spiral_data(35, 3)
    with np.errstate(all="ignore"):
        for batch_size in (None, 16):
            DeviceArray.reads = 0
            model.fit(X, y, epochs=3, batch_size=batch_size, verbose=0)
            assert DeviceArray.reads == 3


class TwinRanks:
    """A communicator of two ranks that hold the same share: ``sum_inplace`` doubles the buffer, noting
    whether it was given a host array or one of the step's own (device) arrays."""

    size, rank, is_root = 2, 0, True

    def __init__(self, cuda_aware):
        self.cuda_aware, self.buffers = cuda_aware, []

    def sum_inplace(self, buffer):
        self.buffers.append(buffer)
        buffer *= 2


@pytest.mark.parametrize("cuda_aware", [False, True], ids=["host-memory", "cuda-aware"])
@pytest.mark.parametrize("build", list(MODELS))
def test_a_summed_step_of_two_equal_shares_is_the_step_of_their_batch(build, cuda_aware, monkeypatch):
    """Two ranks holding the same 40 rows train what one step on those 80 rows trains; the sum goes
    through a host copy unless the MPI library is CUDA-aware."""
    X, y = data_for(build)
    X, y = X[:40], y[:40]
    one, summed = MODELS[build]("cupy-numpy", "float64"), MODELS[build]("cupy-numpy", "float64")
    x, labels = device_data(one, np.concatenate([X, X]), np.concatenate([y, y]))
    share, share_labels = device_data(summed, X, y)
    step, summed_step = one.backend.fused_step(one), summed.backend.fused_step(summed)
    comm = TwinRanks(cuda_aware)
    host_copies = []

    def to_host(a, to_numpy=summed.backend.to_numpy):
        host_copies.append(to_numpy(a).copy())
        return host_copies[-1]

    monkeypatch.setattr(summed.backend, "to_numpy", to_host)
    for _ in range(3):
        for model, run in ((one, lambda: step(x, labels)), (summed, lambda: summed_step.summed_step(
                share, share_labels, 80, comm))):
            model.optimizer.pre_update()
            loss, accuracy, finite = run()
            model.optimizer.post_update()
            assert finite
    for got, want in zip(summed.get_weights(), one.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    through_host = [any(b is h for h in host_copies) for b in comm.buffers]
    assert through_host == [not cuda_aware] * 3
