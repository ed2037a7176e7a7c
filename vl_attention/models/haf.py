"""Hierarchical attention fusion (HAF) over three backbone levels, and its training loss.

Yan, Cui, Chen and Liu, "Hierarchical Attention Fusion for Geo-Localization",
ICASSP 2021. Per level ``l`` (low, mid, high: e.g. VGG16 conv3_2, conv4_3,
conv5_3) with features ``X_l``:

* coupled descriptor/detector (SuperPoint, DeTone et al., CVPRW 2018; as in
  D2-Net, Dusmanu et al., CVPR 2019): ``P_l = W_l X_l`` (1x1 projection);
  local descriptors ``d_ij = P_ij / ||P_ij||``; detection score
  ``s_ij = sum_c ReLU(P_ij^c)``, normalised per image so ``sum_ij s_ij = 1``;
* spatial attention over regions: a small conv net gives a positive map
  ``a_ij = softplus(f(X_l)_ij)``, normalised over space (``sum_ij a_ij = 1``);
* level descriptor, by ``level_pooling``: ``'attention'`` (default)
  ``g_l = L2(sum_ij a_ij d_ij)``, the attention-weighted mean; or
  ``'netvlad'``: NetVLAD over the local descriptors with each position's soft
  assignment weighted by ``a_ij`` (as CRN reweights NetVLAD),
  ``g_l = NetVLAD(d; a)``, ``K * D`` values. Its centroids start from k-means
  over projected local descriptors (:meth:`HierarchicalAttentionFusion.
  initialise_centroids`). The brief we follow does not fix the level
  aggregation; on a frozen trunk trained on day images only, the mean loses to
  plain GeM under night and fog while the NetVLAD form beats it (README,
  Training).

Fusion (our choice among the paper's options): ``g = L2([w_low g_low;
w_mid g_mid; w_high g_high])`` with learnable positive level weights
``w_l = softplus(v_l)`` (initially 1). Concatenation keeps each level's part
of the descriptor readable and adds no projection; PCA-whitening
(``whitening_dim``) reduces the size where needed.

Training loss ``L = w1 L_low + w2 L_mid + w3 L_high`` (0.1 / 0.4 / 0.5), each
a triplet ranking loss ``max(0, m + D(a, p) - D(a, n))`` whose distance
between images x and y is the detection-weighted mean of the local
descriptor distances at corresponding cells:
``D(x, y) = sum_ij s^x_ij s^y_ij ||d^x_ij - d^y_ij|| / sum_ij s^x_ij s^y_ij``.
"""

import math

import torch
from torch import nn
import torch.nn.functional as F

from vl_attention.models.netvlad import NetVLAD
from vl_attention.models.outputs import ModelOutput
from vl_attention.models.registry import AGGREGATORS

LEVELS = ('low', 'mid', 'high')
LEVEL_POOLINGS = ('attention', 'netvlad')
# softplus(SOFTPLUS_ONE) == 1: the level weights start equal.
SOFTPLUS_ONE = math.log(math.e - 1.0)


def normalise_over_space(maps, eps=1e-6):
    """Make non-negative maps ``(B, h, w)`` sum to 1 per image (``eps`` keeps all-zero maps)."""
    maps = maps + eps
    return maps / maps.sum(dim=(-2, -1), keepdim=True)


class LevelHead(nn.Module):
    """One level: coupled local descriptor / detector and spatial attention over regions.

    ``vlad`` is the level's NetVLAD when it pools with ``'netvlad'``, else None.
    """

    def __init__(self, *, in_channels, local_dim, attention_hidden, pooling, clusters):
        super().__init__()
        self.projection = nn.Conv2d(in_channels, local_dim, 1)
        self.spatial_attention = nn.Sequential(
            nn.Conv2d(in_channels, attention_hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(attention_hidden, 1, 1))
        self.vlad = NetVLAD(in_channels=local_dim, clusters=clusters) \
            if pooling == 'netvlad' else None

    def forward(self, features: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(global, local (B, D, h, w), detection (B, h, w), attention (B, h, w))``."""
        projected = self.projection(features)
        local = F.normalize(projected, p=2, dim=1)
        detection = normalise_over_space(F.relu(projected).sum(dim=1))
        attention = normalise_over_space(F.softplus(self.spatial_attention(features))[:, 0])
        if self.vlad is None:
            pooled = F.normalize((local * attention[:, None]).sum(dim=(-2, -1)), p=2, dim=-1)
        else:
            pooled = self.vlad.aggregate(local, self.vlad.soft_assignment(local)
                                         * attention[:, None])
        return pooled, local, detection, attention

    @torch.no_grad()
    def local_descriptors(self, features):
        """Projected local descriptors ``(N, D)`` of raw tap features ``(N, C)``."""
        projection = self.projection.weight
        features = torch.as_tensor(features, dtype=projection.dtype, device=projection.device)
        return self.projection(features[:, :, None, None])[:, :, 0, 0].cpu().numpy()


@AGGREGATORS.register('haf')
class HierarchicalAttentionFusion(nn.Module):
    """HAF head (Yan et al., ICASSP 2021) over three taps ordered shallow -> deep; see module doc.

    Options: ``local_dim`` (local descriptor size D per level),
    ``attention_hidden`` (width of the spatial-attention conv),
    ``level_pooling`` (``'attention'``: the descriptor has ``3 * D`` values;
    ``'netvlad'``: ``3 * clusters * D``) and ``clusters`` (K of each level's
    NetVLAD).
    """

    multi_level = True

    def __init__(self, *, in_channels, local_dim=128, attention_hidden=64,
                 level_pooling='attention', clusters=16):
        super().__init__()
        if len(in_channels) != len(LEVELS):
            raise ValueError(f'haf fuses exactly three levels (taps ordered low, mid, high); '
                             f'the preset gives taps {list(in_channels)}')
        if local_dim < 1 or attention_hidden < 1 or clusters < 1:
            raise ValueError(f'local_dim, attention_hidden and clusters must be >= 1, got '
                             f'{local_dim}, {attention_hidden}, {clusters}')
        if level_pooling not in LEVEL_POOLINGS:
            raise ValueError(f'haf level_pooling must be one of {list(LEVEL_POOLINGS)}, got '
                             f'{level_pooling!r}')
        self.taps = tuple(in_channels)
        self.levels = nn.ModuleList(
            LevelHead(in_channels=channels, local_dim=local_dim,
                      attention_hidden=attention_hidden, pooling=level_pooling,
                      clusters=clusters) for channels in in_channels.values())
        self.level_weights = nn.Parameter(torch.full((len(LEVELS),), SOFTPLUS_ONE))

    @property
    def uses_centroids(self):
        """Whether the levels pool by NetVLAD, whose centroids k-means starts (initialise_head)."""
        return self.levels[0].vlad is not None

    def forward(self, features: dict[str, torch.Tensor]) -> ModelOutput:
        """Fuse ``{tap: (B, C_l, h_l, w_l)}`` into a unit-norm descriptor (see the options)."""
        weights = F.softplus(self.level_weights)
        parts, attention, extras = [], {}, {}
        for index, (tap, level, head) in enumerate(zip(self.taps, LEVELS, self.levels)):
            level_global, local, detection, spatial = head(features[tap])
            parts.append(weights[index] * level_global)
            attention[f'spatial_{tap}'] = spatial
            attention[f'detection_{tap}'] = detection
            extras[f'local_descriptors_{level}'] = local
            extras[f'detection_{level}'] = detection
            extras[f'global_{level}'] = level_global
        descriptor = F.normalize(torch.cat(parts, dim=-1), p=2, dim=-1)
        return ModelOutput(descriptor=descriptor, attention=attention, extras=extras)

    def initialise_centroids(self, tap_features, **kmeans_options):
        """Set each level's NetVLAD centroids by k-means over its projected local descriptors.

        ``tap_features``: raw features ``{tap: (N, C_tap)}`` of every tap (e.g.
        from :func:`~vl_attention.models.netvlad.sample_tap_features`);
        ``kmeans_options`` go to :meth:`NetVLAD.initialise_centroids`. Returns
        ``{tap: (K, D) centroids}``.
        """
        if not self.uses_centroids:
            raise ValueError('haf: only level_pooling: netvlad has centroids to initialise')
        missing = sorted(set(self.taps) - set(tap_features))
        if missing:
            raise ValueError(f'haf: k-means needs local features of every tap; missing '
                             f'{missing}')
        return {tap: head.vlad.initialise_centroids(head.local_descriptors(tap_features[tap]),
                                                    **kmeans_options)
                for tap, head in zip(self.taps, self.levels)}


def weighted_local_distance(local_x, detection_x, local_y, detection_y, eps=1e-12):
    """Detection-weighted mean distance ``(B,)`` of local descriptors at corresponding cells.

    ``local_*``: ``(B, D, h, w)``; ``detection_*``: ``(B, h, w)``. The weight of
    cell ``(i, j)`` is ``s^x_ij s^y_ij``, normalised to sum to 1.
    """
    if local_x.shape != local_y.shape or detection_x.shape != detection_y.shape:
        raise ValueError(f'local descriptors of both images must have the same shape (same '
                         f'input size): {tuple(local_x.shape)} vs {tuple(local_y.shape)}')
    distances = torch.linalg.vector_norm(local_x - local_y, dim=1)
    weights = detection_x * detection_y
    return (weights * distances).sum(dim=(-2, -1)) / weights.sum(dim=(-2, -1)).clamp_min(eps)


class HAFLoss(nn.Module):
    """``w_low L_low + w_mid L_mid + w_high L_high`` of detection-weighted triplet losses.

    Called with the :class:`ModelOutput` of the ``haf`` head for anchor,
    positive and negative batches; returns ``(total, {'low', 'mid', 'high'})``.
    The level losses train the local descriptors and detectors only; the
    spatial attention and level weights shape just the fused descriptor, so
    ``w_global > 0`` adds ``w_global * max(0, m + |g_a - g_p| - |g_a - g_n|)``
    on it (reported as ``'global'``; 0 by default, the paper's loss).
    """

    def __init__(self, *, w_low=0.1, w_mid=0.4, w_high=0.5, margin=0.5, w_global=0.0):
        super().__init__()
        self.level_weights = {'low': float(w_low), 'mid': float(w_mid), 'high': float(w_high)}
        if min(self.level_weights.values()) < 0 or sum(self.level_weights.values()) <= 0:
            raise ValueError(f'HAFLoss level weights must be >= 0 and not all 0, got '
                             f'{self.level_weights}')
        if margin < 0 or w_global < 0:
            raise ValueError(f'HAFLoss margin and w_global must be >= 0, got {margin}, '
                             f'{w_global}')
        self.margin = float(margin)
        self.w_global = float(w_global)

    def level_loss(self, anchor, positive, negative, level):
        """Triplet ranking loss of one level, averaged over the batch."""
        positive_distance = self._distance(anchor, positive, level)
        negative_distance = self._distance(anchor, negative, level)
        return F.relu(self.margin + positive_distance - negative_distance).mean()

    def forward(self, anchor: ModelOutput, positive: ModelOutput, negative: ModelOutput
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the weighted total and the per-level losses."""
        losses = {level: self.level_loss(anchor, positive, negative, level) for level in LEVELS}
        total = sum(self.level_weights[level] * losses[level] for level in LEVELS)
        if self.w_global > 0:
            losses['global'] = F.triplet_margin_loss(anchor.descriptor, positive.descriptor,
                                                     negative.descriptor, margin=self.margin)
            total = total + self.w_global * losses['global']
        return total, losses

    @staticmethod
    def _distance(x, y, level):
        try:
            return weighted_local_distance(
                x.extras[f'local_descriptors_{level}'], x.extras[f'detection_{level}'],
                y.extras[f'local_descriptors_{level}'], y.extras[f'detection_{level}'])
        except KeyError as error:
            raise ValueError(f'HAFLoss needs outputs of the haf head (extras '
                             f'local_descriptors_<level> and detection_<level>); missing '
                             f'{error}') from None
