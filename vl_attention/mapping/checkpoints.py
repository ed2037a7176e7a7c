"""Resumable embedding: descriptors and poses saved batch by batch beside the output.

``<out>/../.<name>.partial/`` holds ``build.json`` (what is being built: the
input, the model fingerprint and the frame selection) and ``batch_NNNNNN.npz``
files, each written atomically. A rerun with the same ``build.json`` loads the
batches, skips that many frames (without decoding them) and continues; batches
are multiples of the embedding batch size, so the descriptors are bit-identical
to an uninterrupted build. Any other ``build.json`` is refused unless restarted.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
import shutil
from typing import Any, cast, Mapping

import numpy as np

from vl_attention.errors import VLAttentionError
from vl_attention.io import atomic_write_bytes, atomic_write_text, make_directory, StrPath

LOG = logging.getLogger(__name__)
SIGNATURE_FILE = 'build.json'
COLUMNS = ('descriptors', 'image_id', 'stamp_ns', 'latitude_deg', 'longitude_deg',
           'altitude_m', 'orientation_xyzw')


class ResumeError(VLAttentionError, RuntimeError):
    """A partial build of different inputs is in the way."""


def partial_dir(out_dir: StrPath, suffix: str = 'partial') -> Path:
    """Work directory of a build into ``out_dir``."""
    out_dir = Path(out_dir)
    return out_dir.parent / f'.{out_dir.name}.{suffix}'


class CheckpointStore:
    """Batches of an in-progress build."""

    def __init__(self, directory: StrPath, signature: Mapping[str, Any], *,
                 restart: bool = False) -> None:
        self.directory = Path(directory)
        if restart and self.directory.exists():
            shutil.rmtree(self.directory)
        self._check_signature(signature)
        self.batches = sorted(self.directory.glob('batch_*.npz'))

    def _check_signature(self, signature: Mapping[str, Any]) -> None:
        text = json.dumps(signature, indent=2, sort_keys=True)
        path = self.directory / SIGNATURE_FILE
        if path.is_file() and path.read_text() != text:
            raise ResumeError(f'{self.directory} holds a partial build of other inputs or '
                              'settings; delete it or pass --restart to start over')
        make_directory(self.directory, 'partial-build directory')
        if not path.is_file():
            atomic_write_text(path, text)

    def load(self) -> dict[str, np.ndarray]:
        """Columns of every saved batch, concatenated (empty dict when none)."""
        parts = []
        for path in self.batches:
            with np.load(path, allow_pickle=False) as arrays:
                parts.append({name: arrays[name] for name in COLUMNS})
        if parts:
            LOG.info('resuming: %d frames already embedded in %d batches',
                     sum(len(p['stamp_ns']) for p in parts), len(parts))
        return {name: np.concatenate([p[name] for p in parts]) for name in COLUMNS} \
            if parts else {}

    def save(self, columns: Mapping[str, np.ndarray]) -> None:
        """Append one batch atomically."""
        path = self.directory / f'batch_{len(self.batches):06d}.npz'
        buffer = io.BytesIO()
        # Any: numpy 2's stubs read ** as possibly holding allow_pickle
        np.savez(buffer, **cast('Mapping[str, Any]', columns))
        atomic_write_bytes(path, buffer.getvalue())
        self.batches.append(path)

    def remove(self) -> None:
        """Delete the work directory (after the map is saved)."""
        shutil.rmtree(self.directory, ignore_errors=True)
