"""Reusable attention blocks of CBAM (Woo, Park, Lee and Kweon, ECCV 2018).

"CBAM: Convolutional Block Attention Module":

* Channel attention: ``M_c(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))``, one
  weight per channel, the MLP (C -> C/r -> C, ReLU between) shared by both
  pooled vectors.
* Spatial attention: ``M_s(F) = sigmoid(conv_7x7([mean_c(F); max_c(F)]))``, one
  weight per position from the channel-wise average and maximum maps.

Both return the weights, not the reweighted features, so that a head can
share one channel attention between several streams (SAANE) or apply one
map to another tensor than the one it was computed on.
"""

import torch
from torch import nn


class ChannelAttention(nn.Module):
    """Channel weights ``(B, C)`` in (0, 1): sigmoid of a shared MLP over avg- and max-pooling."""

    def __init__(self, *, channels, reduction=16):
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f'channel attention needs channels >= 1 and reduction >= 1, '
                             f'got channels={channels}, reduction={reduction}')
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, channels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Weigh the channels of ``(B, C, H, W)`` features; returns ``(B, C)``."""
        average = features.mean(dim=(-2, -1))
        maximum = features.amax(dim=(-2, -1))
        return torch.sigmoid(self.mlp(average) + self.mlp(maximum))


class SpatialAttention(nn.Module):
    """Spatial weights ``(B, 1, H, W)`` in (0, 1) from ``[channel mean; channel max]``."""

    def __init__(self, *, kernel_size=7):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'spatial attention needs an odd kernel_size, got {kernel_size}')
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Weigh the positions of ``(B, C, H, W)`` features; returns ``(B, 1, H, W)``."""
        pooled = torch.cat([features.mean(dim=1, keepdim=True),
                            features.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Channel then spatial attention applied in sequence (the CBAM block itself)."""

    def __init__(self, *, channels, reduction=16, kernel_size=7):
        super().__init__()
        self.channel_attention = ChannelAttention(channels=channels, reduction=reduction)
        self.spatial_attention = SpatialAttention(kernel_size=kernel_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Refine ``(B, C, H, W)`` features: ``F' = M_c(F) F``, then ``F'' = M_s(F') F'``."""
        refined = features * self.channel_attention(features)[:, :, None, None]
        return refined * self.spatial_attention(refined)
