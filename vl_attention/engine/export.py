"""Export a descriptor model to ONNX with its model card (``model.onnx`` + ``model_card.json``)."""

import dataclasses
import hashlib
import logging
from pathlib import Path
import warnings

import torch

from vl_attention.engine.model_card import ModelCard
from vl_attention.io import atomic_path

LOG = logging.getLogger(__name__)

ONNX_FILE = 'model.onnx'
CARD_FILE = 'model_card.json'
ONNX_OPSET = 17
INPUT_NAME = 'images'
OUTPUT_NAME = 'descriptors'


def export_onnx(model, card, out_dir):
    """Write ``out_dir/model.onnx`` (dynamic batch, fixed H x W) and its card; return the dir.

    Both files are written atomically; the card gains the opset and the
    ONNX file's sha256 so the graph itself is fingerprinted too.
    """
    out_dir = Path(out_dir)
    prep = card.preprocessing
    example = torch.zeros(1, 3, prep.input_height, prep.input_width)
    model = model.eval()
    with atomic_path(out_dir / ONNX_FILE) as temporary, warnings.catch_warnings():
        # The TorchScript exporter is deprecated but needs no onnxscript and
        # handles every layer we use; the dynamo exporter is not installed here.
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(model, (example,), str(temporary), dynamo=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: 'batch'}, OUTPUT_NAME: {0: 'batch'}},
                          opset_version=ONNX_OPSET)
        onnx_sha256 = hashlib.sha256(temporary.read_bytes()).hexdigest()
    exported = dataclasses.replace(card, onnx_opset=ONNX_OPSET, onnx_sha256=onnx_sha256)
    exported.save(out_dir / CARD_FILE)
    LOG.info('exported %s (fingerprint %s) to %s', card.model_name, card.fingerprint, out_dir)
    return out_dir


def read_export(export_dir):
    """Card of an export directory, checked against the ONNX file beside it."""
    export_dir = Path(export_dir)
    card = ModelCard.load(export_dir / CARD_FILE)
    onnx_path = export_dir / ONNX_FILE
    if not onnx_path.is_file():
        raise FileNotFoundError(f'{onnx_path} is missing; export the model again')
    actual = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    if actual != card.onnx_sha256:
        raise ValueError(f'{onnx_path} does not match its model card (sha256 {actual[:12]} '
                         f'vs {card.onnx_sha256[:12]}); the export is damaged, export again')
    return card


def cached_export(model, card, cache_dir):
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
