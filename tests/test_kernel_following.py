"""benchmarks/kernel_following.py runs end to end (a tiny frame-averaging model, a tiny cache)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

from flax import nnx

from sepconv_jax import save_model
from sepconv_jax.network.model import SepConvConfig, SepConvNet
from tests import synthetic

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_kernel_following_prints_the_suv_and_the_objects(tmp_path):
  # Frame averaging samples in place: it follows nothing, so every share is 0.
  model = SepConvNet(SepConvConfig.tiny(frame_average_init=True), rngs=nnx.Rngs(0))
  checkpoint = save_model(tmp_path / "model", model)
  cache = synthetic.prepare_training_cache(tmp_path / "cache")
  done = subprocess.run(
      [sys.executable, str(REPO_ROOT / "benchmarks" / "kernel_following.py"), "--model",
       str(checkpoint), "--data", str(cache), "--crops", "6", "--crop", "32"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  lines = done.stdout.splitlines()
  suv = next(line for line in lines if line.startswith("street SUV"))
  assert abs(float(suv.rsplit(" ", 1)[1])) < 0.05, suv
  rows = [line.split() for line in lines if line.startswith(("<=8px", "8-16px", ">16px"))]
  assert sum(int(row[1]) for row in rows) == 6, done.stdout
  assert all(abs(float(row[2])) < 0.05 for row in rows), done.stdout
