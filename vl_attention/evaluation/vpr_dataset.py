"""Place-recognition datasets for ``evaluate-vpr``: the ``vpr_layout`` folders and the view.

:class:`VPRDataset` is what ``evaluate-vpr`` scores: database images, query
images and each query's positive database indices. :func:`retrieval_view` cuts it
from any :class:`~vl_attention.evaluation.place_dataset.PlaceDataset` (one split's
``database`` and ``query`` rows, positives by
:func:`~vl_attention.evaluation.place_dataset.query_positives`), so ``evaluate-vpr``
reads every kind that training reads (``--dataset KIND ROOT``).

The kind ``vpr_layout`` (the default of ``evaluate-vpr --dataset ROOT``) is a folder::

    <set>/database/*.jpg|png   sorted file names give the database indices
    <set>/queries/*.jpg|png    sorted file names give the query indices

with one source of ground truth, tried in this order:

* ``sequential=K`` (``--sequential K``): query i matches database i-K .. i+K (e.g. Nordland);
* ``database.csv`` + ``queries.csv`` with ``name,x_m,y_m`` (metric, e.g. UTM) or
  ``name,lat,lon``: positives lie within ``positive_distance_m``;
* ``ground_truth.npy``: rows ``[query_index, [database indices]]``, either a plain
  integer array (one positive per row) or the usual numpy object array. An object
  array is a pickle; it is read with an unpickler that builds only numpy integer
  arrays and refuses every other global, so code written into the file never runs.

Its rows are the database images, then the queries, all in split ``test``.
"""

import csv
from dataclasses import dataclass
import logging
from pathlib import Path
import pickle
from typing import Any, BinaryIO, Dict, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from vl_attention.data.images import IMAGE_SUFFIXES
from vl_attention.evaluation.place_dataset import (DatasetError, DATASETS, make_dataset,
                                                   PlaceDataset, query_positives, RowLists,
                                                   SPLITS)
from vl_attention.geo import GeodeticOrigin, geodetic_to_enu

LOGGER = logging.getLogger(__name__)
LAYOUT = 'vpr_layout'

# what numpy writes for an object array of int64 arrays, and nothing else
_NPY_PICKLE_GLOBALS = frozenset({('numpy._core.multiarray', '_reconstruct'),
                                 ('numpy.core.multiarray', '_reconstruct'),
                                 ('numpy', 'ndarray'), ('numpy', 'dtype')})

__all__ = ['DatasetError', 'LAYOUT', 'list_images', 'load_vpr_dataset', 'load_vpr_layout',
           'read_ground_truth_npy', 'retrieval_view', 'UnsafeGroundTruthError', 'VPRDataset']


class UnsafeGroundTruthError(DatasetError):
    """A ground-truth pickle names code that a plain array file never needs; nothing ran."""


@dataclass(frozen=True)
class VPRDataset:
    """Image lists and, per query, the positive database indices."""

    root: Path
    database_images: Tuple[Path, ...]
    query_images: Tuple[Path, ...]
    positives: Sequence[npt.NDArray[np.int64]]
    ground_truth: str
    database_xy_m: Optional[npt.NDArray[np.float64]] = None
    query_xy_m: Optional[npt.NDArray[np.float64]] = None

    def describe(self) -> Dict[str, Any]:
        """Short description for reports."""
        return {'root': str(self.root), 'database_images': len(self.database_images),
                'query_images': len(self.query_images), 'ground_truth': self.ground_truth,
                'queries_without_positives': sum(len(p) == 0 for p in self.positives)}


def list_images(folder: str | Path) -> Tuple[Path, ...]:
    """Image files of ``folder`` sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f'{folder} is missing; a dataset needs database/ and queries/ folders')
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f'{folder} holds no images ({", ".join(IMAGE_SUFFIXES)})')
    return tuple(images)


def load_vpr_dataset(root: str | Path, *, positive_distance_m: float = 25.0,
                     sequential: Optional[int] = None) -> VPRDataset:
    """Read a ``vpr_layout`` folder and its ground truth as the view ``evaluate-vpr`` scores."""
    return retrieval_view(load_vpr_layout(root=root, sequential=sequential),
                          positive_distance_m=positive_distance_m)


@DATASETS.register(LAYOUT)
def load_vpr_layout(*, root: str | Path, sequential: Optional[int] = None) -> PlaceDataset:
    """Read a ``vpr_layout`` folder (module docstring) as a PlaceDataset."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f'{root} is missing; a {LAYOUT} dataset is a folder with database/ '
                           'and queries/')
    database, queries = list_images(root / 'database'), list_images(root / 'queries')
    roles = ['database'] * len(database) + ['query'] * len(queries)
    rows: Dict[str, Any] = {'name': root.name, 'root': root,
                            'image_paths': database + queries, 'roles': roles, 'splits': 'test'}
    if sequential is not None:
        if sequential < 0:
            raise DatasetError(f'sequential={sequential} must be >= 0 (frames)')
        frame = {'ground_truth': f'sequential +-{sequential} frames', 'sequential': sequential}
        return make_dataset(**rows, frame=frame,
                            **_label_columns(_sequential(len(queries), len(database),
                                                         sequential), len(database)))
    if (root / 'database.csv').is_file() and (root / 'queries.csv').is_file():
        positions_m, frame = _from_csv(root, database, queries)
        return make_dataset(**rows, positions_m=positions_m, frame=frame)
    if (root / 'ground_truth.npy').is_file():
        lists = _from_npy(root / 'ground_truth.npy', len(queries), len(database))
        return make_dataset(**rows, frame={'ground_truth': 'ground_truth.npy'},
                            **_label_columns(lists, len(database)))
    raise DatasetError(f'{root} has no ground truth: add ground_truth.npy, database.csv + '
                       'queries.csv, or pass --sequential K')


def _label_columns(query_lists: RowLists, database_count: int) -> Dict[str, Any]:
    """``positives`` / ``ignored`` columns: database rows first, so indices carry over."""
    empty = np.zeros(0, np.int64)
    return {'positives': (empty,) * database_count + tuple(query_lists),
            'ignored': (empty,) * (database_count + len(query_lists))}


def retrieval_view(dataset: PlaceDataset, *, positive_distance_m: float = 25.0,
                   split: Optional[str] = None) -> VPRDataset:
    """Return the database and query rows of one split as the :class:`VPRDataset` scored.

    ``split`` defaults to the first of ``test``, ``val``, ``train`` that has both
    database and query rows. Positives come from
    :func:`~vl_attention.evaluation.place_dataset.query_positives`.
    """
    if dataset.pixels is not None:
        raise DatasetError(f'{dataset.name}: its images are held in memory; evaluate-vpr '
                           'reads image files (write the images to a folder first)')
    split = split or _default_split(dataset)
    if split not in SPLITS:
        raise DatasetError(f'split {split!r} is not one of {SPLITS}')
    in_split = dataset.splits == split
    database_rows = np.flatnonzero(in_split & (dataset.roles == 'database'))
    query_rows = np.flatnonzero(in_split & (dataset.roles == 'query'))
    if not len(database_rows) or not len(query_rows):
        raise DatasetError(f'{dataset.name}: split {split!r} has {len(database_rows)} database '
                           f'and {len(query_rows)} query images; evaluate-vpr needs both '
                           f'(roles per split: {_role_counts(dataset)})')
    positives = query_positives(dataset, database_rows, query_rows, positive_distance_m)
    xy: Tuple[Optional[npt.NDArray[np.float64]], Optional[npt.NDArray[np.float64]]] = \
        (None, None)
    if dataset.positives is not None:
        ground_truth = str(dataset.frame.get('ground_truth', 'per-query positive lists'))
    elif dataset.has_positions:
        ground_truth = f'positions, positives within {positive_distance_m:g} m'
        xy = (dataset.positions_m[database_rows, :2], dataset.positions_m[query_rows, :2])
    else:
        ground_truth = 'place labels'
    paths = [Path(path) for path in dataset.image_paths]
    return VPRDataset(Path(dataset.root), tuple(paths[row] for row in database_rows),
                      tuple(paths[row] for row in query_rows), positives, ground_truth, *xy)


def _default_split(dataset: PlaceDataset) -> str:
    for split in ('test', 'val', 'train'):
        in_split = dataset.splits == split
        if (in_split & (dataset.roles == 'database')).any() and \
                (in_split & (dataset.roles == 'query')).any():
            return split
    raise DatasetError(f'{dataset.name} has no split with both database and query images '
                       f'(roles per split: {_role_counts(dataset)})')


def _role_counts(dataset: PlaceDataset) -> Dict[str, Dict[str, int]]:
    counts: Dict[str, Dict[str, int]] = {}
    for split, role in zip(dataset.splits, dataset.roles):
        by_role = counts.setdefault(str(split), {})
        by_role[str(role) or 'none'] = by_role.get(str(role) or 'none', 0) + 1
    return counts


def _sequential(query_count: int, database_count: int, k: int) -> RowLists:
    return tuple(np.arange(max(0, q - k), min(database_count, q + k + 1), dtype=np.int64)
                 for q in range(query_count))


def _from_npy(path: Path, query_count: int, database_count: int) -> RowLists:
    rows = read_ground_truth_npy(path)
    positives: list[npt.NDArray[np.int64]] = [np.zeros(0, dtype=np.int64)
                                              for _ in range(query_count)]
    for row in rows:
        query, indices = _ground_truth_row(path, row)
        if not 0 <= query < query_count or np.any((indices < 0) | (indices >= database_count)):
            raise DatasetError(f'{path}: row for query {query} is out of range '
                               f'({query_count} queries, {database_count} database images)')
        positives[query] = np.union1d(positives[query], indices) if len(positives[query]) \
            else indices
    return tuple(positives)


def read_ground_truth_npy(path: str | Path) -> npt.NDArray[Any]:
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
            plain: npt.NDArray[Any] = np.load(path, allow_pickle=False)
            return plain
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


def _read_npy_header(handle: BinaryIO,
                     version: Tuple[int, int]) -> Tuple[Tuple[int, ...], bool, np.dtype[Any]]:
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(handle)
    raise ValueError(f'format version {version} is not supported; re-save it with np.save')


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Unpickler for numpy object arrays that resolves no global but numpy's own."""

    def __init__(self, handle: BinaryIO, path: Path) -> None:
        super().__init__(handle)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        """Return numpy's array and dtype constructors; refuse every other global."""
        if (module, name) not in _NPY_PICKLE_GLOBALS:
            raise UnsafeGroundTruthError(
                f'{self.path} asks to run {module}.{name}, which a ground-truth array never '
                'needs; refused without running it. Re-save the rows as integer arrays '
                'with np.save, or use database.csv + queries.csv')
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids (a plain array pickle has none)."""
        raise UnsafeGroundTruthError(f'{self.path} holds a persistent id, which a '
                                     'ground-truth array never does; refused')


def _ground_truth_row(path: Path, row: Any) -> Tuple[int, npt.NDArray[np.int64]]:
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


def _read_positions(path: Path, images: Sequence[Path]) -> Tuple[
        Optional[npt.NDArray[np.float64]], Optional[npt.NDArray[np.float64]]]:
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


def _from_csv(root: Path, database: Sequence[Path],
              queries: Sequence[Path]) -> Tuple[npt.NDArray[np.float64], Dict[str, Any]]:
    """Positions ``(N, 3)`` of the database then the query rows, and their frame."""
    database_xy, database_ll = _read_positions(root / 'database.csv', database)
    query_xy, query_ll = _read_positions(root / 'queries.csv', queries)
    frame: Dict[str, Any] = {'positions': 'database.csv, queries.csv (x_m, y_m)'}
    if database_xy is None or query_xy is None:
        if database_ll is None or query_ll is None:
            raise DatasetError(f'{root}: database.csv and queries.csv must use the same columns')
        origin = GeodeticOrigin(database_ll[0, 0], database_ll[0, 1])
        database_xy = geodetic_to_enu(database_ll[:, 0], database_ll[:, 1], 0.0, origin)[:, :2]
        query_xy = geodetic_to_enu(query_ll[:, 0], query_ll[:, 1], 0.0, origin)[:, :2]
        frame = {'positions': 'ENU (m) at the first database image',
                 'origin': [float(database_ll[0, 0]), float(database_ll[0, 1]), 0.0]}
    xy = np.concatenate([database_xy, query_xy])
    return np.column_stack([xy, np.zeros(len(xy))]), frame
