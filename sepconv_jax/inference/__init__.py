"""Inference: the `Interpolator` (a model on arrays, `interpolator`), the pair, frame-folder and
video pipelines (`pipelines`), image files (`media`), video files through PyAV (`video`) and
scene-cut detection (`scene`). Imports nothing from training."""
