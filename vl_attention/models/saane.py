"""SAANE: semantically-aware attentive neural embeddings.

Seymour, Sikka, Chiu, Samarasekera and Kumar, "Semantically-Aware Attentive
Neural Embeddings for Image-based Visual Localization", BMVC 2019.

Two streams describe the image at the appearance features' resolution
``(h, w)``: the appearance stream ``A`` (mid-level backbone features) and the
semantic stream ``S`` (per-pixel class scores of a segmentation network, or an
external class map, resized to ``(h, w)``).

* Modality fusion: ``P_a = W_a A`` and ``P_s = W_s S`` (1x1 projections to
  ``C`` channels), ``F = P_a + P_s``.
* Multimodal attention: ONE channel attention shared by both modalities,
  ``m_c = sigmoid(MLP(avgpool F) + MLP(maxpool F))``; on the channel-refined
  map ``F' = m_c F`` each modality has its own 7x7 spatial attention
  ``m_a = SA_a([mean_c F'; max_c F'])`` and ``m_s = SA_s([mean_c F'; max_c F'])``.
* Attended features fused again: ``G = m_c m_a P_a + m_c m_s P_s``.
* Spatial pyramid pooling of ``G`` over ``l x l`` grids (levels ``(1, 2, 4)``),
  concatenated: ``C * sum(l^2)`` values; L2-normalised; scaled by ``alpha``.

The scale ``alpha`` (default 10) sharpens a softmax/ranking loss during
training but makes the vector non-unit; the model contract is a unit-norm
descriptor, so the head returns the unit-norm descriptor and exposes
``alpha * descriptor`` as ``extras['scaled_descriptor']`` for the loss (the
ranking of neighbours is the same for both).
"""

import logging
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F
import torchvision

from vl_attention.config import ConfigError
from vl_attention.models.attention_blocks import ChannelAttention, SpatialAttention
from vl_attention.models.outputs import ModelOutput
from vl_attention.models.registry import AGGREGATORS
from vl_attention.models.weights import read_state_dict, WeightsError

logger = logging.getLogger(__name__)

CLASS_MAP = 'class_map'
# torchvision's segmentation networks are trained on ImageNet-normalised input.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POOLINGS = {'max': lambda cell: cell.amax(dim=(-2, -1)),
            'avg': lambda cell: cell.mean(dim=(-2, -1))}


def segmentation_network_names():
    """Names of torchvision's segmentation model builders (``lraspp_mobilenet_v3_large``, ...)."""
    return sorted(torchvision.models.list_models(module=torchvision.models.segmentation))


def build_segmentation_network(*, name, n_classes, weights='none'):
    """Build torchvision segmentation model ``name`` without downloading anything.

    ``weights``: ``'none'`` (random) or the path of a state dict of that model.
    """
    known = segmentation_network_names()
    if name not in known:
        raise ValueError(f'unknown semantic_network {name!r}; use {CLASS_MAP!r} or one of '
                         f"torchvision's segmentation models: {known}")
    builder = getattr(torchvision.models.segmentation, name)
    network = builder(weights=None, weights_backbone=None, num_classes=n_classes)
    if weights != 'none':
        _load_segmentation_weights(network, name, weights)
    return network


def _load_segmentation_weights(network, name, weights):
    if not Path(str(weights)).is_file():
        raise WeightsError(f"semantic_weights {weights!r} is neither 'none' nor an existing "
                           f"file; give the path of a state dict of torchvision's {name} "
                           f'(no segmentation weights ship offline)')
    try:
        network.load_state_dict(read_state_dict(weights))
    except RuntimeError as error:
        raise WeightsError(f"{weights} is not a state dict of torchvision's {name} with the "
                           f'configured n_classes: {error}') from None
    logger.info('semantic network %s: loaded %s', name, weights)


def class_map_scores(class_map, *, n_classes, batch):
    """External class map -> per-class scores ``(B, n_classes, H, W)``.

    ``class_map`` is ``(B, H, W)`` integer labels (one-hot encoded here) or
    ``(B, n_classes, H, W)`` scores (used as they are).
    """
    if class_map.dim() not in (3, 4) or class_map.shape[0] != batch:
        raise ValueError(f'class_map must be (B, H, W) labels or (B, n_classes, H, W) scores '
                         f'with B = {batch}, got shape {tuple(class_map.shape)}')
    if class_map.dim() == 4:
        if class_map.shape[1] != n_classes:
            raise ValueError(f'class_map scores have {class_map.shape[1]} channels, the head '
                             f'was built with n_classes={n_classes}')
        return class_map.float()
    if class_map.is_floating_point():
        raise ValueError('class_map labels (B, H, W) must be an integer tensor')
    if int(class_map.min()) < 0 or int(class_map.max()) >= n_classes:
        raise ValueError(f'class_map labels must lie in [0, {n_classes}); got '
                         f'[{int(class_map.min())}, {int(class_map.max())}] (map ignore labels '
                         f'to a class or raise n_classes)')
    return F.one_hot(class_map.long(), n_classes).permute(0, 3, 1, 2).float()


def _cell_bounds(size, cells):
    # The cells of adaptive pooling: [floor(i n / k), ceil((i + 1) n / k)).
    return [(i * size // cells, -(-(i + 1) * size // cells)) for i in range(cells)]


def spatial_pyramid_pool(features, *, levels=(1, 2, 4), pooling='max'):
    """Pool ``(B, C, H, W)`` over ``l x l`` grids per level; returns ``(B, C * sum(l^2))``.

    Equal to concatenating ``adaptive_{max,avg}_pool2d(features, l).flatten(1)``,
    written with slices because ONNX cannot export adaptive pooling to a grid
    that does not divide the map. The cell bounds are Python integers, so a
    traced (ONNX) graph is fixed to the map size it was exported at, as the
    export contract (one input size per model card) already is.
    """
    reduce = POOLINGS[pooling]
    height, width = (int(size) for size in features.shape[-2:])
    pooled = []
    for level in levels:
        cells = [reduce(features[:, :, top:bottom, left:right])
                 for top, bottom in _cell_bounds(height, level)
                 for left, right in _cell_bounds(width, level)]
        pooled.append(torch.stack(cells, dim=-1).flatten(1))
    return torch.cat(pooled, dim=1)


class SemanticStream(nn.Module):
    """Per-class scores at the appearance resolution from a segmentation network or class map."""

    def __init__(self, *, network, n_classes, weights, freeze, image_mean, image_std):
        super().__init__()
        self.n_classes = n_classes
        self.frozen = freeze
        self.network = None
        if network != CLASS_MAP:
            self.network = build_segmentation_network(name=network, n_classes=n_classes,
                                                      weights=weights)
            if freeze:
                self.network.requires_grad_(False).eval()
        # images arrive normalised for the backbone; re-normalise them for the network.
        scale = torch.tensor(image_std) / torch.tensor(IMAGENET_STD)
        shift = (torch.tensor(image_mean) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(
            IMAGENET_STD)
        self.register_buffer('input_scale', scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer('input_shift', shift.view(1, 3, 1, 1), persistent=False)

    def train(self, mode=True):
        """Switch train/eval mode; a frozen segmentation network stays in eval mode."""
        super().train(mode)
        if self.network is not None and self.frozen:
            self.network.eval()
        return self

    def forward(self, images: torch.Tensor, size: tuple[int, ...],
                class_map: torch.Tensor | None = None) -> torch.Tensor:
        """Class scores ``(B, n_classes, h, w)`` for images ``(B, 3, H, W)``, ``size = (h, w)``."""
        if self.network is None:
            if class_map is None:
                raise ConfigError('semantic_network: class_map needs the per-pixel class map: '
                                  'call model.outputs(images, class_map=labels_or_scores)')
            scores = class_map_scores(class_map.to(images.device), n_classes=self.n_classes,
                                      batch=images.shape[0])
            # area resizing keeps every pixel's vote: class fractions per feature cell
            return F.interpolate(scores, size=size, mode='area')
        if class_map is not None:
            raise ValueError('a class_map was given but semantic_network is a network; set '
                             'semantic_network: class_map to use external class maps')
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            logits = self.network(images * self.input_scale + self.input_shift)['out']
        scores = logits.softmax(dim=1)
        return F.interpolate(scores, size=size, mode='bilinear', align_corners=False)


@AGGREGATORS.register('saane')
class SAANE(nn.Module):
    """SAANE head (Seymour et al., BMVC 2019): appearance + semantic streams, see the module doc.

    Options: ``semantic_network`` (a torchvision segmentation builder name or
    ``'class_map'``), ``semantic_weights`` (``'none'`` or a state-dict path),
    ``freeze_semantic``, ``n_classes``, ``channels`` (C of the fused map;
    default ``in_channels``), ``reduction`` (channel-attention MLP),
    ``spatial_kernel``, ``spp_levels``, ``spp_pooling`` (``'max'`` or
    ``'avg'``), ``alpha`` and ``image_mean`` / ``image_std`` (the
    normalisation of the images the model receives, i.e. the backbone's).
    """

    needs_images = True
    # The pyramid's cell bounds are traced as constants for the export size.
    fixed_input_size = True

    def __init__(self, *, in_channels, semantic_network='lraspp_mobilenet_v3_large',
                 semantic_weights='none', freeze_semantic=True, n_classes=21, channels=None,
                 reduction=16, spatial_kernel=7, spp_levels=(1, 2, 4), spp_pooling='max',
                 alpha=10.0, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD):
        super().__init__()
        _check_options(spp_levels=spp_levels, spp_pooling=spp_pooling, alpha=alpha,
                       n_classes=n_classes)
        channels = channels or in_channels
        self.semantic_stream = SemanticStream(
            network=semantic_network, n_classes=n_classes, weights=semantic_weights,
            freeze=freeze_semantic, image_mean=tuple(image_mean), image_std=tuple(image_std))
        self.appearance_projection = nn.Conv2d(in_channels, channels, 1)
        self.semantic_projection = nn.Conv2d(n_classes, channels, 1)
        self.channel_attention = ChannelAttention(channels=channels, reduction=reduction)
        self.spatial_attention_appearance = SpatialAttention(kernel_size=spatial_kernel)
        self.spatial_attention_semantic = SpatialAttention(kernel_size=spatial_kernel)
        self._semantic_weights_loaded = semantic_weights != 'none'
        self.spp_levels = tuple(int(level) for level in spp_levels)
        self.spp_pooling = spp_pooling
        self.alpha = float(alpha)
        self.descriptor_dim = channels * sum(level * level for level in self.spp_levels)

    def pretrained_modules(self):
        """Submodules whose weights come from a file (the semantic network given a state dict)."""
        return ('semantic_stream',) if self._semantic_weights_loaded else ()

    def forward(self, features: torch.Tensor, *, images: torch.Tensor,
                class_map: torch.Tensor | None = None) -> ModelOutput:
        """Describe appearance features ``(B, C_in, h, w)`` and their images ``(B, 3, H, W)``."""
        semantic_scores = self.semantic_stream(images, features.shape[-2:], class_map)
        appearance = self.appearance_projection(features)
        semantic = self.semantic_projection(semantic_scores)
        fused = appearance + semantic
        channel = self.channel_attention(fused)[:, :, None, None]
        refined = fused * channel
        spatial_appearance = self.spatial_attention_appearance(refined)
        spatial_semantic = self.spatial_attention_semantic(refined)
        attended = (appearance * channel * spatial_appearance
                    + semantic * channel * spatial_semantic)
        pooled = spatial_pyramid_pool(attended, levels=self.spp_levels, pooling=self.spp_pooling)
        descriptor = F.normalize(pooled, p=2, dim=-1)
        return ModelOutput(
            descriptor=descriptor,
            attention={'channel': channel.flatten(1),
                       'spatial_appearance': spatial_appearance[:, 0],
                       'spatial_semantic': spatial_semantic[:, 0]},
            extras={'scaled_descriptor': self.alpha * descriptor,
                    'semantic_scores': semantic_scores})


def _check_options(*, spp_levels, spp_pooling, alpha, n_classes):
    if not spp_levels or any(int(level) < 1 for level in spp_levels):
        raise ValueError(f'spp_levels must be grid sizes >= 1, e.g. [1, 2, 4]; got {spp_levels}')
    if spp_pooling not in POOLINGS:
        raise ValueError(f'spp_pooling must be one of {sorted(POOLINGS)}, got {spp_pooling!r}')
    if alpha <= 0:
        raise ValueError(f'alpha (descriptor scale) must be > 0, got {alpha}')
    if n_classes < 1:
        raise ValueError(f'n_classes must be >= 1, got {n_classes}')
