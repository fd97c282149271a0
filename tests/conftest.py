"""What every test needs: a quiet TensorFlow that never takes a GPU, and the Pallas run mode."""

from __future__ import annotations

import os
import pathlib

# TensorFlow (tf.data) shares the machine with JAX: keep its logs quiet and its hands off any GPU.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# pytest-xdist's workers (pyproject's addopts) share any GPU: none takes 75% of it up front.
if "PYTEST_XDIST_WORKER" in os.environ:
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def pytest_configure(config):
  try:
    import tensorflow as tf
  except ImportError:  # the kernel tests do not need TensorFlow
    return
  tf.config.set_visible_devices([], "GPU")


@pytest.fixture(scope="session")
def on_gpu() -> bool:
  return jax.default_backend() == "gpu"


@pytest.fixture(scope="session")
def interpret(on_gpu) -> bool:
  """Pallas kernels run compiled on a GPU and in interpret mode (XLA loops) on CPU."""
  return not on_gpu


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """`../shared/data` (real frames and videos); tests that need it skip clearly without it."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"shared data folder not found at {SHARED_DATA}")
  return SHARED_DATA
