"""Pretrained VPR models people already have: CosPlace, EigenPlaces, NetVLAD Pitts30k, MixVPR.

Their published checkpoints load into this package's backbone + head layout,
by key renaming only, from a local file or the torch hub cache
(``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``);
nothing is ever downloaded. A preset names the file in ``checkpoint:`` (a bare
file name is looked up in the hub cache); :func:`read_model_checkpoint`
recognises the upstream layout by its keys:

* CosPlace / EigenPlaces (Berton et al., CVPR 2022 / ICCV 2023; torch.hub
  ``gmberton/cosplace``, ``gmberton/eigenplaces``): a torchvision ResNet
  without pooling and fc as ``backbone.{0,1,4,5,6,7}`` (conv1, bn1,
  layer1..4) and ``aggregation`` = L2-norm per position, GeM (``aggregation.1.p``),
  flatten, Linear (``aggregation.3``), L2-norm: head ``cosplace_gem``;
* NetVLAD (Arandjelovic et al., CVPR 2016) as trained by Nanne/pytorch-NetVlad:
  ``state_dict`` with ``encoder.N`` = VGG16 ``features[:29]`` (conv5_3 without
  its ReLU), ``pool.conv.weight`` (K, C, 1, 1, no bias), ``pool.centroids``
  (K, C), and optionally Patch-NetVLAD's ``WPCA.0`` 1x1 conv: backbone
  ``vgg16_netvlad``, head ``netvlad_pitts``;
* MixVPR (Ali-bey et al., WACV 2023; amaralibey/MixVPR): ``backbone.model.*``
  a torchvision ResNet-50 cut after layer3, ``aggregator.mix.i.mix.{0,1,3}``
  (LayerNorm, Linear, ReLU, Linear over the flattened H*W positions),
  ``aggregator.channel_proj`` and ``aggregator.row_proj``: head ``mixvpr``.
"""

from dataclasses import dataclass
import fnmatch
import os
from pathlib import Path
import pickle

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
from torchvision.models import vgg as torchvision_vgg

from vl_attention.models.backbone_utils import IMAGENET_NORMALIZATION, \
    load_torchvision_weights, Stage, StagedBackbone
from vl_attention.models.netvlad import NetVLAD
from vl_attention.models.outputs import ModelOutput
from vl_attention.models.registry import AGGREGATORS, BACKBONES
from vl_attention.models.vgg import IMAGENET_WEIGHTS as VGG16_IMAGENET_WEIGHTS
from vl_attention.models.weights import read_state_dict, WeightsError

NETVLAD_VGG16_LAYERS = 29   # torchvision vgg16().features[:29]: up to conv5_3, without its ReLU
COSPLACE_BACKBONE = {'0': 'stem.0', '1': 'stem.1', '4': 'layer1', '5': 'layer2', '6': 'layer3',
                     '7': 'layer4'}
MIXVPR_BACKBONE = {'conv1': 'stem.0', 'bn1': 'stem.1', 'layer1': 'layer1', 'layer2': 'layer2',
                   'layer3': 'layer3', 'layer4': 'layer4'}


@dataclass(frozen=True)
class ExternalSource:
    """Where a published checkpoint comes from (text for the missing-file message only)."""

    model: str
    file_pattern: str
    how_to_get: str


EXTERNAL_SOURCES = (
    ExternalSource('CosPlace', '*_cosplace.pth',
                   'curl -L --create-dirs -o {path} '
                   'https://github.com/gmberton/CosPlace/releases/download/v1.0/{name} '
                   '(or torch.hub.load("gmberton/cosplace", "get_trained_model", '
                   'backbone="ResNet50", fc_output_dim=2048) once with internet)'),
    ExternalSource('EigenPlaces', '*_eigenplaces.pth',
                   'curl -L --create-dirs -o {path} '
                   'https://github.com/gmberton/EigenPlaces/releases/download/v1.0/{name} '
                   '(or torch.hub.load("gmberton/eigenplaces", "get_trained_model", '
                   'backbone="ResNet50", fc_output_dim=2048) once with internet)'),
    ExternalSource('NetVLAD VGG16 Pitts30k', '*netvlad*',
                   'curl -L --create-dirs -o {path} https://github.com/michaelschleiss/'
                   'pytorch-NetVlad/releases/download/v1.0/vgg16_netvlad.pth.tar (the Pitts30k '
                   "checkpoint of Nanne/pytorch-NetVlad; Patch-NetVLAD's pitts_WPCA4096.pth.tar "
                   'needs wpca_dim: 4096)'),
    ExternalSource('MixVPR', '*MixVPR*',
                   'download {name} from the "Trained models" links of '
                   'https://github.com/amaralibey/MixVPR and save it as {path}'),
)


def hub_checkpoint_dirs():
    """Directories searched for a bare checkpoint name: the torch hub cache(s), in order."""
    dirs = [Path(torch.hub.get_dir()) / 'checkpoints']
    if os.environ.get('TORCH_HOME'):
        dirs.append(Path(os.environ['TORCH_HOME']).expanduser() / 'hub' / 'checkpoints')
    dirs.append(Path.home() / '.cache' / 'torch' / 'hub' / 'checkpoints')
    unique = []
    for directory in dirs:
        if directory not in unique:
            unique.append(directory)
    return unique


def resolve_checkpoint_file(spec):
    """Path of checkpoint ``spec``: an existing path, or a bare file name in the torch hub cache.

    A missing file is a one-line :class:`WeightsError` naming where it was
    looked for and, for the published VPR models, how to get it.
    """
    path = Path(str(spec)).expanduser()
    if path.is_file():
        return path
    looked = [path]
    if path.name == str(spec):   # a bare name: the hub cache too
        looked = [directory / path.name for directory in hub_checkpoint_dirs()]
        for candidate in looked:
            if candidate.is_file():
                return candidate
    raise WeightsError(f'checkpoint {spec} not found (looked at {", ".join(map(str, looked))}); '
                       f'{_how_to_get(path.name, looked[0])}')


def _how_to_get(name, path):
    for source in EXTERNAL_SOURCES:
        if fnmatch.fnmatch(name.lower(), source.file_pattern.lower()):
            return f'{source.model} weights are never downloaded here: ' + \
                source.how_to_get.format(name=name, path=path)
    return 'give the path of an existing checkpoint of the whole model'


def read_model_checkpoint(spec):
    """State dict of a whole-model checkpoint, in this package's layout.

    ``spec`` as :func:`resolve_checkpoint_file`. Files of this package load as
    they are; CosPlace, EigenPlaces, pytorch-NetVlad and MixVPR files are
    renamed key by key (:func:`to_package_layout`).
    """
    path = resolve_checkpoint_file(spec)
    return to_package_layout(_read_tensors(path), source=str(path))


def _read_tensors(path):
    # Training checkpoints (pytorch-NetVlad) keep numpy scalars beside the tensors; those are
    # allowed, but never arbitrary pickled objects.
    numpy_scalars = [np.dtype, type(np.dtype('float64')), type(np.dtype('float32')),
                     type(np.dtype('int64'))]
    scalar = (np._core if hasattr(np, '_core') else np.core).multiarray.scalar
    try:
        with torch.serialization.safe_globals([scalar, *numpy_scalars]):
            return read_state_dict(path)
    except WeightsError as error:
        if not isinstance(error.__cause__, pickle.UnpicklingError):
            raise
        raise WeightsError(
            f'{path} holds pickled Python objects besides tensors, which are not loaded; if you '
            f'trust the file, keep its tensors once with: python -c "import torch; c = '
            f"torch.load('{path}', weights_only=False); torch.save(c.get('state_dict', c), "
            f"'{path}.state.pth')\" and use that file") from None


def to_package_layout(state, *, source='checkpoint'):
    """Rename a published checkpoint's keys to this package's; unknown layouts stay as they are."""
    state = {_strip_prefix(key, 'module.'): value for key, value in state.items()}
    if 'aggregation.3.weight' in state and 'backbone.0.weight' in state:
        return _rename(state, _cosplace_key, source)
    if 'pool.centroids' in state and 'encoder.0.weight' in state:
        return _rename(state, _netvlad_key, source, reshape={'aggregator.wpca.weight': 2})
    if 'aggregator.channel_proj.weight' in state and 'backbone.model.conv1.weight' in state:
        return _rename(state, _mixvpr_key, source)
    return state


def _strip_prefix(key, prefix):
    return key[len(prefix):] if key.startswith(prefix) else key


def _rename(state, rename, source, reshape=None):
    renamed = {}
    for key, value in state.items():
        target = rename(key)
        if target is None:
            raise WeightsError(f"{source}: tensor {key} has no place in this package's model; "
                               'is the file one of the published CosPlace, EigenPlaces, '
                               'pytorch-NetVlad or MixVPR checkpoints?')
        dims = (reshape or {}).get(target)
        renamed[target] = value.flatten(1) if dims and value.dim() > dims else value
    return renamed


def _cosplace_key(key):
    part, _, rest = key.partition('.')
    if part == 'backbone':
        index, _, tail = rest.partition('.')
        return f'backbone.{COSPLACE_BACKBONE[index]}.{tail}' if index in COSPLACE_BACKBONE \
            else None
    return {'aggregation.1.p': 'aggregator.p', 'aggregation.3.weight': 'aggregator.fc.weight',
            'aggregation.3.bias': 'aggregator.fc.bias'}.get(key)


def _netvlad_key(key):
    if key.startswith('encoder.'):
        return 'backbone.conv5_3.' + key[len('encoder.'):]
    return {'pool.conv.weight': 'aggregator.assignment.weight',
            'pool.centroids': 'aggregator.centroids', 'WPCA.0.weight': 'aggregator.wpca.weight',
            'WPCA.0.bias': 'aggregator.wpca.bias'}.get(key)


def _mixvpr_key(key):
    if key.startswith('aggregator.'):
        return key
    if key.startswith('backbone.model.'):
        layer, _, tail = key[len('backbone.model.'):].partition('.')
        return f'backbone.{MIXVPR_BACKBONE[layer]}.{tail}' if layer in MIXVPR_BACKBONE else None
    return None


@BACKBONES.register('vgg16_netvlad')
class VGG16NetVLAD(StagedBackbone):
    """VGG16 ``features[:29]`` as pytorch-NetVlad cuts it: tap ``conv5_3`` *before* its ReLU.

    The NetVLAD layer of that code L2-normalises each local feature, so the
    trunk ends on the raw convolution (signed values). ``weights``:
    ``'imagenet'`` (torchvision's file in the torch hub cache, never
    downloaded), ``'none'`` or a torchvision ``vgg16`` ``.pth``; the published
    NetVLAD file goes in the preset's ``checkpoint``.
    """

    normalization = IMAGENET_NORMALIZATION
    default_tap = 'conv5_3'

    def __init__(self, *, weights='none', freeze=False):
        super().__init__()
        net = nn.Module()
        net.features = torchvision_vgg.make_layers(torchvision_vgg.cfgs['D'], batch_norm=False)
        load_torchvision_weights(net, weights, arch='vgg16', weights_enum=VGG16_IMAGENET_WEIGHTS,
                                 label='VGG16', unused_prefixes=('classifier.',))
        self._use_stages([Stage('conv5_3', net.features[:NETVLAD_VGG16_LAYERS], 'conv5_3', 512)],
                         truncate_after=None, freeze=freeze)


@AGGREGATORS.register('cosplace_gem')
class CosPlaceGeM(nn.Module):
    """CosPlace / EigenPlaces head: L2-norm per position, GeM, Linear, L2-norm.

    ``p`` is a learned one-element parameter (3 at start), ``eps`` GeM's clamp.
    Each position's C-vector is unit-normalised *before* pooling, so the head
    ignores the features' scale (unlike plain GeM).
    """

    def __init__(self, *, in_channels, out_dim=2048, p=3.0, eps=1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.full((1,), float(p)))
        self.eps = float(eps)
        self.fc = nn.Linear(in_channels, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Pool ``(B, C, H, W)`` features into unit-norm ``(B, out_dim)`` descriptors."""
        local = F.normalize(features, p=2, dim=1)
        pooled = local.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)
        return F.normalize(self.fc(pooled), p=2, dim=-1)


@AGGREGATORS.register('netvlad_pitts')
class PittsNetVLAD(NetVLAD):
    """NetVLAD as pytorch-NetVlad trains it (vladv1: assignment conv without bias) + optional WPCA.

    ``wpca_dim`` > 0 appends Patch-NetVLAD's whitening PCA, a learned linear
    map of the K*C vector to ``wpca_dim`` followed by L2 normalisation.
    """

    def __init__(self, *, in_channels, clusters=64, alpha=100.0, wpca_dim=0):
        super().__init__(in_channels=in_channels, clusters=clusters, alpha=alpha,
                         normalize_input=True)
        self.assignment = nn.Conv2d(in_channels, clusters, kernel_size=1, bias=False)
        self.wpca = nn.Linear(clusters * in_channels, wpca_dim) if wpca_dim else None

    @property
    def descriptor_dim(self):
        """Return K * C, or ``wpca_dim`` with WPCA."""
        return self.wpca.out_features if self.wpca is not None else super().descriptor_dim

    def forward(self, features: torch.Tensor) -> ModelOutput:
        """Return the NetVLAD descriptor (whitened, re-normalised with WPCA) and assignment."""
        output = super().forward(features)
        if self.wpca is None:
            return output
        return ModelOutput(descriptor=F.normalize(self.wpca(output.descriptor), p=2, dim=-1),
                           attention=output.attention)

    @torch.no_grad()
    def set_centroids(self, centroids):
        """Set centroids and a bias-free assignment ``w_k = alpha c_k / |c_k|`` (vladv1 start)."""
        centroids = torch.as_tensor(np.asarray(centroids), dtype=torch.float32)
        if tuple(centroids.shape) != (self.clusters, self.in_channels):
            raise ValueError(f'NetVLAD centroids must be ({self.clusters}, {self.in_channels}),'
                             f' got {tuple(centroids.shape)}')
        self.centroids.copy_(centroids)
        weight = self.alpha * F.normalize(centroids, dim=1)
        self.assignment.weight.copy_(weight[:, :, None, None])
        return self


class FeatureMixer(nn.Module):
    """One MixVPR block: ``x + MLP(LayerNorm(x))`` over each channel's flattened positions."""

    def __init__(self, positions, mlp_ratio):
        super().__init__()
        hidden = int(positions * mlp_ratio)
        self.mix = nn.Sequential(nn.LayerNorm(positions), nn.Linear(positions, hidden), nn.ReLU(),
                                 nn.Linear(hidden, positions))
        for layer in (self.mix[1], self.mix[3]):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual mixing of ``(B, C, H*W)``."""
        return x + self.mix(x)


@AGGREGATORS.register('mixvpr')
class MixVPR(nn.Module):
    """MixVPR head: feature mixers over each channel's H*W map, channel then row projections.

    ``(B, C, H, W)`` -> ``mix_depth`` :class:`FeatureMixer` blocks on
    ``(B, C, H*W)`` -> ``channel_proj`` (C -> ``out_channels``) -> ``row_proj``
    (H*W -> ``out_rows``) -> flatten, L2: ``out_channels * out_rows`` values.
    The mixers have one weight per position, so the head is built for an
    ``in_h x in_w`` map (20x20 for a 320x320 ResNet-50 layer3); any other map
    is bilinearly resampled to it first (identity at the trained size), and
    the export is fixed-size only.
    """

    fixed_input_size = True

    def __init__(self, *, in_channels, in_h=20, in_w=20, out_channels=1024, mix_depth=4,
                 mlp_ratio=1.0, out_rows=4):
        super().__init__()
        self.in_h, self.in_w = int(in_h), int(in_w)
        positions = self.in_h * self.in_w
        self.mix = nn.Sequential(*[FeatureMixer(positions, mlp_ratio) for _ in range(mix_depth)])
        self.channel_proj = nn.Linear(in_channels, out_channels)
        self.row_proj = nn.Linear(positions, out_rows)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Pool ``(B, C, H, W)`` features into unit-norm ``(B, out_channels * out_rows)``."""
        if tuple(features.shape[-2:]) != (self.in_h, self.in_w):
            features = F.interpolate(features, size=(self.in_h, self.in_w), mode='bilinear',
                                     align_corners=False)
        mixed = self.mix(features.flatten(2))                                # (B, C, HW)
        channels = self.channel_proj(mixed.transpose(1, 2))                  # (B, HW, C')
        rows = self.row_proj(channels.transpose(1, 2))                       # (B, C', R)
        return F.normalize(rows.flatten(1), p=2, dim=-1)
