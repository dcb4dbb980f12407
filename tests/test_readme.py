"""The README's commands run as written and tell the story the README tells.

The walkthrough's shell blocks are extracted from README.md and run line by
line with ``bash`` in an empty folder, where ``nnbackends`` is this checkout's
entry point (``python -m nnbackends``). The backend is pinned to numpy through
``NNBACKENDS_BACKEND`` so the numbers match the ones the README quotes.
The quick-start lines install packages, so they are checked for presence only.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest
from cli_helpers import ROOT, cli_env, png_size

README = (ROOT / "README.md").read_text()
QUICK_START = (
    'python3 -m pip install ".[numba]" && nnbackends train --dataset spiral',
    'python3 -m pip install ".[test]" && python3 -m pytest',
)


def section(title_prefix) -> str:
    """The README text from the heading starting with ``title_prefix`` to the next heading."""
    match = re.search(rf"^#+ {re.escape(title_prefix)}.*?$(.*?)(?=^#+ |\Z)", README, re.S | re.M)
    assert match, f"README has no section {title_prefix!r}"
    return match.group(1)


def code_blocks(text, language) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def walkthrough_commands() -> list[str]:
    lines = [line for block in code_blocks(section("Walkthrough"), "bash") for line in block.splitlines()]
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def accuracy(output) -> float:
    return float(re.findall(r"accuracy (\d\.\d+)", output)[-1])


def test_quick_start_commands_are_there_as_written():
    blocks = [block.strip() for block in code_blocks(section("Quick start"), "bash")]
    assert blocks == list(QUICK_START)


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    """Run every walkthrough command; returns (folder, {command: stdout})."""
    folder = tmp_path_factory.mktemp("walkthrough")
    (folder / "docs").mkdir()
    return folder, run_commands(folder, walkthrough_commands())


def run_commands(folder, commands) -> dict:
    """Run ``commands`` one by one with bash in ``folder``, where ``nnbackends`` is this checkout's
    entry point on the NumPy backend; each must succeed. Returns {command: stdout}."""
    shim = folder / "bin"
    shim.mkdir()
    (shim / "nnbackends").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m nnbackends "$@"\n')
    (shim / "nnbackends").chmod(0o755)
    env = cli_env(NNBACKENDS_BACKEND="numpy")
    env["PATH"] = f"{shim}:{env['PATH']}"
    outputs = {}
    for command in commands:
        proc = subprocess.run(["bash", "-c", command], cwd=folder, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"{command!r} failed:\n{proc.stderr}"
        outputs[command] = proc.stdout
    return outputs


def output_of(outputs, fragment) -> str:
    (command,) = [c for c in outputs if fragment in c]
    return outputs[command]


def test_walkthrough_tells_the_story(walkthrough):
    _, outputs = walkthrough
    small_vertical = accuracy(output_of(outputs, "docs/vertical-small.png"))
    small_spiral = accuracy(output_of(outputs, "docs/spiral-small.png"))
    wide_sgd = accuracy(output_of(outputs, "docs/spiral-wide-sgd.png"))
    wide_adam = accuracy(output_of(outputs, "docs/spiral-adam.png"))
    unseen = accuracy(output_of(outputs, "nnbackends eval"))
    assert small_vertical >= 0.9, "a small network learns vertical data easily"
    assert small_spiral <= 0.5, "the same network learns the spiral poorly"
    assert small_spiral < wide_sgd < wide_adam, "more neurons help, a better optimizer helps more"
    assert wide_adam >= 0.95 and 0.75 <= unseen < wide_adam, "Adam learns the spiral; unseen points score lower"


def test_walkthrough_numbers_match_the_text(walkthrough):
    """The accuracies the README quotes ("about 93%") are what the commands print.

    Within 3 points: another BLAS build rounds differently, and long full-batch runs amplify that.
    """
    _, outputs = walkthrough
    text = section("Walkthrough")
    for name in ("vertical-small", "spiral-small", "spiral-wide-sgd", "spiral-adam"):
        quoted = re.search(rf"accuracy about (\d+)%\]\(docs/{name}\.png\)", text)
        assert quoted, f"README does not quote the accuracy of docs/{name}.png"
        assert abs(100 * accuracy(output_of(outputs, f"docs/{name}.png")) - int(quoted.group(1))) <= 3, name


def test_walkthrough_writes_every_picture_it_shows(walkthrough):
    folder, outputs = walkthrough
    shown = re.findall(r"!\[[^\]]*\]\((docs/[^)]+\.png)\)", README)
    plotted = re.findall(r"--plot (\S+)", " ".join(outputs))
    assert shown and sorted(shown) == sorted(plotted)
    for picture in shown:
        assert png_size(folder / picture) == png_size(ROOT / picture), f"{picture}: committed copy differs in size"
    predictions = (folder / "predictions.csv").read_text().splitlines()
    assert predictions[0] == "class,p0,p1,p2" and len(predictions) == 3


def test_python_api_block_runs(tmp_path):
    (block,) = code_blocks(section("Python API"), "python")
    assert len(block.strip().splitlines()) <= 14, "the Python API is shown in about a dozen lines"
    proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=cli_env(NNBACKENDS_BACKEND="numpy"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    metrics = ast.literal_eval(proc.stdout.strip().splitlines()[-1])  # the printed evaluate() dict
    assert metrics["accuracy"] >= 0.75
    for picture in ("regions.png", "curves.png"):
        assert png_size(tmp_path / picture)[0] > 0


def test_the_iris_example_runs_as_written(tmp_path):
    (block,) = code_blocks(section("Your own data"), "bash")
    outputs = run_commands(tmp_path, block.strip().splitlines())
    trained = output_of(outputs, "nnbackends train")
    train, validation = (float(re.search(rf" {key} (\d\.\d+)", trained).group(1)) for key in ("accuracy", "val_accuracy"))
    assert "Training accuracy reaches about 0.98 (0.93 on the 10% held out" in README
    assert abs(train - 0.98) <= 0.01 and abs(validation - 0.93) <= 0.01, trained  # the figures the text gives
    assert "saved the model to iris.safetensors" in trained
    shown = output_of(outputs, "head -3").splitlines()
    assert shown[0] == "class,p_setosa,p_versicolor,p_virginica" and shown[1].startswith("setosa,")

