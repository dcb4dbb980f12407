"""Choices measured where the code runs: time the candidates, keep the fastest, remember it.

A caller with several interchangeable variants of some work (the Numba fused step's loop
pass and BLAS pass) asks ``tuner().choose(case, candidates, version)``, where ``case`` describes the
work (dtype, layer widths, batch size, ...) and ``candidates`` maps each variant's name to a
function that prepares it (scratch buffers and the like, made only when measuring) and returns
a callable that runs it once without side effects the caller cares about. The first time a
case is seen on a machine, each candidate is prepared and called once untimed (its first call
compiles or loads compiled code), then the candidates are timed in alternating rounds until
``BUDGET`` seconds have passed and ``MIN_ROUNDS`` rounds are done, or twice ``BUDGET`` has
passed (a slow step gets fewer rounds, never fewer than one), or ``MAX_ROUNDS`` are done; the one
with the lowest time is kept (the minimum: on a shared machine it is what a run costs when
nothing interrupts it). The decision is written to a JSON cache file; later processes on
the same machine read it and measure nothing (the idea of FFTW's wisdom). Delete the file to
measure again (a decision taken while the machine was busy stays until then).

A decision's key is the machine (CPU model, number of usable CPUs, versions of numba, numpy
and nnbackends), the case and the candidates' ``version`` (a digest of their source, say);
decisions taken on other machines or with other library versions stay in the file, unused (a
home folder may be shared by different hosts). A decision for the same machine and case under
another ``version`` is dropped when the new one is written: code edited in a checkout (where
the package's version stays put) is measured again without old decisions piling up.

Where the cache file is (``cache_path()``), first that applies:

1. ``$NNBACKENDS_AUTOTUNE_DIR/nnbackends-autotune.json`` (the test suite points it at a
   temporary folder);
2. beside Numba's compiled code, ``$NUMBA_CACHE_DIR/nnbackends-autotune.json``, when
   ``NUMBA_CACHE_DIR`` is set (``numba.config.CACHE_DIR``);
3. ``$XDG_CACHE_HOME/nnbackends/nnbackends-autotune.json``, by default
   ``~/.cache/nnbackends/``. Not the package's ``__pycache__``, where Numba puts its own
   cache by default: an installed package's folder is often read-only, and an editable
   install's is a source tree.

``NNBACKENDS_AUTOTUNE=0`` (or ``off``, ``false``, ``no``) turns measuring off: ``enabled()``
is False, callers use their built-in rules, and the cache is neither read nor written.

A cache file that is not valid JSON, or is in another format or a newer format version, is
ignored with an ``AutotuneCacheWarning`` and replaced at the next decision; one in an older
format version (written before an upgrade) is replaced without a warning. A cache that cannot be
written (a read-only folder) warns once; the decisions are then kept for the process only.
Nothing here raises for a cache problem: training must not fail because of it.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import sys
import threading
import time
import warnings

from ..model_files import atomic_write

#: Setting this to 0, off, false or no turns measuring off.
ENV_VAR = "NNBACKENDS_AUTOTUNE"
#: A folder for the cache file, ahead of Numba's cache folder and the user cache folder.
DIR_ENV_VAR = "NNBACKENDS_AUTOTUNE_DIR"
FILE_NAME = "nnbackends-autotune.json"
FORMAT, FORMAT_VERSION = "nnbackends-autotune", 2
#: Seconds of timed rounds per decision (the untimed first calls come on top).
BUDGET = 0.03
MIN_ROUNDS, MAX_ROUNDS = 3, 25
_OFF = {"0", "off", "false", "no"}


class AutotuneCacheWarning(UserWarning):
    """The autotune cache file could not be read or written; training goes on without it."""


def enabled() -> bool:
    """Whether choices are measured (``NNBACKENDS_AUTOTUNE`` is not 0/off/false/no); read at each call."""
    return os.environ.get(ENV_VAR, "").strip().lower() not in _OFF


def cache_path() -> str:
    """Where the cache file is now (see the module docstring for the order)."""
    folder = os.environ.get(DIR_ENV_VAR) or _numba_cache_dir()
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "nnbackends")
    return os.path.join(folder, FILE_NAME)


def _numba_cache_dir() -> str:
    try:
        import numba
    except ImportError:
        return ""
    return numba.config.CACHE_DIR or ""


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        name = ""
    return name or platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def machine() -> dict:
    """The part of every key that names the machine and the libraries."""
    import numpy

    try:
        import numba
        numba_version = numba.__version__
    except ImportError:
        numba_version = None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # The package's version from the loaded package: importing it from here would be an import cycle.
    package = getattr(sys.modules.get("nnbackends"), "__version__", None)
    return {"cpu": cpu_name(), "cpus": cpus, "numba": numba_version, "numpy": numpy.__version__,
            "nnbackends": package}


def _key(machine_part, case, version) -> str:
    return "; ".join(f"{k}={v}" for k, v in (*machine_part.items(), *case.items(), ("version", version)))


def read_cache(path):
    """``(decisions, problem)``: the file's decisions ({} when absent or unusable) and what is wrong
    with it (None when nothing is)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (FileNotFoundError, NotADirectoryError):  # no file there (yet)
        return {}, None
    except OSError as exc:
        return {}, f"it cannot be read ({exc})"
    try:
        data = json.loads(text)
    except ValueError as exc:
        return {}, f"it is not valid JSON ({exc})"
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return {}, f"it is not an {FORMAT} file"
    version = data.get("version")
    if isinstance(version, int) and version < FORMAT_VERSION:
        return {}, None  # written before an upgrade: replaced at the next decision, nothing wrong
    if version != FORMAT_VERSION:
        return {}, f"it is in format version {version!r}, this nnbackends reads {FORMAT_VERSION}"
    decisions = data.get("decisions")
    if not isinstance(decisions, dict) or not all(_valid(e) for e in decisions.values()):
        return {}, "its decisions are malformed"
    return decisions, None


def _valid(entry) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("choice"), str)
            and isinstance(entry.get("machine"), dict) and isinstance(entry.get("case"), dict)
            and isinstance(entry.get("version"), str))


class Tuner:
    """Measured decisions for one cache file; ``clock`` (seconds, monotonic) is injectable for tests.

    Thread-safe: decisions and file updates happen under a lock (measuring does not, so two
    threads meeting a new case at once may both measure it; the later decision wins).
    """

    def __init__(self, path, clock=time.perf_counter, budget=BUDGET, min_rounds=MIN_ROUNDS,
                 max_rounds=MAX_ROUNDS):
        self.path, self.clock, self.budget = os.fspath(path), clock, budget
        self.min_rounds, self.max_rounds = min_rounds, max_rounds
        self._decisions = {}
        self._lock = threading.Lock()
        self._warned = set()

    def choose(self, case: dict, candidates: dict, version: str = "") -> str:
        """The name of the fastest of ``candidates`` (``{name: prepare}``, ``prepare()`` returning the callable
        to time) for ``case``: remembered, else measured and remembered. ``version`` names the
        candidates' code: a decision remembered for another version is not used, and is replaced."""
        key = _key(machine(), case, version)
        with self._lock:
            if key not in self._decisions:  # another process may have decided it since the last read
                self._decisions.update(self._read())
            entry = self._decisions.get(key)
        if entry is not None and entry["choice"] in candidates:
            return entry["choice"]
        seconds = self.measure(candidates)
        choice = min(seconds, key=seconds.get)
        entry = {"machine": machine(), "case": case, "version": version, "choice": choice, "seconds": seconds}
        with self._lock:
            self._decisions[key] = entry
            self._write(key, entry)
        return choice

    def measure(self, candidates: dict) -> dict:
        """``{name: seconds}``, each prepared candidate's fastest timed call (its first call is not timed)."""
        runs = {name: prepare() for name, prepare in candidates.items()}
        for run in runs.values():
            run()
        names = list(runs)
        times = {name: [] for name in names}
        start, rounds, elapsed = self.clock(), 0, 0.0
        while self._another_round(rounds, elapsed):
            for name in (names if rounds % 2 == 0 else names[::-1]):  # alternate: no candidate always goes first
                t0 = self.clock()
                runs[name]()
                times[name].append(self.clock() - t0)
            rounds, elapsed = rounds + 1, self.clock() - start
        return {name: min(t) for name, t in times.items()}

    def _another_round(self, rounds, elapsed) -> bool:
        """Whether to time another round, after ``rounds`` of them took ``elapsed`` seconds (see the module
        docstring)."""
        if rounds == 0:
            return True
        if rounds >= self.max_rounds or elapsed >= 2 * self.budget:
            return False
        return elapsed < self.budget or rounds < self.min_rounds

    def _read(self) -> dict:
        decisions, problem = read_cache(self.path)
        if problem:
            self._warn(f"Ignoring the autotune cache {self.path}: {problem}. Choices are measured again and the "
                       f"file is rewritten; delete it if this repeats.")
        return decisions

    def _write(self, key, entry) -> None:
        """Merge ``entry`` into the file (re-read first: other processes may have added theirs), in place
        of the decisions for the same machine and case under other versions."""
        decisions, _ = read_cache(self.path)
        decisions = {k: e for k, e in decisions.items()
                     if (e["machine"], e["case"]) != (entry["machine"], entry["case"])}
        decisions[key] = entry
        data = {"format": FORMAT, "version": FORMAT_VERSION, "decisions": decisions}
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            atomic_write(self.path, [json.dumps(data, indent=1).encode()])
        except OSError as exc:
            self._warn(f"Cannot write the autotune cache {self.path} ({exc}); its decisions are kept for this "
                       f"process only. Set {DIR_ENV_VAR} to a writable folder, or {ENV_VAR}=0 to use the "
                       f"built-in rules without measuring.")

    def _warn(self, message) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, AutotuneCacheWarning, stacklevel=4)


_tuners = {}
_tuners_lock = threading.Lock()


def tuner() -> Tuner:
    """The process's tuner for the current ``cache_path()`` (one per path, so it follows the environment)."""
    path = cache_path()
    with _tuners_lock:
        if path not in _tuners:
            _tuners[path] = Tuner(path)
        return _tuners[path]


def describe() -> dict:
    """What ``nnbackends info`` shows: whether measuring is on, the cache file, and its decisions for this
    machine (as ``"case: choice (seconds per candidate)"``)."""
    path = cache_path()
    facts = {"autotune": (f"measuring on ({ENV_VAR}=0 uses the built-in rules)" if enabled()
                          else f"measuring off ({ENV_VAR}={os.environ.get(ENV_VAR)}): built-in rules"),
             "autotune_cache": path + ("" if os.path.exists(path) else " (not written yet)")}
    decisions, problem = read_cache(path)
    here = machine()
    mine = [e for e in decisions.values() if e["machine"] == here]
    lines = [f"{', '.join(f'{k} {v}' for k, v in e['case'].items())}: {e['choice']} ("
             + ", ".join(f"{name} {_micros(s)}" for name, s in sorted(e.get("seconds", {}).items())) + ")"
             for e in mine]
    if len(decisions) > len(mine):
        lines.append(f"{len(decisions) - len(mine)} more for other CPUs or library versions")
    if problem:
        lines.append(f"unusable: {problem}")
    facts["autotune_decisions"] = lines or ["none"]
    return facts


def _micros(seconds) -> str:
    try:
        return f"{float(seconds) * 1e6:.0f} µs"
    except (TypeError, ValueError):
        return str(seconds)
