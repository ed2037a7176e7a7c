"""Adapters for the NetVLAD-specified place-recognition benchmarks (UTM ground truth).

Each adapter reads a dataset's own layout as distributed and returns a
:class:`~vl_attention.training.sources.base.PlaceDataset` whose positions are UTM
``(easting, northing, 0)`` in metres:

* ``pittsburgh``: Pittsburgh 30k / 250k (Torii, Sivic, Pajdla, Okutomi, "Visual place
  recognition with repetitive structures", CVPR 2013) in the train/val/test splits of
  NetVLAD (Arandjelovic, Gronat, Torii, Pajdla, Sivic, "NetVLAD: CNN architecture for
  weakly supervised place recognition", CVPR 2016);
* ``tokyo247``: Tokyo 24/7 (Torii, Arandjelovic, Sivic, Okutomi, Pajdla, "24/7 place
  recognition by view synthesis", CVPR 2015);
* ``tokyo_tm``: Tokyo Time Machine (Arandjelovic et al., CVPR 2016, the NetVLAD paper).

(Mapillary SLS, Nordland, St Lucia, SPED and GardensPoint are in
:mod:`.public_vpr_sequences`.)

The benchmarks define ground truth by distance: a database image is a positive of a
query when their positions lie within ``posDistThr`` (25 m), so the positions are the
whole ground truth; the NetVLAD specifications' threshold is kept in ``frame``.

A NetVLAD specification is a MATLAB v5 ``.mat`` file holding a struct ``dbStruct`` with
``whichSet`` (split name), ``dbImageFns`` / ``qImageFns`` (N x 1 cells of image paths
relative to the database / query image folder), ``utmDb`` / ``utmQ`` (2 x N UTM easting
and northing, metres), ``numImages``, ``numQueries``, ``posDistThr`` (metres),
``posDistSqThr`` and ``nonTrivPosDistSqThr`` (squared metres); Tokyo TM adds
``dbTimeStamp`` / ``qTimeStamp`` (capture time of each image's panorama).
"""

import csv
import logging
import os
from pathlib import Path
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

import numpy as np
import numpy.typing as npt

from vl_attention.config import ConfigError
from vl_attention.evaluation.place_dataset import PlaceDataset
from vl_attention.training.sources.base import (
    DatasetLayoutError, DATASETS, make_dataset, require_path, SPLITS)

_LOG = logging.getLogger(__name__)

DBSTRUCT_FIELDS = ('whichSet', 'dbImageFns', 'utmDb', 'qImageFns', 'utmQ', 'numImages',
                   'numQueries', 'posDistThr', 'posDistSqThr', 'nonTrivPosDistSqThr')
PITTSBURGH_VARIANTS = ('30k', '250k')
TOKYO247_CONDITIONS = ('day', 'sunset', 'night')
# Words of a Tokyo 24/7 query path that name its time of day.
TIME_OF_DAY_WORDS = {'day': 'day', 'daytime': 'day', 'sunset': 'sunset', 'evening': 'sunset',
                     'dusk': 'sunset', 'night': 'night'}


# --- NetVLAD dataset specifications (Pittsburgh, Tokyo 24/7, Tokyo TM) -----------------

def read_dbstruct(path: str | Path) -> Dict[str, Any]:
    """Read a NetVLAD dataset specification (struct ``dbStruct`` of a MATLAB v5 file).

    Returns a dict with ``which_set``, ``database_names``, ``query_names``,
    ``database_utm`` / ``query_utm`` ((N, 2) easting, northing in metres),
    ``positive_distance_m`` and, where the struct has them, ``database_stamps`` /
    ``query_stamps``. Counts are checked against ``numImages`` / ``numQueries``.
    """
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError
    path = require_path(path, 'a NetVLAD dataset specification (.mat file with struct dbStruct)')
    try:
        struct = loadmat(str(path), squeeze_me=True, struct_as_record=False).get('dbStruct')
    except NotImplementedError:
        raise DatasetLayoutError(f'{path} is a MATLAB v7.3 (HDF5) file; the NetVLAD '
                                 'specifications are v5: re-save it with save(..., "-v7")'
                                 ) from None
    except (MatReadError, ValueError, OSError) as error:
        raise DatasetLayoutError(f'{path} is not a readable MATLAB file: {error}') from None
    if struct is None:
        raise DatasetLayoutError(f'{path} holds no variable dbStruct; NetVLAD specifications '
                                 'keep everything in the struct dbStruct')
    fields = set(getattr(struct, '_fieldnames', ()))
    missing = [name for name in DBSTRUCT_FIELDS if name not in fields]
    if missing:
        raise DatasetLayoutError(f'{path}: struct dbStruct lacks field(s) {missing}; a NetVLAD '
                                 f'specification has {list(DBSTRUCT_FIELDS)}')
    return _parse_dbstruct(struct, fields, path)


def _parse_dbstruct(struct: Any, fields: Set[str], path: str | Path) -> Dict[str, Any]:
    database, queries = _strings(struct.dbImageFns), _strings(struct.qImageFns)
    for name, names in (('numImages', database), ('numQueries', queries)):
        if int(getattr(struct, name)) != len(names):
            raise DatasetLayoutError(f'{path}: dbStruct.{name} is {int(getattr(struct, name))} '
                                     f'but the image list has {len(names)} names')
    spec = {'path': path, 'which_set': str(struct.whichSet), 'database_names': database,
            'query_names': queries,
            'database_utm': _utm(struct.utmDb, len(database), path, 'utmDb'),
            'query_utm': _utm(struct.utmQ, len(queries), path, 'utmQ'),
            'positive_distance_m': float(struct.posDistThr)}
    for field, key, count in (('dbTimeStamp', 'database_stamps', len(database)),
                              ('qTimeStamp', 'query_stamps', len(queries))):
        if field in fields:
            stamps = np.atleast_1d(np.asarray(getattr(struct, field), np.float64)).ravel()
            if len(stamps) != count:
                raise DatasetLayoutError(f'{path}: dbStruct.{field} has {len(stamps)} values '
                                         f'for {count} images')
            spec[key] = stamps
    return spec


def _strings(cell: Any) -> List[str]:
    # squeeze_me turns a 1 x 1 cell into a bare string and an N x 1 cell into (N,).
    return [str(name) for name in np.atleast_1d(np.asarray(cell, dtype=object)).ravel()]


def _utm(value: Any, count: int, path: str | Path, field: str) -> npt.NDArray[np.float64]:
    utm = np.asarray(value, np.float64)
    if utm.size != 2 * count:
        raise DatasetLayoutError(f'{path}: dbStruct.{field} has {utm.size} values for {count} '
                                 'images; expected 2 x N (easting; northing)')
    if utm.ndim == 2 and utm.shape[0] != 2:
        return utm.reshape(count, 2)   # re-saved as N x 2
    return utm.reshape(2, count).T


def _image_paths(root: str | Path, folders: Sequence[str], names: Sequence[str],
                 what: str) -> List[str]:
    """Full paths of ``names`` under the first of ``folders`` that holds ``names[0]``.

    Tokyo 24/7 ships its database as .png files that its dbStruct names .jpg, so the
    .png / .jpg twin of the first name is tried too and then used for every name.
    """
    if not names:
        return []
    stem, named_suffix = os.path.splitext(names[0])
    for folder in folders:
        for suffix in (named_suffix, '.png', '.jpg'):
            if (Path(root) / folder / (stem + suffix)).is_file():
                base = os.path.join(str(root), folder)
                if suffix == named_suffix:
                    return [os.path.join(base, name) for name in names]
                return [os.path.join(base, os.path.splitext(name)[0] + suffix)
                        for name in names]
    raise DatasetLayoutError(
        f'{names[0]} (or its .png/.jpg twin) is missing: {what} are expected under one of '
        f'{[str(Path(root) / folder) for folder in folders]}')


def _spec_columns(spec: Mapping[str, Any], database_paths: Sequence[str],
                  query_paths: Sequence[str], split: str) -> Dict[str, Any]:
    """Columns of one specification: database rows, then query rows, all of ``split``."""
    database_count, query_count = len(database_paths), len(query_paths)
    utm = np.concatenate([spec['database_utm'], spec['query_utm']])
    return {'image_paths': list(database_paths) + list(query_paths),
            'positions_m': np.column_stack([utm, np.zeros(len(utm))]),
            'roles': ['database'] * database_count + ['query'] * query_count,
            'splits': [split] * (database_count + query_count)}


def join_columns(parts: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Concatenate column dicts (arrays row-wise, lists of labels as lists)."""
    joined = {}
    for key in parts[0]:
        values = [part[key] for part in parts]
        joined[key] = (np.concatenate(values) if isinstance(values[0], np.ndarray)
                       else [item for value in values for item in value])
    return joined


def _netvlad_frame(specs: Sequence[Mapping[str, Any]], zone: str) -> Dict[str, Any]:
    frame = {'kind': 'utm', 'zone': zone, 'source': 'dbStruct utmDb / utmQ'}
    thresholds = {spec['positive_distance_m'] for spec in specs}
    if len(thresholds) == 1:
        frame['positive_distance_m'] = thresholds.pop()
    return frame


def as_names(value: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """Return a tuple of names from one name or a sequence of them (configs give either)."""
    return (value,) if isinstance(value, str) else tuple(value)


def _folders(explicit: Optional[str], defaults: Tuple[str, ...]) -> Tuple[str, ...]:
    return (explicit,) if explicit is not None else defaults


@DATASETS.register('pittsburgh')
def load_pittsburgh(*, root: str | Path, variant: str = '30k',
                    splits: Union[str, Sequence[str]] = SPLITS, specs_dir: str = 'datasets',
                    database_dir: Optional[str] = None,
                    queries_dir: Optional[str] = None) -> PlaceDataset:
    """Pittsburgh 30k / 250k in the NetVLAD splits (Torii et al. CVPR 2013; NetVLAD 2016).

    Layout as distributed (database tars ``000.tar`` .. ``010.tar``, ``queries_real.tar``
    and NetVLAD's ``netvlad_v100_datasets.tar.gz`` extracted into ``root``)::

        <root>/datasets/pitts30k_{train,val,test}.mat   (and pitts250k_*.mat)
        <root>/000/000000_pitch1_yaw1.jpg ...           database, as dbImageFns names them
        <root>/queries_real/000/000000_pitch1_yaw1.jpg  queries, as qImageFns names them

    NetVLAD's MATLAB code puts the same trees under ``images/`` and ``queries/``; those
    are found too (or name the folders with ``database_dir`` / ``queries_dir``).
    Positions are UTM zone 17T; rows of ``pitts<variant>_<split>.mat`` are split ``split``.
    """
    if variant not in PITTSBURGH_VARIANTS:
        raise ConfigError(f'unknown Pittsburgh variant {variant!r}; use one of '
                          f'{PITTSBURGH_VARIANTS}')
    splits = as_names(splits)
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise ConfigError(f'Pittsburgh splits {unknown or list(splits)} are not valid; choose '
                          f'from {SPLITS}')
    specs, parts = [], []
    for split in splits:
        spec = read_dbstruct(Path(root) / specs_dir / f'pitts{variant}_{split}.mat')
        database = _image_paths(root, _folders(database_dir, ('.', 'images')),
                                spec['database_names'], 'Pittsburgh database images')
        queries = _image_paths(root, _folders(queries_dir, ('queries_real', 'queries')),
                               spec['query_names'], 'Pittsburgh query images')
        specs.append(spec)
        parts.append(_spec_columns(spec, database, queries, split))
    columns = join_columns(parts)
    _LOG.info('pitts%s: %d images from %s', variant, len(columns['image_paths']), list(splits))
    return make_dataset(f'pitts{variant}', root, columns.pop('image_paths'),
                        frame=_netvlad_frame(specs, '17T'), **columns)


@DATASETS.register('tokyo247')
def load_tokyo247(*, root: str | Path, specs_dir: str = 'datasets',
                  database_dir: Optional[str] = None, queries_dir: Optional[str] = None,
                  query_conditions_csv: Optional[str | Path] = None) -> PlaceDataset:
    """Tokyo 24/7 (Torii et al. CVPR 2015) with NetVLAD's ``tokyo247.mat`` specification.

    Layout as distributed (database tars ``03814.tar`` .. ``03829.tar``, the query zip)::

        <root>/datasets/tokyo247.mat
        <root>/03814/<panorama>_012_000.png ...   database (dbImageFns say .jpg; the
                                                  .png twin is used when it is the one there)
        <root>/247query_subset_v2/00001.jpg ...   queries, as qImageFns names them

    The database may also sit under ``images/`` or ``database_gsv_vga/`` and the queries
    under ``247query_v3/`` or ``query/`` (NetVLAD's MATLAB layout), or name the folders
    with ``database_dir`` / ``queries_dir``. Every row is split ``test``.

    Query condition (``day`` / ``sunset`` / ``night``): the released query file names are
    numbers (``00001.jpg``), which do not name the time of day, so it is taken from
    ``query_conditions_csv`` (columns ``name,condition``; ``name`` as in qImageFns or its
    file name), else from a word of the query's path (``day``/``daytime``, ``sunset``/
    ``evening``/``dusk``, ``night``, e.g. ``night/00003.jpg``); otherwise it is ``''``.
    Database images (daytime Street View) get ``''`` too. Positions are UTM zone 54S.
    """
    spec = read_dbstruct(Path(root) / specs_dir / 'tokyo247.mat')
    database = _image_paths(root, _folders(database_dir, ('.', 'images', 'database_gsv_vga')),
                            spec['database_names'], 'Tokyo 24/7 database images')
    queries = _image_paths(
        root, _folders(queries_dir, ('247query_subset_v2', '247query_v3', 'query')),
        spec['query_names'], 'Tokyo 24/7 query images')
    columns = _spec_columns(spec, database, queries, 'test')
    labels = _read_conditions(query_conditions_csv) if query_conditions_csv else {}
    columns['conditions'] = [''] * len(database) + [
        labels.get(name, labels.get(os.path.basename(name), time_of_day(name)))
        for name in spec['query_names']]
    return make_dataset('tokyo247', root, columns.pop('image_paths'),
                        frame=_netvlad_frame([spec], '54S'), **columns)


def time_of_day(name: str) -> str:
    """Return ``day`` / ``sunset`` / ``night`` named by a word of ``name``, else ``''``."""
    words = [word for word in re.split(r'[^a-z]+', name.lower()) if word in TIME_OF_DAY_WORDS]
    return TIME_OF_DAY_WORDS[words[-1]] if words else ''


def _read_conditions(path: str | Path) -> Dict[str, str]:
    path = require_path(path, 'the Tokyo 24/7 query conditions (columns name,condition)')
    rows = read_csv_columns(path, ('name', 'condition'))
    unknown = sorted({row['condition'] for row in rows} - set(TOKYO247_CONDITIONS))
    if unknown:
        raise DatasetLayoutError(f'{path}: unknown condition(s) {unknown}; Tokyo 24/7 queries '
                                 f'are {TOKYO247_CONDITIONS}')
    return {row['name']: row['condition'] for row in rows}


@DATASETS.register('tokyo_tm')
def load_tokyo_tm(*, root: str | Path, splits: Union[str, Sequence[str]] = ('train', 'val'),
                  specs_dir: str = 'datasets', images_dir: str = 'images') -> PlaceDataset:
    """Tokyo Time Machine (Arandjelovic et al., NetVLAD, CVPR 2016).

    Layout (NetVLAD's ``localPaths.m``: the TM root "should contain images/")::

        <root>/datasets/tokyoTM_train.mat, tokyoTM_val.mat
        <root>/images/<path as dbImageFns / qImageFns name it>

    The queries are drawn from the same panoramas as the database, so an image can be
    both a database and a query row. ``sequences`` holds each image's capture time stamp
    (dbTimeStamp / qTimeStamp) as text: NetVLAD takes a query's training positives only
    from panoramas of another time stamp, which is a comparison of sequences here.
    Positions are UTM zone 54S.
    """
    splits = as_names(splits)
    unknown = sorted(set(splits) - {'train', 'val'})
    if unknown or not splits:
        raise ConfigError(f'Tokyo TM splits {unknown or list(splits)} are not valid; it has '
                          "'train' and 'val'")
    specs, parts = [], []
    for split in splits:
        spec = read_dbstruct(Path(root) / specs_dir / f'tokyoTM_{split}.mat')
        if 'database_stamps' not in spec or 'query_stamps' not in spec:
            raise DatasetLayoutError(f'{spec["path"]}: Tokyo TM specifications carry '
                                     'dbTimeStamp and qTimeStamp; this one does not')
        database = _image_paths(root, (images_dir,), spec['database_names'],
                                'Tokyo TM database images')
        queries = _image_paths(root, (images_dir,), spec['query_names'], 'Tokyo TM queries')
        part = _spec_columns(spec, database, queries, split)
        stamps = np.concatenate([spec['database_stamps'], spec['query_stamps']])
        part['sequences'] = [np.format_float_positional(s, trim='-') for s in stamps]
        specs.append(spec)
        parts.append(part)
    columns = join_columns(parts)
    return make_dataset('tokyo_tm', root, columns.pop('image_paths'),
                        frame=_netvlad_frame(specs, '54S'), **columns)


def read_csv_columns(path: str | Path, columns: Sequence[str]) -> List[Dict[str, str]]:
    """Rows of a CSV file as dicts, naming the file and the columns it lacks."""
    with open(path, newline='') as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in columns if name not in (reader.fieldnames or ())]
        if missing:
            raise DatasetLayoutError(f'{path} lacks column(s) {missing}; it has '
                                     f'{reader.fieldnames}')
        return list(reader)
