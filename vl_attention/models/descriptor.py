"""A descriptor network = backbone + head joined by injection, built from a preset.

Heads come in two kinds, told apart by the class attribute ``multi_level``:

* single-level (default): built with ``in_channels: int`` and called with the
  one tapped feature map ``(B, C, H, W)``;
* multi-level (``multi_level = True``): built with ``in_channels: {tap: C}``
  (in the preset's tap order) and called with ``{tap: (B, C, H, W)}``.

A head with ``needs_images = True`` is also given the normalised input images
(``images=``), e.g. for a second, semantic stream. Any extra keyword given to
:meth:`DescriptorModel.outputs` (e.g. an external class map) reaches the head.
"""

from dataclasses import dataclass, field
import inspect
import logging
from pathlib import Path
import typing
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from vl_attention.config import ConfigError, config_search_dirs, find_config_file, \
    frozen_mapping, load_config
from vl_attention.engine.preprocess import Preprocessing
from vl_attention.io import StrPath
from vl_attention.models.external import read_model_checkpoint
from vl_attention.models.initialisation import preset_seed, seeded_initialisation, \
    untrained_modules, warn_untrained
from vl_attention.models.modes import evaluating
from vl_attention.models.outputs import as_model_output, ModelOutput
from vl_attention.models.protocols import Aggregator, Backbone, HeadFeatures
from vl_attention.model_outputs import DEFAULT_MODEL  # noqa: F401  (re-exported)
from vl_attention.models.registry import AGGREGATORS, BACKBONES
from vl_attention.models.weights import WeightsError
from vl_attention.models.whitening import PCAWhitening
from vl_attention.models.zoo import import_components

import_components()

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelConfig:
    """A named model preset (``config/models/<name>.yaml``).

    ``taps`` names the backbone feature maps the head reads (empty: the
    backbone's default tap). ``whitening_dim`` > 0 appends learned
    PCA-whitening to that size (fit it before use). ``checkpoint`` is a state
    dict of the whole model (e.g. from training, or a published CosPlace /
    EigenPlaces / NetVLAD / MixVPR file, see :mod:`vl_attention.models.external`)
    loaded after building. ``resize`` is the preprocessing policy for frames of
    another shape (:data:`~vl_attention.engine.preprocess.RESIZE_POLICIES`).
    ``vocabulary: map`` marks a NetVLAD-type head that ships no centroids:
    k-means fits them on each map's own images when the map is built
    (:mod:`vl_attention.engine.vocabulary`); the card of such a fitted model
    says ``fitted``.
    """

    name: str
    backbone: str
    aggregator: str
    input_height: int = 240
    input_width: int = 320
    taps: tuple = ()
    backbone_options: typing.Mapping = field(default_factory=frozen_mapping)
    aggregator_options: typing.Mapping = field(default_factory=frozen_mapping)
    whitening_dim: int = 0
    checkpoint: str = ''
    resize: str = 'stretch'
    vocabulary: str = 'preset'

    def __post_init__(self) -> None:
        if self.vocabulary not in VOCABULARIES:
            raise ConfigError(f'model {self.name!r}: vocabulary {self.vocabulary!r} is not one '
                              f'of {list(VOCABULARIES)}')


# where a NetVLAD-type head's centroids come from: the preset (its weights or k-means at
# build time), each map's images (fitted by build-map), or a map that has fitted them
VOCABULARIES = ('preset', 'map', 'fitted')


class DescriptorModel(nn.Module):
    """Images ``(B, 3, H, W)`` -> L2-normalised descriptors ``(B, D)`` (+ attention, pose).

    :meth:`outputs` returns a :class:`~vl_attention.models.outputs.ModelOutput`.
    ``untrained_modules`` names the parts no weights file gave (set by
    :func:`build_model`, emptied by :func:`load_model_checkpoint`).
    """

    untrained_modules: tuple[str, ...] = ()

    def __init__(self, backbone: Backbone, aggregator: Aggregator, *, taps: Iterable[str],
                 preprocessing: Preprocessing, whitening: Optional[PCAWhitening] = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.aggregator = aggregator
        self.taps = tuple(taps)
        self.preprocessing = preprocessing
        self.whitening = whitening

    def outputs(self, images: torch.Tensor, **head_inputs: Any) -> ModelOutput:
        """Every output of the model for a normalised image batch, as a :class:`ModelOutput`."""
        return self.outputs_from_features(self.backbone(images), images, **head_inputs)

    def outputs_from_features(self, features: Mapping[str, torch.Tensor], images: torch.Tensor,
                              **head_inputs: Any) -> ModelOutput:
        """Head (and whitening) outputs for backbone ``features`` ``{tap: tensor}`` of ``images``.

        Lets training reuse the cached features of a frozen backbone.
        """
        output = self._head_output(features, images, head_inputs)
        if self.whitening is not None:
            output = output.with_descriptor(self.whitening(output.descriptor))
        return output

    def _head_output(self, features: Mapping[str, torch.Tensor], images: torch.Tensor,
                     head_inputs: Mapping[str, Any]) -> ModelOutput:
        head_features: HeadFeatures
        if getattr(self.aggregator, 'multi_level', False):
            head_features = {tap: features[tap] for tap in self.taps}
        else:
            head_features = features[self.taps[0]]
        if getattr(self.aggregator, 'needs_images', False):
            head_inputs = dict(head_inputs, images=images)
        return as_model_output(self.aggregator(head_features, **head_inputs))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embed a normalised image batch into ``(B, D)`` descriptors (the export contract)."""
        return self.outputs(images).descriptor

    @torch.no_grad()
    def head_descriptor_dim(self) -> int:
        """Length of the head's descriptor before any whitening, by a pass at the input size."""
        prep = self.preprocessing
        probe = torch.zeros(1, 3, prep.input_height, prep.input_width)
        with evaluating(self):
            return int(self._head_output(self.backbone(probe), probe, {}).descriptor.shape[-1])

    def descriptor_dim(self) -> int:
        """Length D of the descriptor (the whitened size when PCA-whitening is set)."""
        if self.whitening is not None:
            return self.whitening.out_dim
        return self.head_descriptor_dim()


def model_config_path(name_or_path: StrPath) -> Path:
    """YAML file of a model preset given by name (``effnet_lite0_gem``) or path."""
    candidate = Path(name_or_path)
    if candidate.suffix in ('.yaml', '.yml'):
        if not candidate.is_file():
            raise ConfigError(f'model config file {candidate} does not exist')
        return candidate
    return find_config_file(f'models/{name_or_path}.yaml', what=f'model preset {name_or_path!r}')


def model_preset_names() -> list[str]:
    """Names of every model preset shipped in ``config/models/`` (the model zoo)."""
    for directory in config_search_dirs():
        presets = sorted(path.stem for path in (directory / 'models').glob('*.yaml'))
        if presets:
            return presets
    return []


def load_model_config(name_or_path: StrPath = DEFAULT_MODEL) -> ModelConfig:
    """Read a model preset by name or path."""
    return load_config(ModelConfig, model_config_path(name_or_path))


def _resolve_taps(config: ModelConfig, backbone: Backbone) -> tuple[str, ...]:
    taps = tuple(config.taps) or (backbone.default_tap,)
    missing = [tap for tap in taps if tap not in backbone.out_channels]
    if missing:
        raise ValueError(f'backbone {config.backbone!r} has no tap(s) {missing}; '
                         f'its taps are {list(backbone.out_channels)}')
    return taps


def _create_head(config: ModelConfig, backbone: Backbone, taps: Sequence[str]) -> Aggregator:
    head_class = AGGREGATORS.get(config.aggregator)
    in_channels: Union[int, dict[str, int]]
    if getattr(head_class, 'multi_level', False):
        in_channels = {tap: backbone.out_channels[tap] for tap in taps}
    elif len(taps) != 1:
        raise ValueError(f'aggregator {config.aggregator!r} reads one tap, the preset names '
                         f'{list(taps)}')
    else:
        in_channels = backbone.out_channels[taps[0]]
    return AGGREGATORS.create(config.aggregator, in_channels=in_channels,
                              **config.aggregator_options)


def build_model(config: ModelConfig, *, init_seed: Optional[int] = None) -> DescriptorModel:
    """Build the torch model a :class:`ModelConfig` describes.

    Parameters no weights file gives are initialised from ``init_seed``
    (default: :func:`~vl_attention.models.initialisation.preset_seed` of the
    preset), on a forked RNG: the same preset gives the same weights and
    fingerprint in every process, and the caller's global RNG is untouched.
    ``model.untrained_modules`` names those random parts (a warning is logged).
    """
    seed = preset_seed(config) if init_seed is None else int(init_seed)
    try:
        with seeded_initialisation(seed):
            model = _assemble(config)
    except ValueError as error:
        raise ConfigError(f'model {config.name!r}: {error}') from error
    model.untrained_modules = untrained_modules(
        model, backbone_weights=backbone_weights(config), checkpoint=config.checkpoint)
    if config.vocabulary != 'preset' and not hasattr(model.aggregator, 'initialise_centroids'):
        raise ConfigError(f'model {config.name!r}: vocabulary {config.vocabulary!r} needs a '
                          f'NetVLAD-type head with centroids, not {config.aggregator!r}')
    if config.checkpoint:
        load_model_checkpoint(model, config.checkpoint)
    elif config.vocabulary == 'map':
        LOG.info('model %r: its NetVLAD vocabulary is fitted on each map when the map is '
                 'built', config.name)
    else:
        warn_untrained(config.name, model.untrained_modules, seed)
    return model.eval()


def _assemble(config: ModelConfig) -> DescriptorModel:
    backbone = BACKBONES.create(config.backbone, **config.backbone_options)
    taps = _resolve_taps(config, backbone)
    aggregator = _create_head(config, backbone, taps)
    preprocessing = Preprocessing.for_backbone(
        backbone.normalization, input_height=config.input_height,
        input_width=config.input_width, resize=config.resize)
    model = DescriptorModel(backbone, aggregator, taps=taps, preprocessing=preprocessing)
    if config.whitening_dim:
        model.whitening = PCAWhitening(in_dim=model.head_descriptor_dim(),
                                       out_dim=config.whitening_dim)
    return model


def backbone_weights(config: ModelConfig) -> Any:
    """Return the ``weights`` option the preset's backbone is built with (its default if unset)."""
    if 'weights' in config.backbone_options:
        return config.backbone_options['weights']
    factory = BACKBONES.get(config.backbone)
    target = factory.__init__ if inspect.isclass(factory) else factory
    parameter = inspect.signature(target).parameters.get('weights')
    return '' if parameter is None or parameter.default is inspect.Parameter.empty \
        else parameter.default


def load_model_checkpoint(model: DescriptorModel, path: StrPath) -> DescriptorModel:
    """Load a state dict of the whole model (backbone, head, whitening) into ``model``."""
    state = read_model_checkpoint(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise WeightsError(f'{path} does not fit model {type(model).__name__} (needs the keys '
                           f'of the same preset: backbone.*, aggregator.*): {error}') from None
    model.untrained_modules = ()
    return model.eval()
