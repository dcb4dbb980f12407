"""``nnbackends train`` with schedules, callbacks and --resume."""
from __future__ import annotations

import csv
import json
import re

import pytest

from nnbackends import load_model
from nnbackends.cli import main
from nnbackends.schedules import CosineDecay, StepDecay

BASE = ["train", "--dataset", "spiral", "--backend", "numpy", "--hidden", "8", "--quiet"]


def train(capsys, *args):
    code = main([*BASE, *map(str, args), "--json"])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out else None), out.err


def test_schedule_flags_build_the_schedule(tmp_path, capsys):
    code, _, _ = train(capsys, "--epochs", 4, "--lr-schedule", "cosine", "--warmup-steps", 2,
                       "--save", tmp_path / "m.safetensors")
    assert code == 0
    schedule = load_model(tmp_path / "m.safetensors").optimizer.schedule
    assert isinstance(schedule, CosineDecay) and schedule.warmup_steps == 2 and schedule.decay_steps == 2
    code, _, _ = train(capsys, "--epochs", 2, "--lr-schedule", "step", "--lr-step-size", 3, "--lr-gamma", 0.5,
                       "--save", tmp_path / "s.safetensors")
    schedule = load_model(tmp_path / "s.safetensors").optimizer.schedule
    assert code == 0 and isinstance(schedule, StepDecay) and (schedule.step_size, schedule.gamma) == (3, 0.5)


def test_early_stopping_checkpoint_and_csv_log(tmp_path, capsys):
    code, result, _ = train(capsys, "--epochs", 200, "--learning-rate", 1e-9, "--early-stopping", 2,
                            "--checkpoint", tmp_path / "best.safetensors", "--csv-log", tmp_path / "log.csv")
    assert code == 0 and result["epochs"] < 200
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert len(rows) == result["epochs"]
    assert load_model(tmp_path / "best.safetensors").epochs_trained == min(
        range(1, len(rows) + 1), key=lambda e: float(rows[e - 1]["loss"]))


def test_resume_goes_on_counting_epochs(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    assert train(capsys, "--epochs", 3, "--save", path)[0] == 0
    code, result, _ = train(capsys, "--epochs", 2, "--resume", path, "--save", path)
    assert code == 0 and result["epochs"] == 2
    assert load_model(path).epochs_trained == 5


@pytest.mark.parametrize("args, message", [
    (["--lr-schedule", "step", "--lr-gamma", "0.5"], "needs --lr-step-size"),
    (["--lr-schedule", "exponential"], "needs --lr-gamma"),
    (["--warmup-steps", "5"], "--warmup-steps needs --lr-schedule cosine"),
    (["--lr-schedule", "step", "--lr-step-size", "2", "--lr-gamma", "3"], r"gamma must be a number in \(0, 1\]"),
    (["--early-stopping", "-1"], "patience must be an integer >= 0"),
])
def test_bad_flags_say_what_is_wrong(capsys, args, message):
    code, _, err = train(capsys, "--epochs", 1, *args)
    assert code == 2 and re.search(message, err), err


def test_resuming_with_another_optimizer_is_refused(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    train(capsys, "--epochs", 1, "--save", path)
    code, _, err = train(capsys, "--epochs", 1, "--resume", path, "--optimizer", "sgd")
    assert code == 2 and "trained with adam, not sgd" in err
