"""The package as a user installs it: the `sepconv` command on PATH, run from outside the repository
with a `data.py` of the user's own in the working directory; inference without TensorFlow; the
training commands without it; the smoke run of the README on the shipped samples alone."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tomllib

import pytest

from sepconv_jax.inference import media

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLES = REPO_ROOT / "samples"
# The console script pip installs next to the interpreter of this environment.
SEPCONV = pathlib.Path(sys.executable).parent / "sepconv"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}


def _without_tensorflow(tmp_path: pathlib.Path) -> dict[str, str]:
  """An environment whose `import tensorflow` / `import tensorflow_datasets` fail, as they do
  where the `train` extra is not installed (packages on PYTHONPATH shadow the real ones)."""
  blocker = tmp_path / "no_tensorflow"
  for name in ("tensorflow", "tensorflow_datasets"):
    (blocker / name).mkdir(parents=True)
    (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed')\n")
  return {**ENV, "PYTHONPATH": str(blocker)}


def _user_folder(tmp_path: pathlib.Path) -> pathlib.Path:
  """A working directory outside the repository holding a `data.py` and a `data/` of the user's,
  which would shadow a top-level `data` package."""
  folder = tmp_path / "work"
  (folder / "data").mkdir(parents=True)
  (folder / "data.py").write_text("raise RuntimeError('the user data.py was imported')\n")
  (folder / "data" / "__init__.py").write_text("raise RuntimeError('the user data/ was imported')\n")
  return folder


def test_every_package_folder_is_installed():
  """pyproject.toml lists the packages by hand (data/ installs as sepconv_data): none forgotten."""
  setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
  folders = {name: pathlib.Path(setuptools.get("package-dir", {}).get(name, name.replace(".", "/")))
             for name in setuptools["packages"]}
  listed = {folder.as_posix() for folder in folders.values()}
  on_disk = {init.parent.relative_to(REPO_ROOT).as_posix()
             for top in ("pallas_kernels", "sepconv_jax", "data")
             for init in (REPO_ROOT / top).rglob("__init__.py")}
  assert on_disk == listed
  scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
  assert scripts == {"sepconv": "sepconv_jax.commands:main"}


def test_the_command_interpolates_from_outside_the_repo_without_tensorflow(tmp_path):
  assert SEPCONV.is_file(), f"{SEPCONV} is missing: install the package (pip install -e .)"
  work, env = _user_folder(tmp_path), _without_tensorflow(tmp_path)
  version = subprocess.run([SEPCONV, "--version"], cwd=work, env=env, capture_output=True,
                           text=True, timeout=60)
  assert version.returncode == 0 and version.stdout.startswith("sepconv "), version.stderr
  done = subprocess.run([SEPCONV, "interpolate", "--pair", SAMPLES / "street_0.png",
                         SAMPLES / "street_1.png", "--out", "middle.png"], cwd=work, env=env,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  assert media.read_image(work / "middle.png").shape == media.read_image(
      SAMPLES / "street_0.png").shape
  assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["interpolate", "benchmark", "prepare", "train", "export",
                                     "convert"])
def test_every_subcommand_answers_help_and_version(tmp_path, command):
  work = _user_folder(tmp_path)
  for flag, expected in (("--help", "usage:"), ("--version", f"sepconv {command} ")):
    done = subprocess.run([sys.executable, "-m", "sepconv_jax", command, flag], cwd=work, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith(expected), done.stderr[-2000:]


def test_usage_errors_of_the_command_are_one_line(tmp_path):
  for args, message in ((["bogus"], "unknown command 'bogus'"), ([], "usage: sepconv")):
    done = subprocess.run([sys.executable, "-m", "sepconv_jax", *args], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr, done.stderr


@pytest.mark.parametrize("args", [["train", "--workdir", "run"], ["prepare", "--source", str(SAMPLES)]])
def test_training_commands_without_tensorflow_say_what_to_install(tmp_path, args):
  done = subprocess.run([sys.executable, "-m", "sepconv_jax", *args], cwd=tmp_path,
                        env=_without_tensorflow(tmp_path), capture_output=True, text=True,
                        timeout=120)
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 1 and len(lines) == 1, done.stderr
  assert 'pip install "sepconv-jax[train]"' in lines[0] and "error:" in lines[0]
  assert not (tmp_path / "run").exists()


def test_readme_smoke_training_on_the_shipped_samples(tmp_path):
  """`sepconv prepare` on samples/ (one clip: split in time into train and validation), then a
  tiny training run that validates, on crops and on full frames."""
  def sepconv(*args):
    return subprocess.run([SEPCONV, *map(str, args)], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=600)
  prepared = sepconv("prepare", "--source", SAMPLES, "--out", "cache", "--max-patches", 1,
                     "--no-progress")
  assert prepared.returncode == 0, prepared.stderr[-2000:]
  validation = [l for l in prepared.stdout.splitlines() if l.strip().startswith("validation:")]
  assert validation and "kept" in validation[0], prepared.stdout
  assert prepared.stderr.strip() == "", prepared.stderr  # no TFDS notices
  trained = sepconv("train", "--data", "cache", "--config", "tiny", "--steps", 2,
                    "--workdir", "run", "--full-validation", 1, "--no-progress")
  assert trained.returncode == 0, trained.stderr[-2000:]
  assert "step 2: validation PSNR" in trained.stdout and "full frames (1)" in trained.stdout
  assert "deprecated" not in trained.stderr and "did not provide metrics" not in trained.stderr
