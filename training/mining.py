"""Triplet mining inside a batch: batch-hard (online) mining and random triplets.

Ground truth decides which pairs may form a triplet: a *positive* of an anchor
is another image whose position lies within ``positive_distance_m``, a
*negative* one farther than ``negative_distance_m`` (or, for frame-aligned
datasets without positions, the same / a distant place label; see
:mod:`.sampling`). Descriptors decide which
of them are used. Batch-hard mining (Hermans, Beyer and Leibe, "In Defense of
the Triplet Loss for Person Re-Identification", arXiv 2017; the online mining
of SAANE and NetVLAD training) takes for each anchor the positive with the
largest and the negative with the smallest descriptor distance. Random mining
draws one positive and one negative uniformly: the fallback where batch-hard
mining collapses a model (all descriptors alike) or overfits to label noise.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from vl_attention.config import ConfigError
from vl_attention.evaluation.metrics import within_radius_mask

STRATEGIES = ('hard', 'random')


@dataclass(frozen=True)
class Triplets:
    """Row indices into the batch: ``anchor[i]``, ``positive[i]``, ``negative[i]``."""

    anchor: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor

    def __len__(self) -> int:
        """Return the number of triplets."""
        return len(self.anchor)


def descriptor_distances(descriptors: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``(B, B)`` between the rows of ``descriptors``."""
    squared = (descriptors[:, None, :] - descriptors[None, :, :]).pow(2).sum(-1)
    return squared.clamp(min=1e-12).sqrt()


def ground_truth_masks(positions_m: torch.Tensor, *, positive_distance_m: float,
                       negative_distance_m: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Boolean ``(B, B)`` masks of positive pairs (never the image itself) and negative pairs.

    Distances are planar (x, y), as everywhere ground truth is computed
    (:func:`vl_attention.evaluation.metrics.positives`).
    """
    xy_m = positions_m.detach().cpu().double().numpy()[:, :2]
    itself = np.eye(len(xy_m), dtype=bool)
    positive = within_radius_mask(xy_m, xy_m, positive_distance_m) & ~itself
    negative = ~within_radius_mask(xy_m, xy_m, negative_distance_m)
    device = positions_m.device
    return torch.from_numpy(positive).to(device), torch.from_numpy(negative).to(device)


def mine_triplets(descriptors: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, *,
                  strategy: str = 'hard',
                  generator: Optional[torch.Generator] = None) -> Triplets:
    """One triplet per anchor that has a positive and a negative in the batch.

    ``positive`` / ``negative`` are the batch's boolean ``(B, B)`` ground-truth
    masks (:func:`ground_truth_masks`, or a place-label equivalent);
    ``strategy`` is ``'hard'`` (batch-hard) or ``'random'``; ``generator``
    seeds the random draw. Raises ValueError when no anchor has both, which
    means the batch sampler does not put several views of a place in a batch.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f'unknown mining strategy {strategy!r}; known: {list(STRATEGIES)}')
    anchors = torch.nonzero(positive.any(dim=1) & negative.any(dim=1)).flatten()
    if len(anchors) == 0:
        raise ConfigError('no image of the batch has both a positive and a negative; sample '
                          'several views of each place per batch (and several places)')
    positive, negative = positive[anchors], negative[anchors]
    if strategy == 'hard':
        with torch.no_grad():
            distances = descriptor_distances(descriptors.detach())[anchors]
        scores_p = distances.masked_fill(~positive, -1.0)
        scores_n = distances.masked_fill(~negative, float('inf'))
        return Triplets(anchors, scores_p.argmax(dim=1), scores_n.argmin(dim=1))
    return Triplets(anchors, _random_choice(positive, generator),
                    _random_choice(negative, generator))


def _random_choice(mask: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """One uniformly drawn True column per row of a boolean mask."""
    noise = torch.rand(mask.shape, generator=generator, device=mask.device)
    return noise.masked_fill(~mask, -1.0).argmax(dim=1)
