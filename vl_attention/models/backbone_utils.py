"""Shared machinery of the backbones: staged trunks, taps, truncation, freezing, weights.

A trunk is a sequence of stages run one after the other; a stage may end at a
named tap (its output is returned). ``truncate_after`` keeps the stages up to
and including one tap's stage; ``freeze`` stops gradients (and BatchNorm
statistics updates) in the whole trunk (``True``) or in the stages up to and
including one tap's stage.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vl_attention.config import ConfigError
from vl_attention.engine.preprocess import Normalization
from vl_attention.models.weights import read_state_dict, WeightsError

# torchvision's ImageNet preprocessing (RGB in [0, 1], then this mean/std).
IMAGENET_NORMALIZATION = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                                       interpolation='bilinear')


@dataclass(frozen=True, eq=False)
class Stage:
    """One piece of a trunk: ``module`` runs after the previous stage.

    ``tap`` names its output when that is a tap ('' = internal stage), with
    ``channels`` channels. ``name`` is the attribute the module is registered
    under (so it prefixes its state-dict keys).
    """

    name: str
    module: nn.Module
    tap: str = ''
    channels: int = 0


def _tap_index(stages, tap, option, backbone):
    taps = [stage.tap for stage in stages if stage.tap]
    for index, stage in enumerate(stages):
        if stage.tap == tap:
            return index
    raise ValueError(f'backbone {backbone!r}: {option}={tap!r} is not one of its taps {taps}')


def truncate_stages(stages, truncate_after, *, backbone):
    """Return the stages up to and including the one ending at tap ``truncate_after``.

    ``None`` keeps every stage up to the deepest tap.
    """
    if truncate_after is None:
        truncate_after = [stage.tap for stage in stages if stage.tap][-1]
    last = _tap_index(stages, truncate_after, 'truncate_after', backbone)
    return list(stages[:last + 1])


def frozen_stage_count(stages, freeze, *, backbone):
    """How many leading stages ``freeze`` (False | True | tap name) freezes."""
    if freeze is False or freeze is None:
        return 0
    if freeze is True:
        return len(stages)
    if not isinstance(freeze, str):
        raise ValueError(f'backbone {backbone!r}: freeze must be true, false or a tap name, '
                         f'not {freeze!r}')
    return _tap_index(stages, freeze, 'freeze', backbone) + 1


class StagedBackbone(nn.Module):
    """Base class of the backbones: runs its stages and returns every tap on the way.

    Subclasses build their stages and call :meth:`_use_stages`. ``out_channels``
    (tap -> channels, shallow -> deep) and ``default_tap`` (the deepest kept tap)
    become instance attributes. Frozen stages stay in eval mode when the
    backbone is put in training mode, so their BatchNorm statistics stay fixed.
    """

    def _use_stages(self, stages, *, truncate_after, freeze, register=True):
        backbone = type(self).__name__
        kept = truncate_stages(stages, truncate_after, backbone=backbone)
        if register:
            for stage in kept:
                self.add_module(stage.name, stage.module)
        # A plain list: with register=False the modules live elsewhere in the
        # subclass (e.g. inside a timm net whose state-dict keys must not change).
        self._stages = kept
        self._frozen_stages = kept[:frozen_stage_count(kept, freeze, backbone=backbone)]
        for stage in self._frozen_stages:
            stage.module.requires_grad_(False)
        self.out_channels = {stage.tap: stage.channels for stage in kept if stage.tap}
        self.default_tap = list(self.out_channels)[-1]
        self.train(self.training)

    def imagenet_classifier(self):
        """Return the trunk's own ImageNet classifier, a frozen ``nn.Linear`` over its pooled head.

        Backbones whose weights include one override this; the others say so.
        """
        raise ConfigError(f'{type(self).__name__} has no ImageNet classifier; a loss that '
                          'classifies through it needs an EfficientNet-Lite0 or ResNet trunk '
                          'with ImageNet weights')

    def stage_modules(self):
        """Return ``{stage name: module}`` of the kept stages, shallow -> deep."""
        return {stage.name: stage.module for stage in self._stages}

    def frozen_stage_names(self):
        """Names of the stages that ``freeze`` froze."""
        return [stage.name for stage in self._frozen_stages]

    def train(self, mode=True):
        """Set training mode, keeping frozen stages in eval mode."""
        super().train(mode)
        for stage in getattr(self, '_frozen_stages', ()):
            stage.module.eval()
        return self

    def _untrained_prefix(self):
        # The leading stages that take no gradients (by ``freeze`` or by requires_grad_), up to
        # the last of them that ends at a tap.
        count = 0
        for stage in self._stages:
            if any(parameter.requires_grad for parameter in stage.module.parameters()):
                break
            count += 1
        while count and not self._stages[count - 1].tap:
            count -= 1
        return self._stages[:count]

    @property
    def frozen_tap(self):
        """Tap ending the leading stages that take no gradients ('' if the first one trains)."""
        prefix = self._untrained_prefix()
        return prefix[-1].tap if prefix else ''

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{tap: (B, C, H, W)}`` for every kept tap, from one pass."""
        return _run_stages(self._stages, images)

    def frozen_features(self, images):
        """Return ``{tap: tensor}`` of the stages up to :attr:`frozen_tap` (training caches it)."""
        return _run_stages(self._untrained_prefix(), images)

    def forward_from_frozen(self, frozen):
        """Every tap from :meth:`frozen_features` of the same images: runs the later stages."""
        prefix = self._untrained_prefix()
        trainable = self._stages[len(prefix):]
        if not trainable:
            return dict(frozen)
        return {**frozen, **_run_stages(trainable, frozen[prefix[-1].tap])}


def _run_stages(stages, x):
    features = {}
    for stage in stages:
        x = stage.module(x)
        if stage.tap:
            features[stage.tap] = x
    return features


def torchvision_weight_file(weights_enum):
    """Where torchvision keeps a weights file: ``<torch hub dir>/checkpoints/<url file name>``."""
    return Path(torch.hub.get_dir()) / 'checkpoints' / Path(weights_enum.url).name


def torchvision_state_dict(weights, *, arch, weights_enum, label):
    """State dict for torchvision net ``arch`` given a ``weights`` option, or None for 'none'.

    ``'imagenet'`` reads torchvision's own file from the torch hub cache; it is
    never downloaded, and a missing file is a :class:`WeightsError` that names
    the file and the one command that fetches it where there is internet.
    """
    if weights == 'none':
        return None
    if weights == 'imagenet':
        path = torchvision_weight_file(weights_enum)
        if not path.is_file():
            raise WeightsError(
                f'ImageNet {label} weights are not at {path}; they need internet once: '
                f'python -c "import torchvision; torchvision.models.{arch}('
                f'weights=\'{weights_enum}\')", or use weights: none or a .pth path')
        weights = path
    return read_state_dict(weights)


def frozen_linear(weight, bias):
    """Return a frozen ``nn.Linear`` holding copies of ``weight`` ``(out, in)`` and ``bias``."""
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer.requires_grad_(False).eval()


def load_torchvision_weights(net, weights, *, arch, weights_enum, label, unused_prefixes=()):
    """Load ``weights`` ('imagenet' | 'none' | .pth path) into torchvision net ``arch``.

    Tensors under ``unused_prefixes`` (parts of the published net the trunk
    does not build: classifier, GoogLeNet's auxiliary heads) are ignored and
    may be absent, so a trunk-only state dict loads too. Any other missing or
    extra tensor, or a wrong shape, is a :class:`WeightsError`.
    """
    state = torchvision_state_dict(weights, arch=arch, weights_enum=weights_enum, label=label)
    if state is None:
        return
    unused = tuple(unused_prefixes)
    state = {key: value for key, value in state.items() if not key.startswith(unused)}
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise WeightsError(f'{weights} is not a torchvision {arch} state dict: {error}') \
            from None
    missing = [key for key in result.missing_keys if not key.startswith(unused)]
    if missing or result.unexpected_keys:
        raise WeightsError(f'{weights} is not a torchvision {arch} state dict: missing '
                           f'{missing[:5]}, unexpected {result.unexpected_keys[:5]} '
                           f'({len(missing)} and {len(result.unexpected_keys)} in all)')
