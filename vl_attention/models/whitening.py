"""Learned PCA-whitening of any descriptor to a chosen dimension (Jegou & Chum, ECCV 2012).

Fitted once on database descriptors (``fit``) and stored as buffers, so it
travels in checkpoints and exports like any other weight.
"""

import torch
from torch import nn
import torch.nn.functional as F


class PCAWhitening(nn.Module):
    """``x -> L2(W (x - mean))``, ``W`` = top ``out_dim`` PCA axes over sqrt(eigenvalue)."""

    def __init__(self, *, in_dim, out_dim, eps=1e-6):
        super().__init__()
        if not 0 < out_dim <= in_dim:
            raise ValueError(f'whitening_dim must be in 1..{in_dim} (the descriptor size), '
                             f'got {out_dim}')
        self.in_dim, self.out_dim, self.eps = in_dim, out_dim, eps
        self.register_buffer('mean', torch.zeros(in_dim))
        self.register_buffer('projection', torch.eye(in_dim)[:, :out_dim].clone())
        self.register_buffer('fitted', torch.tensor(False))

    @torch.no_grad()
    def fit(self, descriptors):
        """Fit mean and whitening projection on ``(N, in_dim)`` descriptors (N >= out_dim + 1)."""
        descriptors = torch.as_tensor(descriptors, dtype=torch.float32)
        if descriptors.ndim != 2 or descriptors.shape[1] != self.in_dim:
            raise ValueError(f'PCA-whitening needs (N, {self.in_dim}) descriptors, got '
                             f'{tuple(descriptors.shape)}')
        if descriptors.shape[0] <= self.out_dim:
            raise ValueError(f'PCA-whitening to {self.out_dim} dimensions needs more than '
                             f'{self.out_dim} descriptors, got {descriptors.shape[0]}')
        mean = descriptors.mean(dim=0)
        centred = descriptors.double() - mean.double()
        covariance = centred.T @ centred / (descriptors.shape[0] - 1)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        order = torch.argsort(eigenvalues, descending=True)[:self.out_dim]
        scale = (eigenvalues[order].clamp(min=0) + self.eps).rsqrt()
        self.mean.copy_(mean)
        self.projection.copy_((eigenvectors[:, order] * scale).float())
        self.fitted.fill_(True)
        return self

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        """Whiten ``(B, in_dim)`` descriptors into unit-norm ``(B, out_dim)``."""
        if not torch.jit.is_tracing() and not bool(self.fitted):
            raise RuntimeError('PCA-whitening is not fitted; fit it on database descriptors '
                               '(PCAWhitening.fit) or load a checkpoint that holds it')
        return F.normalize((descriptors - self.mean) @ self.projection, p=2, dim=-1)
