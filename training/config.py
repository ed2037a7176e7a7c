"""The training recipe: one frozen dataclass per concern, loaded strictly from YAML.

A recipe (``config/training/<name>.yaml``) names a model preset and how to
change it, the dataset (a :data:`~vl_attention.training.sources.DATASETS`
layout), the loss, the batch sampling and mining, the optimiser and its
schedule, and how long to train. Unknown keys are errors that list the known
ones (:func:`vl_attention.config.from_dict`).
"""

from dataclasses import dataclass, field, replace
import logging
from pathlib import Path
import typing
from typing import Union

from vl_attention.config import (ConfigError, find_config_file, frozen_mapping, from_dict,
                                 read_yaml)
from vl_attention.models import load_model_config, ModelConfig
from vl_attention.models.descriptor import backbone_weights
from vl_attention.training.augment import AugmentationConfig

LOG = logging.getLogger(__name__)

OPTIMIZERS = ('adam', 'adamw', 'sgd')
SCHEDULES = ('constant', 'step', 'cosine')


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset layout (``kind``), where it lives and the adapter's own options."""

    kind: str = 'synthetic'
    root: str = '~/.cache/vl_attention/training'
    options: typing.Mapping = field(default_factory=frozen_mapping)
    train_conditions: tuple = ()   # train only on rows of these conditions (empty: all)


@dataclass(frozen=True)
class SamplingConfig:
    """Which images form a batch, and which pairs count as same / other place.

    A batch holds ``places_per_batch`` anchors with ``views_per_place - 1``
    positives each, plus ``hard_negatives_per_place`` negatives per anchor
    mined from a descriptor cache of ``negative_cache_size`` training images
    re-embedded every ``refresh_every_steps`` steps (NetVLAD's partial
    hard-negative mining; 0 turns it off).
    """

    positive_distance_m: float = 10.0
    negative_distance_m: float = 25.0
    negative_place_gap: int = 1    # place-label ground truth: labels this far apart differ
    places_per_batch: int = 8
    views_per_place: int = 2
    hard_negatives_per_place: int = 0
    negative_cache_size: int = 1000
    refresh_every_steps: int = 250

    def __post_init__(self) -> None:
        if not 0 < self.positive_distance_m <= self.negative_distance_m:
            raise ConfigError(f'need 0 < positive_distance_m ({self.positive_distance_m}) <= '
                              f'negative_distance_m ({self.negative_distance_m})')
        if self.places_per_batch < 2 or self.views_per_place < 2:
            raise ConfigError('a batch needs places_per_batch >= 2 and views_per_place >= 2 '
                              '(an anchor, its positive and another place)')
        if self.hard_negatives_per_place < 0 or self.refresh_every_steps < 1 \
                or self.negative_cache_size < 1 or self.negative_place_gap < 1:
            raise ConfigError('hard_negatives_per_place must be >= 0; refresh_every_steps, '
                              'negative_cache_size and negative_place_gap >= 1')


@dataclass(frozen=True)
class LossSpec:
    """A loss of :data:`~vl_attention.training.losses.LOSSES` and its options."""

    name: str = 'triplet'
    options: typing.Mapping = field(default_factory=frozen_mapping)


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimiser (``adam``, ``adamw``, ``sgd``) and its hyper-parameters."""

    name: str = 'adam'
    lr: float = 1e-4
    momentum: float = 0.9          # sgd only
    weight_decay: float = 0.0
    backbone_lr_scale: float = 1.0  # trainable trunk stages learn at lr x this

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f'unknown optimizer {self.name!r}; known: {list(OPTIMIZERS)}')
        if self.lr <= 0 or self.weight_decay < 0 or self.backbone_lr_scale <= 0:
            raise ConfigError('need lr > 0, weight_decay >= 0 and backbone_lr_scale > 0')


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule over steps, after a linear warm-up of ``warmup_steps``.

    ``constant``, ``step`` (x ``gamma`` every ``step_epochs`` epochs) or
    ``cosine`` (down to ``min_lr_ratio`` x lr at the last step).
    """

    name: str = 'constant'
    step_epochs: int = 5
    gamma: float = 0.5
    min_lr_ratio: float = 0.01
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ConfigError(f'unknown schedule {self.name!r}; known: {list(SCHEDULES)}')
        if self.step_epochs < 1 or not 0 < self.gamma <= 1 or self.warmup_steps < 0:
            raise ConfigError('need step_epochs >= 1, 0 < gamma <= 1 and warmup_steps >= 0')


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs (see ``config/training/*.yaml``).

    ``model`` is a preset name or YAML path; ``model_overrides`` replaces
    preset fields (option mappings are merged key by key unless the backbone /
    aggregator itself is replaced). ``extra_datasets`` add the training rows
    of more datasets, each of another area: they are shifted apart
    (:func:`~vl_attention.training.sources.base.shift_apart`) so that no image
    of one becomes a positive or a mined negative of another's (several drives
    of one area belong in one dataset, e.g. a rosbag2 list of bags).
    ``validation`` names a held-out dataset; empty ``kind`` uses the training
    dataset's ``val`` rows, or its ``test`` rows when it has no ``val`` split.
    """

    name: str = 'training'
    model: str = 'effnet_lite0_gem'
    model_overrides: typing.Mapping = field(default_factory=frozen_mapping)
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    extra_datasets: tuple[DatasetSpec, ...] = ()
    validation: DatasetSpec = field(default_factory=lambda: DatasetSpec(kind=''))
    loss: LossSpec = field(default_factory=LossSpec)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    epochs: int = 10
    steps_per_epoch: int = 100
    max_grad_norm: float = 0.0     # 0: no clipping
    mixed_precision: bool = True   # fp16 autocast + grad scaling, on CUDA only
    device: str = 'auto'           # auto | cpu | cuda
    seed: int = 0
    checkpoint_every_steps: int = 50
    recall_n: tuple = (1, 5, 10)
    cache_backbone_features: bool = True   # frozen (first) stages: features once
    fit_netvlad_centroids: bool = True     # k-means init of NetVLAD/CRN (HAF netvlad) centroids
    find_unused_parameters: bool = False   # DistributedDataParallel option
    export: bool = True                    # ONNX + model card at the end
    log_every_steps: int = 10

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.checkpoint_every_steps < 1:
            raise ConfigError('epochs, steps_per_epoch and checkpoint_every_steps must be >= 1')
        if self.device not in ('auto', 'cpu', 'cuda'):
            raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.extra_datasets and self.loss.name == 'pose':
            raise ConfigError('extra_datasets are other areas, shifted apart, but pose '
                              'regression needs one coordinate frame: train one pose model per '
                              'area, or put drives of the same area into one dataset')
        if not {1, 5} <= set(self.recall_n):
            raise ConfigError(f'recall_n {list(self.recall_n)} must include 1 and 5: the best '
                              'checkpoint is chosen by validation Recall@5, then Recall@1')

    @property
    def total_steps(self) -> int:
        """Steps of the whole run."""
        return self.epochs * self.steps_per_epoch


def load_recipe(name_or_path: Union[str, Path]) -> TrainConfig:
    """Load a recipe by name (``config/training/<name>.yaml``) or path."""
    text = str(name_or_path)
    if text.endswith(('.yaml', '.yml')) or '/' in text:
        path: Union[str, Path] = text
    else:
        path = find_config_file(f'training/{text}.yaml', what=f'training recipe {text!r}')
    return from_dict(TrainConfig, read_yaml(path), where=str(path))


def model_config(cfg: TrainConfig) -> ModelConfig:
    """Return the recipe's :class:`ModelConfig`: the preset with ``model_overrides`` applied."""
    config = load_model_config(cfg.model)
    overrides = dict(cfg.model_overrides)
    unknown = sorted(set(overrides) - set(ModelConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f'model_overrides: unknown field(s) {unknown}; known: '
                          f'{sorted(ModelConfig.__dataclass_fields__)}')
    # options merge into the preset's, unless the component itself is replaced
    for key, component in (('backbone_options', 'backbone'), ('aggregator_options', 'aggregator')):
        if key in overrides and component not in overrides:
            overrides[key] = frozen_mapping({**getattr(config, key), **overrides[key]})
    if 'taps' in overrides:
        overrides['taps'] = tuple(overrides['taps'])
    config = replace(config, **overrides)
    warn_frozen_random_trunk(cfg.name, config)
    return config


def warn_frozen_random_trunk(recipe_name: str, config: ModelConfig) -> None:
    """Warn when a recipe freezes (part of) a trunk that has no weights: it never learns.

    A warning, not an error: pose regression of one scene does learn on a frozen
    random trunk (test_training), and the shipped recipes name paper trunks whose
    ImageNet weights are not offline here.
    """
    freeze = config.backbone_options.get('freeze', False)
    if freeze in (False, None) or str(backbone_weights(config)) != 'none':
        return
    LOG.warning('recipe %r freezes the trunk of model %r (freeze: %s) but the trunk has '
                'weights: none, so its random features never train; give the trunk weights '
                '(model_overrides: {backbone_options: {weights: imagenet or a .pth path}}) or '
                'set backbone_options: {freeze: false}', recipe_name, config.name, freeze)
