"""Build a :class:`~vl_attention.engine.model_card.ModelCard` from a torch model (torch side).

:mod:`vl_attention.engine.model_card` reads and writes cards without torch;
this module holds what needs a built model: the weights hash, the pose fields
of a pose_attention head, and the card of a freshly built model.
"""

from __future__ import annotations

from dataclasses import asdict
import hashlib
import json
from typing import Any, TYPE_CHECKING

import numpy as np

from vl_attention.engine.model_card import card_config_values, ModelCard
from vl_attention.model_outputs import DESCRIPTOR_OUTPUT, POSE_FRAME, POSE_OUTPUTS
from vl_attention.io import StrPath
from vl_attention.models.pose_attention import pose_head, pose_origin_m

if TYPE_CHECKING:
    from torch import nn

    from vl_attention.models.descriptor import DescriptorModel, ModelConfig


def weights_sha256(module: nn.Module) -> str:
    """Hash of every tensor in the module's state dict (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        array = np.ascontiguousarray(tensor.detach().cpu().numpy())
        digest.update(f'{name}:{array.dtype}:{array.shape};'.encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def pose_fields(model: nn.Module) -> dict[str, Any]:
    """Card fields of the outputs: descriptor only, or descriptor + pose with its frame."""
    if pose_head(model) is None:
        return {'outputs': (DESCRIPTOR_OUTPUT,)}
    return {'outputs': POSE_OUTPUTS, 'pose_frame': POSE_FRAME,
            'pose_origin_m': tuple(float(value) for value in pose_origin_m(model))}


def make_model_card(config: ModelConfig, model: DescriptorModel, *,
                    weights_file: StrPath = '') -> ModelCard:
    """Card for a freshly built torch model; the fingerprint covers config, weights, input.

    ``weights_file`` records a checkpoint loaded over the preset's weights, so
    the torch model can be rebuilt from an export directory.
    """
    weights_hash = weights_sha256(model)
    config_values = card_config_values(config)
    identity = json.dumps({'config': config_values, 'weights': weights_hash,
                           'preprocessing': asdict(model.preprocessing)}, sort_keys=True)
    return ModelCard(model_name=config.name,
                     fingerprint=hashlib.sha256(identity.encode()).hexdigest()[:16],
                     descriptor_dim=model.descriptor_dim(),
                     preprocessing=model.preprocessing,
                     weights_sha256=weights_hash,
                     model_config=config_values, weights_file=str(weights_file or ''),
                     **pose_fields(model))
