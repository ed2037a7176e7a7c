"""What a training run trains, and how it keeps the frozen parts frozen and cheap.

:func:`make_optimizer` builds the recipe's optimiser over the trainable
parameters of model and loss (trainable trunk stages in their own group at a
scaled learning rate). :func:`set_training_mode` puts a model into training
mode but leaves modules whose parameters are all frozen in eval mode (frozen
BatchNorm statistics, no dropout). The features of a frozen trunk, or of its
frozen first stages, are computed once (:func:`cache_backbone_features`) and
each step runs only what trains on them (:func:`outputs_from_cache`), which
makes training heads on a frozen trunk on a CPU practical.
:func:`~vl_attention.training.loop.fit` uses all of them.
"""

from typing import cast, Dict, List, Optional, Protocol, Union

import torch
from torch import nn

from vl_attention.config import ConfigError
from vl_attention.models.backbone_utils import StagedBackbone
from vl_attention.models.descriptor import DescriptorModel
from vl_attention.models.modes import evaluating
from vl_attention.models.outputs import ModelOutput
from vl_attention.training.config import OptimizerConfig

TapFeatures = Dict[str, torch.Tensor]


class ImageBatches(Protocol):
    """Normalised images ``(N, 3, H, W)`` sliceable into batches: a tensor or ImageRows."""

    def __len__(self) -> int:
        """Return the number of images."""
        ...

    def __getitem__(self, rows: slice) -> torch.Tensor:
        """Return the images of a slice of rows."""
        ...


def _staged(model: DescriptorModel) -> StagedBackbone:
    """Return the model's backbone as what training uses of it (every backbone is staged)."""
    return cast(StagedBackbone, model.backbone)


def backbone_is_frozen(model: DescriptorModel) -> bool:
    """Whether no backbone parameter takes gradients."""
    return not any(parameter.requires_grad for parameter in _staged(model).parameters())


def has_frozen_stages(model: DescriptorModel) -> bool:
    """Whether the backbone's first stages take no gradients (their features can be cached)."""
    return bool(_staged(model).frozen_tap)


def set_training_mode(model: nn.Module) -> None:
    """``model.train()``, but modules whose parameters are all frozen stay in eval mode."""
    model.train()
    for module in model.modules():
        parameters = list(module.parameters())
        if parameters and not any(parameter.requires_grad for parameter in parameters):
            module.eval()


@torch.no_grad()
def cache_backbone_features(model: DescriptorModel,
                            images: ImageBatches, *,
                            batch_size: int = 32,
                            device: Optional[Union[str, torch.device]] = None) -> TapFeatures:
    """Features ``{tap: (N, C, h, w)}`` of the backbone's frozen stages (eval mode), all images.

    The model's taps among them, and the last frozen stage's output when later
    stages train (:func:`outputs_from_cache` runs those). ``images`` is an
    ``(N, 3, H, W)`` tensor or anything sliceable like one
    (:class:`~vl_attention.training.sampling.ImageRows`).
    """
    backbone = _staged(model)
    keep = set(model.taps) | ({backbone.frozen_tap} if not backbone_is_frozen(model) else set())
    chunks: List[TapFeatures] = []
    with evaluating(backbone):
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size].to(device)
            chunks.append(backbone.frozen_features(batch))
    return {tap: torch.cat([chunk[tap] for chunk in chunks]) for tap in chunks[0] if tap in keep}


def outputs_from_cache(model: DescriptorModel, features: TapFeatures,
                       images: torch.Tensor) -> ModelOutput:
    """Model outputs of ``images`` from their cached frozen-stage ``features``."""
    return model.outputs_from_features(_staged(model).forward_from_frozen(features), images)


def make_optimizer(config: OptimizerConfig, model: DescriptorModel,
                   loss: nn.Module) -> torch.optim.Optimizer:
    """Create the optimiser an :class:`OptimizerConfig` names over what model and loss train.

    Trainable backbone parameters form a second group at ``lr x backbone_lr_scale``.
    """
    trunk = [p for p in _staged(model).parameters() if p.requires_grad]
    in_trunk = {id(p) for p in trunk}
    head = [p for module in (model, loss) for p in module.parameters()
            if p.requires_grad and id(p) not in in_trunk]
    if not head and not trunk:
        raise ConfigError('nothing to train: every parameter of the model and the loss is '
                          'frozen; unfreeze the head (or part of the backbone)')
    groups = [group for group in (
        {'params': head}, {'params': trunk, 'lr': config.lr * config.backbone_lr_scale})
        if group['params']]
    if config.name == 'sgd':
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    optimizer = torch.optim.AdamW if config.name == 'adamw' else torch.optim.Adam
    return optimizer(groups, lr=config.lr, weight_decay=config.weight_decay)
