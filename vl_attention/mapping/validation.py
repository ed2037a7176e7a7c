"""Content checks of a loaded map: a damaged map is refused with one line, never a traceback.

Checksums (:func:`~vl_attention.mapping.map_format.verify_file`) catch a file
changed after the build; these checks catch values no localizer can use,
whatever wrote them: records with non-finite or wrongly shaped positions,
non-unit quaternions, descriptors that are not finite unit vectors, an index
that disagrees with the descriptors, and broken local-feature tables.

Huge memory-mapped arrays are checked on a bounded sample (fixed seed) plus
their first and last rows, so a 1M-image map still loads in well under a
second; ``full=True`` (``vl-attention map info --verify``) checks every row.

Every failure raises :class:`~vl_attention.mapping.errors.MapFormatError`
naming the file, the first bad row and the fix (rebuild the map);
:func:`refuse_damaged` turns the low-level errors of reading damaged files
(bad zip, short reads, unparsable headers, FAISS read errors) into it too.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
import struct
import tokenize
from typing import Any, Callable, cast, Iterator, NoReturn, Optional, Protocol, TYPE_CHECKING, \
    TypeVar, Union
import zipfile
import zlib

import numpy as np
import numpy.typing as npt

from vl_attention.errors import one_line
from vl_attention.mapping.errors import MapFormatError
from vl_attention.mapping.layout import DESCRIPTORS_FILE, INDEX_FILE, RECORDS_FILE, VERIFY_MODES

if TYPE_CHECKING:
    import faiss

    from vl_attention.io import StrPath
    from vl_attention.mapping.index import MapIndex
    from vl_attention.mapping.local_feature_map import LocalFeatureMap
    from vl_attention.mapping.records import PlaceRecords

LOG = logging.getLogger(__name__)

UNIT_NORM_TOLERANCE = 1e-3
DEFAULT_SAMPLE_ROWS = 4096
EDGE_ROWS = 64
SAMPLE_SEED = 20_21
CHUNK_ROWS = 1 << 16
INDEX_DESCRIPTOR_TOLERANCE = 1e-5
FIX = 'rebuild the map'

# What reading a damaged file raises from zipfile, numpy (its .npy header parser), json, FAISS.
READ_ERRORS = (zipfile.BadZipFile, EOFError, ValueError, KeyError, OSError, RuntimeError,
               MemoryError, OverflowError, struct.error, zlib.error, UnicodeDecodeError,
               json.JSONDecodeError, SyntaxError, tokenize.TokenError)

_Load = TypeVar('_Load', bound=Callable[..., Any])


class _Manifest(Protocol):
    """What :func:`validate_map` reads of a :class:`~.map_format.MapManifest`."""

    @property
    def count(self) -> int: ...

    @property
    def metric(self) -> str: ...


class _LoadedMap(Protocol):
    """What :func:`validate_map` reads of a :class:`~.map_format.Map` (not imported: a cycle)."""

    @property
    def manifest(self) -> _Manifest: ...

    @property
    def index(self) -> MapIndex: ...

    @property
    def records(self) -> PlaceRecords: ...

    @property
    def local_features(self) -> Optional[LocalFeatureMap]: ...


def refuse_damaged(load: _Load) -> _Load:
    """Wrap ``load(path, ...)`` so that reading a damaged map raises one MapFormatError line."""
    @functools.wraps(load)
    def checked(path: StrPath, *args: Any, **kwargs: Any) -> Any:
        error_type = MapFormatError
        _check_verify_mode(kwargs.get('verify', 'auto'))
        try:
            return load(path, *args, **kwargs)
        except error_type as error:
            if FIX in str(error):
                raise
            raise error_type(f'{error}; {FIX}') from error   # e.g. a manifest's ConfigError
        except READ_ERRORS as error:
            where = Path(path) / 'records.npz' if isinstance(error, zipfile.BadZipFile) else \
                f'map {path}'
            raise error_type(f'{where} is damaged and unreadable ({type(error).__name__}: '
                             f'{one_line(error)[:300]}); {FIX}') from error
    return cast('_Load', checked)


def validate_map(path: StrPath, loaded: _LoadedMap, *, full: bool = False) -> None:
    """Check every part of a loaded :class:`Map` (``full``: every row, else a sample)."""
    path = Path(path)
    sample = None if full else DEFAULT_SAMPLE_ROWS
    validate_records(loaded.records, path / RECORDS_FILE, count=loaded.manifest.count)
    descriptors = loaded.index.descriptors
    if descriptors is None:
        _fail(path / DESCRIPTORS_FILE, 'is not loaded with the index')
    validate_descriptors(descriptors, path / DESCRIPTORS_FILE, sample=sample)
    validate_index(loaded.index, descriptors, path / INDEX_FILE, metric=loaded.manifest.metric,
                   sample=sample)
    if loaded.local_features is not None:
        validate_local_features(loaded.local_features, path, count=loaded.manifest.count,
                                sample=sample)


def validate_records(records: PlaceRecords, path: StrPath, *,
                     count: Optional[int] = None) -> None:
    """Refuse records that are not N finite rows of the right shapes with unit quaternions."""
    n = len(records.image_id)
    if count is not None and n != count:
        _fail(path, f'holds {n} records, the manifest {count}')
    shapes = {'image_id': (n,), 'stamp_ns': (n,), 'latitude_deg': (n,), 'longitude_deg': (n,),
              'altitude_m': (n,), 'position_enu_m': (n, 3), 'orientation_xyzw': (n, 4)}
    for name, shape in shapes.items():
        column = getattr(records, name)
        if column.shape != shape:
            _fail(path, f'{name} has shape {column.shape}, expected {shape}')
    if records.image_id.dtype.kind != 'U':
        _fail(path, f'image_id is {records.image_id.dtype}, expected strings')
    if records.stamp_ns.dtype.kind not in 'iu':
        _fail(path, f'stamp_ns is {records.stamp_ns.dtype}, expected integers')
    for name in ('latitude_deg', 'longitude_deg', 'altitude_m', 'position_enu_m',
                 'orientation_xyzw'):
        column = getattr(records, name)
        if column.dtype.kind != 'f':
            _fail(path, f'{name} is {column.dtype}, expected floats')
        _first_bad(path, name, ~np.isfinite(column.reshape(n, -1)).all(axis=1), column,
                   'is not finite')
    _first_bad(path, 'latitude_deg', np.abs(records.latitude_deg) > 90.0,
               records.latitude_deg, 'is outside [-90, 90] degrees')
    _first_bad(path, 'longitude_deg', np.abs(records.longitude_deg) > 180.0,
               records.longitude_deg, 'is outside [-180, 180] degrees')
    norms = np.linalg.norm(records.orientation_xyzw, axis=1)
    _first_bad(path, 'orientation_xyzw', np.abs(norms - 1.0) > UNIT_NORM_TOLERANCE,
               records.orientation_xyzw, f'has norm outside 1 +- {UNIT_NORM_TOLERANCE:g}')


def validate_descriptors(descriptors: np.ndarray, path: StrPath, *,
                         sample: Optional[int] = DEFAULT_SAMPLE_ROWS,
                         dim: Optional[int] = None) -> None:
    """Refuse descriptors that are not finite unit rows (checked on ``sample`` rows + edges)."""
    if descriptors.ndim != 2 or descriptors.dtype != np.float32 or \
            (dim is not None and descriptors.shape[1] != dim):
        _fail(path, f'holds {descriptors.dtype} {descriptors.shape}, expected float32 (N, '
                    f'{dim or "D"})')
    for rows in _row_chunks(len(descriptors), sample):
        values = np.asarray(descriptors[rows], np.float32)
        _first_bad(path, 'descriptor', ~np.isfinite(values).all(axis=1), values,
                   'is not finite', rows=rows)
        norms = np.linalg.norm(values.astype(np.float64), axis=1)
        _first_bad(path, 'descriptor', np.abs(norms - 1.0) > UNIT_NORM_TOLERANCE, norms,
                   f'has norm outside 1 +- {UNIT_NORM_TOLERANCE:g}', rows=rows)


def validate_index(index: MapIndex, descriptors: np.ndarray, path: StrPath, *,
                   metric: str = 'inner_product',
                   sample: Optional[int] = DEFAULT_SAMPLE_ROWS) -> None:
    """Refuse an index of another metric, or whose stored vectors differ from the descriptors."""
    import faiss
    faiss_index = index.faiss_index
    if metric == 'inner_product' and faiss_index.metric_type != faiss.METRIC_INNER_PRODUCT:
        _fail(path, f'uses FAISS metric {faiss_index.metric_type}, the manifest {metric!r}')
    if not _stores_exact_vectors(faiss_index):
        return
    for rows in _row_chunks(len(descriptors), sample):
        ids = np.ascontiguousarray(np.arange(len(descriptors))[rows], np.int64)
        stored = faiss_index.reconstruct_batch(ids)
        expected = np.asarray(descriptors[rows], np.float32)
        differ = ~np.isclose(stored, expected, rtol=0.0,
                             atol=INDEX_DESCRIPTOR_TOLERANCE).all(axis=1)
        _first_bad(path, 'vector', differ, stored, 'differs from descriptors.npy', rows=rows)


def validate_local_features(local_features: LocalFeatureMap, path: StrPath, *,
                            count: Optional[int] = None,
                            sample: Optional[int] = DEFAULT_SAMPLE_ROWS) -> None:
    """Refuse feature tables with bad offsets or shapes, non-finite keypoints or partial points."""
    from vl_attention.mapping.local_feature_map import FEATURES_DIR
    where = Path(path) / FEATURES_DIR
    offsets = np.asarray(local_features.offsets)
    keypoints, points = local_features.keypoints_px, local_features.points_enu_m
    rows = len(keypoints)
    if offsets.ndim != 1 or offsets.dtype.kind not in 'iu' or len(offsets) < 1:
        _fail(where / 'offsets.npy', f'holds {offsets.dtype} {offsets.shape}, expected int64 '
                                     '(N + 1,)')
    if count is not None and len(offsets) != count + 1:
        _fail(where / 'offsets.npy', f'covers {len(offsets) - 1} images, the manifest {count}')
    if offsets[0] != 0 or offsets[-1] != rows:
        _fail(where / 'offsets.npy', f'runs from {offsets[0]} to {offsets[-1]}, expected 0 to '
                                     f'{rows} keypoints')
    _first_bad(where / 'offsets.npy', 'offset', np.diff(offsets) < 0, offsets[1:],
               'is smaller than the one before')
    descriptors = local_features.descriptors
    if keypoints.shape != (rows, 2) or points.shape != (rows, 3) or descriptors.ndim != 2 or \
            len(descriptors) != rows or descriptors.dtype != np.uint8:
        _fail(where, f'shapes disagree (keypoints {keypoints.shape}, descriptors '
                     f'{descriptors.shape} {descriptors.dtype}, points {points.shape})')
    for chunk in _row_chunks(rows, sample):
        values = np.asarray(keypoints[chunk])
        _first_bad(where / 'keypoints.npy', 'keypoint', ~np.isfinite(values).all(axis=1),
                   values, 'is not finite', rows=chunk)
        finite = np.isfinite(np.asarray(points[chunk]))
        partial = finite.any(axis=1) & ~finite.all(axis=1)
        _first_bad(where / 'points.npy', 'point', partial, np.asarray(points[chunk]),
                   'is partly finite (a point is finite or all NaN)', rows=chunk)


def _stores_exact_vectors(faiss_index: faiss.Index) -> bool:
    import faiss
    return isinstance(faiss_index, (faiss.IndexFlat, faiss.IndexHNSWFlat)) and \
        faiss_index.ntotal > 0


def _row_chunks(count: int, sample: Optional[int]) -> Iterator[Union[slice, np.ndarray]]:
    """Yield row selections to check: all rows in chunks, or a sorted sample plus the edges."""
    if sample is None or count <= sample + 2 * EDGE_ROWS:
        for start in range(0, count, CHUNK_ROWS):
            yield slice(start, min(start + CHUNK_ROWS, count))
        return
    rng = np.random.default_rng(SAMPLE_SEED)
    middle = rng.choice(np.arange(EDGE_ROWS, count - EDGE_ROWS), sample, replace=False)
    yield np.unique(np.concatenate([np.arange(EDGE_ROWS), middle,
                                    np.arange(count - EDGE_ROWS, count)]))


def _first_bad(path: StrPath, name: str, bad: npt.ArrayLike, values: np.ndarray, problem: str, *,
               rows: Union[slice, np.ndarray, None] = None) -> None:
    where = np.flatnonzero(bad)
    if not len(where):
        return
    local = int(where[0])
    if rows is None:
        row = local
    elif isinstance(rows, slice):
        row = (rows.start or 0) + local
    else:
        row = int(rows[local])
    value = ' '.join(np.array2string(np.asarray(values[local]), precision=6,
                                     threshold=6).split())
    _fail(path, f'{name} row {row} {problem} ({value}; {len(where)} bad among the rows checked)')


def _fail(path: StrPath, problem: str) -> NoReturn:
    raise MapFormatError(f'{path}: {problem}; {FIX}')


def _check_verify_mode(verify: object) -> None:
    if verify not in VERIFY_MODES:
        raise ValueError(f'unknown verify mode {verify!r}; known: {VERIFY_MODES}')


__all__ = ['READ_ERRORS', 'refuse_damaged', 'validate_descriptors', 'validate_index',
           'validate_local_features', 'validate_map', 'validate_records']
