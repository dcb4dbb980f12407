"""``nnbackends info``: what this installation can run, and with what.

``collect()`` gathers a JSON-ready dict; ``render()`` turns it into text.
Each backend contributes its own facts through ``Backend.describe()`` (for
example Numba's threading layer and thread count, or the GPU's name, memory
and compute capability), so this module knows no backend in particular.
"""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

from .backends import ENV_VAR, KERNELS, get_backend, registered_backends, resolve_backend, unavailable_reason
from .distributed import mpi_report

#: Distributions reported with their versions (alternatives: the first installed one is shown).
DEPENDENCIES = (
    ("numpy",), ("numba",), ("llvmlite",), ("scipy",), ("cupy-cuda12x", "cupy-cuda13x", "cupy"),
    ("matplotlib",), ("tqdm",), ("threadpoolctl",), ("scikit-learn",), ("torch",), ("onnx",), ("onnxruntime",),
    ("safetensors",),
)


def _version(names):
    for name in names:
        try:
            return name, metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return names[0], None


def _backend_report(name) -> dict:
    reason = unavailable_reason(name)
    if reason:
        return {"available": False, "reason": reason}
    backend = get_backend(name)
    native = backend.native_kernels()
    try:
        facts = backend.describe()
    except Exception as exc:  # a backend's self-description must not hide the rest of the report
        facts = {"describe() failed": f"{type(exc).__name__}: {exc}"}
    return {
        "available": True,
        "native_kernels": native,
        "inherited_kernels": [k for k in KERNELS if k not in native],
        "blas_kernels": list(backend.blas_kernels),
        "facts": facts,
    }


def _blas() -> list[dict] | str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return 'threadpoolctl is not installed: pip install "nnbackends[bench]"'
    return [{"library": i.get("internal_api"), "api": i.get("user_api"), "version": i.get("version"),
             "threads": i.get("num_threads"), "threading_layer": i.get("threading_layer"),
             "file": os.path.basename(i.get("filepath") or "")} for i in threadpool_info()]


def collect() -> dict:
    from . import __version__

    backends = {name: _backend_report(name) for name in registered_backends()}
    return {
        "nnbackends": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "dependencies": dict(_version(names) for names in DEPENDENCIES),
        "selection": {"environment": os.environ.get(ENV_VAR), "auto": resolve_backend("auto")},
        "backends": backends,
        "blas": _blas(),  # after the backends, so the libraries they load are seen
        "mpi": mpi_report(),
    }


def render(report: dict) -> str:
    deps = ", ".join(f"{k} {v or 'not installed'}" for k, v in report["dependencies"].items())
    env = report["selection"]["environment"]
    lines = [
        f"nnbackends {report['nnbackends']} on Python {report['python']} ({report['platform']})",
        f"dependencies: {deps}",
        f"selection: {ENV_VAR}={env or '(unset)'}; auto picks {report['selection']['auto']}",
        "backends:",
    ]
    for name, b in report["backends"].items():
        if not b["available"]:
            lines.append(f"  {name}: not available: {b['reason']}")
            continue
        native, inherited = b["native_kernels"], b["inherited_kernels"]
        lines.append(f"  {name}: available")
        lines.append(f"    native kernels: {len(native)} of {len(native) + len(inherited)}"
                     + (f"; inherited array-module defaults: {', '.join(inherited)}" if inherited else " (all)"))
        lines.append(f"    BLAS kernels: {', '.join(b['blas_kernels']) or 'none'}")
        for key, value in b["facts"].items():  # a list shows an item a line
            is_list = isinstance(value, list)
            lines += [f"    {key}:", *(f"      {v}" for v in value)] if is_list else [f"    {key}: {value}"]
    blas = report["blas"]
    if isinstance(blas, str):
        lines.append(f"BLAS: {blas}")
    else:
        lines.append("BLAS and OpenMP libraries loaded (threadpoolctl):")
        lines += [f"  {i['library']} {i['version'] or ''} ({i['api']}): {i['threads']} threads"
                  + (f", {i['threading_layer']} threading" if i["threading_layer"] else "") + f"  [{i['file']}]"
                  for i in blas] or ["  none"]
    mpi = report["mpi"]
    if not mpi["available"]:
        lines.append(f"MPI (distributed training): not available: {mpi['reason']}")
    else:
        launched = "started by mpiexec" if mpi["launched_by_mpiexec"] else "not started by mpiexec"
        lines.append(f"MPI (distributed training): {mpi['library']} ({mpi['standard']}, mpi4py {mpi['mpi4py']}); "
                     f"world size {mpi['world_size']} ({launched}); GPU arrays go {mpi['gpu_arrays']}")
    return "\n".join(lines)
