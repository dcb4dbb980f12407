"""Data-parallel training over MPI: N ranks train what one process trains, and faults never hang.

The tests that need MPI start ``mpiexec`` themselves (a subprocess in its own
session, killed with its children at the time limit), and few times: one launch
of ``distributed_cases.py`` with 2 ranks and one with 3 train every equivalence
case; the fault cases, the command line and ``info`` take one launch each.
Tests of the batch shares run in this process with stand-in communicators.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import ROOT, cli_env, run_cli
from distributed_cases import CASES, train
from nnbackends import Model, datasets, load_model
from nnbackends.backends import get_backend
from nnbackends.data_parallel import ShareSource
from nnbackends.distributed import MPIUnavailableError, SingleProcess
from nnbackends.layers import Dense, ReLU, Softmax
from nnbackends.trainer import BatchSource

TESTS = Path(__file__).resolve().parent
#: Seconds a launch may take before it counts as a hang (a few seconds is normal, more when Numba compiles).
LIMIT = 120
#: Seconds within which a fault must have ended every rank.
FAULT_LIMIT = 30
MPIEXEC = (str(Path(sys.executable).with_name("mpiexec")) if Path(sys.executable).with_name("mpiexec").exists()
           else shutil.which("mpiexec"))
needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
    reason='needs mpi4py and mpiexec: pip install "nnbackends[mpi]"')


def mpiexec(n, *command, timeout=LIMIT, cwd=None):
    """``mpiexec -n N COMMAND`` with one BLAS thread per rank: (CompletedProcess, seconds). The fused step's
    pass follows the built-in rule (the cases check each pass; measured choices could differ between ranks)."""
    env = cli_env(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", NNBACKENDS_AUTOTUNE="0")
    start = time.monotonic()
    proc = subprocess.Popen([MPIEXEC, "-n", str(n), *map(str, command)], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"mpiexec -n {n} {command} hung for {timeout} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), time.monotonic() - start


def relative(a, b) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)) if a.size else 0.0


# ---------------------------------------------------------------------- equivalence (2 and 3 ranks)
@pytest.fixture(scope="module")
def references():
    """Every case trained in this one process on the whole data set."""
    return {name: train(spec) for name, spec in CASES.items()}


@pytest.fixture(scope="module", params=[2, 3], ids=["2-ranks", "3-ranks"])
def ranks(request, tmp_path_factory):
    """``(n, [results of rank 0, 1, ...])``: every case trained on each rank of one launch."""
    if importlib.util.find_spec("mpi4py") is None or MPIEXEC is None:
        pytest.skip('needs mpi4py and mpiexec: pip install "nnbackends[mpi]"')
    n = request.param
    out = tmp_path_factory.mktemp(f"ranks{n}")
    proc, _ = mpiexec(n, sys.executable, TESTS / "distributed_cases.py", out)
    assert proc.returncode == 0, proc.stderr
    results = []
    for r in range(n):
        with np.load(out / f"rank{r}.npz") as f:
            results.append({key: f[key] for key in f.files})
    return n, results


def of(results, name):
    prefix = name + ":"
    return {key[len(prefix):]: value for key, value in results.items() if key.startswith(prefix)}


def test_every_rank_ends_with_the_same_weights_and_history(ranks):
    n, results = ranks
    names = sorted({key.split(":")[0] for key in results[0]})  # (each rank chooses its Numba pass by its share)
    differ = [f"{name}: rank {r} {key}" for name in names for r in range(1, n)
              for key, value in of(results[r], name).items()
              if key not in ("dropout_draw", "blas", "summed_shares")
              and not np.array_equal(value, of(results[0], name)[key])]
    assert not differ, differ


def test_ranks_train_what_one_process_trains(ranks, references):
    """Float64, shuffled, uneven last batches, L2: weights and history within 1e-10 of one process."""
    n, results = ranks
    failures = []
    for name, ref in references.items():
        if "dropout" in name:
            continue  # each rank draws its own masks: not equal to one process (documented)
        got = of(results[0], name)
        for key in ("steps", "diverged", "interrupted"):
            if not np.array_equal(got[key], ref[key]):
                failures.append(f"{name}: {key} {got[key]} != one process {ref[key]}")
        for key in ("weights", "loss", "accuracy"):
            if got[key].shape != ref[key].shape or relative(got[key], ref[key]) > 1e-10:
                failures.append(f"{name}: {key} differ from one process by {relative(got[key], ref[key]):.2e}")
    assert not failures, "\n".join(failures)
    plain = [ref for name, ref in references.items() if "diverge" not in name and "interrupt" not in name]
    assert all(ref["steps"][0] >= 20 and ref["loss"].size >= 4 for ref in plain)


def test_the_numba_step_sums_on_both_of_its_passes(ranks):
    n, results = ranks
    for opt in ("adam", "momentum"):
        for r in range(n):
            assert of(results[r], f"blas-numba-fused-{opt}-whole")["blas"][0] == 1
            assert of(results[r], f"loops-numba-fused-{opt}-whole")["blas"][0] == 0  # shares of 66 rows or more
            assert of(results[r], f"blas-numba-layers-{opt}-whole")["blas"][0] == -1  # no fused step


def test_a_non_finite_loss_on_one_rank_stops_every_rank_at_the_same_step(ranks, references):
    """Only the last rank holds the overflowing row; every rank raises TrainingDivergedError there."""
    n, results = ranks
    for name in ("regression-numpy-layers-adam-sharded-diverge", "regression-numba-fused-adam-sharded-diverge"):
        epoch, step = of(results[0], name)["diverged"]
        assert epoch >= 1 and step >= 1
        assert [tuple(of(res, name)["diverged"]) for res in results] == [(epoch, step)] * n
        assert tuple(references[name]["diverged"]) == (epoch, step)


def test_ctrl_c_on_one_rank_stops_every_rank_after_the_same_step(ranks):
    n, results = ranks
    for res in results:
        got = of(res, "blas-numpy-layers-adam-whole-interrupt")
        assert got["interrupted"][0] and list(got["steps"]) == [7, 7]


def test_dropout_draws_other_masks_on_each_rank_but_the_weights_agree(ranks):
    n, results = ranks
    draws = [float(of(res, "blas-numpy-layers-adam-whole-dropout")["dropout_draw"][0]) for res in results]
    assert len(set(draws)) == n
    weights = [of(res, "blas-numpy-layers-adam-whole-dropout")["weights"] for res in results]
    assert all(np.array_equal(w, weights[0]) for w in weights)


def test_mismatched_arguments_reach_every_rank_as_exceptions(ranks):
    """The same error on every rank, no abort."""
    n, results = ranks
    for res in results:
        mismatch = str(of(res, "blas-numpy-layers-adam-whole-mismatch")["message"])
        assert mismatch.startswith("MismatchError:") and "epochs: rank 0 4, rank 1 5" in mismatch


def test_the_cupy_step_sums_its_shares_and_says_how(ranks):
    """The CuPy fused step (its array code on NumPy) trains distributed through its summed step; the
    mpich wheel on a machine without a GPU is not CUDA-aware, so the sums go through host memory."""
    n, results = ranks
    for res in results:
        for opt in ("adam", "momentum"):
            assert of(res, f"blas-cupy-numpy-fused-{opt}-whole")["summed_shares"][0] >= 1
        mpi = of(res, "mpi")
        if "MPICH" in str(mpi["library"]) and importlib.util.find_spec("cupy") is None:
            assert not mpi["cuda_aware"][0]


# ---------------------------------------------------------------------- faults (2 ranks)
def check_fault(proc, seconds, message=None):
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert seconds < FAULT_LIMIT, f"the job took {seconds:.0f} s to end"
    assert "finished" not in proc.stdout, proc.stdout  # no rank got through
    if message is not None:
        assert message in proc.stderr, proc.stderr


@needs_mpi
def test_bad_data_on_one_rank_ends_every_rank_naming_it():
    proc, seconds = mpiexec(2, sys.executable, TESTS / "distributed_faults.py", "bad-data", timeout=FAULT_LIMIT)
    check_fault(proc, seconds, "nnbackends: rank 1 of 2 failed with ValueError: X")


@needs_mpi
def test_a_rank_killed_with_sigkill_ends_the_job():
    proc, seconds = mpiexec(2, sys.executable, TESTS / "distributed_faults.py", "kill", timeout=FAULT_LIMIT)
    check_fault(proc, seconds)


@needs_mpi
def test_a_failed_save_ends_every_rank_and_keeps_the_previous_file(tmp_path):
    path = tmp_path / "model.safetensors"
    model = Model(backend="numpy", seed=0).add(Dense(2, 3)).add(Softmax()).compile()
    model.save(path)
    before = path.read_bytes()
    proc, seconds = mpiexec(2, sys.executable, TESTS / "distributed_faults.py", "save", path, timeout=FAULT_LIMIT)
    check_fault(proc, seconds, "nnbackends train: error: rank 0 of 2 failed in save() with OSError: [Errno 28] "
                               "No space left on device")
    assert proc.stderr.count("error:") == 1, proc.stderr  # said once, by rank 0
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary file left behind


# ---------------------------------------------------------------------- command line
@needs_mpi
def test_cli_trains_on_two_ranks_like_one_process_and_only_rank_0_prints_and_saves(tmp_path):
    args = ["train", "--dtype", "float64", "--backend", "numba", "--epochs", "20", "--batch-size", "64", "--json"]
    proc, _ = mpiexec(2, sys.executable, "-m", "nnbackends", *args, "--distributed", "--save", "two.safetensors",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    two = json.loads(lines[0])
    assert two["ranks"] == 2 and two["epochs"] == 20
    assert proc.stderr.count("epoch 20/20") == 1 and proc.stderr.count("training on spiral") == 1, proc.stderr
    one = run_cli(*args, "--save", "one.safetensors", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert abs(two["loss"] - json.loads(one.stdout)["loss"]) <= 1e-10 * json.loads(one.stdout)["loss"]
    for a, b in zip(load_model(tmp_path / "two.safetensors").get_weights(),
                    load_model(tmp_path / "one.safetensors").get_weights()):
        assert relative(a, b) <= 1e-10


@needs_mpi
def test_the_readme_commands_for_one_machine_and_for_several_hosts(tmp_path):
    from test_readme import code_blocks, section

    one_machine, hosts = code_blocks(section("Training on several processes"), "bash")
    head = "OPENBLAS_NUM_THREADS=1 mpiexec -n 2 nnbackends "
    assert one_machine.startswith(head) and "--distributed" in one_machine
    assert "-hosts node1:4,node2:4" in hosts and "-f hostfile" in hosts and hosts.count("--distributed") == 2
    proc, _ = mpiexec(2, sys.executable, "-m", "nnbackends", *one_machine[len(head):].split(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert load_model(tmp_path / "digits.safetensors").evaluate(*datasets.load_digits())["accuracy"] > 0.9


@needs_mpi
def test_info_shows_the_mpi_library_and_the_world_size(tmp_path):
    # Each rank prints its report to a file of its own: the launcher may interleave long lines.
    code = ("import contextlib, os\nfrom nnbackends import cli\n"
            "rank = os.environ.get('PMI_RANK') or os.environ['OMPI_COMM_WORLD_RANK']\n"
            "with open(f'info{rank}.json', 'w') as f, contextlib.redirect_stdout(f):\n"
            "    cli.main(['info', '--json'])\n")
    proc, _ = mpiexec(2, sys.executable, "-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    reports = [json.loads((tmp_path / f"info{r}.json").read_text())["mpi"] for r in range(2)]
    assert all(r["world_size"] == 2 and r["launched_by_mpiexec"] for r in reports)
    assert "MPICH" in reports[0]["library"] or "Open MPI" in reports[0]["library"]
    assert "host memory" in reports[0]["gpu_arrays"]


@needs_mpi
def test_cli_distributed_outside_mpiexec_says_how_to_launch(tmp_path):
    proc = run_cli("train", "--epochs", "1", "--distributed", cwd=tmp_path, timeout=LIMIT)
    assert proc.returncode == 2
    assert proc.stderr.startswith("nnbackends train: error: --distributed needs") and "mpiexec -n 2" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_without_mpi4py_distributed_training_says_what_to_install(monkeypatch, capsys):
    from nnbackends import cli
    from nnbackends.distributed import MPIComm

    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(MPIUnavailableError, match=r'pip install "nnbackends\[mpi\]"'):
        MPIComm()
    assert cli.main(["train", "--epochs", "1", "--distributed"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nnbackends train: error: Distributed training needs mpi4py") and "mpich" in err


@needs_mpi
def test_bench_distributed_compares_ranks_with_threads_and_reports_the_allreduce_share():
    from nnbackends.bench import distributed

    report = distributed.run(2, "numba", ("digits",), launches=1, rounds=2, progress=lambda text: None)
    rows = {r["config"]: r for r in report["rows"]}
    assert set(rows) == {"2 ranks x 1 thread", "1 rank x 2 threads"}
    ranks, alone = rows["2 ranks x 1 thread"], rows["1 rank x 2 threads"]
    assert ranks["rounds"] == alone["rounds"] == 2 and ranks["step_s"] > 0 and alone["step_s"] > 0
    assert 0 < ranks["allreduce_share"] < 1 and alone["allreduce_share"] is None
    assert alone["speed_vs_one_rank"] == 1.0
    assert ranks["speed_vs_one_rank"] == pytest.approx(alone["step_s"] / ranks["step_s"])
    table = distributed.format_table(report)
    assert "digits" in table and "2 ranks x 1 thread" in table and report["cpu"] in table


# ---------------------------------------------------------------------- shares, in this process
class StandIn(SingleProcess):
    """Rank ``rank`` of ``size`` for the batch shares, which gather only the ranks' row counts."""

    def __init__(self, rank, size, counts):
        self.rank, self.size, self.is_root, self.counts = rank, size, rank == 0, counts

    def allgather(self, obj):
        assert obj == self.counts[self.rank]
        return list(self.counts)


@pytest.mark.parametrize("sharded", [False, True], ids=["whole", "sharded"])
@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffled", "in-order"])
@pytest.mark.parametrize("size", [2, 3])
def test_the_ranks_shares_make_up_each_global_batch_of_one_process(sharded, shuffle, size):
    be, n, batch = get_backend("numpy"), 103, 20
    rows = np.arange(n, dtype=float)[:, None]  # a row's value is its index in the data set
    counts = {2: [31, 72], 3: [31, 60, 12]}[size] if sharded else [n] * size  # uneven parts of the data set
    expected = [set(xb[:, 0]) for _, (xb, _) in BatchSource(be, (rows, rows), batch, shuffle,
                                                            np.random.default_rng(5)).batches()]
    shares = []
    for rank in range(size):
        start = sum(counts[:rank]) if sharded else 0
        part = rows[start:start + counts[rank]]
        source = ShareSource(be, part, part, batch, shuffle, np.random.default_rng(5), StandIn(rank, size, counts),
                             sharded)
        assert (source.n, source.steps_per_epoch) == (n, 6)
        steps = [(round(share * source.n), list(xb[:, 0])) for share, (xb, yb) in source.batches()]
        shares.append(steps)
    for s, batch_rows in enumerate(expected):
        together = [row for rank in range(size) for row in shares[rank][s][1]]
        assert sorted(together) == sorted(batch_rows) and len(together) == len(batch_rows)
        assert all(shares[rank][s][0] == len(batch_rows) for rank in range(size))
    if not sharded:  # near-equal parts of every batch
        assert all(abs(len(shares[a][s][1]) - len(shares[b][s][1])) <= 1
                   for s in range(len(expected)) for a in range(size) for b in range(size))


def test_a_single_process_communicator_changes_nothing():
    def fitted(**kwargs):
        model = Model(backend="numpy", seed=1, dtype="float64")
        model.add(Dense(3, 8)).add(ReLU()).add(Dense(8, 2)).add(Softmax()).compile()
        r = np.random.default_rng(2)
        history = model.fit(r.standard_normal((50, 3)), r.integers(0, 2, 50), epochs=3, batch_size=16, verbose=0,
                            **kwargs)
        return model.get_weights(), history["loss"]

    plain_weights, plain_loss = fitted()
    weights, loss = fitted(comm=SingleProcess(), sharded=True)
    assert loss == plain_loss and all(np.array_equal(a, b) for a, b in zip(weights, plain_weights))


def test_the_package_imports_without_mpi4py():
    code = "import sys; sys.modules['mpi4py'] = None; import nnbackends, nnbackends.cli; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, cwd=ROOT,
                          timeout=LIMIT)
    assert proc.stdout.strip() == "ok", proc.stderr


@needs_mpi
@pytest.mark.parametrize("launcher", [[], ["-n", "1"]], ids=["no-mpiexec", "mpiexec-n-1"])
def test_an_mpi_communicator_of_one_process_changes_nothing(launcher, tmp_path):
    """MPIComm() alone (no launcher, or mpiexec -n 1) trains exactly what fit without a communicator trains."""
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from nnbackends import Model
        from nnbackends.distributed import MPIComm
        from nnbackends.layers import Dense, ReLU, Softmax

        def fitted(backend, **kwargs):
            model = Model(backend=backend, seed=1, dtype="float64")
            model.add(Dense(3, 8)).add(ReLU()).add(Dense(8, 2)).add(Softmax()).compile()
            r = np.random.default_rng(2)
            model.fit(r.standard_normal((50, 3)), r.integers(0, 2, 50), epochs=3, batch_size=16, verbose=0, **kwargs)
            return model.get_weights()

        comm = MPIComm()
        assert comm.size == 1 and comm.is_root
        for backend in ("numpy", "numba"):
            same = all(np.array_equal(a, b) for a, b in zip(fitted(backend, comm=comm), fitted(backend)))
            print(backend, same)
    """)
    command = [MPIEXEC, *launcher, sys.executable, "-c", code] if launcher else [sys.executable, "-c", code]
    proc = subprocess.run(command, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=LIMIT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["numpy", "True", "numba", "True"]
