"""Training data for SepConv: triplets from real video, cached as a TFDS dataset, fed by tf.data.

Modules, in the order the data flows:
  `data.sources`   find sequences under a folder (DAVIS layout, frame folders, video files) and
                   decode their frames (RGB uint8).
  `data.extract`   consecutive triplets -> jump-cut rejection -> motion-weighted 150x150 patches.
  `data.builder`   the `sepconv_triplets` TFDS builder that caches those patches, split by sequence.
  `data.prepare`   the command `python -m data.prepare --source DIR --out DIR`.
  `data.pipeline`  tf.data pipelines over the cache: `train_dataset`, `validation_dataset`.

This package imports TensorFlow, OpenCV, NumPy, tqdm and the standard library only, never jax:
the training code passes `jax.process_index()` / `jax.process_count()` in as plain integers.
Nothing here imports TensorFlow at package import time (extraction workers stay light).
"""
