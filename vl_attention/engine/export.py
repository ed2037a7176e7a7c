"""Export a descriptor model to ONNX with its model card (``model.onnx`` + ``model_card.json``).

Every export has the output ``descriptors`` ``(B, D)``. A model with a pose
head (pose_attention presets) also exports ``position_m`` ``(B, 3)``, relative
to the card's ``pose_origin_m``, and ``orientation_xyzw`` ``(B, 4)``, unit with
``w >= 0``; the card's ``outputs`` lists them in graph order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Optional, Sequence
import warnings

import torch
from torch import nn

from vl_attention.config import ConfigError, from_dict
from vl_attention.engine.backend_base import BackendUnavailable
from vl_attention.engine.export_format import (CARD_FILE, INPUT_NAME,  # noqa: F401
                                               ONNX_FILE, ONNX_OPSET, OUTPUT_NAME, read_export)
from vl_attention.engine.card_builder import make_model_card, weights_sha256
from vl_attention.engine.model_card import ModelCard
from vl_attention.io import atomic_path, StrPath
from vl_attention.models import (build_model, DEFAULT_MODEL, DescriptorModel,
                                 load_model_checkpoint, load_model_config, ModelConfig)
from vl_attention.models.pose_attention import pose_head, PoseOutputs

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What ``vl-attention export`` exports.

    ``weights`` is a checkpoint of the whole descriptor model (``''`` keeps
    the preset's own weights); a size of 0 keeps the preset's input size;
    ``dynamic_size`` makes H x W dynamic in the graph (batch always is).
    """

    model: str = DEFAULT_MODEL
    weights: str = ''
    input_height: int = 0
    input_width: int = 0
    dynamic_size: bool = False


def _dynamic_axes(dynamic_size: bool, output_names: Sequence[str] = (OUTPUT_NAME,)
                  ) -> dict[str, dict[int, str]]:
    axes = {0: 'batch', 2: 'height', 3: 'width'} if dynamic_size else {0: 'batch'}
    return {INPUT_NAME: axes, **{name: {0: 'batch'} for name in output_names}}


def export_module(model: DescriptorModel, card: ModelCard) -> nn.Module:
    """Return the module the export traces: the model, or its pose view for a pose card."""
    if not card.has_pose:
        return model
    if pose_head(model) is None:
        raise ConfigError(f'the card of {card.model_name!r} lists outputs {list(card.outputs)} '
                          'but the model has no pose head; make the card from this model')
    return PoseOutputs(model)


def export_onnx(model: DescriptorModel, card: ModelCard, out_dir: StrPath, *,
                dynamic_size: Optional[bool] = None) -> Path:
    """Write ``out_dir/model.onnx`` (dynamic batch, fixed or dynamic H x W) and its card.

    Both files are written atomically; the card gains the opset and the
    ONNX file's sha256 so the graph itself is fingerprinted too. Returns
    ``out_dir``. ``dynamic_size=None`` follows ``card.dynamic_size``.
    """
    dynamic_size = card.dynamic_size if dynamic_size is None else bool(dynamic_size)
    _check_dynamic_size(model, card, dynamic_size)
    out_dir = Path(out_dir)
    prep = card.preprocessing
    example = torch.zeros(1, 3, prep.input_height, prep.input_width)
    model = model.eval()
    traced = export_module(model, card).eval()
    output_names = list(card.outputs)
    with atomic_path(out_dir / ONNX_FILE) as temporary, warnings.catch_warnings():
        # The TorchScript exporter is deprecated but needs no onnxscript and
        # handles every layer we use; the dynamo exporter is not installed here.
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(traced, (example,), str(temporary), dynamo=False,
                          input_names=[INPUT_NAME], output_names=output_names,
                          dynamic_axes=_dynamic_axes(dynamic_size, output_names),
                          opset_version=ONNX_OPSET)
        onnx_sha256 = hashlib.sha256(temporary.read_bytes()).hexdigest()
    exported = dataclasses.replace(card, onnx_opset=ONNX_OPSET, onnx_sha256=onnx_sha256,
                                   dynamic_size=dynamic_size)
    exported.save(out_dir / CARD_FILE)
    LOG.info('exported %s (fingerprint %s) to %s', card.model_name, card.fingerprint, out_dir)
    return out_dir


def _check_dynamic_size(model: nn.Module, card: ModelCard, dynamic_size: bool) -> None:
    # Heads whose pooling layout is computed from the feature-map size at
    # trace time (R-MAC regions) would silently keep the traced layout.
    if dynamic_size and getattr(getattr(model, 'aggregator', None), 'fixed_input_size', False):
        raise ConfigError(f'model {card.model_name!r} traces its pooling layout for one input '
                          'size, so it cannot be exported with a dynamic size; export it at '
                          'the size you run it (--height/--width) without --dynamic-size')


def cached_export(model: DescriptorModel, card: ModelCard, cache_dir: StrPath) -> Path:
    """Export once per fingerprint into ``cache_dir/<fingerprint>/``; reuse it afterwards."""
    export_dir = Path(cache_dir) / card.fingerprint
    try:
        cached = read_export(export_dir)
        if cached.fingerprint == card.fingerprint:
            return export_dir
    except (OSError, ValueError) as error:
        if export_dir.exists():
            LOG.warning('re-exporting: cached export unusable (%s)', error)
    return export_onnx(model, card, export_dir)


def model_for_export(cfg: ExportConfig) -> tuple[DescriptorModel, ModelCard]:
    """Build the torch model and card an :class:`ExportConfig` describes."""
    config = load_model_config(cfg.model)
    if cfg.input_height or cfg.input_width:
        config = dataclasses.replace(config, input_height=cfg.input_height or config.input_height,
                                     input_width=cfg.input_width or config.input_width)
    model = build_model(config)
    weights_file = str(Path(cfg.weights).resolve()) if cfg.weights else ''
    if weights_file:
        load_model_checkpoint(model, weights_file)
    card = make_model_card(config, model, weights_file=weights_file)
    return model, dataclasses.replace(card, dynamic_size=cfg.dynamic_size)


def main(cfg: ExportConfig, out_dir: StrPath) -> Path:
    """Export the model of ``cfg`` into ``out_dir`` (``model.onnx`` + ``model_card.json``)."""
    model, card = model_for_export(cfg)
    export_onnx(model, card, out_dir)
    return Path(out_dir)


def rebuild_model(card: ModelCard) -> DescriptorModel:
    """Rebuild the torch model of an exported card; refuse it unless its weights hash matches."""
    model = build_model(from_dict(ModelConfig, card.model_config, where='model card'))
    if card.weights_file:
        load_model_checkpoint(model, card.weights_file)
    if weights_sha256(model) != card.weights_sha256:
        raise BackendUnavailable(
            f'the torch model of {card.model_name} cannot be rebuilt with the exported weights '
            '(random or changed weights); use the ONNX-based backends for this export')
    return model
