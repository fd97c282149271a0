"""The network: the SepConv U-Net with its kernel subnets (`model`), the padding that makes any
frame size fit it (`padding`), model and training checkpoints (`checkpoint`), the published
PyTorch weights (`convert`) and compact exports for shipping (`export`)."""
