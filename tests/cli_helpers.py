"""Helpers shared by the command-line, plot and README tests."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def cli_env(**extra) -> dict:
    """The environment for a subprocess that imports this checkout's package."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("NNBACKENDS_BACKEND", None)
    env.update(extra)
    return env


def run_cli(*args, cwd, timeout=300, **env) -> subprocess.CompletedProcess:
    """``python -m nnbackends ARGS`` (the real entry point) in ``cwd``; stdout and stderr as text."""
    return subprocess.run([sys.executable, "-m", "nnbackends", *map(str, args)], cwd=cwd, env=cli_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature and chunk type."""
    head = Path(path).read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG: starts with {head[:8]!r}"
    length, kind = struct.unpack(">I4s", head[8:16])
    assert kind == b"IHDR" and length == 13, f"{path}: first chunk is {kind!r} of {length} bytes, not IHDR"
    return struct.unpack(">II", head[16:24])
