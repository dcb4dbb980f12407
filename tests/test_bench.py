"""The benchmark suite's own logic: figures in the report, table, comparison, cost model, CLI."""
from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnbackends import bench
from nnbackends.bench.report import row_key
from nnbackends.backends import available_backends, registered_backends, unavailable_reason

ROOT = Path(__file__).resolve().parents[1]
WORK = ["spiral", "mnist-shaped", "dense_forward", "adam_update"]


def expected_backends():
    return available_backends() + [p for p in bench.PEERS if bench.torch_unavailable_reason(p) is None]


@pytest.fixture(scope="module")
def report():
    return bench.run(bench.Plan(workloads=WORK, smoke=True))


def rows(report, **match):
    return [r for r in report["results"] if all(r[k] == v for k, v in match.items())]


def test_report_has_every_figure_for_every_available_backend_and_workload(report):
    for work in WORK:
        for backend in expected_backends():
            if backend in bench.PEERS and work not in bench.WORKLOADS:
                continue  # the peers run the training workloads only
            found = rows(report, workload=work, backend=backend)
            assert found, f"no result for {work} on {backend}"
            for r in found:
                for key in ("median_s", "rate", "flops", "percent_peak", "gflops_per_s"):
                    assert math.isfinite(r[key]) and r[key] > 0, (work, backend, key, r[key])
    json.loads(json.dumps(report))  # every figure is plain JSON
    assert report["peak"]["gflops_per_s"] > 0
    assert report["machine"]["cpu_count"] >= 1


def test_rates_follow_from_the_median(report):
    for r in report["results"]:
        per_second = r["samples_per_s"] if r["rate_unit"] == "samples/s" else r["calls_per_s"]
        assert r["rate"] == pytest.approx(per_second)
        assert r["calls_per_s"] == pytest.approx(1 / r["median_s"])
        assert r["percent_peak"] == pytest.approx(100 * r["flops"] / r["median_s"] / (report["peak"]["gflops_per_s"] * 1e9))
    mnist = rows(report, workload="mnist-shaped", backend="numpy")[0]
    assert mnist["rate_unit"] == "samples/s" and mnist["samples_per_s"] == pytest.approx(128 / mnist["median_s"])
    assert rows(report, workload="spiral", backend="numpy")[0]["rate_unit"] == "steps/s"


def test_speedups_are_ratios_of_medians_of_the_same_work(report):
    for r in report["results"]:
        if r["backend"] == bench.PRODUCTS:  # not a backend: compared with nothing
            assert r["speedup_vs_numpy"] is r["speedup_vs_torch"] is r["products_share"] is None
            continue
        numpy_row = rows(report, suite=r["suite"], workload=r["workload"], size=r["size"], backend="numpy")[0]
        assert r["speedup_vs_numpy"] == pytest.approx(numpy_row["median_s"] / r["median_s"])
        torch_rows = rows(report, suite=r["suite"], workload=r["workload"], size=r["size"], backend=r["torch_peer"])
        assert r["speedup_vs_torch"] == (pytest.approx(torch_rows[0]["median_s"] / r["median_s"]) if torch_rows else None)


def test_unavailable_backends_are_listed_with_their_reason(report):
    for name in registered_backends():
        assert report["unavailable"].get(name) == unavailable_reason(name)
    for peer in bench.PEERS:
        assert report["unavailable"].get(peer) == bench.torch_unavailable_reason(peer)
    table = bench.format_table(report)
    for name, reason in report["unavailable"].items():
        assert f"{name}: not available: {reason}" in table


def test_unknown_backend_gets_a_clear_line_and_the_rest_still_runs():
    lines = []
    report = bench.run(bench.Plan(suite="kernels", backends=["numpy", "nosuch"], workloads=["relu"], smoke=True),
                       progress=lines.append)
    assert any(line.startswith("nosuch: not available: Unknown backend 'nosuch'") for line in lines)
    assert [r["backend"] for r in report["results"]] == ["numpy"]
    assert any(line.startswith("[1/1] kernel relu tiny") for line in lines)


def test_table_shows_every_row(report):
    table = bench.format_table(report).splitlines()
    assert table[0].split()[:4] == ["suite", "work", "size", "backend"]
    for r in report["results"]:
        assert any(r["workload"] in line and r["backend"] in line and bench.format_seconds(r["median_s"]) in line
                   for line in table), r


def test_compare_reports_ratio_and_missing_rows(report):
    old = copy.deepcopy(report)
    old["results"][0]["median_s"] = report["results"][0]["median_s"] * 2
    gone = old["results"][1]
    new = copy.deepcopy(report)
    new["results"].remove(next(r for r in new["results"] if row_key(r) == row_key(gone)))
    text = bench.compare(old, new)
    first = report["results"][0]
    line = next(l for l in text.splitlines() if l.split()[:2] == [first["suite"], first["workload"]])
    assert "2.00x faster" in line
    assert f"only in the old run: {gone['suite']} {gone['workload']} {gone['size']} {gone['backend']}" in text


def test_step_cost_counts_matrix_products_exactly():
    model = bench.WORKLOADS["spiral"].build("numpy", "float32")
    n = 300
    matmul = 2 * n * 2 * 64 + 2 * n * 64 * 3  # forward
    matmul += 2 * n * 2 * 64 + 2 * (2 * n * 64 * 3)  # backward: no dx for the first layer
    bias = 2 * (n * 64 + n * 3)  # bias add forward, db backward
    relu = bench.ELEMENTWISE["relu"][0] * n * 64
    head = bench.ELEMENTWISE["softmax_cce"][0] * n * 3 + n * 3
    adam = bench.UPDATES["adam_update"][0] * (2 * 64 + 64 + 64 * 3 + 3)
    assert bench.step_cost(model, n).flops == matmul + bias + relu + head + adam


def test_products_alone_are_the_step_s_products_in_the_step_s_layouts():
    """Per layer: forward x·W, weight gradient xᵀ·dy, input gradient dy·Wᵀ except for the first
    layer; the transposed operands are views, as the fused step hands BLAS a transpose flag."""
    products = bench.step_products((5, 4, 3), 7, "float32", np.random.default_rng(0))
    shapes = [(a.shape, b.shape, out.shape) for a, b, out in products]
    assert shapes == [((7, 5), (5, 4), (7, 4)), ((5, 7), (7, 4), (5, 4)),
                      ((7, 4), (4, 3), (7, 3)), ((4, 7), (7, 3), (4, 3)), ((7, 3), (3, 4), (7, 4))]
    transposed = [products[1][0], products[3][0], products[4][1]]
    assert all(t.flags.f_contiguous and not t.flags.c_contiguous and t.base is not None for t in transposed)
    assert all(p.dtype == np.float32 for product in products for p in product)


def test_products_alone_row_and_each_step_s_share(report):
    """Workloads with ``products_row`` get the row (never the others); each CPU step of the same
    work reports the share its products take, and the table says what the row means."""
    products = rows(report, backend=bench.PRODUCTS)
    assert [r["workload"] for r in products] == ["mnist-shaped"]
    assert products[0]["flops"] == rows(report, workload="mnist-shaped", backend="numpy")[0]["flops"]
    steps = [r for r in rows(report, workload="mnist-shaped") if r["backend"] != bench.PRODUCTS]
    assert steps
    for r in steps:
        own_cpu_step = r["device"] == "cpu" and r["backend"] not in bench.PEERS
        expected = products[0]["median_s"] / r["median_s"] if own_cpu_step else None
        assert r["products_share"] == (pytest.approx(expected) if expected else None)
    assert all(r["products_share"] is None for r in rows(report, workload="spiral"))
    line = next(l for l in bench.format_table(report).splitlines() if l.startswith("products alone:"))
    assert all(f"mnist-shaped {r['backend']} {r['products_share']:.2f}" in line for r in steps if r["products_share"])


def test_products_alone_run_only_where_numpy_runs():
    from nnbackends.bench.runner import make_groups

    def backends(runnable):
        plan = bench.Plan(suite="train", workloads=["big-batch", "spiral"], smoke=True)
        return {title.split()[1]: [c.backend for c in cases] for title, cases in make_groups(plan, runnable, [])}

    assert backends(["numpy", "numba"]) == {"spiral": ["numpy", "numba"],
                                            "big-batch": ["numpy", "numba", bench.PRODUCTS]}
    assert backends(["numba"]) == {"spiral": ["numba"], "big-batch": ["numba"]}


def test_extra_info_for_pytest_benchmark():
    case = bench.KernelCase("dense_forward", "tiny", "numpy", "float64")
    case.setup()
    info = case.extra_info()
    assert info["backend"] == "numpy" and info["dtype"] == "float64" and info["device"] == "cpu"
    assert info["flops"] == 2 * 32 * 16 * 16 + 32 * 16
    assert info["bytes"] == 8 * (32 * 16 + 16 * 16 + 16 + 32 * 16)
    assert info["first_call_s"] > 0 and "backend_warmup_s" in info


def test_float64_runs_are_labelled():
    report = bench.run(bench.Plan(backends=["numpy"], workloads=["spiral"], dtype="float64", smoke=True))
    assert [(r["workload"], r["dtype"]) for r in report["results"]] == [("spiral", "float64")]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "nnbackends", "bench", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_cli_json_compare_and_plot(tmp_path):
    first, second, png = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "speedup.png"
    common = ["--smoke", "--suite", "kernels", "--workloads", "relu,dense_forward", "--backends", "numpy,nosuch"]
    done = cli(*common, "--json", str(first))
    assert done.returncode == 0, done.stderr
    assert "nosuch: not available" in done.stderr and "[2/2] kernel relu tiny: numpy" in done.stderr
    assert done.stdout.splitlines()[0].split()[:4] == ["suite", "work", "size", "backend"]
    done = cli(*common, "--json", str(second), "--compare", str(first), "--plot", str(png))
    assert done.returncode == 0, done.stderr
    assert "compared with the run of" in done.stdout
    data = json.loads(second.read_text())
    assert {(r["workload"], r["backend"]) for r in data["results"]} == {("relu", "numpy"), ("dense_forward", "numpy")}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_unknown_workload():
    done = cli("--smoke", "--workloads", "spiral,nope")
    assert done.returncode == 2
    assert "--workloads: unknown nope" in done.stderr


def test_update_readme_replaces_only_the_marked_section(report, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# intro\n{bench.README_START}\nold table\n{bench.README_END}\nafter\n")
    bench.update_readme(readme, report)
    text = readme.read_text()
    assert text.startswith("# intro\n") and text.endswith(f"{bench.README_END}\nafter\n")
    assert "old table" not in text
    assert bench.format_table(report) in text and report["plan"]["command"] in text
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="bench-table"):
        bench.update_readme(readme, report)


def test_threads_limit_blas_during_the_run_only():
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads():
        return [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]

    before = blas_threads()
    with bench.thread_limit(1):
        assert all(n == 1 for n in blas_threads())
    assert blas_threads() == before
    report = bench.run(bench.Plan(backends=["numpy"], workloads=["relu"], smoke=True, threads=1))
    assert report["plan"]["threads"] == 1 and "--threads 1" in report["plan"]["command"]


class FakeCase:
    """A case whose rounds write their name to ``events`` and take 1 ms a call."""

    suite = "train"

    def __init__(self, events, backend, pool):
        self.events, self.backend, self.pool, self.workload = events, backend, pool, "spiral"

    def timed_run(self, number):
        self.events.append(self.backend)
        return number, 0.001 * number


def test_cases_take_rounds_in_turn_with_a_rest_where_the_thread_pool_changes(monkeypatch):
    """Round k of every case, then round k+1, cases grouped by pool; the pool left behind gets
    ``idle_s`` to stop spinning before another pool's round (none between cases on one pool)."""
    from nnbackends.bench import runner

    events = []
    monkeypatch.setattr(runner.time, "sleep", lambda s: events.append(("rest", s)))
    cases = [FakeCase(events, "numba", "blas"), FakeCase(events, "torch", "torch"), FakeCase(events, "numpy", "blas")]
    times = runner.measure(cases, repeats=2, min_round_s=0.0, idle_s=0.5)  # no calibration calls
    one_round = [("rest", 0.5), "numba", "numpy", ("rest", 0.5), "torch"]
    assert events == [("rest", 0.5), ("rest", 0.5)] + one_round * 2
    assert all(times[id(c)] == [0.001] * 2 for c in cases)


def test_each_pytorch_round_is_followed_by_the_same_round_alone(monkeypatch):
    from nnbackends.bench import runner

    events = []
    monkeypatch.setattr(runner.time, "sleep", lambda s: events.append("rest"))

    class Alone:
        pairs = []

        def wants(self, case):
            return case.backend == "torch"

        def round(self, case, number, seconds):
            events.append("alone")
            self.pairs.append((case.backend, number, seconds))

    alone = Alone()
    cases = [FakeCase(events, "numpy", "blas"), FakeCase(events, "torch", "torch")]
    runner.measure(cases, repeats=2, min_round_s=0.0, idle_s=0.5, alone=alone)
    assert events[2:] == ["rest", "numpy", "rest", "torch", "rest", "alone"] * 2
    assert alone.pairs == [("torch", 1, 0.001)] * 2


def test_user_view_rows_and_ratios(report):
    """Training rows with a user view report the wall clock of one fit of a new model, and its ratios."""
    for r in rows(report, workload="mnist-shaped"):
        if r["backend"] == bench.PRODUCTS:
            assert "user_fit_s" not in r  # not a fit
            continue
        assert r["user_rows"] > 0 and r["user_samples_per_s"] == pytest.approx(r["user_rows"] / r["user_fit_s"])
        if r["backend"] != "numpy":
            numpy_row = rows(report, workload="mnist-shaped", backend="numpy")[0]
            assert r["user_speedup_vs_numpy"] == pytest.approx(numpy_row["user_fit_s"] / r["user_fit_s"])
    assert all("user_fit_s" not in r for r in rows(report, workload="spiral"))


def test_peer_check_compares_each_round_with_the_alone_round_after_it():
    """The ratio is the median of the per-round ratios: a drift that slows a suite round and the
    alone round after it alike (the third pair) falls out, where a ratio of medians would not."""
    from nnbackends.bench.peer_check import agreement

    (check,) = agreement({"spiral": [(1.0, 1.0), (1.1, 1.0), (3.0, 3.0), (1.0, 0.95)] + [(1.0, 1.0)] * 3})
    assert (check["rounds"], check["ratio"], check["verdict"], check["agrees"]) == (7, 1.0, "agrees", True)
    assert check["suite_median_s"] == 1.0 and check["alone_median_s"] == 1.0


def test_peer_check_tells_a_real_difference_from_noise():
    """Beyond 10%, a median whose 95% interval leaves out 1 differs; one whose interval holds 1 is noise."""
    from nnbackends.bench.peer_check import agreement
    from nnbackends.bench.report import _peer_check_lines

    slower = [(1.5 + 0.01 * i, 1.0) for i in range(9)]  # every round 1.5x: 1 is far outside
    scattered = [(r, 1.0) for r in (0.6, 0.7, 0.9, 1.12, 1.15, 1.2, 1.3, 1.5, 1.6)]  # median 1.15, spread wide
    check = agreement({"digits": slower, "spiral": scattered})
    assert [(c["workload"], c["verdict"]) for c in check] == [("digits", "differs"), ("spiral", "noisy")]
    assert check[0]["ratio_ci"] == pytest.approx([1.51, 1.57]) and check[1]["ratio_ci"] == [0.7, 1.5]
    (line,) = _peer_check_lines(check)
    assert "digits 1.54x (95% CI 1.51-1.57) DIFFERS" in line and "NOT all within 10%" in line
    (line,) = _peer_check_lines(check[1:])
    assert "spiral 1.15x (95% CI 0.70-1.50) (beyond 10% but within the noise)" in line and "rerun" in line


@pytest.mark.parametrize("n", [1, 5, 6, 9, 11, 20, 51])
def test_the_median_interval_holds_the_median_at_least_95_percent_of_the_time(n):
    """Against the binomial distribution itself: the interval [k-th smallest, k-th largest] misses the
    median only when k or fewer values fall on one side of it."""
    from nnbackends.bench.peer_check import median_interval

    interval = median_interval(list(range(n)))
    if interval is None:
        assert n <= 5
        return
    k = interval[0] + 1
    assert interval == (k - 1, n - k)
    miss = 2 * sum(math.comb(n, i) for i in range(k)) / 2**n
    assert miss <= 0.05 < 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n  # and k is the largest such


def test_the_alone_process_times_the_rounds_it_is_asked_for():
    pytest.importorskip("torch")
    from nnbackends.bench.peer_check import serve

    answers = []
    request = {"workload": "spiral", "dtype": "float32", "smoke": True, "threads": 1}
    serve([json.dumps({**request, "number": 3}), json.dumps({**request, "number": 2}),
           json.dumps({**request, "workload": "nope", "number": 1})], answers.append)
    first, second, bad = map(json.loads, answers)
    assert first["done"] == 3 and second["done"] == 2 and first["seconds"] > 0
    assert bad == {"error": "KeyError: 'nope'"}


def test_the_pytorch_alone_check_runs_in_the_report(report):
    if bench.torch_unavailable_reason() is not None:
        pytest.skip("PyTorch is not installed")
    check = report["torch_alone"]
    assert isinstance(check, list) and {c["workload"] for c in check} == {"spiral", "mnist-shaped"}
    assert all(c["alone_median_s"] > 0 and c["rounds"] == 1 for c in check)


def test_a_failing_alone_process_leaves_the_figures_and_says_why(monkeypatch):
    pytest.importorskip("torch")
    from nnbackends.bench import peer_check

    def fail(self, case, number, seconds):
        raise peer_check.PeerCheckFailed("the PyTorch-alone process ended: MemoryError")

    monkeypatch.setattr(peer_check.TorchAlone, "round", fail)
    report = bench.run(bench.Plan(backends=["numpy", "torch"], workloads=["spiral"], smoke=True))
    assert report["torch_alone"] == {"error": "the PyTorch-alone process ended: MemoryError"}
    assert {r["backend"] for r in report["results"]} == {"numpy", "torch"}
    assert "PyTorch alone: not timed (the PyTorch-alone process ended: MemoryError)" in bench.format_table(report)


def test_the_old_kernel_list_name_still_works_with_a_deprecation():
    with pytest.warns(DeprecationWarning, match="use BENCH_KERNELS"):
        assert bench.KERNEL_NAMES == bench.BENCH_KERNELS
