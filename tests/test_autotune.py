"""Choices measured on the machine: the Numba fused step's pass, timed with a fake clock.

The clock is ``Tuner``'s own argument; the step kernels are wrapped so that each
call of a pass moves the fake clock by that pass's cost, which makes the
measurement deterministic. No test asserts on real time.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from nnbackends import datasets
from nnbackends.backends import autotune, unavailable_reason
from test_equivalence import ONE_STEP, assert_weights_close, spiral, spiral_model

needs_numba = pytest.mark.skipif(unavailable_reason("numba") is not None, reason=str(unavailable_reason("numba")))


class FakeClock:
    """A clock that moves only when told to; counts its reads."""

    def __init__(self):
        self.now, self.reads = 0.0, 0

    def __call__(self):
        self.reads += 1
        return self.now


class Forbidden:
    """A clock (or trial) that must not be used: the decision was cached."""

    def __call__(self, *args):
        raise AssertionError("measured, although the decision was cached")


@pytest.fixture
def measuring(monkeypatch, tmp_path):
    """Measuring on; returns ``install(clock, folder=tmp_path)``, which puts the cache in ``folder`` and makes
    a tuner with ``clock`` the one the fused step asks."""
    monkeypatch.delenv(autotune.ENV_VAR, raising=False)

    def install(clock, folder=tmp_path):
        monkeypatch.setenv(autotune.DIR_ENV_VAR, str(folder))
        tuner = autotune.Tuner(autotune.cache_path(), clock=clock)
        monkeypatch.setattr(autotune, "tuner", lambda: tuner)
        return tuner
    return install


@pytest.fixture
def pass_costs(monkeypatch):
    """``set(clock, loops=..., blas=...)``: each call of a pass's step kernel moves ``clock`` by its cost
    (a number, or a function of the kernel's arguments)."""
    from nnbackends.backends import numba_kernels, numba_step

    for dtype in ("float32", "float64"):  # compiled callers of the step kernels bind the real ones first
        numba_step.warm_step(dtype)

    def set_costs(clock, **costs):
        for name, cost in costs.items():
            kernel = getattr(numba_kernels, f"{name}_step")

            def timed(*args, _kernel=kernel, _cost=cost):
                clock.now += _cost(args) if callable(_cost) else _cost
                return _kernel(*args)
            monkeypatch.setattr(numba_kernels, f"{name}_step", timed)
    return set_costs


def cached(path=None):
    """The decisions in the cache file, checked to be a file this version reads."""
    decisions, problem = autotune.read_cache(path or autotune.cache_path())
    assert problem is None, problem
    return decisions


def costed(clock, cost, calls):
    """A candidate for ``Tuner.choose``: preparing it gives a run that takes ``cost`` seconds of ``clock``."""
    def run():
        calls.append(cost)
        clock.now += cost
    return lambda: run


# ---------------------------------------------------------------------- the tuner alone
def test_the_fastest_candidate_is_kept_and_written(tmp_path):
    clock, calls = FakeClock(), []
    tuner = autotune.Tuner(tmp_path / "cache.json", clock=clock)
    candidates = {name: costed(clock, cost, calls) for name, cost in (("a", 3.0), ("b", 1.0), ("c", 2.0))}
    assert tuner.choose({"case": 1}, candidates) == "b"
    assert calls.count(3.0) == calls.count(1.0) == calls.count(2.0) == 2  # an untimed call, a timed round
    (entry,) = cached(tmp_path / "cache.json").values()
    assert entry["choice"] == "b" and entry["case"] == {"case": 1} and entry["machine"] == autotune.machine()
    assert entry["seconds"] == {"a": 3.0, "b": 1.0, "c": 2.0}


@pytest.mark.parametrize("cost, rounds", [
    (0.25, 3),  # two rounds reach the budget of 1 s; a third for MIN_ROUNDS
    (0.125, 4),  # four rounds reach it
    (1.5, 1),  # one round is past twice the budget: no more
    (2.0 ** -10, autotune.MAX_ROUNDS),
])
def test_the_rounds_follow_the_budget(tmp_path, cost, rounds):
    assert autotune.MIN_ROUNDS == 3
    clock, calls = FakeClock(), []
    tuner = autotune.Tuner(tmp_path / "cache.json", clock=clock, budget=1.0)
    tuner.choose({"case": 1}, {"a": costed(clock, cost, calls), "b": costed(clock, cost, calls)})
    assert len(calls) == 2 * (1 + rounds)


def test_a_new_tuner_on_the_same_file_reads_the_decision_without_measuring(tmp_path):
    clock = FakeClock()
    autotune.Tuner(tmp_path / "cache.json", clock=clock).choose(
        {"case": 1}, {"a": costed(clock, 2.0, []), "b": costed(clock, 1.0, [])})
    calls = []
    later = autotune.Tuner(tmp_path / "cache.json", clock=Forbidden())
    assert later.choose({"case": 1}, {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}) == "b"
    assert calls == []  # not even prepared


def test_a_decision_taken_on_another_machine_is_kept_but_not_used(tmp_path):
    path = tmp_path / "cache.json"
    clock = FakeClock()
    tuner = autotune.Tuner(path, clock=clock)
    tuner.choose({"case": 1}, {"a": costed(clock, 2.0, []), "b": costed(clock, 1.0, [])})
    data = json.loads(path.read_text())
    (key, entry), = data["decisions"].items()
    other = {**entry, "machine": {**entry["machine"], "cpu": "another CPU"}, "choice": "a"}
    data["decisions"] = {key.replace(entry["machine"]["cpu"], "another CPU"): other}
    path.write_text(json.dumps(data))
    clock = FakeClock()
    fresh = autotune.Tuner(path, clock=clock)
    assert fresh.choose({"case": 1}, {"a": costed(clock, 2.0, []), "b": costed(clock, 1.0, [])}) == "b"
    assert clock.reads > 0
    assert sorted(e["choice"] for e in cached(path).values()) == ["a", "b"]


def test_a_decision_for_another_version_of_the_code_is_measured_again_and_replaced(tmp_path):
    """Other cases and other machines' decisions stay; the same case's under another version goes."""
    path = tmp_path / "cache.json"
    clock = FakeClock()
    tuner = autotune.Tuner(path, clock=clock)
    cheap_a = {"a": costed(clock, 1.0, []), "b": costed(clock, 2.0, [])}
    cheap_b = {"a": costed(clock, 2.0, []), "b": costed(clock, 1.0, [])}
    assert tuner.choose({"case": 1}, cheap_a, version="v1") == "a"
    assert tuner.choose({"case": 2}, cheap_a, version="v1") == "a"
    data = json.loads(path.read_text())
    key, entry = next((k, e) for k, e in data["decisions"].items() if e["case"] == {"case": 1})
    data["decisions"]["elsewhere"] = {**entry, "machine": {**entry["machine"], "cpu": "another CPU"}}
    path.write_text(json.dumps(data))
    reads = clock.reads
    assert autotune.Tuner(path, clock=clock).choose({"case": 1}, cheap_b, version="v2") == "b"
    assert clock.reads > reads  # measured again
    left = {(e["machine"]["cpu"], e["case"]["case"], e["version"], e["choice"]) for e in cached(path).values()}
    here = autotune.machine()["cpu"]
    assert left == {(here, 1, "v2", "b"), (here, 2, "v1", "a"), ("another CPU", 1, "v1", "a")}


def test_a_cache_file_of_an_older_format_is_replaced_without_a_warning(tmp_path):
    path = tmp_path / "cache.json"
    path.write_text(json.dumps({"format": autotune.FORMAT, "version": autotune.FORMAT_VERSION - 1,
                                "decisions": {"old": {"choice": "a", "machine": {}, "case": {}}}}))
    clock = FakeClock()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choice = autotune.Tuner(path, clock=clock).choose({"case": 1}, {"a": costed(clock, 2.0, []),
                                                                        "b": costed(clock, 1.0, [])})
    assert choice == "b" and clock.reads > 0
    assert [e["choice"] for e in cached(path).values()] == ["b"]


BAD_FILES = {
    "not-json": ("{decisions: ", "not valid JSON"),
    "another-format": (json.dumps({"format": "something else", "decisions": {}}), "not an nnbackends-autotune file"),
    "a-newer-version": (json.dumps({"format": autotune.FORMAT, "version": autotune.FORMAT_VERSION + 1,
                                    "decisions": {}}), f"format version {autotune.FORMAT_VERSION + 1}"),
    "malformed-decisions": (json.dumps({"format": autotune.FORMAT, "version": autotune.FORMAT_VERSION,
                                        "decisions": {"k": {"choice": 3}}}), "malformed"),
}


@pytest.mark.parametrize("bad", list(BAD_FILES))
def test_a_corrupt_or_stale_cache_file_is_ignored_with_a_warning_and_replaced(tmp_path, bad):
    text, problem = BAD_FILES[bad]
    path = tmp_path / "cache.json"
    path.write_text(text)
    clock = FakeClock()
    with pytest.warns(autotune.AutotuneCacheWarning, match=f"Ignoring the autotune cache .*{problem}"):
        choice = autotune.Tuner(path, clock=clock).choose({"case": 1}, {"a": costed(clock, 2.0, []),
                                                                        "b": costed(clock, 1.0, [])})
    assert choice == "b"
    assert [e["choice"] for e in cached(path).values()] == ["b"]


def test_an_unwritable_cache_warns_once_and_keeps_the_decisions_in_memory(tmp_path):
    (tmp_path / "a-file").write_text("")
    clock = FakeClock()
    tuner = autotune.Tuner(tmp_path / "a-file" / "cache.json", clock=clock)  # its folder cannot be made
    candidates = {"a": costed(clock, 2.0, []), "b": costed(clock, 1.0, [])}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert tuner.choose({"case": 1}, candidates) == "b"
        assert tuner.choose({"case": 2}, candidates) == "b"
        reads = clock.reads
        assert tuner.choose({"case": 1}, candidates) == "b"
    assert clock.reads == reads  # remembered for the process
    messages = [str(w.message) for w in caught if issubclass(w.category, autotune.AutotuneCacheWarning)]
    assert len(messages) == 1 and "Cannot write the autotune cache" in messages[0], messages
    assert autotune.DIR_ENV_VAR in messages[0] and f"{autotune.ENV_VAR}=0" in messages[0]


def test_the_cache_path_follows_the_environment(monkeypatch, tmp_path):
    numba = pytest.importorskip("numba")
    monkeypatch.setenv(autotune.DIR_ENV_VAR, str(tmp_path / "mine"))
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path / "numba"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert autotune.cache_path() == str(tmp_path / "mine" / autotune.FILE_NAME)
    monkeypatch.delenv(autotune.DIR_ENV_VAR)
    assert autotune.cache_path() == str(tmp_path / "numba" / autotune.FILE_NAME)  # beside Numba's cache
    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    assert autotune.cache_path() == str(tmp_path / "xdg" / "nnbackends" / autotune.FILE_NAME)


@pytest.mark.parametrize("value, on", [("0", False), ("off", False), ("False", False), ("1", True), ("", True)])
def test_the_environment_variable_turns_measuring_off(monkeypatch, value, on):
    monkeypatch.setenv(autotune.ENV_VAR, value)
    assert autotune.enabled() is on


# ---------------------------------------------------------------------- the Numba fused step
def trained(dtype="float32", epochs=5, samples=100):
    """A spiral model trained full batch on ``samples`` rows per class, and its fused step."""
    model = spiral_model("numba", dtype)
    model.fit(*datasets.spiral_data(samples, 3), epochs=epochs, verbose=0)
    return model, model._fused_step


@needs_numba
@pytest.mark.parametrize("faster", ["loops", "blas"])
def test_the_step_runs_the_pass_measured_faster_and_a_second_model_reads_it(monkeypatch, measuring, pass_costs,
                                                                           faster):
    from nnbackends.backends import numba_step

    clock = FakeClock()
    tuner = measuring(clock)
    pass_costs(clock, loops=1.0 if faster == "loops" else 5.0, blas=1.0 if faster == "blas" else 5.0)
    _, step = trained()
    assert step.blas is (faster == "blas")
    (entry,) = (e for e in cached().values() if e["case"]["work"] == "numba fused step")
    assert entry["choice"] == faster
    assert entry["case"]["widths"] == "2-64-3" and entry["case"]["batch"] == 300
    assert entry["case"]["dtype"] == "float32"
    monkeypatch.setattr(numba_step.FusedStep, "trial", Forbidden())  # a cached decision prepares no trial
    tuner.clock = Forbidden()  # the same process: remembered
    assert trained()[1].blas is (faster == "blas")
    measuring(Forbidden())  # another process: read from the file
    assert trained()[1].blas is (faster == "blas")


#: Samples per class of a spiral big enough that every block of ``LOOP_BLOCKS`` is a candidate (3,000 rows).
BIG = 1000


def loop_block(args) -> int:
    """The samples per block of a ``loops_step`` call: the width of its feature-major input buffer."""
    return args[9].shape[1]


@needs_numba
@pytest.mark.parametrize("fastest", [256, 1024, 2048])
def test_the_loop_pass_runs_in_the_block_measured_fastest(measuring, pass_costs, fastest):
    from nnbackends.backends import numba_step

    assert numba_step.LOOP_BLOCKS == (256, 512, 1024, 2048)
    clock = FakeClock()
    measuring(clock)
    pass_costs(clock, loops=lambda args: 1.0 if loop_block(args) == fastest else 2.0, blas=5.0)
    _, step = trained(epochs=3, samples=BIG)
    assert (step.blas, step.block, step.work[0].shape[1]) == (False, fastest, fastest)
    decisions = {e["case"]["work"]: e for e in cached().values()}
    assert decisions["numba fused step"]["choice"] == "loops"
    block = decisions["numba loop pass block"]
    assert block["choice"] == f"{fastest} samples"
    assert sorted(block["seconds"]) == sorted(f"{b} samples" for b in (256, 512, 1024, 2048))
    assert block["case"]["batch"] == 3000


@needs_numba
def test_no_block_is_measured_where_blas_wins_or_one_block_holds_the_batch(measuring, pass_costs):
    from nnbackends.backends import numba_kernels

    clock = FakeClock()
    measuring(clock)
    pass_costs(clock, loops=lambda args: 3.0 if loop_block(args) == numba_kernels.BLOCK_COLS else 1.0, blas=2.0)
    assert trained(epochs=3, samples=BIG)[1].blas is True  # loops in blocks of BLOCK_COLS lost: no other block timed
    model = spiral_model("numba", "float32")
    model.fit(*spiral(), epochs=1, batch_size=100, verbose=0)  # every candidate block holds 100 rows
    assert (model._fused_step.blas, model._fused_step.block) == (False, numba_kernels.BLOCK_COLS)
    assert sorted((e["case"]["work"], e["case"]["batch"], e["choice"]) for e in cached().values()) == [
        ("numba fused step", 100, "loops"), ("numba fused step", 3000, "blas")]


@needs_numba
def test_every_loop_block_gives_the_same_numbers(measuring, pass_costs, tmp_path, dtype):
    weights = {}
    for fastest in (256, 2048):
        clock = FakeClock()
        measuring(clock, tmp_path / str(fastest))
        pass_costs(clock, loops=lambda args, fastest=fastest: 1.0 if loop_block(args) == fastest else 2.0, blas=5.0)
        model, step = trained(dtype, epochs=3, samples=BIG)
        assert step.block == fastest
        weights[fastest] = model.get_weights()
    assert_weights_close(weights[256], weights[2048], 3 * ONE_STEP[dtype], "blocks of 256 against 2048, 3 steps")


@needs_numba
def test_each_batch_size_and_dtype_is_its_own_decision(measuring, pass_costs):
    clock = FakeClock()
    measuring(clock)
    pass_costs(clock, loops=1.0, blas=2.0)
    trained()
    spiral_model("numba", "float32").fit(*spiral(), epochs=1, batch_size=100, verbose=0)
    trained("float64")
    cases = sorted((e["case"]["dtype"], e["case"]["batch"]) for e in cached().values()
                   if e["case"]["work"] == "numba fused step")
    assert cases == [("float32", 100), ("float32", 300), ("float64", 300)]


@needs_numba
def test_measuring_off_uses_the_built_in_rule(monkeypatch, measuring):
    from nnbackends.backends import numba_step

    measuring(Forbidden())
    monkeypatch.setenv(autotune.ENV_VAR, "0")
    asked = []
    monkeypatch.setattr(numba_step, "runs_on_blas", lambda widths, batch: asked.append((list(widths), batch)) or True)
    assert trained()[1].blas is True  # what the (patched) rule said, although loops would be its choice
    assert asked == [([2, 64, 3], 300)]
    assert cached() == {}


@needs_numba
def test_every_pass_gives_the_same_numbers(measuring, pass_costs, tmp_path, dtype):
    weights = {}
    for faster, slower in (("loops", "blas"), ("blas", "loops")):
        clock = FakeClock()
        measuring(clock, tmp_path / faster)
        pass_costs(clock, **{faster: 1.0, slower: 2.0})
        model, step = trained(dtype, epochs=10)
        assert step.blas is (faster == "blas")
        weights[faster] = model.get_weights()
    assert_weights_close(weights["loops"], weights["blas"], 10 * ONE_STEP[dtype], "loops against BLAS, 10 steps")


@needs_numba
@pytest.mark.parametrize("faster", ["loops", "blas"])
def test_timing_the_candidates_leaves_the_model_unchanged(monkeypatch, measuring, pass_costs, faster):
    from nnbackends.backends import numba_step

    clock = FakeClock()
    measuring(clock)
    pass_costs(clock, loops=1.0 if faster == "loops" else 5.0, blas=1.0 if faster == "blas" else 5.0)
    tuned, step = trained()
    assert clock.reads > 0  # it did measure
    monkeypatch.setenv(autotune.ENV_VAR, "0")
    monkeypatch.setattr(numba_step, "runs_on_blas", lambda widths, batch: step.blas)
    plain, _ = trained()
    for got, want in zip(tuned.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(tuned.params(), plain.params(), strict=True):
        assert got.state.keys() == want.state.keys()
        for name in got.state:
            np.testing.assert_array_equal(got.state[name], want.state[name], err_msg=name)
    assert tuned.optimizer.iterations == plain.optimizer.iterations == 5


@needs_numba
def test_info_shows_the_cache_and_its_decisions(measuring, pass_costs):
    from nnbackends import info
    from nnbackends.backends import get_backend

    clock = FakeClock()
    measuring(clock)
    pass_costs(clock, loops=1e-5, blas=2e-5)
    facts = get_backend("numba").describe()
    assert facts["autotune_cache"] == autotune.cache_path() + " (not written yet)"
    assert facts["autotune_decisions"] == ["none"]
    trained()
    facts = get_backend("numba").describe()
    assert facts["autotune"].startswith("measuring on") and facts["autotune_cache"] == autotune.cache_path()
    case = "dtype float32, widths 2-64-3, activations 1-0, output 0, update 4, batch 300"
    line, block_line = facts["autotune_decisions"]
    assert line == f"work numba fused step, {case}: loops (blas 20 µs, loops 10 µs)", line
    # 300 rows in blocks of 256 or of BLOCK_COLS (then padded to 320): a tie, won by the built-in block
    assert block_line == (f"work numba loop pass block, {case}: 320 samples (256 samples 10 µs, 320 samples 10 µs)")
    text = info.render(info.collect())
    assert f"    autotune_cache: {autotune.cache_path()}\n" in text
    assert f"    autotune_decisions:\n      {line}\n" in text
