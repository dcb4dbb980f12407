"""``nnbackends bench``: the command-line front of the benchmark suite."""
from __future__ import annotations

import json
import sys

from ..validation import check_positive_int
from .cases import BENCH_KERNELS, WORKLOADS
from .report import compare, format_table, plot, update_readme
from .runner import Plan, run


DESCRIPTION = ("Time every backend on the same training workloads and kernels, and report medians, rates, "
               "speed-ups against NumPy and PyTorch eager, and the share of this machine's float32 "
               "matrix-multiply rate.")


def _names(text):
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def add_parser(sub):
    """Add ``bench`` to the subcommands of ``nnbackends``."""
    p = sub.add_parser("bench", help="time every backend on the same workloads and kernels",
                       description=DESCRIPTION)
    p.add_argument("--suite", choices=("kernels", "train", "all"), default="all", help="what to time (default: all)")
    p.add_argument("--backends", default=None,
                   help="comma-separated backends; 'torch' and 'torch-cuda' for the PyTorch eager peers "
                        "(default: every registered backend and both peers)")
    p.add_argument("--workloads", default=None,
                   help=f"comma-separated subset of: {', '.join([*WORKLOADS, *BENCH_KERNELS])} (default: all of them)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="float type (default: float32)")
    p.add_argument("--quick", action="store_true", help="fewer sizes and rounds, about a minute on two cores (default: off)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one round: checks the suite runs (default: off)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for BLAS, Numba and PyTorch (default: each library's own, as many as cores)")
    p.add_argument("--no-peer-check", action="store_true",
                   help="skip timing PyTorch again alone in a process of its own (default: timed when it "
                        "runs beside other backends)")
    p.add_argument("--json", metavar="PATH", help="write every figure, the machine and versions as JSON (default: no file)")
    p.add_argument("--plot", metavar="PATH", help="draw speed-up against problem size, needs matplotlib (default: no plot)")
    p.add_argument("--compare", metavar="OLD.json", help="show what changed since an earlier --json run (default: no comparison)")
    p.add_argument("--update-readme", metavar="README", help="put the table between the bench-table markers of this file (default: no file)")
    p.add_argument("--distributed", action="store_true", dest="bench_distributed",
                   help="instead: --ranks MPI ranks of 1 thread against 1 rank of --ranks threads, training "
                        "784-256-256-10 at batch 128 and 4096 (or --workloads) on the first of --backends "
                        "(default numba), with the allreduce's share of the step; needs mpiexec (default: off)")
    p.add_argument("--ranks", type=int, default=2, help="--distributed: ranks and threads compared (default: 2)")
    p.set_defaults(run=cmd_bench)
    return p


def cmd_distributed(args) -> int:
    from . import distributed

    check_positive_int("--ranks", args.ranks)
    workloads = _names(args.workloads) or distributed.DEFAULT_WORKLOADS
    batched = [name for name, w in WORKLOADS.items() if w.batch_size]
    unknown = [w for w in workloads if w not in batched]
    if unknown:
        raise ValueError(f"--workloads: {', '.join(unknown)} cannot be split across ranks; --distributed takes "
                         f"workloads with a batch size: {', '.join(batched)}.")
    backend = (_names(args.backends) or ["numba"])[0]
    launches, rounds = (1, 1) if args.smoke else (2, 3) if args.quick else (3, 5)
    report = distributed.run(args.ranks, backend, workloads, launches, rounds, args.dtype,
                             progress=lambda text: print(text, file=sys.stderr, flush=True))
    print(distributed.format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


def cmd_bench(args) -> int:
    if args.bench_distributed:
        return cmd_distributed(args)
    old = None
    if args.compare:
        with open(args.compare) as f:
            old = json.load(f)
    workloads = _names(args.workloads)
    unknown = [w for w in workloads or () if w not in WORKLOADS and w not in BENCH_KERNELS]
    if unknown:
        raise ValueError(f"--workloads: unknown {', '.join(unknown)}; expected names from "
                         f"{', '.join([*WORKLOADS, *BENCH_KERNELS])}.")
    if args.threads is not None:
        check_positive_int("--threads", args.threads)
    plan = Plan(args.suite, _names(args.backends), workloads, args.dtype, args.quick, args.smoke, args.threads,
                peer_check=not args.no_peer_check)
    report = run(plan, progress=lambda text: print(text, file=sys.stderr, flush=True))
    print(format_table(report))
    if old is not None:
        print()
        print(compare(old, report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.plot:
        plot(report, args.plot)
    if args.update_readme:
        update_readme(args.update_readme, report)
    return 0
