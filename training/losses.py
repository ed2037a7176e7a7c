"""Training losses, selectable by name from the LOSSES registry.

Every loss is an ``nn.Module`` called as ``loss(output, batch) -> (total, parts)``
with the model's :class:`~vl_attention.models.outputs.ModelOutput` for a
:class:`~vl_attention.training.sampling.Batch`; ``parts`` maps names to
detached scalars for logging. Losses with learnable weights (the pose loss)
expose them as parameters, which the trainer optimises with the model.

* ``triplet``: margin ranking loss on descriptor distances, mean over mined
  triplets of max(0, d(a, p) - d(a, n) + margin) (Schroff, Kalenichenko and
  Philbin, FaceNet, CVPR 2015; the ranking loss of NetVLAD, Arandjelovic et
  al., CVPR 2016, with one negative per anchor);
* ``haf``: the hierarchical-attention-fusion loss (``models.haf.HAFLoss``) on
  mined (anchor, positive, negative) outputs;
* ``pose``: the learnable-weight pose loss (``models.pose_attention.PoseLoss``)
  of the predicted ``(B, 7)`` pose against the batch's ground-truth pose;
* ``imagenet_distillation``: the objective of Kim & Yoon's released code for
  regional attention, ImageNet classification through the frozen trunk's own
  classifier, with the trunk's own predictions as the labels (see the class).

Losses that need the model (``needs_model = True``) are built with it.

The model-specific losses are imported when an adapter is built, so this
module imports without them.
"""

from dataclasses import fields, replace
from typing import Any, cast, Dict, Mapping, Optional, Tuple, TYPE_CHECKING

import torch
from torch import nn
import torch.nn.functional as F

from vl_attention.config import ConfigError
from vl_attention.models.backbone_utils import StagedBackbone
from vl_attention.models.descriptor import DescriptorModel
from vl_attention.models.outputs import ModelOutput
from vl_attention.registry import Registry
from vl_attention.training.config import LossSpec
from vl_attention.training.mining import (descriptor_distances, mine_triplets, STRATEGIES,
                                          Triplets)

if TYPE_CHECKING:
    from vl_attention.training.sampling import Batch

LOSSES = Registry('loss function')
# a loss's result: (total, {part name: detached scalar})
LossResult = Tuple[torch.Tensor, Dict[str, torch.Tensor]]


def make_loss(spec: LossSpec, model: DescriptorModel) -> nn.Module:
    """Build the :data:`LOSSES` entry a ``LossSpec`` names, given ``model`` if it needs it."""
    options = dict(spec.options)
    if getattr(LOSSES.get(spec.name), 'needs_model', False):
        options['model'] = model
    return LOSSES.create(spec.name, **options)


def select_rows(value: Any, rows: torch.Tensor) -> Any:
    """Index the batch dimension of a tensor, or of every tensor in a dict / list / tuple."""
    if isinstance(value, torch.Tensor):
        return value[rows]
    if isinstance(value, dict) or hasattr(value, 'items'):
        return {key: select_rows(item, rows) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(select_rows(item, rows) for item in value)
    return value


def select_outputs(output: ModelOutput, rows: torch.Tensor) -> ModelOutput:
    """Select the given batch rows of a :class:`ModelOutput` (every field, extras too)."""
    return replace(output, **{f.name: select_rows(getattr(output, f.name), rows)
                              for f in fields(ModelOutput)})


class _MiningLoss(nn.Module):
    """Shared mining step of the ranking losses."""

    def __init__(self, *, mining: str, seed: int) -> None:
        super().__init__()
        if mining not in STRATEGIES:
            raise ConfigError(f'unknown mining {mining!r}; known: {list(STRATEGIES)}')
        self.mining = mining
        self.generator = torch.Generator().manual_seed(seed)

    def triplets(self, output: ModelOutput, batch: 'Batch') -> Triplets:
        """Triplets mined on the output's descriptors with the batch's ground truth."""
        return mine_triplets(output.descriptor, batch.positive_mask, batch.negative_mask,
                             strategy=self.mining, generator=self.generator)


@LOSSES.register('triplet')
class TripletLoss(_MiningLoss):
    """Margin ranking loss on Euclidean distances of unit descriptors."""

    def __init__(self, *, margin: float = 0.1, mining: str = 'hard', seed: int = 0) -> None:
        super().__init__(mining=mining, seed=seed)
        if margin <= 0:
            raise ConfigError(f'triplet margin must be > 0, got {margin}')
        self.margin = float(margin)

    def forward(self, output: ModelOutput, batch: 'Batch') -> LossResult:
        """Mean hinge over the batch's mined triplets."""
        triplets = self.triplets(output, batch)
        distances = descriptor_distances(output.descriptor)
        positive = distances[triplets.anchor, triplets.positive]
        negative = distances[triplets.anchor, triplets.negative]
        total = F.relu(positive - negative + self.margin).mean()
        active = (positive - negative + self.margin > 0).float().mean()
        return total, {'triplet': total.detach(), 'active_fraction': active}


@LOSSES.register('haf')
class HAFTripletLoss(_MiningLoss):
    """Adapter: mined triplets -> ``HAFLoss(anchor, positive, negative)`` outputs.

    ``haf_options`` are HAFLoss's own (level weights, margin).
    """

    def __init__(self, *, mining: str = 'hard', seed: int = 0,
                 haf_options: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__(mining=mining, seed=seed)
        from vl_attention.models.haf import HAFLoss
        self.haf = HAFLoss(**dict(haf_options or {}))

    def forward(self, output: ModelOutput, batch: 'Batch') -> LossResult:
        """Weighted sum of the per-level ranking losses on the mined triplets."""
        triplets = self.triplets(output, batch)
        total, parts = self.haf(select_outputs(output, triplets.anchor),
                                select_outputs(output, triplets.positive),
                                select_outputs(output, triplets.negative))
        return total, {name: torch.as_tensor(value).detach() for name, value in parts.items()}


@LOSSES.register('pose')
class PoseRegressionLoss(nn.Module):
    """Adapter: ``PoseLoss(predicted pose, ground-truth pose)`` for pose-regressing models.

    ``pose_options`` are PoseLoss's own (learnable weighting and its initial values).
    """

    def __init__(self, *, pose_options: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__()
        from vl_attention.models.pose_attention import pose_loss_terms, PoseLoss
        self.pose_loss = PoseLoss(**dict(pose_options or {}))
        self.pose_loss_terms = pose_loss_terms

    def forward(self, output: ModelOutput, batch: 'Batch') -> LossResult:
        """Pose loss of the batch; the model must return a ``(B, 7)`` pose."""
        if output.pose is None:
            raise ConfigError('the pose loss needs a pose-regressing model (ModelOutput.pose is '
                              'None); use a pose_attention preset or another loss')
        total = self.pose_loss(output.pose, batch.poses)
        with torch.no_grad():
            position_l1, rotation_l1 = self.pose_loss_terms(output.pose, batch.poses)
        # the learned log-variances make the total negative once fitted: log the L1 terms too
        return total, {'pose': total.detach(), 'position_l1': position_l1,
                       'rotation_l1': rotation_l1}


@LOSSES.register('imagenet_distillation')
class ImageNetDistillationLoss(nn.Module):
    """Cross-entropy of the regions' class prediction against the whole image's.

    Kim & Yoon train the regional attention alone, on a frozen ImageNet trunk,
    by classifying ImageNet images: the attention-weighted mean of the raw
    region MACs goes through the trunk's own (frozen) ImageNet classifier.
    ImageNet's labels are not in a robot's data, so the target here is the
    trunk's own prediction for the image, its classifier over the average-pooled
    map (soft labels at ``temperature``). Any images train it; positions are
    not used. The head must return ``extras['weighted_region_mac']`` and
    ``extras['global_average']`` (regional attention does); the classifier is
    ``model.backbone.imagenet_classifier()``, held as buffers (derived from the trunk's
    weights, so not checkpointed), never trained.
    """

    needs_model = True
    EXTRAS = ('weighted_region_mac', 'global_average')
    weight: torch.Tensor   # buffers (register_buffer in __init__)
    bias: torch.Tensor

    def __init__(self, *, model: DescriptorModel, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f'imagenet_distillation temperature must be > 0, got {temperature}')
        # every backbone is a StagedBackbone, which has imagenet_classifier (Backbone does not)
        classifier = cast(StagedBackbone, model.backbone).imagenet_classifier()
        self.register_buffer('weight', classifier.weight.detach().clone(), persistent=False)
        self.register_buffer('bias', classifier.bias.detach().clone(), persistent=False)
        self.temperature = float(temperature)

    def forward(self, output: ModelOutput, batch: 'Batch') -> LossResult:
        """Mean cross-entropy over the batch, and how often the two top classes agree."""
        missing = [name for name in self.EXTRAS if name not in output.extras]
        if missing:
            raise ConfigError(f'the imagenet_distillation loss needs a head that returns extras '
                              f'{list(self.EXTRAS)} (regional_attention); missing {missing}')
        regions = output.extras['weighted_region_mac']
        if regions.shape[-1] != self.weight.shape[1]:
            raise ConfigError(f'the ImageNet classifier takes {self.weight.shape[1]} channels but '
                              f'the head pools {regions.shape[-1]}: put the head on the last '
                              'feature map of the trunk (the one its classifier pools)')
        with torch.no_grad():
            target = F.softmax(self.logits(output.extras['global_average']), dim=-1)
        log_predicted = F.log_softmax(self.logits(regions), dim=-1)
        total = -(target * log_predicted).sum(dim=-1).mean()
        agreement = (log_predicted.argmax(dim=-1) == target.argmax(dim=-1)).float().mean()
        return total, {'cross_entropy': total.detach(), 'top1_agreement': agreement}

    def logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """Class logits of ``(B, C)`` pooled features, divided by the temperature."""
        return F.linear(pooled, self.weight, self.bias) / self.temperature
