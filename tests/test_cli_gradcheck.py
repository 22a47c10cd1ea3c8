"""``mlplab gradcheck``: the table it prints and the exit codes it returns."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mlplab.cli import main
from mlplab.nn import Tanh


def table_rows(out: str) -> list[list[str]]:
    """The data rows of the table: [module, quantity, error, result] (module names may contain spaces)."""
    lines = out.strip().splitlines()
    assert lines[0].split()[:2] == ["module", "quantity"]
    rows = []
    for line in lines[1:]:
        if not line.strip():
            break
        *head, error, result = line.rsplit(None, 2)
        module, quantity = head[0].rsplit(None, 1)
        rows.append([module.strip(), quantity, error, result])
    return rows


def test_gradcheck_passes_and_prints_the_table(capsys):
    assert main(["gradcheck"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    for column in ("module", "quantity", "max rel. error", "result"):
        assert column in header
    rows = table_rows(out)
    assert all(result in ("pass", "pass*") for *_, result in rows)
    assert all(0 <= float(error) for _, _, error, _ in rows)
    modules = {module for module, *_ in rows}
    assert {"Linear", "ELU", "Softmax", "BatchNorm1d(train)", "Residual", "MLP[batch_norm]", "MLP[residual]",
            "MLP[dropout, eval]"} <= modules
    assert ["Linear", "weight"] == rows[1][:2]
    assert f"{len(rows)} passed, 0 failed" in out


def test_a_broken_backward_is_reported_and_exits_1(monkeypatch, capsys):
    original = Tanh.backward
    monkeypatch.setattr(Tanh, "backward", lambda self, dout: original(self, dout) * 1.01)
    assert main(["gradcheck"]) == 1
    rows = table_rows(capsys.readouterr().out)
    failed = {(module, quantity) for module, quantity, _, result in rows if result == "FAIL"}
    assert ("Tanh", "input") in failed
    assert ("MLP[tanh]", "layers.0.weight") in failed
    assert all(result == "pass" for module, _, _, result in rows if module in ("Linear", "ELU", "MLP[relu]"))


def test_seed_option(capsys):
    assert main(["gradcheck", "--seed", "5"]) == 0
    assert "0 failed" in capsys.readouterr().out


def test_non_positive_tolerance_is_a_usage_error(capsys):
    assert main(["gradcheck", "--tol", "0"]) == 2
    captured = capsys.readouterr()
    assert "mlplab gradcheck: error:" in captured.err and "--tol" in captured.err
    assert captured.out == ""


def test_help_lists_the_command(capsys):
    assert main(["--help"]) == 0
    assert "gradcheck" in capsys.readouterr().out


def test_module_entry_point_exit_code():
    done = subprocess.run([sys.executable, "-m", "mlplab", "gradcheck"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert " 0 failed" in done.stdout
