"""Training data for SepConv: triplets from real video, cached as a TFDS dataset, fed by tf.data.

Modules, in the order the data flows:
  `sources`   find sequences under a folder (DAVIS layout, frame folders, video files) and
              decode their frames (RGB uint8).
  `extract`   consecutive triplets -> jump-cut rejection -> motion-weighted 150x150 patches.
  `flow`      OpenCV DIS optical flow: patch motion, the consistency-checked flows to the middle
              frame that guide the kernels, motion buckets of the full-frame validation, and the
              pre-alignment of input frames (also used at inference: it needs only OpenCV).
  `builder`   the `sepconv_triplets` TFDS builder that caches those patches, split by sequence.
  `prepare`   the command `sepconv prepare --source DIR --out DIR`.
  `pipeline`  tf.data pipelines over the cache: `train_dataset`, `validation_dataset`.

The repository's `data/` folder installs as the package `sepconv_data` (a top-level `data` would
clash with a user's own `data.py`); its modules import each other relatively.

This package imports TensorFlow, OpenCV, NumPy, tqdm and the standard library only, never jax:
the training code passes `jax.process_index()` / `jax.process_count()` in as plain integers.
Nothing here imports TensorFlow at package import time (extraction workers stay light).
"""

import importlib

# The distribution extra that installs what `builder` and `pipeline` need (pyproject.toml).
TRAIN_EXTRA = 'pip install "sepconv-jax[train]"'


def missing_training_packages() -> str | None:
  """None when TensorFlow and tensorflow-datasets import, else the one-line reason and fix.

  Inference installs without them (`pip install sepconv-jax`); data preparation and training
  call this first (it imports both, as they would a moment later), so that a missing extra is
  one `error:` line rather than a traceback.
  """
  missing = []
  for name in ("tensorflow", "tensorflow_datasets"):
    try:
      importlib.import_module(name)
    except ImportError:
      missing.append(name)
  if not missing:
    return None
  return f"this needs {' and '.join(missing)}, which the training extra installs: {TRAIN_EXTRA}"
