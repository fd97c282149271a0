"""`benchmarks/gpu_check.py`, the one-command GPU check, at toy sizes on whatever machine runs the
suite (Pallas in interpret mode without a GPU), so that it cannot rot before a GPU is lent."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
  spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "benchmarks" /
                                                "gpu_check.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules["gpu_check"] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def test_every_part_runs_and_reports(gpu_check, tmp_path, capsys):
  out = tmp_path / "check.json"
  code = gpu_check.main(["--tiny", "--tests-filter", "powers_of_two", "--json", str(out)])
  table = capsys.readouterr().out
  report = json.loads(out.read_text())
  rows = report["rows"]
  assert code == 0, table
  assert {row["part"] for row in rows} == {"tests", "parity", "op", "model", "train"}
  assert all(row["ok"] for row in rows) and report["tiny"]
  parity, = [row for row in rows if row["part"] == "parity"]
  assert set(parity["data"]["relative_errors"]) == {"forward", "d image", "d vertical",
                                                    "d horizontal"}
  assert "1 passed" in rows[0]["value"]
  for row in rows:
    assert row["case"] in table
  assert not list(tmp_path.glob("*.partial"))


def test_a_failing_part_is_a_row_not_a_crash(gpu_check, capsys, monkeypatch):
  def broken(*args):
    raise RuntimeError("Triton could not compile\nmore lines")
  monkeypatch.setattr(gpu_check, "part_parity", broken)
  assert gpu_check.main(["--tiny", "--parts", "parity"]) == 1
  captured = capsys.readouterr()
  assert "FAIL" in captured.out and "RuntimeError: Triton could not compile" in captured.out
  with pytest.raises(SystemExit):
    gpu_check.main(["--parts", "nonsense"])


def test_roofline_figures(gpu_check, monkeypatch):
  # The estimate: 14.4 GFLOP for the forward op at 1280x720 (K = 51, 3 channels).
  assert gpu_check.op_flops(1, 3, 720, 1280, 51) == pytest.approx(14.4e9, rel=0.03)

  class FakeDevice:
    platform, device_kind = "gpu", "NVIDIA H100 PCIe"
  monkeypatch.setattr(gpu_check.jax, "devices", lambda: [FakeDevice()])
  monkeypatch.setattr(gpu_check.jax, "device_count", lambda: 1)
  device = gpu_check.device_description()
  assert (device["fp32_tflops"], device["tb_per_s"]) == (51.2, 2.0)  # not the SXM part's
