"""Aggregators: pool a feature map into an L2-normalised global descriptor ``(B, D)``."""

from typing import Optional

import torch
from torch import nn
import torch.nn.functional as F

from vl_attention.models.registry import AGGREGATORS


@AGGREGATORS.register('gem')
class GeM(nn.Module):
    """Generalised-mean pooling (Radenovic et al., TPAMI 2018) followed by L2 normalisation.

    ``p = 1`` is average pooling, ``p -> inf`` max pooling; ``learn_p`` makes it
    a trainable parameter. ``whiten=True`` adds the FC whitening layer of the
    VPR-heads comparison, in cirtorch's order: GeM -> L2 -> Linear -> L2. The
    Linear layer sees a unit vector, so the descriptor does not depend on the
    scale of the features and a whitening learned the standard way (on
    L2-normalised GeM vectors) fits it.
    """

    def __init__(self, *, in_channels: int, p: float = 3.0, learn_p: bool = False,
                 eps: float = 1e-6, whiten: bool = False, out_dim: Optional[int] = None) -> None:
        super().__init__()
        if p < 1:
            raise ValueError(f'GeM needs p >= 1, got {p}')
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learn_p)
        self.eps = eps
        self.out_dim = out_dim or in_channels
        self.whitening = nn.Linear(in_channels, self.out_dim) if whiten else None
        if not whiten and self.out_dim != in_channels:
            raise ValueError('out_dim differs from in_channels only with whiten=True')

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Pool ``(B, C, H, W)`` features into unit-norm ``(B, D)`` descriptors."""
        pooled = features.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1))
        descriptor = pooled.pow(1.0 / self.p)
        if self.whitening is not None:
            descriptor = self.whitening(F.normalize(descriptor, p=2, dim=-1))
        return F.normalize(descriptor, p=2, dim=-1)


@AGGREGATORS.register('gap')
class GAP(nn.Module):
    """Global average pooling of L2-normalised local features, then L2 normalisation.

    Each position's C-vector is L2-normalised first, so every location votes
    with equal weight whatever its activation energy; the spatial mean of those
    unit vectors is L2-normalised again (the GAP head of the VPR-heads
    comparison on a truncated ResNet-18).
    """

    def __init__(self, *, in_channels: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.in_channels, self.eps = in_channels, eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Pool ``(B, C, H, W)`` features into unit-norm ``(B, C)`` descriptors."""
        local = F.normalize(features, p=2, dim=1, eps=self.eps)
        return F.normalize(local.mean(dim=(-2, -1)), p=2, dim=-1, eps=self.eps)
