"""Place-recognition datasets in the ``evaluate-vpr`` layout.

::

    <set>/database/*.jpg|png   sorted file names give the database indices
    <set>/queries/*.jpg|png    sorted file names give the query indices

and one source of ground truth, tried in this order:

* ``--sequential K``: query i matches database i-K .. i+K (e.g. Nordland);
* ``database.csv`` + ``queries.csv`` with ``name,x_m,y_m`` (metric, e.g. UTM) or
  ``name,lat,lon``: positives lie within ``positive_distance_m``;
* ``ground_truth.npy``: rows ``[query_index, [database indices]]``, either a plain
  integer array (one positive per row) or the usual numpy object array. An object
  array is a pickle; it is read with an unpickler that builds only numpy integer
  arrays and refuses every other global, so code written into the file never runs.
"""

import csv
from dataclasses import dataclass
import logging
from pathlib import Path
import pickle

import numpy as np

from vl_attention.data.images import IMAGE_SUFFIXES
from vl_attention.errors import VLAttentionError
from vl_attention.evaluation import metrics
from vl_attention.geo import GeodeticOrigin, geodetic_to_enu

LOGGER = logging.getLogger(__name__)

# what numpy writes for an object array of int64 arrays, and nothing else
_NPY_PICKLE_GLOBALS = frozenset({('numpy._core.multiarray', '_reconstruct'),
                                 ('numpy.core.multiarray', '_reconstruct'),
                                 ('numpy', 'ndarray'), ('numpy', 'dtype')})


class DatasetError(VLAttentionError, ValueError):
    """A dataset folder does not follow the layout; the message says what is missing."""


class UnsafeGroundTruthError(DatasetError):
    """A ground-truth pickle names code that a plain array file never needs; nothing ran."""


@dataclass(frozen=True)
class VPRDataset:
    """Image lists and, per query, the positive database indices."""

    root: Path
    database_images: tuple
    query_images: tuple
    positives: tuple
    ground_truth: str
    database_xy_m: np.ndarray = None
    query_xy_m: np.ndarray = None

    def describe(self):
        """Short description for reports."""
        return {'root': str(self.root), 'database_images': len(self.database_images),
                'query_images': len(self.query_images), 'ground_truth': self.ground_truth,
                'queries_without_positives': sum(len(p) == 0 for p in self.positives)}


def list_images(folder):
    """Image files of ``folder`` sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f'{folder} is missing; a dataset needs database/ and queries/ folders')
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f'{folder} holds no images ({", ".join(IMAGE_SUFFIXES)})')
    return tuple(images)


def load_vpr_dataset(root, *, positive_distance_m=25.0, sequential=None):
    """Read a dataset folder and its ground truth."""
    root = Path(root)
    database, queries = list_images(root / 'database'), list_images(root / 'queries')
    if sequential is not None:
        return VPRDataset(root, database, queries, _sequential(len(queries), len(database),
                                                               sequential),
                          f'sequential +-{sequential} frames')
    if (root / 'database.csv').is_file() and (root / 'queries.csv').is_file():
        return _from_csv(root, database, queries, positive_distance_m)
    if (root / 'ground_truth.npy').is_file():
        return VPRDataset(root, database, queries,
                          _from_npy(root / 'ground_truth.npy', len(queries), len(database)),
                          'ground_truth.npy')
    raise DatasetError(f'{root} has no ground truth: add ground_truth.npy, database.csv + '
                       'queries.csv, or pass --sequential K')


def _sequential(query_count, database_count, k):
    return tuple(np.arange(max(0, q - k), min(database_count, q + k + 1))
                 for q in range(query_count))


def _from_npy(path, query_count, database_count):
    rows = read_ground_truth_npy(path)
    positives = [np.zeros(0, dtype=np.int64) for _ in range(query_count)]
    for row in rows:
        query, indices = _ground_truth_row(path, row)
        if not 0 <= query < query_count or np.any((indices < 0) | (indices >= database_count)):
            raise DatasetError(f'{path}: row for query {query} is out of range '
                               f'({query_count} queries, {database_count} database images)')
        positives[query] = np.union1d(positives[query], indices) if len(positives[query]) \
            else indices
    return tuple(positives)


def read_ground_truth_npy(path):
    """Read ``ground_truth.npy`` without running code from it.

    A plain array is read with ``allow_pickle=False``. An object array (a pickle)
    is read with :class:`_NumpyArrayUnpickler`, which resolves only numpy's array
    and dtype constructors, so a file whose pickle names any other callable is
    refused with :class:`UnsafeGroundTruthError` before anything in it runs.
    """
    path = Path(path)
    with path.open('rb') as handle:
        try:
            version = np.lib.format.read_magic(handle)
            shape, fortran_order, dtype = _read_npy_header(handle, version)
        except ValueError as error:
            raise DatasetError(f'{path} is not a .npy file ({error})') from None
        if not dtype.hasobject:
            return np.load(path, allow_pickle=False)
        try:
            rows = _NumpyArrayUnpickler(handle, path).load()
        except UnsafeGroundTruthError:
            raise
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError,
                IndexError, MemoryError, RecursionError) as error:
            raise DatasetError(f'{path}: its object array does not unpickle '
                               f'({type(error).__name__}: {error}); re-save it with '
                               'np.save') from None
    if not isinstance(rows, np.ndarray) or rows.shape != shape:
        raise DatasetError(f'{path}: the pickle holds {type(rows).__name__}, not the '
                           f'{shape} array its header declares')
    LOGGER.debug('read %s: object array %s with the numpy-only unpickler', path, shape)
    return rows


def _read_npy_header(handle, version):
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(handle)
    raise ValueError(f'format version {version} is not supported; re-save it with np.save')


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Unpickler for numpy object arrays that resolves no global but numpy's own."""

    def __init__(self, handle, path):
        super().__init__(handle)
        self.path = path

    def find_class(self, module, name):
        """Return numpy's array and dtype constructors; refuse every other global."""
        if (module, name) not in _NPY_PICKLE_GLOBALS:
            raise UnsafeGroundTruthError(
                f'{self.path} asks to run {module}.{name}, which a ground-truth array never '
                'needs; refused without running it. Re-save the rows as integer arrays '
                'with np.save, or use database.csv + queries.csv')
        return super().find_class(module, name)

    def persistent_load(self, pid):
        """Refuse persistent ids (a plain array pickle has none)."""
        raise UnsafeGroundTruthError(f'{self.path} holds a persistent id, which a '
                                     'ground-truth array never does; refused')


def _ground_truth_row(path, row):
    """``(query index, int64 database indices)`` of one row; anything not integral is refused."""
    try:
        query_value, index_value = row[0], row[1]
    except (IndexError, TypeError, KeyError):
        raise DatasetError(f'{path}: rows must be [query_index, [database indices]]') from None
    query = np.asarray(query_value)
    indices = np.asarray(index_value)
    if query.shape != () or query.dtype.kind not in 'iu' or (
            indices.dtype.kind not in 'iu' and indices.size):
        raise DatasetError(f'{path}: rows must be [query_index, [database indices]] of '
                           f'integers; found {query.dtype} and {indices.dtype}')
    return int(query), indices.astype(np.int64).reshape(-1)


def _read_positions(path, images):
    with open(path, newline='') as handle:
        table = list(csv.DictReader(handle))
    fields = set(table[0]) if table else set()
    if 'name' not in fields:
        raise DatasetError(f'{path} needs a header row with a name column and a row per image')
    rows = {row['name']: row for row in table}
    missing = [image.name for image in images if image.name not in rows]
    if missing:
        raise DatasetError(f'{path} has no row for {missing[:3]} (column name = file name)')
    metric = {'x_m', 'y_m'} <= fields
    if not metric and not {'lat', 'lon'} <= fields:
        raise DatasetError(f'{path} needs columns name,x_m,y_m or name,lat,lon; has '
                           f'{sorted(fields)}')
    columns = ('x_m', 'y_m') if metric else ('lat', 'lon')
    try:
        values = np.array([[float(rows[i.name][column]) for column in columns] for i in images])
    except (TypeError, ValueError) as error:
        raise DatasetError(f'{path}: columns {", ".join(columns)} must hold numbers in every '
                           f'row ({error})') from None
    if not np.isfinite(values).all():
        raise DatasetError(f'{path}: columns {", ".join(columns)} must be finite in every row')
    return (values, None) if metric else (None, values)


def _from_csv(root, database, queries, positive_distance_m):
    database_xy, database_ll = _read_positions(root / 'database.csv', database)
    query_xy, query_ll = _read_positions(root / 'queries.csv', queries)
    if database_xy is None or query_xy is None:
        if database_ll is None or query_ll is None:
            raise DatasetError(f'{root}: database.csv and queries.csv must use the same columns')
        origin = GeodeticOrigin(database_ll[0, 0], database_ll[0, 1])
        database_xy = geodetic_to_enu(database_ll[:, 0], database_ll[:, 1], 0.0, origin)[:, :2]
        query_xy = geodetic_to_enu(query_ll[:, 0], query_ll[:, 1], 0.0, origin)[:, :2]
    positives = metrics.positives(query_xy, database_xy, positive_distance_m)
    return VPRDataset(root, database, queries, positives,
                      f'positions, positives within {positive_distance_m:g} m',
                      database_xy, query_xy)
