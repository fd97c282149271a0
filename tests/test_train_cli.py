"""`sepconv train`: usage errors in one line, and a real tiny run end to end."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from sepconv_jax import load_model
from sepconv_jax.commands import train as train_command
from tests import synthetic

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}


def _run(*args, timeout=300, cwd=REPO_ROOT):
  return subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *map(str, args)], cwd=cwd,
                        env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, code, message", [
    (["--workdir", "w", "--loss", "l3"], 2, "invalid choice"),
    (["--workdir", "w", "--lr", "-1"], 2, "must be positive"),
    (["--workdir", "w", "--steps", "3", "--epochs", "2"], 2, "not allowed with"),
    (["--workdir", "w", "--data", "/nonexistent/data"], 1, "does not exist"),
    (["--workdir", "w", "--min-scale", "1.5"], 1, "min_scale must be in (0, 1]"),
    (["--workdir", "w", "--alternate-crop-size", "100"], 1, "multiple of 32"),
    (["--workdir", "w", "--decay", "300"], 2, "expected START:END"),
    (["--workdir", "w", "--decay", "300:200"], 1, "end after it starts"),
    (["--workdir", "w", "--final-lr", "1e-5"], 2, "--final-lr needs --decay"),
    (["--workdir", "w", "--precision", "float16"], 2, "invalid choice"),
    (["--workdir", "w", "--max-flow", "-3"], 2, "must be positive"),
    (["--workdir", "w", "--alternate-min-flow", "20"], 1, "needs alternate_crop_size"),
    (["--workdir", "w", "--ema-decay", "1"], 1, "ema_decay must be in (0, 1)"),
    (["--workdir", "w", "--synthetic-objects", "1.5"], 1, "synthetic_objects must be in [0, 1]"),
    (["--workdir", "w", "--prealign", "2"], 2, "must be in [0, 1]"),
    (["--workdir", "w", "--unaligned-sources"], 1, "needs prealign > 0"),
    (["--workdir", "w", "--captured-input"], 1, "needs prealign > 0"),
    (["--workdir", "w", "--captured-input", "--unaligned-sources"], 2, "not allowed with"),
    (["--workdir", "w", "--unaligned-lr-scale", "10"], 1, "unaligned_lr_scale must be"),
    (["--workdir", "w", "--motion-weight", "2", "--loss", "l2"], 1, "only the l1 loss"),
])
def test_usage_errors_are_one_line(tmp_path, capsys, args, code, message):
  # In this process (a new one per case costs the imports, half a minute on 2 cores); the
  # subprocess test below checks that nothing else reaches a real run's stderr.
  try:
    returned = train_command.main([str(tmp_path / "w") if a == "w" else a for a in args])
  except SystemExit as exit_:  # argparse's usage errors
    returned = exit_.code
  assert returned == code
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and "error:" in lines[0] and message in lines[0], lines
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("args, code, message", [
    (["--lr", "-1"], 2, "must be positive"),
    (["--min-scale", "1.5"], 1, "min_scale must be in (0, 1]"),
])
def test_usage_errors_are_one_line_in_a_real_process(tmp_path, args, code, message):
  done = _run("--workdir", tmp_path / "w", *args)
  assert done.returncode == code
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and "error:" in lines[0] and message in lines[0], done.stderr


def test_the_default_data_folder_missing_says_how_to_make_it(tmp_path):
  """`sepconv train --loss l1` with no prepared data (run where there is none)."""
  done = _run("--loss", "l1", cwd=tmp_path)
  assert done.returncode == 1
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and "sepconv prepare" in lines[0], done.stderr
  assert "--out datasets/davis_tfds" in lines[0], done.stderr
  assert not (tmp_path / "runs").exists()


def test_tiny_run_end_to_end(tmp_path):
  data = synthetic.prepare_training_cache(tmp_path / "cache")
  workdir = tmp_path / "run"
  done = _run("--config", "tiny", "--data", data, "--workdir", workdir, "--loss", "l2",
              "--steps", 2, "--min-scale", 0.9, "--warmup-steps", 2,
              "--decay", "2:4", "--final-lr", 1e-4, "--precision", "bfloat16",
              "--full-validation", 1, "--full-validation-gap", 2, "--ema-decay", 0.9,
              "--all-orientations", "--channel-permutation", "--prealign", 0.5,
              "--no-progress")
  assert done.returncode == 0, done.stderr[-2000:]
  assert "trained to step 2" in done.stdout
  assert "step 1/2: loss" in done.stdout  # without a bar: one plain line per log interval
  model, metadata = load_model(workdir / "checkpoints" / "2")
  assert metadata["info"]["loss"] == "l2" and metadata["info"]["step"] == 2
  assert metadata["info"]["train_config"]["precision"] == "bfloat16"
  assert metadata["info"]["train_config"]["ema_decay"] == 0.9
  assert metadata["info"]["train_config"]["all_orientations"] is True
  assert metadata["info"]["train_config"]["channel_permutation"] is True
  assert metadata["info"]["train_config"]["prealign"] == 0.5
  assert "full_psnr" in metadata["info"]["validation"]
  # Errors found after start-up are one line too: existing checkpoints without --resume, and a
  # folder without a prepared cache.
  again = _run("--config", "tiny", "--data", data, "--workdir", workdir, "--steps", 2)
  assert again.returncode == 1 and again.stderr.strip().splitlines()[-1].startswith("error:")
  assert "--resume" in again.stderr
  (tmp_path / "empty").mkdir()
  empty = _run("--config", "tiny", "--data", tmp_path / "empty", "--workdir", tmp_path / "x")
  assert empty.returncode == 1 and "error: no prepared" in empty.stderr
  assert "Traceback" not in empty.stderr + again.stderr


def test_config_choices_mirror_the_library():
  """train.py lists the config names itself (its --help must not import jax): keep them in step."""
  from sepconv_jax.training import configs  # pylint: disable=import-outside-toplevel
  assert tuple(train_command.CONFIGS) == tuple(configs.CONFIGS)
