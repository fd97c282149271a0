"""Evaluation: scores of a frame against the truth and the baselines (`scoring`, NumPy), the
standard sets as triplets (`datasets`) and the loop over a set (`runner`). (The in-graph metrics that
training validates with are `sepconv_jax.training.metrics`.)"""
