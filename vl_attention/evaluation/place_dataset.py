"""One dataset description for training and evaluation: posed, labelled images (torch-free).

A :class:`PlaceDataset` is columnar: row ``i`` is one image with

* ``image_paths[i]``: the image file (or ``''`` when ``pixels`` holds the images in memory);
* ``positions_m[i]``: ``(x, y, z)`` in metres in the dataset's own metric frame (UTM,
  ENU at ``origin``, or a scene frame), NaN where unknown;
* ``quaternions_xyzw[i]``: camera orientation in that frame, NaN where unknown;
* ``place_ids[i]``: a place label (``-1`` unknown), the ground truth of datasets whose
  traversals are frame-aligned instead of positioned (Nordland, GardensPoint, SPED);
* ``conditions[i]``, ``sequences[i]``: appearance condition (season, time of day,
  weather) and traversal / sequence name, ``''`` where unknown;
* ``splits[i]`` in ``train | val | test`` and ``roles[i]`` in ``database | query | ''``.

Datasets whose ground truth is a list of matching images per query (the revisited
Oxford / Paris benchmarks, the ``vpr_layout`` folders with ``ground_truth.npy`` or
``sequential``) also carry ``positives`` and ``ignored``: per row a sorted ``int64``
array of the rows that match it / that must be ignored when it is a query.

Layouts are adapters registered in :data:`DATASETS` (a torch-free registry): the
``vpr_layout`` folders of ``evaluate-vpr`` in :mod:`.vpr_dataset`, every training
source in :mod:`vl_attention.training.sources`, whose ``load_dataset(kind, root,
**options)`` knows them all. :func:`query_positives` is the one rule that turns a
dataset's ground truth into each query's database positives, for ``evaluate-vpr`` and
for validation during training alike.
"""

from dataclasses import dataclass, field, replace
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from vl_attention.config import ConfigError
from vl_attention.errors import VLAttentionError
from vl_attention.evaluation import metrics
from vl_attention.registry import Registry

DATASETS = Registry('dataset layout')
SPLITS = ('train', 'val', 'test')
ROLES = ('database', 'query', '')
# beyond any UTM easting or map extent: areas this far apart never pair in mining
AREA_SPACING_M = 1e8

Array = npt.NDArray[Any]
RowLists = Tuple[npt.NDArray[np.int64], ...]


class DatasetError(VLAttentionError, ValueError):
    """A dataset is malformed or does not follow its layout; the message says what is missing."""


_ROW_FIELDS = ('image_paths', 'positions_m', 'quaternions_xyzw', 'place_ids', 'conditions',
               'sequences', 'splits', 'roles')


@dataclass(frozen=True)
class PlaceDataset:
    """Images with ground truth, one row per image (see the module docstring)."""

    name: str
    root: str
    image_paths: Array                      # (N,) str
    positions_m: Array                      # (N, 3) float64, NaN unknown
    quaternions_xyzw: Array                 # (N, 4) float64, NaN unknown
    place_ids: Array                        # (N,) int64, -1 unknown
    conditions: Array                       # (N,) str
    sequences: Array                        # (N,) str
    splits: Array                           # (N,) str in SPLITS
    roles: Array                            # (N,) str in ROLES
    pixels: Optional[Array] = None          # (N, H, W, 3) uint8 when held in memory
    positives: Optional[RowLists] = None    # per row: int64 rows matching it (label GT)
    ignored: Optional[RowLists] = None      # per row: int64 rows to ignore as its matches
    frame: Dict[str, Any] = field(default_factory=dict)  # what positions_m is measured in

    def __post_init__(self) -> None:
        count = len(self.image_paths)
        for name in _ROW_FIELDS + ('pixels', 'positives', 'ignored'):
            value = getattr(self, name)
            if value is not None and len(value) != count:
                raise DatasetError(f'{self.name}: {name} has {len(value)} rows, '
                                   f'expected {count}')
        unknown = set(np.unique(self.splits)) - set(SPLITS) | (
            set(np.unique(self.roles)) - set(ROLES))
        if unknown:
            raise DatasetError(f'{self.name}: unknown split/role labels '
                               f'{sorted(unknown)}; splits are {SPLITS}, roles {ROLES}')

    def __len__(self) -> int:
        """Return the number of images."""
        return len(self.image_paths)

    @property
    def has_positions(self) -> bool:
        """Whether every image has a finite position."""
        return bool(len(self)) and bool(np.isfinite(self.positions_m).all())

    @property
    def has_poses(self) -> bool:
        """Whether every image has a finite position and orientation."""
        return self.has_positions and bool(np.isfinite(self.quaternions_xyzw).all())

    def subset(self, rows: npt.ArrayLike) -> 'PlaceDataset':
        """Select rows by a boolean mask or an index array (label GT is re-indexed)."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        values: Dict[str, Any] = {name: getattr(self, name)[rows] for name in _ROW_FIELDS}
        if self.pixels is not None:
            values['pixels'] = self.pixels[rows]
        if self.positives is not None:
            new_index = np.full(len(self), -1, np.int64)
            new_index[rows] = np.arange(len(rows))
            for name in ('positives', 'ignored'):
                lists = getattr(self, name) or ((np.zeros(0, np.int64),) * len(self))
                values[name] = tuple(_reindex(lists[row], new_index) for row in rows)
        return PlaceDataset(name=self.name, root=self.root, frame=dict(self.frame), **values)

    def select(self, *, split: Optional[str] = None,
               role: Optional[str] = None) -> 'PlaceDataset':
        """Rows of one split and/or role."""
        mask = np.ones(len(self), bool)
        if split is not None:
            mask &= self.splits == split
        if role is not None:
            mask &= self.roles == role
        return self.subset(mask)

    def load_image(self, row: int) -> Array:
        """Return image ``row`` as uint8 RGB ``(H, W, 3)``."""
        if self.pixels is not None:
            return self.pixels[row]
        from vl_attention.mapping.sources import read_rgb
        image: Array = read_rgb(self.image_paths[row])
        return image

    def describe(self) -> Dict[str, Any]:
        """JSON-ready summary: counts per split / role / condition and the ground truth kind."""
        def counts(column: Array) -> Dict[str, int]:
            names, numbers = np.unique(column, return_counts=True)
            return {str(n): int(c) for n, c in zip(names, numbers)}
        ground_truth = ('positions' if self.has_positions else
                        'place_ids' if (self.place_ids >= 0).all() else
                        'positives' if self.positives is not None else 'none')
        return {'name': self.name, 'root': self.root, 'images': len(self),
                'ground_truth': ground_truth, 'splits': counts(self.splits),
                'roles': counts(self.roles), 'conditions': counts(self.conditions),
                'frame': self.frame}


def _reindex(rows: npt.ArrayLike, new_index: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    mapped = new_index[np.asarray(rows, np.int64)]
    return np.sort(mapped[mapped >= 0])


def make_dataset(name: str, root: object, image_paths: Sequence[object],
                 **columns: Any) -> PlaceDataset:
    """Build a PlaceDataset with defaults for the columns a layout does not have.

    Defaults: NaN positions / orientations, place id -1, empty condition and
    sequence, split ``train``, role ``''``. Scalars broadcast to every row.
    """
    count = len(image_paths)
    defaults: Dict[str, Any] = {
        'positions_m': np.full((count, 3), np.nan),
        'quaternions_xyzw': np.full((count, 4), np.nan),
        'place_ids': np.full(count, -1, np.int64), 'conditions': '', 'sequences': '',
        'splits': 'train', 'roles': ''}
    values: Dict[str, Any] = {}
    for key, default in defaults.items():
        value = columns.pop(key, default)
        if isinstance(value, str):
            value = np.full(count, value, dtype=object)
        values[key] = np.asarray(value)
    values['positions_m'] = values['positions_m'].astype(np.float64).reshape(count, 3)
    values['quaternions_xyzw'] = values['quaternions_xyzw'].astype(np.float64).reshape(count, 4)
    values['place_ids'] = values['place_ids'].astype(np.int64)
    for key in ('conditions', 'sequences', 'splits', 'roles'):
        values[key] = values[key].astype(str)
    paths = np.asarray([str(path) for path in image_paths], dtype=str).reshape(count)
    return PlaceDataset(name=name, root=str(root), image_paths=paths, **values, **columns)


def shift_apart(datasets: Iterable[PlaceDataset]) -> List[PlaceDataset]:
    """Shift dataset ``k``'s positions by ``k x AREA_SPACING_M`` along x (separate areas)."""
    shifted = []
    for index, dataset in enumerate(datasets):
        positions = dataset.positions_m.copy()
        positions[:, 0] += index * AREA_SPACING_M
        frame = dict(dataset.frame, area_offset_m=[index * AREA_SPACING_M, 0.0, 0.0]) \
            if index else dataset.frame
        shifted.append(replace(dataset, positions_m=positions, frame=frame))
    return shifted


def concatenate(datasets: Sequence[PlaceDataset], *,
                name: Optional[str] = None) -> PlaceDataset:
    """Join datasets row-wise (label ground truth is offset; pixels only if all have them)."""
    if not datasets:
        raise ConfigError('concatenate needs at least one dataset')
    values: Dict[str, Any] = {key: np.concatenate([getattr(d, key) for d in datasets])
                              for key in _ROW_FIELDS}
    pixels = [d.pixels for d in datasets if d.pixels is not None]
    if len(pixels) == len(datasets):
        values['pixels'] = np.concatenate(pixels)
    elif pixels:
        raise ConfigError('cannot join in-memory and on-disk datasets; write the in-memory one '
                          'to a folder first')
    if any(d.positives is not None for d in datasets):
        raise ConfigError('datasets with per-query positive lists (revisited Oxford/Paris) are '
                          'evaluation sets and cannot be joined with others')
    return PlaceDataset(name=name or '+'.join(d.name for d in datasets),
                        root=';'.join(d.root for d in datasets), frame=dict(datasets[0].frame),
                        **values)


def query_positives(dataset: PlaceDataset, database_rows: npt.NDArray[np.integer[Any]],
                    query_rows: npt.NDArray[np.integer[Any]],
                    positive_distance_m: float) -> RowLists:
    """Each query's database positives (indices into ``database_rows``), sorted ``int64``.

    The dataset's own per-query lists where it has them, else the database images
    within ``positive_distance_m`` of the query (planar x, y; one KD-tree,
    :func:`~vl_attention.evaluation.metrics.positives`), else the database images with
    the query's place label.
    """
    if dataset.positives is not None:
        database_index = np.full(len(dataset), -1, np.int64)
        database_index[database_rows] = np.arange(len(database_rows))
        mapped = [database_index[dataset.positives[q]] for q in query_rows]
        return tuple(np.sort(rows[rows >= 0]) for rows in mapped)
    if dataset.has_positions:
        return metrics.positives(dataset.positions_m[query_rows, :2],
                                 dataset.positions_m[database_rows, :2], positive_distance_m)
    if len(dataset) and (dataset.place_ids >= 0).all():
        database_ids = dataset.place_ids[database_rows]
        return tuple(np.flatnonzero(database_ids == dataset.place_ids[q]).astype(np.int64)
                     for q in query_rows)
    raise DatasetError(f'{dataset.name}: retrieval needs positions, place labels or '
                       'per-query positive lists for every image')
