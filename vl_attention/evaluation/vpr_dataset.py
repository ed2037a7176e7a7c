"""Place-recognition datasets in the ``evaluate-vpr`` layout.

::

    <set>/database/*.jpg|png   sorted file names give the database indices
    <set>/queries/*.jpg|png    sorted file names give the query indices

and one source of ground truth, tried in this order:

* ``--sequential K``: query i matches database i-K .. i+K (e.g. Nordland);
* ``database.csv`` + ``queries.csv`` with ``name,x_m,y_m`` (metric, e.g. UTM) or
  ``name,lat,lon``: positives lie within ``positive_distance_m``;
* ``ground_truth.npy``: object array of rows ``[query_index, [database indices]]``.
  It is a pickled numpy object array: load datasets from trusted places only.
"""

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vl_attention.data.images import IMAGE_SUFFIXES
from vl_attention.geo import GeodeticOrigin, geodetic_to_enu


class DatasetError(ValueError):
    """A dataset folder does not follow the layout; the message says what is missing."""


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
    rows = np.load(path, allow_pickle=True)
    positives = [np.zeros(0, dtype=np.int64) for _ in range(query_count)]
    for row in rows:
        query, indices = int(row[0]), np.asarray(row[1], dtype=np.int64).reshape(-1)
        if not 0 <= query < query_count or np.any((indices < 0) | (indices >= database_count)):
            raise DatasetError(f'{path}: row for query {query} is out of range '
                               f'({query_count} queries, {database_count} database images)')
        positives[query] = indices
    return tuple(positives)


def _read_positions(path, images):
    with open(path, newline='') as handle:
        rows = {row['name']: row for row in csv.DictReader(handle)}
    missing = [image.name for image in images if image.name not in rows]
    if missing:
        raise DatasetError(f'{path} has no row for {missing[:3]} (column name = file name)')
    fields = set(next(iter(rows.values())))
    if {'x_m', 'y_m'} <= fields:
        return np.array([[float(rows[i.name]['x_m']), float(rows[i.name]['y_m'])]
                         for i in images]), None
    if {'lat', 'lon'} <= fields:
        return None, np.array([[float(rows[i.name]['lat']), float(rows[i.name]['lon'])]
                               for i in images])
    raise DatasetError(f'{path} needs columns name,x_m,y_m or name,lat,lon; has {sorted(fields)}')


def _from_csv(root, database, queries, positive_distance_m):
    database_xy, database_ll = _read_positions(root / 'database.csv', database)
    query_xy, query_ll = _read_positions(root / 'queries.csv', queries)
    if database_xy is None or query_xy is None:
        if database_ll is None or query_ll is None:
            raise DatasetError(f'{root}: database.csv and queries.csv must use the same columns')
        origin = GeodeticOrigin(database_ll[0, 0], database_ll[0, 1])
        database_xy = geodetic_to_enu(database_ll[:, 0], database_ll[:, 1], 0.0, origin)[:, :2]
        query_xy = geodetic_to_enu(query_ll[:, 0], query_ll[:, 1], 0.0, origin)[:, :2]
    distances = np.linalg.norm(query_xy[:, None] - database_xy[None], axis=2)
    positives = tuple(np.flatnonzero(row <= positive_distance_m) for row in distances)
    return VPRDataset(root, database, queries, positives,
                      f'positions, positives within {positive_distance_m:g} m',
                      database_xy, query_xy)
