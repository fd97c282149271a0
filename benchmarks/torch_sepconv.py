"""An independent PyTorch SepConv, written from the published architecture (not from the Flax code).

The test oracle for the weight converter and the speed benchmarks' PyTorch baseline: its
`state_dict()` has the published key names and shapes (`moduleConv1.0.weight`, ...,
`moduleHorizontal2.7.bias`), so a converted copy of it must produce the same frames as this network. CPU only; the separable local convolution is the plainest
loop over taps, and the padding policies follow the published `estimate()` step by step.

Layout NCHW, frames in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BilinearUpsample(nn.Module):
  """x2 bilinear, align_corners=True, as the published network upsamples."""

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
  return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)


def basic(in_channels: int, out_channels: int) -> nn.Sequential:
  return nn.Sequential(conv3x3(in_channels, out_channels), nn.ReLU(),
                       conv3x3(out_channels, out_channels), nn.ReLU(),
                       conv3x3(out_channels, out_channels), nn.ReLU())


def upsample(channels: int) -> nn.Sequential:
  return nn.Sequential(BilinearUpsample(), conv3x3(channels, channels), nn.ReLU())


def subnet(kernel_size: int) -> nn.Sequential:
  return nn.Sequential(conv3x3(64, 64), nn.ReLU(), conv3x3(64, 64), nn.ReLU(),
                       conv3x3(64, kernel_size), nn.ReLU(), BilinearUpsample(),
                       conv3x3(kernel_size, kernel_size))


def separable_local_conv_loop(image: torch.Tensor, vertical: torch.Tensor,
                              horizontal: torch.Tensor) -> torch.Tensor:
  """out[n,c,y,x] = sum_i sum_j image[n,c,y+i,x+j] * vertical[n,i,y,x] * horizontal[n,j,y,x]."""
  k, height, width = vertical.shape[1:]
  out = image.new_zeros(image.shape[0], image.shape[1], height, width)
  for i in range(k):
    for j in range(k):
      out += image[:, :, i:i + height, j:j + width] * vertical[:, i:i + 1] * horizontal[:, j:j + 1]
  return out


class TorchSepConvNet(nn.Module):
  """The published SepConv network; attribute names give the published state-dict keys."""

  def __init__(self, kernel_size: int = 51):
    super().__init__()
    self.kernel_size = kernel_size
    self.moduleConv1 = basic(6, 32)
    self.moduleConv2 = basic(32, 64)
    self.moduleConv3 = basic(64, 128)
    self.moduleConv4 = basic(128, 256)
    self.moduleConv5 = basic(256, 512)
    self.moduleDeconv5 = basic(512, 512)
    self.moduleDeconv4 = basic(512, 256)
    self.moduleDeconv3 = basic(256, 128)
    self.moduleDeconv2 = basic(128, 64)
    self.moduleUpsample5 = upsample(512)
    self.moduleUpsample4 = upsample(256)
    self.moduleUpsample3 = upsample(128)
    self.moduleUpsample2 = upsample(64)
    self.moduleVertical1 = subnet(kernel_size)
    self.moduleVertical2 = subnet(kernel_size)
    self.moduleHorizontal1 = subnet(kernel_size)
    self.moduleHorizontal2 = subnet(kernel_size)

  def kernel_maps(self, first: torch.Tensor, second: torch.Tensor):
    """(vertical1, horizontal1, vertical2, horizontal2), each (N, K, H, W): all but the op."""
    pool = lambda x: F.avg_pool2d(x, kernel_size=2, stride=2)
    conv1 = self.moduleConv1(torch.cat([first, second], 1))
    conv2 = self.moduleConv2(pool(conv1))
    conv3 = self.moduleConv3(pool(conv2))
    conv4 = self.moduleConv4(pool(conv3))
    conv5 = self.moduleConv5(pool(conv4))
    deconv5 = self.moduleUpsample5(self.moduleDeconv5(pool(conv5)))
    deconv4 = self.moduleUpsample4(self.moduleDeconv4(deconv5 + conv5))
    deconv3 = self.moduleUpsample3(self.moduleDeconv3(deconv4 + conv4))
    deconv2 = self.moduleUpsample2(self.moduleDeconv2(deconv3 + conv3))
    combine = deconv2 + conv2
    return (self.moduleVertical1(combine), self.moduleHorizontal1(combine),
            self.moduleVertical2(combine), self.moduleHorizontal2(combine))

  def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    vertical1, horizontal1, vertical2, horizontal2 = self.kernel_maps(first, second)
    half = self.kernel_size // 2
    first = F.pad(first, [half, half, half, half], mode="replicate")
    second = F.pad(second, [half, half, half, half], mode="replicate")
    return (separable_local_conv_loop(first, vertical1, horizontal1)
            + separable_local_conv_loop(second, vertical2, horizontal2))


def estimate(network: TorchSepConvNet, first: torch.Tensor, second: torch.Tensor,
             padding: str) -> torch.Tensor:
  """The published `estimate()` without its resolution assert: pad, run, crop. (N, 3, H, W)."""
  height, width = first.shape[2:]
  if padding == "paper":
    left = top = right = bottom = network.kernel_size // 2
  elif padding == "improved":
    left = top = right = bottom = 0
  else:
    raise ValueError(padding)
  padded_width = math.ceil((left + width + right) / 128) * 128
  padded_height = math.ceil((top + height + bottom) / 128) * 128
  right = padded_width - width - left
  bottom = padded_height - height - top
  first = F.pad(first, [left, right, top, bottom], mode="replicate")
  second = F.pad(second, [left, right, top, bottom], mode="replicate")
  out = network(first, second)
  return out[:, :, top:top + height, left:left + width]
