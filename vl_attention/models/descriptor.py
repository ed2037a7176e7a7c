"""A descriptor network = backbone + aggregator joined by injection, built from a preset."""

from dataclasses import dataclass, field
from pathlib import Path
import typing

import torch
from torch import nn

from vl_attention.config import ConfigError, find_config_file, frozen_mapping, load_config
from vl_attention.engine.preprocess import Preprocessing
from vl_attention.models import aggregators as _aggregators  # noqa: F401  (registers heads)
from vl_attention.models import backbones as _backbones  # noqa: F401  (registers trunks)
from vl_attention.models import resnet as _resnet  # noqa: F401  (registers resnet50)
from vl_attention.models.registry import AGGREGATORS, BACKBONES

DEFAULT_MODEL = 'effnet_lite0_gem'


@dataclass(frozen=True)
class ModelConfig:
    """A named model preset (``config/models/<name>.yaml``)."""

    name: str
    backbone: str
    aggregator: str
    input_height: int = 240
    input_width: int = 320
    tap: str = ''
    backbone_options: typing.Mapping = field(default_factory=frozen_mapping)
    aggregator_options: typing.Mapping = field(default_factory=frozen_mapping)


class DescriptorModel(nn.Module):
    """Images ``(B, 3, H, W)`` -> L2-normalised descriptors ``(B, D)``."""

    def __init__(self, backbone, aggregator, *, tap, preprocessing):
        super().__init__()
        self.backbone = backbone
        self.aggregator = aggregator
        self.tap = tap
        self.preprocessing = preprocessing

    def forward(self, images):
        """Embed a normalised image batch."""
        return self.aggregator(self.backbone(images)[self.tap])

    @torch.no_grad()
    def descriptor_dim(self):
        """Length D of the descriptor, found by a forward pass at the input size."""
        prep = self.preprocessing
        probe = torch.zeros(1, 3, prep.input_height, prep.input_width)
        was_training = self.training
        self.eval()
        dim = int(self(probe).shape[-1])
        self.train(was_training)
        return dim


def model_config_path(name_or_path):
    """YAML file of a model preset given by name (``effnet_lite0_gem``) or path."""
    candidate = Path(name_or_path)
    if candidate.suffix in ('.yaml', '.yml'):
        if not candidate.is_file():
            raise ConfigError(f'model config file {candidate} does not exist')
        return candidate
    return find_config_file(f'models/{name_or_path}.yaml', what=f'model preset {name_or_path!r}')


def load_model_config(name_or_path=DEFAULT_MODEL):
    """Read a model preset by name or path."""
    return load_config(ModelConfig, model_config_path(name_or_path))


def build_model(config):
    """Build the torch model a :class:`ModelConfig` describes."""
    try:
        backbone = BACKBONES.create(config.backbone, **config.backbone_options)
        tap = config.tap or backbone.default_tap
        if tap not in backbone.out_channels:
            raise ValueError(f'backbone {config.backbone!r} has no tap {tap!r}; '
                             f'its taps are {sorted(backbone.out_channels)}')
        aggregator = AGGREGATORS.create(config.aggregator,
                                        in_channels=backbone.out_channels[tap],
                                        **config.aggregator_options)
        preprocessing = Preprocessing.for_backbone(
            backbone.normalization, input_height=config.input_height,
            input_width=config.input_width)
    except ValueError as error:
        raise ConfigError(f'model {config.name!r}: {error}') from error
    return DescriptorModel(backbone, aggregator, tap=tap, preprocessing=preprocessing).eval()
