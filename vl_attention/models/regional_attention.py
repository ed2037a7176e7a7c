"""Context-aware regional attention over R-MAC regions (Kim & Yoon, BMVC 2018).

Regions are the R-MAC grid of Tolias, Sicre & Jegou (ICLR 2016): at scale
l = 1..S, squares of side ``floor(2 min(H, W) / (l + 1))`` laid out l (+ an
extra count along the long side chosen for ~40% overlap) per dimension. Each
region's feature f_r is its max-pooled C-vector, L2-normalised; the global
feature g is the MAC of the whole map, L2-normalised. The attention weight of
region r is ``Phi(k_r) = softplus(W_c tanh(W_r k_r + b_r) + b_c)`` with the
context-aware input ``k_r = [f_r; g]``, and the descriptor is the
Phi-weighted mean of the f_r, L2-normalised. With all weights equal it is
sum-pooled R-MAC. Learned PCA-whitening of the result is the preset's
``whitening_dim`` (:class:`~vl_attention.models.whitening.PCAWhitening`).

``context_pooling='mean'`` feeds the attention what the authors' released
code feeds it: the average-pooled region and the average-pooled map, not
normalised (the weighted regions stay max-pooled). Their code also uses
five scales, and trains Phi alone, on a frozen ImageNet trunk, by ImageNet
classification: the Phi-weighted mean of the raw region MACs goes through
the trunk's own ImageNet classifier. The output's ``extras`` carry what that
loss needs (``imagenet_distillation`` in ``vl_attention.training.losses``):
``weighted_region_mac`` (that mean) and ``global_average`` (the map's
average pool, the classifier's usual input).

``region_grid`` says where the grid is laid out. ``feature`` (default) lays
it out on the feature map itself, in cells. ``image`` does what the authors'
released code does: the grid is laid out on the input image, in pixels
(squares of side ``floor(2 min(H_img, W_img) / (l + 1))``), and each pixel
box ``[x0, x1]`` (``x1 = x0 + side - 1``, inclusive) is pooled from the
feature cells ``round(x0 / s) .. round(x1 / s)`` (inclusive, at least one
cell, clipped to the map) with ``s = feature_stride`` (32, their 1/32 spatial
scale; ``round`` halves to even, as theirs). The two grids differ: for a
240 x 320 image and its 8 x 10 stride-32 map, 3 of the 20 boxes (3 scales),
and 3 of 70 (5 scales), are the same. With ``image`` the head needs the input
images (``needs_images``) for their size.

The region grid depends on the feature-map (and image) size and is computed in
Python, so a traced ONNX export bakes in the grid of its input size: the head
sets ``fixed_input_size = True`` and must be exported at a fixed size.
"""

import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from vl_attention.models.outputs import ModelOutput
from vl_attention.models.registry import AGGREGATORS

# What the attention sees: the brief's L2-normalised MACs, or the authors' code's raw means.
CONTEXT_POOLING = ('max', 'mean')
# Where the R-MAC grid is laid out: on the feature map (cells) or on the image (pixels).
REGION_GRIDS = ('feature', 'image')
_POOL = {'max': torch.amax, 'mean': torch.mean}
# Candidate region counts along the long side of the map (Tolias et al.).
_LONG_SIDE_COUNTS = np.arange(2, 8)


def rmac_regions(height, width, *, scales=3, overlap=0.4):
    """R-MAC regions of an ``height x width`` map as ``(top, left, size)`` squares, in cells."""
    if min(height, width) < 1 or scales < 1:
        raise ValueError(f'R-MAC regions need a non-empty map and scales >= 1, got '
                         f'{height}x{width}, scales={scales}')
    short = min(height, width)
    extra = _extra_long_side_regions(height, width, overlap)
    extra_rows = extra if height > width else 0
    extra_columns = extra if width > height else 0
    regions = []
    for level in range(1, scales + 1):
        size = (2 * short) // (level + 1)
        if size < 1:
            continue
        tops = _region_starts(height, size, level + extra_rows)
        lefts = _region_starts(width, size, level + extra_columns)
        regions.extend((top, left, size) for top in tops for left in lefts)
    return regions


def _extra_long_side_regions(height, width, overlap):
    # How many more regions the long side gets so that neighbours overlap by ~``overlap``.
    short, long = min(height, width), max(height, width)
    spacing = (long - short) / (_LONG_SIDE_COUNTS - 1)
    achieved_overlap = (short ** 2 - short * spacing) / short ** 2
    return int(np.argmin(np.abs(achieved_overlap - overlap))) + 1


def image_grid_boxes(image_height, image_width, feature_height, feature_width, *, scales=3,
                     overlap=0.4, feature_stride=32):
    """Feature-cell boxes ``(top, left, bottom, right)`` (end excl.) of the image-grid regions.

    The R-MAC squares of the ``image_height x image_width`` image, each mapped
    to the cells ``round(start / stride) .. round(end / stride)`` with the
    pixel ``end`` inclusive, at least one cell, inside the feature map.
    """
    if feature_stride <= 0 or min(feature_height, feature_width) < 1:
        raise ValueError(f'image-grid regions need feature_stride > 0 and a non-empty map, got '
                         f'feature_stride={feature_stride}, map {feature_height}x{feature_width}')
    boxes = []
    for top, left, size in rmac_regions(image_height, image_width, scales=scales,
                                        overlap=overlap):
        rows = _pixel_span_cells(top, size, feature_stride, feature_height)
        columns = _pixel_span_cells(left, size, feature_stride, feature_width)
        boxes.append((rows[0], columns[0], rows[1], columns[1]))
    return boxes


def _pixel_span_cells(start, size, stride, cells):
    # Pixels start .. start + size - 1 (inclusive) -> cells [first, end); never empty.
    first = round(start / stride)
    count = max(round((start + size - 1) / stride) - first + 1, 1)
    first = min(max(first, 0), cells - 1)
    return first, min(first + count, cells)


def _region_starts(length, size, count):
    half = math.floor(size / 2 - 1)
    step = (length - size) / (count - 1) if count > 1 else 0.0
    starts = (math.floor(half + step * index) - half for index in range(count))
    return [min(max(start, 0), length - size) for start in starts]


@AGGREGATORS.register('regional_attention')
class RegionalAttention(nn.Module):
    """R-MAC regions weighted by a context-aware attention MLP, ``(B, C)`` descriptors.

    ``scales`` S (3), ``overlap`` of the grid (0.4), ``hidden_dim`` the width
    of ``W_r`` (64, as the authors' released code), ``context_pooling`` what
    ``k_r`` is made of (``max``: L2-normalised MACs; ``mean``: raw average pools),
    ``region_grid`` where the grid is laid out (``feature`` | ``image``, see the
    module doc) and ``feature_stride`` the tap's stride for ``image``. Returns
    ``attention['region_weights']`` ``(B, R)``; :meth:`region_boxes` gives the
    matching boxes. ``fixed_input_size``: export at a fixed input size only.
    """

    fixed_input_size = True

    def __init__(self, *, in_channels, scales=3, overlap=0.4, hidden_dim=64,
                 context_pooling='max', region_grid='feature', feature_stride=32, eps=1e-12):
        super().__init__()
        if hidden_dim < 1 or not 0 < overlap < 1:
            raise ValueError(f'regional attention needs hidden_dim >= 1 and 0 < overlap < 1, '
                             f'got hidden_dim={hidden_dim}, overlap={overlap}')
        if context_pooling not in CONTEXT_POOLING:
            raise ValueError(f'regional attention context_pooling must be one of '
                             f'{CONTEXT_POOLING}, got {context_pooling!r}')
        if region_grid not in REGION_GRIDS or feature_stride <= 0:
            raise ValueError(f'regional attention region_grid must be one of {REGION_GRIDS} '
                             f'and feature_stride > 0, got {region_grid!r}, {feature_stride}')
        self.in_channels, self.scales, self.overlap, self.eps = in_channels, scales, overlap, eps
        self.context_pooling = context_pooling
        self.region_grid, self.feature_stride = region_grid, feature_stride
        # the image grid needs the input size: DescriptorModel then passes the images
        self.needs_images = region_grid == 'image'
        self.region_attention = nn.Sequential(
            nn.Linear(2 * in_channels, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, 1),
            nn.Softplus())

    def region_boxes(self, feature_height, feature_width, image_size=None):
        """Region boxes ``(R, 4)`` as ``(top, left, bottom, right)`` feature cells (end excl.).

        ``image_size`` ``(height, width)`` of the input, needed with
        ``region_grid: image``. Multiply by the backbone stride to draw them on
        the input image.
        """
        if self.region_grid == 'image':
            if image_size is None:
                raise ValueError('region_grid: image lays the regions out on the input image: '
                                 'give image_size=(height, width) or call the head with images=')
            boxes = image_grid_boxes(*image_size, feature_height, feature_width,
                                     scales=self.scales, overlap=self.overlap,
                                     feature_stride=self.feature_stride)
        else:
            boxes = [(top, left, top + size, left + size) for top, left, size in
                     rmac_regions(feature_height, feature_width, scales=self.scales,
                                  overlap=self.overlap)]
        return np.array(boxes, dtype=np.int64).reshape(-1, 4)

    def pooled_regions(self, features, pooling='max', image_size=None):
        """Region features ``(B, R, C)``, max- or average-pooled, not normalised."""
        height, width = (int(size) for size in features.shape[-2:])
        pool = _POOL[pooling]
        pooled = [pool(features[:, :, top:bottom, left:right], dim=(-2, -1))
                  for top, left, bottom, right in
                  self.region_boxes(height, width, image_size).tolist()]
        return torch.stack(pooled, dim=1)

    def attention_input(self, features, regions, image_size=None):
        """Return the attention's ``(B, R, C)`` region and ``(B, C)`` context inputs.

        ``regions`` are the normalised MACs, the input of ``context_pooling='max'``.
        """
        if self.context_pooling == 'mean':
            return (self.pooled_regions(features, 'mean', image_size),
                    features.mean(dim=(-2, -1)))
        global_feature = F.normalize(features.amax(dim=(-2, -1)), p=2, dim=-1, eps=self.eps)
        return regions, global_feature

    def region_weights(self, region_features, global_feature):
        """Phi(k_r) for ``(B, R, C)`` regions and the ``(B, C)`` global feature: ``(B, R)``."""
        context = global_feature[:, None, :].expand_as(region_features)
        return self.region_attention(torch.cat([region_features, context], dim=-1))[..., 0]

    def forward(self, features: torch.Tensor, *,
                images: torch.Tensor | None = None) -> ModelOutput:
        """Pool ``(B, C, H, W)`` features (of ``images``, for the image grid) into ``(B, C)``."""
        image_size = None if images is None else tuple(int(size) for size in images.shape[-2:])
        macs = self.pooled_regions(features, 'max', image_size)
        regions = F.normalize(macs, p=2, dim=-1, eps=self.eps)
        weights = self.region_weights(*self.attention_input(features, regions, image_size))
        weighted_mean = (weights[..., None] * regions).sum(dim=1) / \
            weights.sum(dim=1, keepdim=True).clamp(min=self.eps)
        descriptor = F.normalize(weighted_mean, p=2, dim=-1, eps=self.eps)
        extras = {'weighted_region_mac': (weights[..., None] * macs).mean(dim=1),
                  'global_average': features.mean(dim=(-2, -1))}
        return ModelOutput(descriptor=descriptor, attention={'region_weights': weights},
                           extras=extras)
