"""Training: configurations as code (`configs`), losses (`losses`, `vgg`), the pure state and
jitted steps (`steps`), the in-graph validation metrics (`metrics`) and the loop with its I/O (`loop`: data, checkpoints, validation,
TensorBoard)."""
