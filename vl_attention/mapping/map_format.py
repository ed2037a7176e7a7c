"""The map directory: manifest + FAISS index + descriptors + per-image records. No pickle.

::

    <map>/manifest.json     format version, model, metric, count, origin, index type and
                            parameters, build statistics, per-file size and checksums
    <map>/index.faiss       FAISS index (faiss.write_index)
    <map>/descriptors.npy   float32 (N, D) database descriptors (np.save, no object arrays):
                            exact re-ranking, incremental add and rebuilding another index type
    <map>/records.npz       column arrays of :class:`PlaceRecords` (np.savez, no object arrays)

A map is written into a staging directory and swapped in whole, so a crash
never leaves a half-written map.

Verification on load (``verify``): the size of every file is always checked.
Hashing a multi-GB file would dominate the load time, so ``'auto'`` hashes a
file completely (sha256) only up to :data:`FULL_HASH_MAX_BYTES` and otherwise
hashes its first and last MiB (``edge_sha256``, which catches truncation and
torn writes); ``'full'`` always hashes everything (``vl-attention map info
--verify``) and ``'size'`` only checks sizes. Large maps are memory-mapped
(``mmap='auto'`` above :data:`MMAP_MIN_BYTES`): the descriptors always, the
index codes too, so a 1M-image map loads in well under a second and pages in
only what searches touch. A memory-mapped index is read-only; ``add`` loads
with ``mmap=False``.

``<map>/model/`` holds the export (``model.onnx`` + ``model_card.json``) of the
model that made the descriptors, checksummed like the other files.

Format history: 1 had no descriptors file; 2 adds descriptors.npy, index
parameters and build statistics; 3 (this) adds the similarity calibration
(``calibration``), the model (``model/``) and, optionally, local features
with 3-D points and the camera model (:mod:`.local_feature_map`). Version 2 maps still load (the
localizer fits the calibration at start and runs without refinement); other
versions are refused with an error naming both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
import datetime
import hashlib
import io
import json
from pathlib import Path
import shutil
from typing import Any, cast, Literal, Mapping, Optional, Union

import faiss
import numpy as np

from vl_attention import __version__
from vl_attention.config import ConfigError, from_dict
from vl_attention.engine.embedder import EmbedderConfig
from vl_attention.geo import GeodeticOrigin
from vl_attention.io import atomic_directory, StrPath
from vl_attention.mapping.errors import MapFormatError
from vl_attention.mapping.layout import (DESCRIPTORS_FILE, INDEX_FILE, MANIFEST_FILE,  # noqa: F401
                                         MODEL_DIR, MODEL_FILES, RECORDS_FILE, VERIFY_MODES)
from vl_attention.mapping.index import IndexFileError, IndexParams, MapIndex
from vl_attention.mapping.local_feature_map import (CAMERA_FILE, FEATURE_FILES,
                                                    load_local_feature_map, LocalFeatureMap,
                                                    save_local_feature_map)
from vl_attention.mapping.records import PlaceRecords
from vl_attention.mapping.validation import refuse_damaged, validate_map

MAP_FORMAT_VERSION = 3
READABLE_FORMAT_VERSIONS = (2, 3)
# What a map's poses describe (manifest.build['poses_frame']): the camera body frame, or the
# robot's base (a map built from the robot's own poses, e.g. odometry in a bag: the camera's
# mounting is then inside them).
POSES_FRAMES = ('camera', 'base')
FULL_HASH_MAX_BYTES = 256 << 20
MMAP_MIN_BYTES = 256 << 20
EDGE_BYTES = 1 << 20


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
    index_params: dict = field(default_factory=dict)
    build: dict = field(default_factory=dict)
    created_utc: str = ''
    package_version: str = __version__
    files: dict = field(default_factory=dict)
    format_version: int = MAP_FORMAT_VERSION
    calibration: dict = field(default_factory=dict)
    local_features: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Map:
    """A loaded map."""

    manifest: MapManifest
    index: MapIndex
    records: PlaceRecords
    local_features: Optional[LocalFeatureMap] = None


def save_map(path: StrPath, manifest: MapManifest, index: MapIndex, records: PlaceRecords,
             local_features: Optional[LocalFeatureMap] = None,
             model_dir: Optional[StrPath] = None) -> Path:
    """Write a map atomically to directory ``path``; return ``path``.

    ``model_dir`` (an export: ``model.onnx`` + ``model_card.json`` of the
    model that made the descriptors) is copied into the map, so the map
    carries its model and the node needs nothing but ``map_dir``.
    """
    if not len(index) == len(records) == manifest.count:
        raise ValueError(f'map parts disagree: index {len(index)}, records {len(records)}, '
                         f'manifest count {manifest.count}')
    path = Path(path)
    with atomic_directory(path) as staging:
        faiss.write_index(index.faiss_index, str(staging / INDEX_FILE))
        np.save(staging / DESCRIPTORS_FILE, _descriptors_of(index), allow_pickle=False)
        (staging / RECORDS_FILE).write_bytes(_records_bytes(records))
        names: tuple[str, ...] = (INDEX_FILE, DESCRIPTORS_FILE, RECORDS_FILE)
        feature_info = dict(manifest.local_features)
        if local_features is not None:
            if len(local_features) != len(records):
                raise ValueError(f'local features cover {len(local_features)} images, the map '
                                 f'{len(records)}')
            save_local_feature_map(staging, local_features)
            names += FEATURE_FILES + (CAMERA_FILE,)
            feature_info = local_features.statistics()
        if model_dir is not None:
            _copy_model(Path(model_dir), staging, manifest.model_fingerprint)
            names += MODEL_FILES
        files = {name: _file_checksums(staging / name) for name in names}
        created = manifest.created_utc or \
            datetime.datetime.now(datetime.timezone.utc).isoformat()
        values = asdict(manifest) | {'files': files, 'created_utc': created,
                                     'index_type': index.index_type,
                                     'index_params': index.params.as_dict(),
                                     'format_version': MAP_FORMAT_VERSION,
                                     'local_features': feature_info}
        (staging / MANIFEST_FILE).write_text(json.dumps(values, indent=2))
    return path


def _copy_model(model_dir: Path, staging: Path, fingerprint: str) -> None:
    from vl_attention.engine.export_format import read_export
    card = read_export(model_dir)
    if card.fingerprint != fingerprint:
        raise ValueError(f'model export {model_dir} has fingerprint {card.fingerprint}, but '
                         f'the descriptors of the map come from {fingerprint}')
    (staging / MODEL_DIR).mkdir()
    for name in MODEL_FILES:
        shutil.copyfile(model_dir / Path(name).name, staging / name)


def map_model_dir(path: StrPath) -> Optional[Path]:
    """Return the export a map carries (``<map>/model``); None for maps built without one."""
    model_dir = Path(path) / MODEL_DIR
    return model_dir if all((Path(path) / name).is_file() for name in MODEL_FILES) else None


def poses_frame_of(build: Mapping[str, Any]) -> str:
    """Return what a map's poses describe, from its manifest's ``build`` record.

    Maps built before the record existed hold camera poses (``poses.csv``'s meaning).
    """
    frame = build.get('poses_frame', 'camera')
    if frame not in POSES_FRAMES:
        raise MapFormatError(f'the map says its poses describe {frame!r}, not one of '
                             f'{POSES_FRAMES}; rebuild the map')
    return str(frame)


def carried_model_config(config: EmbedderConfig, map_dir: StrPath) -> EmbedderConfig:
    """Return ``config`` set to run the model the map carries, unless it names an export.

    The node's rule, shared by the offline evaluators: with a map that carries
    its model (e.g. one whose vocabulary was fitted on it), that model runs;
    ``config.model`` then only checks that it is the one.
    """
    carried = map_model_dir(map_dir)
    if config.export_dir or carried is None:
        return config
    return replace(config, export_dir=str(carried))


@refuse_damaged
def load_map(path: StrPath, *, expected_fingerprint: Optional[str] = None, verify: str = 'auto',
             mmap: Union[bool, Literal['auto']] = 'auto',
             search_params: Optional[Mapping[str, Any]] = None) -> Map:
    """Load and verify a map; refuse one built with another model than ``expected_fingerprint``.

    ``search_params`` (a dict such as ``{'nprobe': 64, 'rerank_k': 100}``)
    overrides the search parameters stored in the manifest.
    """
    path = Path(path)
    manifest = read_manifest(path)
    _check_fingerprint(path, manifest, expected_fingerprint)
    feature_files = FEATURE_FILES + (CAMERA_FILE,) if manifest.local_features else ()
    model_files = MODEL_FILES if MODEL_FILES[0] in manifest.files else ()
    for name in (INDEX_FILE, DESCRIPTORS_FILE, RECORDS_FILE) + feature_files + model_files:
        verify_file(path, name, manifest, verify)
    if mmap == 'auto':
        mmap = (path / DESCRIPTORS_FILE).stat().st_size >= MMAP_MIN_BYTES
    descriptors = _load_descriptors(path / DESCRIPTORS_FILE)
    params = _index_params(manifest, search_params, path)
    index = MapIndex.read(path / INDEX_FILE, manifest.index_type, mmap=bool(mmap),
                          params=params, descriptors=descriptors)
    records = _records_from_bytes((path / RECORDS_FILE).read_bytes(), path)
    if not len(index) == len(records) == len(descriptors) == manifest.count or \
            index.dim != manifest.descriptor_dim or descriptors.shape[1] != index.dim:
        raise MapFormatError(f'map {path} is inconsistent: manifest says {manifest.count} x '
                             f'{manifest.descriptor_dim}-D, index holds {len(index)} x '
                             f'{index.dim}-D, descriptors {descriptors.shape}, records '
                             f'{len(records)}; rebuild the map')
    local_features = None
    if manifest.local_features:
        local_features = load_local_feature_map(path, manifest.local_features['kind'])
        if len(local_features) != manifest.count:
            raise MapFormatError(f'map {path}: local features cover {len(local_features)} '
                                 f'images, the manifest {manifest.count}; rebuild the map')
    loaded = Map(manifest, index, records, local_features)
    validate_map(path, loaded, full=verify == 'full')
    return loaded


def read_manifest(path: StrPath) -> MapManifest:
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
    if version not in READABLE_FORMAT_VERSIONS:
        raise MapFormatError(f'map {path} has format version {version}; this vl_attention '
                             f'({__version__}) reads versions '
                             f'{READABLE_FORMAT_VERSIONS}; rebuild '
                             'the map with this version or use the version that wrote it')
    try:
        return from_dict(MapManifest, values, where=str(manifest_path))
    except ConfigError as error:
        raise MapFormatError(str(error)) from error


def verify_file(path: StrPath, name: str, manifest: MapManifest, verify: str = 'auto') -> None:
    """Check one map file against the manifest's size and checksums (see module docs)."""
    if verify not in VERIFY_MODES:
        raise ValueError(f'unknown verify mode {verify!r}; known: {VERIFY_MODES}')
    file_path = Path(path) / name
    expected = manifest.files.get(name, {})
    if not file_path.is_file():
        raise MapFormatError(f'{file_path} is missing; rebuild the map')
    size = file_path.stat().st_size
    problem = None
    if size != expected.get('bytes'):
        problem = f'{size} bytes, manifest says {expected.get("bytes")}'
    elif verify == 'full' or (verify == 'auto' and size <= FULL_HASH_MAX_BYTES):
        if _sha256(file_path) != expected.get('sha256'):
            problem = 'sha256 differs from the manifest'
    elif verify == 'auto' and _edge_sha256(file_path) != expected.get('edge_sha256'):
        problem = 'first/last MiB checksum differs from the manifest'
    if problem:
        raise MapFormatError(f'{file_path} is truncated or corrupt ({problem}); rebuild the map')


def _check_fingerprint(path: Path, manifest: MapManifest,
                       expected_fingerprint: Optional[str]) -> None:
    if expected_fingerprint is not None and manifest.model_fingerprint != expected_fingerprint:
        raise MapFormatError(
            f'map {path} was built with model {manifest.model_name!r} fingerprint '
            f'{manifest.model_fingerprint}, but the running model has fingerprint '
            f'{expected_fingerprint}; rebuild the map with this model or run the model of the map')


def _index_params(manifest: MapManifest, search_params: Optional[Mapping[str, Any]],
                  path: Path) -> IndexParams:
    values = dict(manifest.index_params) | dict(search_params or {})
    try:
        return from_dict(IndexParams, values, where=f'{path / MANIFEST_FILE} index_params')
    except ConfigError as error:
        raise MapFormatError(str(error)) from error


def _descriptors_of(index: MapIndex) -> np.ndarray:
    if index.descriptors is not None and len(index.descriptors) == len(index):
        return np.asarray(index.descriptors, np.float32)
    try:  # flat and HNSW indices hold the float vectors themselves
        return index.faiss_index.reconstruct_n(0, len(index))
    except RuntimeError as error:
        raise ValueError(f'the {index.index_type} index keeps no float descriptors; build it '
                         'with MapIndex.build so that they are saved') from error


def _load_descriptors(file_path: Path) -> np.ndarray:
    try:
        descriptors = np.load(file_path, mmap_mode='r', allow_pickle=False)
    except (ValueError, OSError) as error:
        raise IndexFileError(f'{file_path} is unreadable ({error}); rebuild the map') from error
    if descriptors.ndim != 2 or descriptors.dtype != np.float32:
        raise MapFormatError(f'{file_path} holds {descriptors.dtype} {descriptors.shape}, '
                             'expected float32 (N, D); rebuild the map')
    return descriptors


def _file_checksums(file_path: Path) -> dict[str, Any]:
    return {'bytes': file_path.stat().st_size, 'sha256': _sha256(file_path),
            'edge_sha256': _edge_sha256(file_path)}


def _sha256(file_path: StrPath) -> str:
    digest = hashlib.sha256()
    with open(file_path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(8 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _edge_sha256(file_path: Path) -> str:
    size = file_path.stat().st_size
    with open(file_path, 'rb') as handle:
        head = handle.read(EDGE_BYTES)
        handle.seek(max(0, size - EDGE_BYTES))
        tail = handle.read(EDGE_BYTES)
    return hashlib.sha256(head + tail).hexdigest()


def _records_bytes(records: PlaceRecords) -> bytes:
    buffer = io.BytesIO()
    # Any: numpy 2's stubs read ** as possibly holding allow_pickle
    np.savez(buffer, **cast('dict[str, Any]', records.arrays()))
    return buffer.getvalue()


def _records_from_bytes(data: bytes, path: Path) -> PlaceRecords:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            return PlaceRecords(**{name: arrays[name]
                                   for name in PlaceRecords.__dataclass_fields__})
    except (KeyError, ValueError, OSError) as error:
        raise MapFormatError(f'{path / RECORDS_FILE} is unreadable ({error}); rebuild the map') \
            from error


__all__ = ['IndexFileError', 'Map', 'MapFormatError', 'MapManifest', 'load_map', 'map_model_dir',
           'read_manifest', 'save_map', 'verify_file']
