"""One interface for every training / validation dataset: posed, labelled images.

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
Oxford / Paris benchmarks) also carry ``positives`` and ``ignored``: per row a sorted
``int64`` array of the rows that match it / that must be ignored when it is a query.

Layouts are adapters registered in :data:`DATASETS`; ``load_dataset(kind, root,
**options)`` builds one and names unknown kinds and options.
"""

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from vl_attention.config import ConfigError
from vl_attention.errors import VLAttentionError
from vl_attention.registry import Registry

DATASETS = Registry('dataset layout')
SPLITS = ('train', 'val', 'test')
ROLES = ('database', 'query', '')


class DatasetLayoutError(VLAttentionError, ValueError):
    """A dataset folder does not follow its layout; the message names what is missing."""


_ROW_FIELDS = ('image_paths', 'positions_m', 'quaternions_xyzw', 'place_ids', 'conditions',
               'sequences', 'splits', 'roles')


@dataclass(frozen=True)
class PlaceDataset:
    """Images with ground truth, one row per image (see the module docstring)."""

    name: str
    root: str
    image_paths: np.ndarray                 # (N,) str
    positions_m: np.ndarray                 # (N, 3) float64, NaN unknown
    quaternions_xyzw: np.ndarray            # (N, 4) float64, NaN unknown
    place_ids: np.ndarray                   # (N,) int64, -1 unknown
    conditions: np.ndarray                  # (N,) str
    sequences: np.ndarray                   # (N,) str
    splits: np.ndarray                      # (N,) str in SPLITS
    roles: np.ndarray                       # (N,) str in ROLES
    pixels: np.ndarray = None               # (N, H, W, 3) uint8 when held in memory
    positives: tuple = None                 # per row: int64 rows matching it (label GT)
    ignored: tuple = None                   # per row: int64 rows to ignore as its matches
    frame: dict = field(default_factory=dict)  # what positions_m is measured in

    def __post_init__(self):
        count = len(self.image_paths)
        for name in _ROW_FIELDS + ('pixels', 'positives', 'ignored'):
            value = getattr(self, name)
            if value is not None and len(value) != count:
                raise DatasetLayoutError(f'{self.name}: {name} has {len(value)} rows, '
                                         f'expected {count}')
        unknown = set(np.unique(self.splits)) - set(SPLITS) | (
            set(np.unique(self.roles)) - set(ROLES))
        if unknown:
            raise DatasetLayoutError(f'{self.name}: unknown split/role labels '
                                     f'{sorted(unknown)}; splits are {SPLITS}, roles {ROLES}')

    def __len__(self):
        """Return the number of images."""
        return len(self.image_paths)

    @property
    def has_positions(self):
        """Whether every image has a finite position."""
        return bool(len(self)) and bool(np.isfinite(self.positions_m).all())

    @property
    def has_poses(self):
        """Whether every image has a finite position and orientation."""
        return self.has_positions and bool(np.isfinite(self.quaternions_xyzw).all())

    def subset(self, rows):
        """Select rows by a boolean mask or an index array (label GT is re-indexed)."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        values = {name: getattr(self, name)[rows] for name in _ROW_FIELDS}
        if self.pixels is not None:
            values['pixels'] = self.pixels[rows]
        if self.positives is not None:
            new_index = np.full(len(self), -1, np.int64)
            new_index[rows] = np.arange(len(rows))
            for name in ('positives', 'ignored'):
                lists = getattr(self, name) or ((np.zeros(0, np.int64),) * len(self))
                values[name] = tuple(_reindex(lists[row], new_index) for row in rows)
        return PlaceDataset(name=self.name, root=self.root, frame=dict(self.frame), **values)

    def select(self, *, split=None, role=None):
        """Rows of one split and/or role."""
        mask = np.ones(len(self), bool)
        if split is not None:
            mask &= self.splits == split
        if role is not None:
            mask &= self.roles == role
        return self.subset(mask)

    def load_image(self, row):
        """Return image ``row`` as uint8 RGB ``(H, W, 3)``."""
        if self.pixels is not None:
            return self.pixels[row]
        from vl_attention.mapping.sources import read_rgb
        return read_rgb(self.image_paths[row])

    def describe(self):
        """JSON-ready summary: counts per split / role / condition and the ground truth kind."""
        def counts(column):
            names, numbers = np.unique(column, return_counts=True)
            return {str(n): int(c) for n, c in zip(names, numbers)}
        ground_truth = ('positions' if self.has_positions else
                        'place_ids' if (self.place_ids >= 0).all() else
                        'positives' if self.positives is not None else 'none')
        return {'name': self.name, 'root': self.root, 'images': len(self),
                'ground_truth': ground_truth, 'splits': counts(self.splits),
                'roles': counts(self.roles), 'conditions': counts(self.conditions),
                'frame': self.frame}


def _reindex(rows, new_index):
    mapped = new_index[np.asarray(rows, np.int64)]
    return np.sort(mapped[mapped >= 0])


def make_dataset(name, root, image_paths, **columns):
    """Build a PlaceDataset with defaults for the columns a layout does not have.

    Defaults: NaN positions / orientations, place id -1, empty condition and
    sequence, split ``train``, role ``''``. Scalars broadcast to every row.
    """
    count = len(image_paths)
    defaults = {'positions_m': np.full((count, 3), np.nan),
                'quaternions_xyzw': np.full((count, 4), np.nan),
                'place_ids': np.full(count, -1, np.int64), 'conditions': '', 'sequences': '',
                'splits': 'train', 'roles': ''}
    values = {}
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


# beyond any UTM easting or map extent: areas this far apart never pair in mining
AREA_SPACING_M = 1e8


def shift_apart(datasets):
    """Shift dataset ``k``'s positions by ``k x AREA_SPACING_M`` along x (separate areas)."""
    shifted = []
    for index, dataset in enumerate(datasets):
        positions = dataset.positions_m.copy()
        positions[:, 0] += index * AREA_SPACING_M
        frame = dict(dataset.frame, area_offset_m=[index * AREA_SPACING_M, 0.0, 0.0]) \
            if index else dataset.frame
        shifted.append(replace(dataset, positions_m=positions, frame=frame))
    return shifted


def concatenate(datasets, *, name=None):
    """Join datasets row-wise (label ground truth is offset; pixels only if all have them)."""
    if not datasets:
        raise ConfigError('concatenate needs at least one dataset')
    values = {key: np.concatenate([getattr(d, key) for d in datasets]) for key in _ROW_FIELDS}
    if all(d.pixels is not None for d in datasets):
        values['pixels'] = np.concatenate([d.pixels for d in datasets])
    elif any(d.pixels is not None for d in datasets):
        raise ConfigError('cannot join in-memory and on-disk datasets; write the in-memory one '
                          'to a folder first')
    if any(d.positives is not None for d in datasets):
        raise ConfigError('datasets with per-query positive lists (revisited Oxford/Paris) are '
                          'evaluation sets and cannot be joined with others')
    return PlaceDataset(name=name or '+'.join(d.name for d in datasets),
                        root=';'.join(d.root for d in datasets), frame=dict(datasets[0].frame),
                        **values)


def require_path(path, what):
    """Return ``Path(path)`` if it exists, else raise DatasetLayoutError naming ``what``."""
    path = Path(path)
    if not path.exists():
        raise DatasetLayoutError(f'{path} is missing: {what}')
    return path


def load_dataset(kind: str, root: str | Path, **options: object) -> PlaceDataset:
    """Build the dataset of layout ``kind`` at ``root`` (see :data:`DATASETS`).

    Adapters register themselves when :mod:`vl_attention.training.sources` is
    imported, which importing this function from there does.
    """
    return DATASETS.create(kind, root=root, **options)
