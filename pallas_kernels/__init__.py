"""The separable local convolution of SepConv, for GPU (Pallas/Triton) and CPU.

The public entry point is `sepconv`; see `pallas_kernels.reference` for the conventions.
"""
