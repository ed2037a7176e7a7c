"""The map directory: manifest + FAISS index + per-image records. No pickle anywhere.

::

    <map>/manifest.json   format version, model, metric, count, origin, file checksums
    <map>/index.faiss     FAISS index (faiss.serialize_index bytes)
    <map>/records.npz     column arrays of :class:`PlaceRecords` (np.savez, no object arrays)

A map is written into a staging directory and swapped in whole, so a crash
never leaves a half-written map.
"""

from dataclasses import asdict, dataclass, field
import datetime
import hashlib
import io
import json
from pathlib import Path

import numpy as np

from vl_attention import __version__
from vl_attention.config import ConfigError, from_dict
from vl_attention.geo import GeodeticOrigin
from vl_attention.io import atomic_directory
from vl_attention.mapping.index import IndexFileError, MapIndex
from vl_attention.mapping.records import PlaceRecords

MAP_FORMAT_VERSION = 1
MANIFEST_FILE = 'manifest.json'
INDEX_FILE = 'index.faiss'
RECORDS_FILE = 'records.npz'


class MapFormatError(RuntimeError):
    """A map directory is missing, damaged, of an unknown version or of another model."""


@dataclass(frozen=True)
class MapManifest:
    """Description of a map directory."""

    model_name: str
    model_fingerprint: str
    descriptor_dim: int
    count: int
    geodetic_origin: GeodeticOrigin
    metric: str = 'inner_product'
    index_type: str = 'flat_ip'
    created_utc: str = ''
    package_version: str = __version__
    files: dict = field(default_factory=dict)
    format_version: int = MAP_FORMAT_VERSION


@dataclass(frozen=True)
class Map:
    """A loaded map."""

    manifest: MapManifest
    index: MapIndex
    records: PlaceRecords


def save_map(path, manifest, index, records):
    """Write a map atomically to directory ``path``; return ``path``."""
    if not len(index) == len(records) == manifest.count:
        raise ValueError(f'map parts disagree: index {len(index)}, records {len(records)}, '
                         f'manifest count {manifest.count}')
    payloads = {INDEX_FILE: index.serialize(), RECORDS_FILE: _records_bytes(records)}
    files = {name: {'bytes': len(data), 'sha256': hashlib.sha256(data).hexdigest()}
             for name, data in payloads.items()}
    created = manifest.created_utc or datetime.datetime.now(datetime.timezone.utc).isoformat()
    manifest_values = asdict(manifest) | {'files': files, 'created_utc': created}
    path = Path(path)
    with atomic_directory(path) as staging:
        for name, data in payloads.items():
            (staging / name).write_bytes(data)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest_values, indent=2))
    return path


def load_map(path, *, expected_fingerprint=None):
    """Load and verify a map; refuse one built with another model than ``expected_fingerprint``."""
    path = Path(path)
    manifest = read_manifest(path)
    if expected_fingerprint is not None and manifest.model_fingerprint != expected_fingerprint:
        raise MapFormatError(
            f'map {path} was built with model {manifest.model_name!r} fingerprint '
            f'{manifest.model_fingerprint}, but the running model has fingerprint '
            f'{expected_fingerprint}; rebuild the map with this model or run the model of the map')
    index = MapIndex.deserialize(_verified_bytes(path, INDEX_FILE, manifest), manifest.index_type,
                                 source=str(path / INDEX_FILE))
    records = _records_from_bytes(_verified_bytes(path, RECORDS_FILE, manifest), path)
    if not len(index) == len(records) == manifest.count or index.dim != manifest.descriptor_dim:
        raise MapFormatError(f'map {path} is inconsistent: manifest says {manifest.count} x '
                             f'{manifest.descriptor_dim}-D, index holds {len(index)} x '
                             f'{index.dim}-D, records {len(records)}; rebuild the map')
    return Map(manifest, index, records)


def read_manifest(path):
    """Manifest of the map at ``path``, with clear errors for missing or unknown formats."""
    manifest_path = Path(path) / MANIFEST_FILE
    if not manifest_path.is_file():
        raise MapFormatError(f'{path} is not a map: {MANIFEST_FILE} is missing; '
                             'build one with `vl-attention build-map`')
    try:
        values = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise MapFormatError(f'{manifest_path} is not valid JSON ({error}); rebuild the map') \
            from error
    version = values.get('format_version')
    if version != MAP_FORMAT_VERSION:
        raise MapFormatError(f'map {path} has format version {version}; this vl_attention '
                             f'({__version__}) reads version {MAP_FORMAT_VERSION}')
    try:
        return from_dict(MapManifest, values, where=str(manifest_path))
    except ConfigError as error:
        raise MapFormatError(str(error)) from error


def _verified_bytes(path, name, manifest):
    file_path = Path(path) / name
    expected = manifest.files.get(name, {})
    if not file_path.is_file():
        raise MapFormatError(f'{file_path} is missing; rebuild the map')
    data = file_path.read_bytes()
    if len(data) != expected.get('bytes') or \
            hashlib.sha256(data).hexdigest() != expected.get('sha256'):
        raise MapFormatError(f'{file_path} is truncated or corrupt ({len(data)} bytes, '
                             f'manifest says {expected.get("bytes")}); rebuild the map')
    return data


def _records_bytes(records):
    buffer = io.BytesIO()
    np.savez(buffer, **records.arrays())
    return buffer.getvalue()


def _records_from_bytes(data, path):
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            return PlaceRecords(**{name: arrays[name]
                                   for name in PlaceRecords.__dataclass_fields__})
    except (KeyError, ValueError, OSError) as error:
        raise MapFormatError(f'{path / RECORDS_FILE} is unreadable ({error}); rebuild the map') \
            from error


__all__ = ['IndexFileError', 'Map', 'MapFormatError', 'MapManifest', 'load_map', 'read_manifest',
           'save_map']
