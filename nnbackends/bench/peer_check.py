"""Is the PyTorch row fair? PyTorch timed again alone, in a process of its own, round for round.

Thread pools that spin after their last call (OpenBLAS's, OpenMP's) can slow
whatever runs next on the same cores, so the suite lets each pool go idle
before a block of rounds. This check shows whether that was enough: after each
of the suite's PyTorch rounds, a second process that loads no other numeric
library's pool runs the same round of the same work. Each suite round is
compared with the alone round right after it: a shared machine's speed drifts
by tens of percent over seconds, and pairs of neighbouring rounds see the same
machine, where two runs a minute apart need not.

``main`` is that second process: it reads one round request per line on stdin
and answers each with a line of JSON on stdout.
"""
from __future__ import annotations

import contextlib
import json
import math
import statistics
import subprocess
import sys

from .cases import TORCH, WORKLOADS, TorchTrainCase

#: How far the suite's PyTorch row may be from PyTorch timed alone and still count as agreeing.
AGREEMENT = 0.10


class PeerCheckFailed(RuntimeError):
    """The second process could not time a round (the suite goes on without the check)."""


class TorchAlone:
    """The second process: ``round(case, number, seconds)`` times ``number`` steps of ``case``'s work
    there, right after the suite timed the same round in ``seconds`` per step.

    Use as a context manager; the process ends with it. The first round of a
    workload also sets it up there (data, network, a first step and an untimed
    round), as the suite's calibration warms its own case.
    """

    def __enter__(self):
        self.pairs: dict[str, list[tuple[float, float]]] = {}  # workload -> (suite, alone) s/step per round
        self.proc = subprocess.Popen([sys.executable, "-c", f"from {__name__} import main; main()"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        return self

    def __exit__(self, *exc):
        with contextlib.suppress(OSError):  # a process that ended already
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    @staticmethod
    def wants(case) -> bool:
        """Whether ``case`` is one this check times again (PyTorch on the CPU, training)."""
        return case.backend == TORCH and case.suite == "train"

    def round(self, case, number, seconds):
        """Time ``number`` steps of ``case``'s work in the second process, paired with the suite's
        ``seconds`` per step of the same round."""
        request = {"workload": case.workload, "dtype": case.dtype, "smoke": case.smoke,
                   "threads": case.threads, "number": number}
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            answer = self.proc.stdout.readline()
        except OSError as exc:
            raise PeerCheckFailed(f"the PyTorch-alone process ended: {exc}") from exc
        if not answer:
            raise PeerCheckFailed(f"the PyTorch-alone process ended: {self._last_error()}")
        answer = json.loads(answer)
        if "error" in answer:
            raise PeerCheckFailed(answer["error"])
        self.pairs.setdefault(case.workload, []).append((seconds, answer["seconds"] / answer["done"]))

    def _last_error(self):
        self.proc.kill()
        lines = self.proc.stderr.read().strip().splitlines()
        return lines[-1] if lines else f"exit status {self.proc.wait()}"


def agreement(pairs) -> list[dict]:
    """Per workload of ``pairs`` (``TorchAlone.pairs``): the medians of the suite's and the alone
    rounds, and the ratio that decides: the median over rounds of suite / alone, each round against
    the one right after it, so that the machine's drift between rounds falls out.

    ``ratio_ci`` is a 95 % confidence interval of that median (distribution-free, from the order
    of the per-round ratios; None with too few rounds). ``verdict`` is "agrees" within
    ``AGREEMENT``; beyond it, "differs" where the interval leaves out 1 (PyTorch is really slower
    or faster in the suite) and "noisy" where it does not (single rounds scatter more than the
    difference: rerun on a quieter machine, or with more rounds).
    """
    rows = []
    for workload, rounds in pairs.items():
        ratios = sorted(suite / alone for suite, alone in rounds)
        ratio = statistics.median(ratios)
        interval = median_interval(ratios)
        outside = interval is not None and not interval[0] <= 1.0 <= interval[1]
        verdict = "agrees" if abs(ratio - 1.0) <= AGREEMENT else "differs" if outside else "noisy"
        rows.append({"workload": workload, "rounds": len(rounds),
                     "suite_median_s": statistics.median(s for s, _ in rounds),
                     "alone_median_s": statistics.median(a for _, a in rounds),
                     "ratio": ratio, "ratio_ci": interval and list(interval), "verdict": verdict,
                     "agrees": verdict == "agrees"})
    return rows


def median_interval(ordered, level=0.95) -> tuple[float, float] | None:
    """A confidence interval at ``level`` or more for the median of the values ``ordered`` (sorted):
    the k-th smallest to the k-th largest, k as large as the binomial distribution allows;
    None for too few values (five or fewer at 95 %)."""
    n, k = len(ordered), 0
    tail = 0.0  # P(Binomial(n, 1/2) <= k - 1)
    while n and 2 * (tail + math.comb(n, k) / 2**n) <= 1 - level:
        tail += math.comb(n, k) / 2**n
        k += 1
    return (ordered[k - 1], ordered[n - k]) if k else None


def serve(lines, write):
    """The second process's loop: a round of each request in ``lines``, its answer to ``write``."""
    cases = {}
    for line in lines:
        request = json.loads(line)
        key = (request["workload"], request["dtype"], request["smoke"], request["threads"])
        try:
            if key not in cases:
                cases[key] = TorchTrainCase(WORKLOADS[key[0]], TORCH, *key[1:])
                cases[key].setup()
                cases[key].run(request["number"])
            done, seconds = cases[key].timed_run(request["number"])
            answer = {"done": done, "seconds": seconds}
        except Exception as exc:  # the suite reports it; this process stays ready
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        write(json.dumps(answer) + "\n")


def main():
    def write(text):
        sys.stdout.write(text)
        sys.stdout.flush()
    serve(sys.stdin, write)
