"""The communicator ``Model.fit(comm=...)`` takes: MPI through mpi4py, or nothing for one process.

``MPIComm()`` wraps mpi4py's ``COMM_WORLD`` (or a communicator you pass) for
data-parallel training; ``SingleProcess`` has the same interface and does
nothing, which is what ``fit`` uses when it is given no communicator. Both
say their ``rank``, ``size`` and whether they are the root (``is_root``, rank
0, the one that writes files and shows progress).

**Faults.** An exception on one rank while the others wait in a collective
would hang the job (an uncaught exception also makes mpi4py wait in
``MPI_Finalize``). So the training runs inside ``comm.guard()``: an exception
on any rank prints ``rank R of N failed with <cause>`` and calls ``MPI_Abort``,
which ends every rank of the job with a non-zero exit at once. Errors that
every rank raises together by design (``COLLECTIVE_ERRORS``: the divergence
check, a Ctrl-C agreed over the ranks, mismatched ``fit`` arguments) pass through as ordinary exceptions. For
your own scripts, ``mpiexec -n 2 python -m mpi4py script.py`` aborts the same
way on any uncaught exception.

mpi4py is imported only by ``MPIComm`` and ``mpi_report``; ``import nnbackends``
does not need it.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
import time
import traceback

import numpy as np

from .errors import TrainingDivergedError, TrainingInterrupted

#: How to install what MPIComm needs.
INSTALL = 'pip install "nnbackends[mpi]"  (mpi4py and the mpich library; or mpi4py over your system MPI)'
#: Seconds between a failing rank's message and MPI_Abort, for the launcher to pass the message on.
ABORT_DELAY_S = 1.0
#: Environment variables that MPI launchers set in every process they start (MPICH/Hydra, PMIx,
#: Open MPI, Slurm's PMI); none of them set means this process was not started by mpiexec.
LAUNCHER_VARIABLES = ("PMI_SIZE", "PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")


class DistributedError(ValueError):
    """A distributed ``fit`` that cannot run as asked, found by every rank together."""


class MismatchError(DistributedError):
    """``fit`` was called with different models or arguments on different ranks."""


class RootFailedError(DistributedError):
    """What the root alone did for every rank (``comm.on_root``: a save) failed."""


#: Errors every rank raises at the same point, so they need no abort to end the job.
COLLECTIVE_ERRORS = (TrainingDivergedError, TrainingInterrupted, DistributedError)


class MPIUnavailableError(ImportError):
    """mpi4py or the MPI library it loads is missing or broken."""


def launched_by_mpiexec() -> bool:
    """Whether an MPI launcher started this process (read from its environment)."""
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


class SingleProcess:
    """One process: rank 0 of 1. Every collective returns at once (the default of ``fit``)."""

    rank, size, is_root = 0, 1, True

    def sum_inplace(self, buffer: np.ndarray) -> None:
        """Replace the host array ``buffer`` by its sum over all ranks (in place)."""

    def broadcast_inplace(self, buffer: np.ndarray) -> None:
        """Overwrite the host array ``buffer`` with the root's (in place)."""

    def bcast(self, obj):
        """The root's ``obj`` on every rank (any picklable object)."""
        return obj

    def allgather(self, obj) -> list:
        """Every rank's ``obj``, in rank order."""
        return [obj]

    def agreed(self, flag):
        """A function that tells whether ``flag()`` is true on any rank; every rank must call it together."""
        return flag

    def on_root(self, fn, *args):
        """``fn(*args)`` on the root alone (a save, a plot), called by every rank together: its result on
        the root (None elsewhere); a failure there raises ``RootFailedError`` on every rank, so all of them
        exit alike."""
        return fn(*args)

    @contextlib.contextmanager
    def guard(self, show_traceback=True):
        """Run a block in which an exception on one rank must end every rank (nothing to do alone)."""
        yield

    def __repr__(self):
        return "SingleProcess()"


def as_comm(comm):
    """``comm`` itself, or ``SingleProcess()`` for None."""
    return SingleProcess() if comm is None else comm


def guarded(method):
    """``method`` run inside ``guard()`` of the communicator it is given as its ``comm`` argument."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def call(*args, **kwargs):
        with as_comm(signature.bind(*args, **kwargs).arguments.get("comm")).guard():
            return method(*args, **kwargs)
    return call


class MPIComm(SingleProcess):
    """Data-parallel training over MPI: ``Model.fit(X, y, comm=MPIComm())`` under ``mpiexec -n N``.

    ``comm``: an mpi4py communicator (default ``MPI.COMM_WORLD``). Arrays passed to the
    collectives are host NumPy arrays of one dtype, the same shape on every rank; device
    arrays too where ``cuda_aware`` (the MPI library says it takes CUDA memory).
    """

    def __init__(self, comm=None):
        MPI = import_mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.is_root = self.rank == 0
        self.cuda_aware = cuda_aware()  # device arrays may go to the collectives (the CuPy fused step's sum)
        self._flag = np.zeros(1, np.int8)
        self._guards = 0

    def sum_inplace(self, buffer):
        if self.size > 1:
            self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)

    def broadcast_inplace(self, buffer):
        if self.size > 1:
            self.comm.Bcast(buffer, root=0)

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0) if self.size > 1 else obj

    def allgather(self, obj):
        return self.comm.allgather(obj) if self.size > 1 else [obj]

    def agreed(self, flag):
        if self.size == 1:
            return flag

        def any_rank():
            self._flag[0] = bool(flag())
            self.comm.Allreduce(self.MPI.IN_PLACE, self._flag, op=self.MPI.MAX)
            return bool(self._flag[0])
        return any_rank

    def on_root(self, fn, *args):
        if self.size == 1:
            return fn(*args)
        failure = result = None
        if self.is_root:
            try:
                result = fn(*args)
            except Exception as exc:
                failure = exc
        cause = self.bcast(None if failure is None else f"{type(failure).__name__}: {failure}")
        if cause is not None:
            raise RootFailedError(f"rank 0 of {self.size} failed in {getattr(fn, '__name__', 'a call')}() with "
                                  f"{cause}") from failure
        return result

    @contextlib.contextmanager
    def guard(self, show_traceback=True):
        """An exception that leaves the block on one rank ends every rank: ``rank R of N failed with ...``,
        then ``MPI_Abort`` (exit status 1). ``COLLECTIVE_ERRORS`` pass through. Nested guards leave
        it to the outermost, so a command line can report one line without a traceback."""
        self._guards += 1
        try:
            yield
        except COLLECTIVE_ERRORS:
            raise
        except BaseException as exc:
            if self._guards > 1 or self.size == 1:
                raise
            self.abort(exc, show_traceback)
        finally:
            self._guards -= 1

    def abort(self, exc, show_traceback=True):
        """Report ``exc`` as this rank's failure and end every rank of the job."""
        if show_traceback:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        cause = " ".join(str(exc).split()) or "(no message)"
        print(f"nnbackends: rank {self.rank} of {self.size} failed with {type(exc).__name__}: {cause} "
              f"(ending all {self.size} ranks with MPI_Abort)", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # The launcher forwards a rank's output through a pipe; MPI_Abort at once could kill the
        # job before it has passed the message on (seen under load), so give it a moment.
        time.sleep(ABORT_DELAY_S)
        self.comm.Abort(1)
        os._exit(1)  # MPICH's MPI_Abort may return before the launcher kills this process

    def __repr__(self):
        return f"MPIComm(rank={self.rank}, size={self.size})"


def import_mpi():
    """mpi4py's ``MPI`` module, initialized; ``MPIUnavailableError`` saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise MPIUnavailableError(f"Distributed training needs mpi4py, which is not installed here ({exc}). "
                                  f"Install it with: {INSTALL}.") from None
    except Exception as exc:  # mpi4py present, but the MPI library it loads is missing or broken
        raise MPIUnavailableError(f"mpi4py is installed but cannot load an MPI library: {type(exc).__name__}: "
                                  f"{exc}. Install one with: {INSTALL}.") from None
    if not MPI.Is_initialized():  # mpi_report imported mpi4py without initializing MPI
        MPI.Init_thread()
        import atexit

        atexit.register(lambda: MPI.Is_finalized() or MPI.Finalize())
    return MPI


def cuda_aware() -> bool:
    """Whether the MPI library in this initialized process takes CUDA device memory: what its
    ``MPIX_Query_cuda_support`` says (Open MPI's extension, which MPICH also has); False where
    the library has no such function or cannot be found."""
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            libraries = sorted({line.split()[-1] for line in maps if "/libmpi" in line})
    except OSError:  # not Linux
        return False
    for path in libraries:
        try:
            query = ctypes.CDLL(path).MPIX_Query_cuda_support
        except (OSError, AttributeError):
            continue
        return bool(query())
    return False


def require_mpiexec(comm) -> None:
    """A ValueError saying how to launch, when ``comm`` has one rank because no launcher started us."""
    if comm.size == 1 and not launched_by_mpiexec():
        raise ValueError("--distributed needs several processes started by an MPI launcher, e.g. "
                         "mpiexec -n 2 nnbackends train ... --distributed (this process was started "
                         "without mpiexec, so it is alone).")


def mpi_report() -> dict:
    """What ``nnbackends info`` says about MPI, without initializing it when nothing else has."""
    try:
        import mpi4py
    except ImportError:
        return {"available": False, "reason": f"mpi4py is not installed: {INSTALL}"}
    if "mpi4py.MPI" not in sys.modules:
        mpi4py.rc.initialize = mpi4py.rc.finalize = False  # a report should not start MPI
    try:
        from mpi4py import MPI

        library = MPI.Get_library_version().strip().splitlines()[0]
    except Exception as exc:
        return {"available": False, "reason": f"mpi4py {mpi4py.__version__} cannot load an MPI library: "
                                              f"{type(exc).__name__}: {exc}; {INSTALL}"}
    if not (MPI.Is_initialized() and not MPI.Is_finalized()):
        world = int(os.environ.get("PMI_SIZE") or os.environ.get("OMPI_COMM_WORLD_SIZE") or 1)
        gpu_arrays = ("through host memory unless the MPI library is CUDA-aware (asked when a distributed fit "
                      "starts MPI)")
    else:
        world = MPI.COMM_WORLD.Get_size()
        gpu_arrays = ("passed to MPI on the device (this MPI library is CUDA-aware)" if cuda_aware()
                      else "through host memory (this MPI library is not CUDA-aware)")
    return {
        "available": True,
        "mpi4py": mpi4py.__version__,
        "library": " ".join(library.split()),
        "standard": "MPI {}.{}".format(*MPI.Get_version()),
        "world_size": world,
        "launched_by_mpiexec": launched_by_mpiexec(),
        "gpu_arrays": gpu_arrays,  # how the CuPy fused step sums its gradients
    }
