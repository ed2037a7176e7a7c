"""NetVLAD (Arandjelovic et al., CVPR 2016) and CRN (Kim, Dunn & Frahm, CVPR 2017) heads.

NetVLAD: each local feature x_i (a C-vector of the feature map, L2-normalised
first) is softly assigned to K clusters by a 1x1 convolution and a softmax over
clusters, ``a_k(x_i) = softmax_k(w_k . x_i + b_k)``; the descriptor collects the
assignment-weighted residuals to the centroids,
``V(k) = sum_i a_k(x_i) (x_i - c_k)``, L2-normalises each cluster block
(intra-normalisation), flattens the K x C matrix and L2-normalises it again.
Initialised from k-means centroids c_k, ``w_k = 2 alpha c_k`` and
``b_k = -alpha ||c_k||^2``, so the assignment is
``softmax_k(-alpha ||x_i - c_k||^2)``: hard nearest-centroid as alpha grows.

CRN multiplies each position's soft assignment by a contextual reweighting
mask m_i computed from the (raw) feature map: average-pool to half size,
3x3 (32), 5x5 (32) and 7x7 (20) convolutions with ReLU, concatenated,
accumulated by a 1x1 convolution into one map followed by a ReLU (as the
authors' prototxt: the mask is a non-negative weight, so it can never flip a
residual's sign), bilinearly upsampled back to the feature size:
``V(k) = sum_i m_i a_k(x_i) (x_i - c_k)``.

Adapted NetVLAD (``adapted_netvlad``) puts a learned 1x1 convolution (identity
at the start) in front of NetVLAD, so a head trained on a frozen trunk can
re-mix the trunk's local features for appearance change; its ``weights``
option loads a trained head (``shipped:<name>``, see
:mod:`vl_attention.models.weights`).
"""

import logging

import faiss
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from vl_attention.config import ConfigError
from vl_attention.models.modes import evaluating
from vl_attention.models.outputs import ModelOutput
from vl_attention.models.registry import AGGREGATORS
from vl_attention.models.weights import is_shipped, read_shipped_weights, read_state_dict, \
    WeightsError

LOG = logging.getLogger(__name__)


@AGGREGATORS.register('netvlad')
class NetVLAD(nn.Module):
    """NetVLAD pooling of a ``(B, C, H, W)`` map into a unit-norm ``(B, K*C)`` descriptor.

    ``clusters`` K (64 in the paper); ``alpha`` the assignment sharpness used
    by :meth:`set_centroids`; ``normalize_input`` L2-normalises each local
    feature first, as the authors' layer does. The soft assignment is returned
    as ``attention['assignment']`` ``(B, K, H, W)``.
    """

    uses_centroids = True   # k-means starts them (training.loop.initialise_head)

    def __init__(self, *, in_channels, clusters=64, alpha=100.0, normalize_input=True):
        super().__init__()
        if clusters < 1 or alpha <= 0:
            raise ValueError(f'NetVLAD needs clusters >= 1 and alpha > 0, got clusters='
                             f'{clusters}, alpha={alpha}')
        self.in_channels, self.clusters = in_channels, clusters
        self.alpha, self.normalize_input = float(alpha), normalize_input
        self.assignment = nn.Conv2d(in_channels, clusters, kernel_size=1, bias=True)
        # Until k-means sets them, random centroids and a default-initialised
        # (hence soft, trainable) assignment, as common NetVLAD code starts.
        self.centroids = nn.Parameter(torch.rand(clusters, in_channels))

    @property
    def descriptor_dim(self):
        """Return K * C, the descriptor length."""
        return self.clusters * self.in_channels

    def local_features(self, features):
        """Local features as the assignment sees them (L2-normalised per position if set)."""
        return F.normalize(features, p=2, dim=1) if self.normalize_input else features

    def soft_assignment(self, local_features):
        """Softmax over clusters of the 1x1 convolution, ``(B, K, H, W)``."""
        return self.assignment(local_features).softmax(dim=1)

    def aggregate(self, local_features, weights):
        """Weighted residual sums ``(B, K, C)``, intra-normalised, flattened, L2-normalised."""
        flat_features = local_features.flatten(2)                  # (B, C, N)
        flat_weights = weights.flatten(2)                          # (B, K, N)
        weighted_sums = flat_weights @ flat_features.transpose(1, 2)
        residuals = weighted_sums - flat_weights.sum(dim=-1, keepdim=True) * self.centroids
        intra_normalised = F.normalize(residuals, p=2, dim=-1)
        return F.normalize(intra_normalised.flatten(1), p=2, dim=-1)

    def forward(self, features: torch.Tensor) -> ModelOutput:
        """Pool ``(B, C, H, W)`` features; return descriptor and soft assignment."""
        local_features = self.local_features(features)
        assignment = self.soft_assignment(local_features)
        descriptor = self.aggregate(local_features, assignment)
        return ModelOutput(descriptor=descriptor, attention={'assignment': assignment})

    @torch.no_grad()
    def set_centroids(self, centroids):
        """Set centroids c_k and the assignment ``w_k = 2 alpha c_k``, ``b_k = -alpha |c_k|^2``."""
        centroids = torch.as_tensor(np.asarray(centroids), dtype=torch.float32)
        if tuple(centroids.shape) != (self.clusters, self.in_channels):
            raise ValueError(f'NetVLAD centroids must be ({self.clusters}, {self.in_channels}),'
                             f' got {tuple(centroids.shape)}')
        self.centroids.copy_(centroids)
        self.assignment.weight.copy_((2.0 * self.alpha * centroids)[:, :, None, None])
        self.assignment.bias.copy_(-self.alpha * centroids.pow(2).sum(dim=1))
        return self

    def initialise_centroids(self, features, *, iterations=25, seed=1234):
        """Run k-means (FAISS) on local features ``(N, C)`` and set the centroids from it.

        ``features`` are raw backbone features (e.g. from
        :func:`sample_local_features`); they are normalised here like the
        forward pass does. Returns the ``(K, C)`` centroids.
        """
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.in_channels:
            raise ValueError(f'k-means needs local features (N, {self.in_channels}), got '
                             f'{features.shape}')
        if len(features) < self.clusters:
            raise ConfigError(f'k-means for {self.clusters} clusters needs at least '
                              f'{self.clusters} local features, got {len(features)}; sample '
                              'more images or positions')
        local = self.local_features(torch.from_numpy(features)[:, :, None, None])
        local = np.ascontiguousarray(local[:, :, 0, 0].numpy())
        kmeans = faiss.Kmeans(self.in_channels, self.clusters, niter=iterations, seed=seed,
                              verbose=False)
        kmeans.train(local)
        LOG.info('NetVLAD: %d centroids from k-means over %d local features', self.clusters,
                 len(local))
        self.set_centroids(kmeans.centroids)
        return kmeans.centroids


@AGGREGATORS.register('crn')
class CRN(NetVLAD):
    """NetVLAD whose soft assignment is reweighted by a learned contextual mask (CRN).

    The mask is ``attention['context']`` ``(B, H, W)``, at the feature map's
    size; its accumulation bias starts at 1 so an untrained CRN starts close to
    plain NetVLAD (the paper fine-tunes CRN from a trained NetVLAD).
    """

    def __init__(self, *, in_channels, clusters=64, alpha=100.0, normalize_input=True):
        super().__init__(in_channels=in_channels, clusters=clusters, alpha=alpha,
                         normalize_input=normalize_input)
        self.context_attention = ContextualReweighting(in_channels=in_channels)

    def forward(self, features: torch.Tensor) -> ModelOutput:
        """Pool ``(B, C, H, W)`` features with the reweighted assignment."""
        local_features = self.local_features(features)
        assignment = self.soft_assignment(local_features)
        mask = self.context_attention(features)
        descriptor = self.aggregate(local_features, assignment * mask)
        return ModelOutput(descriptor=descriptor,
                           attention={'assignment': assignment, 'context': mask[:, 0]})


@AGGREGATORS.register('adapted_netvlad')
class AdaptedNetVLAD(nn.Module):
    """A 1x1 convolution (``adapter``) then NetVLAD (``vlad``): ``(B, C, H, W)`` -> ``(B, K*C')``.

    ``adapter_channels`` C' (0: C, identity start) and ``clusters`` K size the
    descriptor. ``weights``: ``'none'`` (identity adapter, random centroids
    until :meth:`initialise_centroids`), ``'shipped:<name>'`` (a head shipped
    in the package, sha256-checked) or a state-dict path of this head.
    """

    uses_centroids = True

    def __init__(self, *, in_channels, clusters=32, alpha=100.0, adapter_channels=0,
                 weights='none'):
        super().__init__()
        out_channels = int(adapter_channels) or in_channels
        self.adapter = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=True)
        if out_channels == in_channels:
            with torch.no_grad():
                self.adapter.weight.copy_(torch.eye(in_channels)[:, :, None, None])
                self.adapter.bias.zero_()
        self.vlad = NetVLAD(in_channels=out_channels, clusters=clusters, alpha=alpha)
        self.weights = str(weights)
        if self.weights != 'none':
            self._load(self.weights)

    def _load(self, weights):
        state = read_shipped_weights(weights) if is_shipped(weights) else read_state_dict(weights)
        try:
            self.load_state_dict(state)
        except RuntimeError as error:
            raise WeightsError(f'head weights {weights} do not fit adapted_netvlad with these '
                               f'options (clusters={self.vlad.clusters}, adapter_channels='
                               f'{self.vlad.in_channels}): {error}') from None

    def pretrained_modules(self):
        """Return the submodules a weights file gave (all of them, or none)."""
        return ('adapter', 'vlad') if self.weights != 'none' else ()

    @property
    def descriptor_dim(self):
        """Return K * C', the descriptor length."""
        return self.vlad.descriptor_dim

    @property
    def clusters(self):
        """Return K, NetVLAD's number of centroids."""
        return self.vlad.clusters

    @property
    def centroids(self):
        """Return NetVLAD's ``(K, C')`` centroids, in the adapted feature space."""
        return self.vlad.centroids

    def set_centroids(self, centroids):
        """Set NetVLAD's ``(K, C')`` centroids (adapted feature space)."""
        self.vlad.set_centroids(centroids)
        return self

    def forward(self, features: torch.Tensor) -> ModelOutput:
        """Adapt ``(B, C, H, W)`` features and pool them with NetVLAD."""
        return self.vlad(self.adapter(features))

    @torch.no_grad()
    def initialise_centroids(self, features, *, iterations=25, seed=1234):
        """K-means of the adapted local features ``(N, C)`` (raw trunk features) sets centroids."""
        local = torch.as_tensor(np.asarray(features, dtype=np.float32))
        adapted = self.adapter(local[:, :, None, None])[:, :, 0, 0].numpy()
        return self.vlad.initialise_centroids(adapted, iterations=iterations, seed=seed)


class ContextualReweighting(nn.Module):
    """CRN's mask: half-size average pool, 3/5/7 context filters, 1x1 accumulation, ReLU, upsample.

    Bilinear upsampling mixes non-negative values with non-negative weights, so
    the mask stays >= 0.
    """

    FILTERS = ((3, 32), (5, 32), (7, 20))   # (kernel size, output channels), from the paper

    def __init__(self, *, in_channels):
        super().__init__()
        self.context_filters = nn.ModuleList(
            nn.Conv2d(in_channels, width, kernel_size=size, padding=size // 2)
            for size, width in self.FILTERS)
        self.accumulation = nn.Conv2d(sum(width for _, width in self.FILTERS), 1, 1)
        with torch.no_grad():
            self.accumulation.bias.fill_(1.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return the reweighting mask ``(B, 1, H, W)`` for ``(B, C, H, W)`` features."""
        pooled = F.avg_pool2d(features, kernel_size=2)
        context = torch.cat([F.relu(conv(pooled)) for conv in self.context_filters], dim=1)
        mask = F.relu(self.accumulation(context))
        return F.interpolate(mask, size=features.shape[-2:], mode='bilinear',
                             align_corners=False)


@torch.no_grad()
def sample_tap_features(model, image_batches, *, per_image=64, max_features=50_000,
                        seed=1234):
    """Sample raw local features ``{tap: (N, C_tap)}`` from every tap of a model over batches.

    ``model`` is a :class:`~vl_attention.models.descriptor.DescriptorModel`;
    ``image_batches`` yields normalised ``(B, 3, H, W)`` tensors. Up to
    ``per_image`` positions are drawn from each image and tap, at most
    ``max_features`` per tap (sampling stops once the first tap has them). The
    result feeds ``initialise_centroids`` of NetVLAD-type heads.
    """
    generator = torch.Generator().manual_seed(seed)
    samples = {tap: [] for tap in model.taps}
    count = 0
    with evaluating(model):
        for images in image_batches:
            features = model.backbone(images)
            for tap in model.taps:
                for local in features[tap].flatten(2).transpose(1, 2):   # (H*W, C) per image
                    rows = torch.randperm(len(local), generator=generator)[:per_image]
                    samples[tap].append(local[rows])
            count = sum(len(local) for local in samples[model.taps[0]])
            if count >= max_features:
                break
    if not count:
        raise ConfigError('no images to sample local features from')
    return {tap: torch.cat(local)[:max_features].cpu().numpy().astype(np.float32)
            for tap, local in samples.items()}


def sample_local_features(model, image_batches, *, per_image=64, max_features=50_000,
                          seed=1234):
    """Sample raw local features ``(N, C)`` from a model's head tap over image batches.

    The first tap of :func:`sample_tap_features`; the result feeds
    :meth:`NetVLAD.initialise_centroids`.
    """
    return sample_tap_features(model, image_batches, per_image=per_image,
                               max_features=max_features, seed=seed)[model.taps[0]]
