"""Adapters for the traversal-based place-recognition benchmarks.

* ``msls``: Mapillary Street-Level Sequences (Warburg, Hauberg, Lopez-Antequera,
  Gargallo, Kuang, Civera, "Mapillary Street-Level Sequences: a dataset for lifelong
  place recognition", CVPR 2020): UTM positions, day/night, sequences;
* ``nordland``: Nordland (Suenderhauf, Neubert, Protzel, "Are we there yet? Challenging
  SeqSLAM on a 3000 km journey across all four seasons", ICRA 2013 Workshop on Long-Term
  Autonomy), also in the partitioned release of Olid, Facil, Civera ("Single-view place
  recognition under seasonal changes", IROS 2018 PPNIV workshop);
* ``gardenspoint``: GardensPoint Walking (QUT; introduced for place recognition in
  Suenderhauf, Shirazi, Dayoub, Upcroft, Milford, "On the performance of ConvNet features
  for place recognition", IROS 2015);
* ``sped``: SPED (Chen et al., "Deep learning features at scale for visual place
  recognition", ICRA 2017) and ``stlucia``: St Lucia multiple times of day (Glover,
  Maddern, Milford, Wyeth, "FAB-MAP + RatSLAM: appearance-based SLAM for multiple times
  of day", ICRA 2010), both as packaged by VPR-Bench (Zaffar et al., "VPR-Bench: an
  open-source visual place recognition evaluation framework with quantifiable viewpoint
  and appearance change", IJCV 2021).

Nordland and GardensPoint traversals are frame-aligned: the image with frame number k
shows place k in every traversal, so ``place_ids`` (the frame number read from the file
name) is their ground truth. VPR-Bench sets list, per query, the matching reference
images; they become ``positives`` (rows of the database), database rows get none.
"""

import logging
import os
from pathlib import Path
import re
from typing import Any, cast, Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import numpy.typing as npt

from vl_attention.config import ConfigError
from vl_attention.data.images import IMAGE_SUFFIXES
from vl_attention.evaluation.place_dataset import PlaceDataset, RowLists
# vl_attention.training.* is Any to mypy (setup.cfg): cast() states what its calls return
from vl_attention.training.sources.base import (
    AREA_SPACING_M, DatasetLayoutError, DATASETS, make_dataset, require_path)
from vl_attention.training.sources.public_vpr import as_names, join_columns, read_csv_columns
from vl_attention.training.sources.revisited import UnsafePickleError

_LOG = logging.getLogger(__name__)

MSLS_VAL_CITIES = ('cph', 'sf')
NORDLAND_SEASONS = ('spring', 'summer', 'fall', 'winter')
GARDENS_POINT_TRAVERSALS = {'day_left': 'day', 'day_right': 'day', 'night_right': 'night'}
# one frame-aligned traversal: (folder, condition, sequence, role, split)
Traversal = Tuple[Path, str, str, str, str]


@DATASETS.register('msls')
def load_msls(*, root: str | Path, cities: Optional[Union[str, Sequence[str]]] = None,
              val_cities: Union[str, Sequence[str]] = MSLS_VAL_CITIES, include_test: bool = False,
              exclude_panoramas: bool = True) -> PlaceDataset:
    """Mapillary Street-Level Sequences (Warburg et al. CVPR 2020), layout as distributed.

    ::

        <root>/train_val/<city>/{database,query}/
            images/<key>.jpg
            postprocessed.csv   key, easting, northing (UTM, m), night, view_direction, ...
            raw.csv             key, lon, lat, ca, captured_at, pano
            seq_info.csv        key, sequence_key, frame_number
            subtask_index.csv
        <root>/test/<city>/{database,query}/images/<key>.jpg, seq_info.csv (no ground truth)

    (each CSV starts with pandas' unnamed index column). Rows follow postprocessed.csv.
    ``cities``: names to load (default: every ``train_val`` city found, plus the ``test``
    cities when ``include_test``); ``val_cities`` (official: cph, sf) are split ``val``,
    the other ``train_val`` cities ``train``, ``test`` cities ``test`` with NaN positions.
    Condition is ``night`` / ``day`` from the ``night`` column; ``sequences`` is
    ``<city>/<sequence_key>``. With ``exclude_panoramas`` the images raw.csv marks
    ``pano`` are dropped, as the official loader does. Positions are each city's own UTM
    easting / northing, shifted by ``k x AREA_SPACING_M`` along x for the k-th chosen
    city (``frame['city_offsets_m']``), so distance-based mining never pairs two cities
    whose UTM zones overlap numerically.
    """
    root, val_cities = Path(root), as_names(val_cities)
    found = _msls_cities(root, include_test or bool(cities))
    chosen = list(as_names(cities)) if cities else [
        city for city, subdir in found.items() if subdir == 'train_val' or include_test]
    unknown = [city for city in chosen if city not in found]
    if unknown or not chosen:
        raise DatasetLayoutError(f'MSLS cities {unknown or chosen} are not under {root}/'
                                 f'train_val or {root}/test; found {sorted(found)}')
    parts, offsets = [], {}
    for index, city in enumerate(chosen):
        split = ('test' if found[city] == 'test' else
                 'val' if city in val_cities else 'train')
        offsets[city] = index * AREA_SPACING_M
        for role in ('database', 'query'):
            part = _msls_side(root / found[city] / city / role, city, role, split,
                              exclude_panoramas)
            part['positions_m'] = part['positions_m'] + [offsets[city], 0.0, 0.0]
            parts.append(part)
    columns = join_columns(parts)
    frame = {'kind': 'utm', 'zone': 'per city', 'city_offsets_m': offsets,
             'source': 'postprocessed.csv easting/northing'}
    return make_dataset('msls', root, columns.pop('image_paths'), frame=frame, **columns)


def _msls_cities(root: Path, with_test: bool) -> Dict[str, str]:
    subdirs = ('train_val', 'test') if with_test else ('train_val',)
    found = {}
    for subdir in subdirs:
        if (root / subdir).is_dir():
            found.update({path.name: subdir for path in sorted((root / subdir).iterdir())
                          if path.is_dir()})
    if not found:
        raise DatasetLayoutError(f'{root / "train_val"} is missing: MSLS keeps its cities in '
                                 'train_val/<city>/ and test/<city>/')
    return found


def _msls_side(folder: Path, city: str, role: str, split: str,
               exclude_panoramas: bool) -> Dict[str, Any]:
    info = _msls_csv(folder, 'seq_info.csv', ('key', 'sequence_key'))
    sequence_of = {row['key']: row['sequence_key'] for row in info}
    positions: npt.ArrayLike
    if split == 'test':
        rows, positions, conditions = info, np.full((len(info), 3), np.nan), [''] * len(info)
    else:
        rows = _msls_csv(folder, 'postprocessed.csv', ('key', 'easting', 'northing', 'night'))
        if exclude_panoramas:
            panoramas = {row['key'] for row in _msls_csv(folder, 'raw.csv', ('key', 'pano'))
                         if _is_true(row['pano'])}
            rows = [row for row in rows if row['key'] not in panoramas]
        positions = [(float(r['easting']), float(r['northing']), 0.0) for r in rows]
        conditions = ['night' if _is_true(r['night']) else 'day' for r in rows]
    keys = [row['key'] for row in rows]
    lacking = [key for key in keys if key not in sequence_of]
    if lacking:
        raise DatasetLayoutError(f'{folder / "seq_info.csv"} has no row for key(s) {lacking[:3]}')
    paths = [os.path.join(str(folder), 'images', f'{key}.jpg') for key in keys]
    if paths:
        require_path(paths[0], f'MSLS images of {city} {role} are images/<key>.jpg')
    return {'image_paths': paths, 'positions_m': np.asarray(positions, np.float64).reshape(-1, 3),
            'conditions': conditions, 'sequences': [f'{city}/{sequence_of[k]}' for k in keys],
            'roles': [role] * len(keys), 'splits': [split] * len(keys)}


def _msls_csv(folder: Path, name: str, columns: Sequence[str]) -> List[Dict[str, str]]:
    path = require_path(folder / name, f'MSLS keeps {", ".join(columns)} of each image in '
                        f'<city>/{folder.name}/{name}')
    return read_csv_columns(path, columns)


# --- Frame-aligned traversals: place k is frame k of every traversal ------------------

@DATASETS.register('nordland')
def load_nordland(*, root: str | Path, database_season: str = 'summer',
                  query_seasons: Optional[Union[str, Sequence[str]]] = None,
                  split: Optional[str] = None) -> PlaceDataset:
    """Nordland (Suenderhauf et al. 2013): four frame-aligned seasons of one train journey.

    Two layouts are read: one folder per season (e.g. the downsampled release), and the
    partitioned release of Olid et al. 2018 (train / test sections)::

        <root>/summer/00001.png        <root>/train/summer_images_train/section1/1.png
        <root>/winter/00001.png        <root>/test/winter_images_test/section2/15001.png
        <root>/{spring,fall}/...       ... for each of spring, summer, fall, winter

    The number in a file name is the frame number (same name = same place) and becomes
    ``place_ids``; condition and sequence are the season. ``database_season`` images are
    the database; ``query_seasons`` (default: every other season present) the queries.
    Season folders are split ``split`` (default ``test``); in the partitioned release
    each row's split is its partition and ``split`` ('train' / 'test') loads only that one.
    """
    root = Path(root)
    partitions: List[Optional[str]] = [part for part in ('train', 'test')
                                       if (root / part).is_dir()]
    if partitions and split is not None:
        if split not in partitions:
            raise DatasetLayoutError(f'{root / str(split)} is missing: the partitioned '
                                     f'Nordland release has {partitions}')
        partitions = [split]
    query_seasons = as_names(query_seasons) if query_seasons else None
    seasons = (database_season,) + (query_seasons or ())
    unknown = [season for season in seasons if season not in NORDLAND_SEASONS]
    if unknown:
        raise ConfigError(f'unknown Nordland season(s) {unknown}; seasons are {NORDLAND_SEASONS}')
    groups: List[Traversal] = []
    for part in partitions or [None]:
        queries = query_seasons or [
            season for season in NORDLAND_SEASONS
            if season != database_season and _nordland_folder(root, season, part).is_dir()]
        roles = [(database_season, 'database')] + [(season, 'query') for season in queries]
        groups += [(_nordland_folder(root, season, part), season, season, role,
                    part or split or 'test') for season, role in roles]
    return _frame_aligned('nordland', root, groups)


def _nordland_folder(root: Path, season: str, partition: Optional[str]) -> Path:
    if partition is None:
        return root / season
    return root / partition / f'{season}_images_{partition}'


@DATASETS.register('gardenspoint')
def load_gardenspoint(*, root: str | Path, database_traversal: str = 'day_right',
                      query_traversals: Union[str, Sequence[str]] = ('day_left', 'night_right'),
                      split: str = 'test') -> PlaceDataset:
    """Read GardensPoint Walking (QUT; Suenderhauf et al. IROS 2015): three aligned walks.

    Layout as distributed::

        <root>/day_left/Image000.jpg ... Image199.jpg
        <root>/day_right/Image000.jpg ...
        <root>/night_right/Image000.jpg ...

    The number in a file name is the frame number (same name = same place) and becomes
    ``place_ids``. Condition is ``day`` / ``night`` from the folder, sequence the folder
    name; ``database_traversal`` is the database, ``query_traversals`` the queries.
    """
    query_traversals = cast(Tuple[str, ...], as_names(query_traversals))
    traversals = (database_traversal,) + query_traversals
    unknown = [name for name in traversals if name not in GARDENS_POINT_TRAVERSALS]
    if unknown:
        raise ConfigError(f'unknown GardensPoint traversal(s) {unknown}; traversals are '
                          f'{sorted(GARDENS_POINT_TRAVERSALS)}')
    roles = ['database'] + ['query'] * len(query_traversals)
    groups = [(Path(root) / name, GARDENS_POINT_TRAVERSALS[name], name, role, split)
              for name, role in zip(traversals, roles)]
    return _frame_aligned('gardenspoint', root, groups)


def _frame_aligned(name: str, root: str | Path, groups: Sequence[Traversal]) -> PlaceDataset:
    """Build a dataset from ``(folder, condition, sequence, role, split)`` traversals."""
    columns = []
    for folder, condition, sequence, role, split in groups:
        images = list_images(folder, f'{name} {sequence} images (one file per frame)')
        frames = [frame_number(path) for path in images]
        numbers, counts = np.unique(frames, return_counts=True)
        repeated = numbers[counts > 1].tolist()
        if repeated:
            raise DatasetLayoutError(f'{folder}: frame number(s) {repeated[:3]} appear in more '
                                     'than one file name; frames must be unique per traversal')
        order = np.argsort(frames, kind='stable')
        count = len(images)
        columns.append({'image_paths': [images[i] for i in order],
                        'place_ids': np.asarray(frames, np.int64)[order],
                        'conditions': [condition] * count, 'sequences': [sequence] * count,
                        'roles': [role] * count, 'splits': [split] * count})
    joined = join_columns(columns)
    _LOG.info('%s: %d images in %d traversals', name, len(joined['image_paths']), len(groups))
    frame = {'kind': 'none', 'ground_truth': 'place_ids (frame number, same in every traversal)'}
    return make_dataset(name, root, joined.pop('image_paths'), frame=frame, **joined)


def frame_number(path: str | Path) -> int:
    """Return the last number in a file name (``Image042.jpg`` -> 42, ``15001.png`` -> 15001)."""
    match = re.search(r'(\d+)\D*$', Path(path).stem)
    if match is None:
        raise DatasetLayoutError(f'{path} has no frame number in its name; frame-aligned '
                                 'traversals name each image by its frame (Image042.jpg, 42.png)')
    return int(match.group(1))


def list_images(folder: str | Path, what: str) -> List[str]:
    """Image files under ``folder`` (recursively) in natural order of their relative paths."""
    folder = cast(Path, require_path(folder, what))
    images = [path for path in folder.rglob('*')
              if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()]
    if not images:
        raise DatasetLayoutError(f'{folder} holds no images ({", ".join(IMAGE_SUFFIXES)}): '
                                 f'{what}')
    return [str(path) for path in sorted(images, key=lambda p: _natural_key(
        p.relative_to(folder).as_posix()))]


def _natural_key(name: str) -> List[Union[int, str]]:
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name)]


# --- VPR-Bench packaging: ref/, query/, ground_truth_new.npy --------------------------

@DATASETS.register('sped')
def load_sped(*, root: str | Path, allow_pickle: bool = False,
              split: str = 'test') -> PlaceDataset:
    """SPED (Chen et al. ICRA 2017) as packaged by VPR-Bench (Zaffar et al. IJCV 2021).

    Layout (VPR-Bench ``datasets/SPEDTEST``; see :func:`load_vpr_bench`)::

        <root>/ref/00000.jpg ...       database ("reference") images
        <root>/query/00000.jpg ...     query images
        <root>/ground_truth_new.npy    rows [query index, [reference indices]]
    """
    return load_vpr_bench('sped', root, allow_pickle=allow_pickle, split=split)


@DATASETS.register('stlucia')
def load_stlucia(*, root: str | Path, allow_pickle: bool = False,
                 split: str = 'test') -> PlaceDataset:
    """St Lucia (Glover et al. ICRA 2010) as packaged by VPR-Bench (Zaffar et al. IJCV 2021).

    Layout (VPR-Bench ``datasets/StLucia_small``; see :func:`load_vpr_bench`)::

        <root>/ref/0.jpg ...           database ("reference") images, one time of day
        <root>/query/0.jpg ...         query images, another time of day
        <root>/ground_truth_new.npy    rows [query index, [reference indices]]
    """
    return load_vpr_bench('stlucia', root, allow_pickle=allow_pickle, split=split)


def load_vpr_bench(name: str, root: str | Path, *, allow_pickle: bool = False,
                   split: str = 'test') -> PlaceDataset:
    """Read a set in VPR-Bench's layout: ``ref/``, ``query/``, ``ground_truth_new.npy``.

    Images are indexed in natural (numeric-aware) order of their file names, the order
    of VPR-Bench's numbered files that the ground-truth indices refer to. A query's
    ``positives`` are the database rows the ground truth lists for it; database rows
    get empty arrays. Conditions are ``''`` (the package does not label them); sequences
    are ``ref`` / ``query``. The ground truth is a pickled numpy object array, read only
    with ``allow_pickle=True`` (see :func:`read_vpr_bench_ground_truth`).
    """
    root = Path(root)
    database = list_images(root / 'ref', f'{name}: VPR-Bench reference (database) images')
    queries = list_images(root / 'query', f'{name}: VPR-Bench query images')
    matches = read_vpr_bench_ground_truth(root / 'ground_truth_new.npy', len(queries),
                                          len(database), allow_pickle=allow_pickle)
    roles = ['database'] * len(database) + ['query'] * len(queries)
    return make_dataset(
        name, root, database + queries, roles=roles, splits=split,
        sequences=['ref'] * len(database) + ['query'] * len(queries),
        positives=(np.zeros(0, np.int64),) * len(database) + matches,
        frame={'kind': 'none', 'ground_truth': 'positives from ground_truth_new.npy'})


def read_vpr_bench_ground_truth(path: str | Path, query_count: int, database_count: int, *,
                                allow_pickle: bool = False) -> RowLists:
    """Per query, the sorted reference indices VPR-Bench's ``ground_truth_new.npy`` lists.

    The file holds rows ``[query index, [reference indices]]`` as a pickled numpy object
    array. Unpickling runs whatever code the file carries, so such a file is only read
    with ``allow_pickle=True``, for files from a source you trust; plain numeric arrays
    load without it.
    """
    path = require_path(path, 'VPR-Bench ground truth: rows [query index, [reference indices]]')
    try:
        rows = np.load(path, allow_pickle=False)
    except ValueError:
        if not allow_pickle:
            raise UnsafePickleError(
                f'{path} is a pickled numpy object array, and unpickling an untrusted file '
                'can run arbitrary code; if it comes from a source you trust (e.g. the '
                'VPR-Bench release), pass allow_pickle=True, e.g. load_dataset(kind, root, '
                'allow_pickle=True)') from None
        rows = np.load(path, allow_pickle=True)
    matches: List[Set[int]] = [set() for _ in range(query_count)]
    for row in rows:
        query, references = int(row[0]), np.atleast_1d(np.asarray(row[1], np.int64)).ravel()
        if not 0 <= query < query_count or np.any((references < 0) |
                                                  (references >= database_count)):
            raise DatasetLayoutError(f'{path}: row for query {query} is out of range '
                                     f'({query_count} queries, {database_count} references)')
        matches[query].update(references.tolist())
    return tuple(np.array(sorted(found), np.int64) for found in matches)


def _is_true(value: str) -> bool:
    return value.strip().lower() in ('true', '1', '1.0', 'yes')
