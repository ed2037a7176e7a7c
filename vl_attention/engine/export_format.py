"""The export directory (``model.onnx`` + ``model_card.json``): names and the checked reader.

Torch-free: the runtime reads exports (and the model a map carries) without
importing torch; writing them is :mod:`vl_attention.engine.export`.
"""

import hashlib
from pathlib import Path

from vl_attention.engine.model_card import ModelCard
from vl_attention.errors import VLAttentionError
from vl_attention.io import StrPath
from vl_attention.model_outputs import DESCRIPTOR_OUTPUT

ONNX_FILE = 'model.onnx'
CARD_FILE = 'model_card.json'
ONNX_OPSET = 17
INPUT_NAME = 'images'
OUTPUT_NAME = DESCRIPTOR_OUTPUT


class ExportError(VLAttentionError, ValueError):
    """An export directory is damaged (its files disagree); the fix is to export again."""


class MissingExportError(ExportError, FileNotFoundError):
    """A file of an export directory is missing; the fix is to export again."""


def read_export(export_dir: StrPath) -> ModelCard:
    """Card of an export directory, checked against the ONNX file beside it."""
    export_dir = Path(export_dir)
    card = ModelCard.load(export_dir / CARD_FILE)
    onnx_path = export_dir / ONNX_FILE
    if not onnx_path.is_file():
        raise MissingExportError(f'{onnx_path} is missing; export the model again')
    actual = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    if actual != card.onnx_sha256:
        raise ExportError(f'{onnx_path} does not match its model card (sha256 {actual[:12]} '
                          f'vs {card.onnx_sha256[:12]}); the export is damaged, export again')
    return card
