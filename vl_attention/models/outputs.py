"""What every descriptor model returns: one structure, whatever its head.

Heads return either a bare descriptor tensor (simple pooling heads) or a
:class:`ModelOutput`; :meth:`DescriptorModel.outputs` always hands back a
:class:`ModelOutput`, so evaluation, training and visualisation code need no
per-model branches. ``DescriptorModel.forward`` returns only the descriptor:
that is the contract of the ONNX export and of every inference backend.
"""

from dataclasses import dataclass, field, replace
import typing

import torch


@dataclass(frozen=True)
class ModelOutput:
    """Outputs of one forward pass over a batch of ``B`` images.

    * ``descriptor``: ``(B, D)``, L2-normalised;
    * ``attention``: named attention tensors for inspection, e.g. spatial maps
      ``(B, h, w)`` / ``(B, k, h, w)`` or layer-selection weights ``(B, T, L)``;
    * ``pose``: ``(B, 7)`` = position ``(x, y, z)`` + unit quaternion
      ``(w, x, y, z)``, for pose-regressing models only;
    * ``logits``: ``(B, n_classes)`` place-classification logits, when present;
    * ``extras``: head-specific tensors a training loss needs (e.g. per-level
      local descriptors and detection scores); not part of the export.
    """

    descriptor: torch.Tensor
    attention: typing.Mapping[str, torch.Tensor] = field(default_factory=dict)
    pose: typing.Optional[torch.Tensor] = None
    logits: typing.Optional[torch.Tensor] = None
    extras: typing.Mapping[str, torch.Tensor] = field(default_factory=dict)

    def with_descriptor(self, descriptor: torch.Tensor) -> 'ModelOutput':
        """Copy with another descriptor (after whitening, say)."""
        return replace(self, descriptor=descriptor)


def as_model_output(head_result: object) -> ModelOutput:
    """Wrap a bare descriptor tensor; pass a :class:`ModelOutput` through."""
    if isinstance(head_result, ModelOutput):
        return head_result
    if isinstance(head_result, torch.Tensor):
        return ModelOutput(descriptor=head_result)
    raise TypeError(f'a head must return a tensor or a ModelOutput, not '
                    f'{type(head_result).__name__}')
