"""What the model builder needs of a backbone and a head, as :class:`typing.Protocol`.

A backbone (a :class:`~vl_attention.models.backbone_utils.StagedBackbone`,
registered in :data:`~vl_attention.models.registry.BACKBONES`) maps images to
``{tap: (B, C, H, W)}``; :class:`Backbone` lists what the builder reads of it.

A head is an ``nn.Module`` registered in :data:`~vl_attention.models.registry.AGGREGATORS`
and built by the model builder as ``factory(in_channels=..., **aggregator_options)``:
``in_channels`` is an ``int`` for a single-level head, ``{tap: channels}`` (in the
preset's tap order) for a multi-level one. Heads inherit from nothing but
``nn.Module``; this module only describes what the builder and the export rely on.

Optional attributes, read with ``getattr`` (missing means ``False``):

* ``multi_level``: called with ``{tap: (B, C, H, W)}`` instead of one map;
* ``needs_images``: also given the normalised input images (``images=``);
* ``fixed_input_size``: its pooling layout is traced for one input size, so it
  cannot be exported with a dynamic size.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Union

import torch

from vl_attention.engine.preprocess import Normalization
from vl_attention.models.outputs import ModelOutput

# one tapped map (B, C, H, W), or {tap: map} for a multi-level head
HeadFeatures = Union[torch.Tensor, Mapping[str, torch.Tensor]]
# a bare descriptor (B, D), or every output of the head
HeadResult = Union[torch.Tensor, ModelOutput]


class Backbone(Protocol):
    """What :class:`~vl_attention.models.descriptor.DescriptorModel` needs of its backbone."""

    @property
    def out_channels(self) -> Mapping[str, int]:
        """Return the channels of each kept tap, shallow -> deep."""
        ...

    @property
    def default_tap(self) -> str:
        """Return the tap a single-level head reads when the preset names none."""
        ...

    @property
    def normalization(self) -> Normalization:
        """Return the mean/std and resampling its weights were trained with."""
        ...

    def __call__(self, images: torch.Tensor) -> Mapping[str, torch.Tensor]:
        """Return ``{tap: (B, C, H, W)}`` of a normalised image batch ``(B, 3, H, W)``."""
        ...


class Aggregator(Protocol):
    """What :class:`~vl_attention.models.descriptor.DescriptorModel` calls on its head."""

    def __call__(self, features: HeadFeatures, **head_inputs: Any) -> HeadResult:
        """Pool backbone features (and any ``head_inputs``) into an L2-normalised descriptor."""
        ...
