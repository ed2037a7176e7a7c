"""Training sets from a robot's own recordings and from the synthetic world.

* ``rosbag2``: an image topic posed by a position topic, associated by stamp
  exactly as the map builder does (:class:`vl_attention.mapping.sources.BagSource`);
* ``folder_csv``: an image folder and a CSV of positions (WGS84 or metric);
* ``synthetic``: the procedural town's place sets
  (:mod:`vl_attention.training.datasets`), held in memory.
"""

import csv
from dataclasses import asdict, fields
import hashlib
import inspect
import json
import logging
import os
from pathlib import Path
from typing import (Any, Callable, cast, Dict, List, Mapping, Optional, Sequence, Set, Tuple,
                    TypeVar, Union)

import cv2
import numpy as np
import numpy.typing as npt

from vl_attention.config import ConfigError
from vl_attention.data.rosbag_reader import open_bags, topic_table
from vl_attention.data.synthetic.town import TownConfig
from vl_attention.evaluation.place_dataset import PlaceDataset
from vl_attention.geo import GeodeticOrigin, geodetic_to_enu
from vl_attention.io import atomic_write_bytes
from vl_attention.mapping.records import POSES_COLUMNS, read_poses_csv
from vl_attention.mapping.sources import BagSource, SourceFrame
# vl_attention.training.* is Any to mypy (setup.cfg): cast() states what its calls return
from vl_attention.training.datasets import (load_place_views, place_recognition_splits,
                                            PlaceSetConfig)
from vl_attention.training.sources.base import (DatasetLayoutError, DATASETS, make_dataset,
                                                require_path, ROLES, SPLITS)

LOGGER = logging.getLogger(__name__)
BAG_LAYOUT = 'a rosbag2 directory (metadata.yaml and its .mcap / .db3 files)'
METRIC_COLUMNS = ('image', 'x_m', 'y_m')
QUATERNION_COLUMNS = ('qx', 'qy', 'qz', 'qw')
# an origin as options give it: (lat, lon[, alt]), a dict of GeodeticOrigin's fields, or itself
OriginLike = Union[GeodeticOrigin, Dict[str, float], Sequence[float]]
# the columns an adapter collects row by row, by make_dataset keyword
Columns = Dict[str, List[Any]]
# the data rows of a CSV: (line number, row)
CsvRows = List[Tuple[int, Dict[str, str]]]
_Loader = TypeVar('_Loader', bound=Callable[..., PlaceDataset])


def as_origin(origin: Optional[OriginLike]) -> Optional[GeodeticOrigin]:
    """Return a GeodeticOrigin from ``(lat, lon[, alt])``, a dict of its fields, or itself."""
    if origin is None or isinstance(origin, GeodeticOrigin):
        return origin
    if isinstance(origin, dict):
        return GeodeticOrigin(**origin)
    values = [float(value) for value in origin]
    if len(values) not in (2, 3):
        raise ConfigError(f'origin={origin!r}: give (latitude_deg, longitude_deg[, altitude_m])')
    return GeodeticOrigin(*values)


def enu_frame(origin: GeodeticOrigin) -> Dict[str, Any]:
    """Frame description of ENU positions at ``origin``."""
    return {'kind': 'enu', 'origin': asdict(origin)}


# --- rosbag2 -----------------------------------------------------------------------------


@DATASETS.register('rosbag2')
def load_rosbag2(*, root: str | Path | Sequence[str | Path],
                 image_topic: Optional[str] = None, position_topic: Optional[str] = None,
                 origin: Optional[OriginLike] = None, max_gap_s: float = 1.0, every_nth: int = 1,
                 condition: str = '', cache_dir: Optional[str | Path] = None) -> PlaceDataset:
    """Load images of ``image_topic`` posed by ``position_topic`` in one or more rosbag2 bags.

    Layout: ``root`` is a bag directory or a list of them, each one sequence
    named after its directory::

        run_2024_05_01/          metadata.yaml, run_2024_05_01_0.mcap (or .db3)

    Frames are associated with the position track by header stamp exactly as
    in map building (linear interpolation / slerp between samples at most
    ``max_gap_s`` apart; frames outside the track are skipped and logged);
    every ``every_nth`` associated frame is kept. Positions are ENU metres at
    ``origin`` (``(lat, lon, alt)``; required for pose / odometry topics,
    default for NavSatFix: the first fix of the first bag, shared by all bags);
    orientations are the pose topic's, or the heading of travel for NavSatFix.

    Decoded frames are written once, atomically, as PNG files under
    ``<cache_dir>/<bag name>-<digest>/<stamp_ns>.png`` (``cache_dir`` defaults
    to ``$XDG_CACHE_HOME/vl_attention/frames``, i.e. ``~/.cache/...``, so
    read-only bags work); the digest covers the bag path, its metadata and the
    topics, and existing PNG files are reused.
    """
    bags: Sequence[str | Path] = [root] if isinstance(root, (str, os.PathLike)) else list(root)
    if not bags:
        raise ConfigError('rosbag2: root is an empty list; give one or more bag directories')
    bags = cast(List[Path], [require_path(bag, BAG_LAYOUT) for bag in bags])
    if image_topic is None or position_topic is None:
        raise ConfigError(_missing_topics_message(bags[0]))
    if int(every_nth) < 1:
        raise ConfigError(f'every_nth={every_nth} must be >= 1')
    origin = as_origin(origin)
    columns: Columns = {'image_paths': [], 'positions_m': [], 'quaternions_xyzw': [],
                        'sequences': []}
    for bag in bags:
        source = BagSource([bag], image_topic=image_topic, position_topic=position_topic,
                           max_gap_s=max_gap_s, origin=origin)
        folder = _frames_folder(bag, image_topic, position_topic, cache_dir)
        for index, frame in enumerate(source.frames()):
            if index % int(every_nth) == 0:
                columns['image_paths'].append(_cached_png(folder, frame))
                columns['positions_m'].append(frame.position_enu_m)
                columns['quaternions_xyzw'].append(frame.orientation_xyzw)
                columns['sequences'].append(bag.name)
        origin = source.origin  # later bags share the first bag's frame
        LOGGER.info('rosbag2 %s: %s, frames in %s', bag, dict(source.stats), folder)
    if not columns['image_paths']:
        raise DatasetLayoutError(f'no posed image on {image_topic!r} in {[str(b) for b in bags]}')
    return make_dataset('rosbag2', ';'.join(str(bag) for bag in bags),
                        columns.pop('image_paths'), conditions=condition,
                        frame=enu_frame(cast(GeodeticOrigin, origin)),  # frames() set it
                        **columns)


def _missing_topics_message(bag: Path) -> str:
    with open_bags([bag]) as reader:
        table = topic_table(reader)
    listing = ', '.join(f'{topic} ({msgtype}, {count})'
                        for topic, (msgtype, count) in sorted(table.items()))
    return (f'rosbag2 needs image_topic= (sensor_msgs Image / CompressedImage) and '
            f'position_topic= (NavSatFix, PoseStamped, PoseWithCovarianceStamped or '
            f'Odometry); the topics of {bag} are: {listing}')


def default_frames_cache() -> Path:
    """Return ``$XDG_CACHE_HOME/vl_attention/frames`` (``~/.cache`` when unset)."""
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'vl_attention' / 'frames'


def _frames_folder(bag: Path, image_topic: str, position_topic: str,
                   cache_dir: Optional[str | Path]) -> Path:
    metadata = bag / 'metadata.yaml'
    key = [str(bag.resolve()), image_topic, position_topic,
           metadata.read_text() if metadata.is_file() else '']
    digest = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:16]
    return Path(cache_dir or default_frames_cache()) / f'{bag.name}-{digest}'


def _cached_png(folder: Path, frame: SourceFrame) -> str:
    path = folder / f'{frame.stamp_ns}.png'
    if not path.is_file():
        ok, png = cv2.imencode('.png', cv2.cvtColor(frame.load(), cv2.COLOR_RGB2BGR))
        if not ok:
            raise OSError(f'PNG encoding failed for {path}')
        atomic_write_bytes(path, png.tobytes())
    return str(path)


# --- image folder + CSV ------------------------------------------------------------------


@DATASETS.register('folder_csv')
def load_folder_csv(*, root: str | Path, images: str = 'images', csv_file: str = 'poses.csv',
                    origin: Optional[OriginLike] = None, condition: str = '', sequence: str = '',
                    split: str = 'train', role: str = '') -> PlaceDataset:
    """Load images in a folder, positioned by a CSV.

    Layout (``images`` and ``csv_file`` are relative to ``root``)::

        root/images/000001.png ...
        root/poses.csv

    The CSV is either the map builder's poses file
    (``image,stamp_ns,latitude_deg,longitude_deg,altitude_m,qx,qy,qz,qw``, read
    by :func:`vl_attention.mapping.records.read_poses_csv`; positions become
    ENU metres at ``origin``, default the first row), or metric:
    ``image,x_m,y_m[,z_m][,qx,qy,qz,qw]`` in any local metric frame (``z_m``
    absent: 0; quaternion absent: unknown). When both kinds of column are
    present the WGS84 ones win. Optional columns ``condition``, ``sequence``,
    ``split`` (train/val/test), ``role`` (database/query) and ``place_id``
    fill those columns; an absent column or empty cell takes the option of the
    same name (``place_id``: -1).
    """
    root = Path(root)
    csv_path = require_path(root / csv_file, 'the poses CSV: image,stamp_ns,latitude_deg,'
                            'longitude_deg,altitude_m,qx,qy,qz,qw or image,x_m,y_m[,z_m]'
                            '[,qx,qy,qz,qw]')
    folder = require_path(root / images, f'the image folder that {csv_file} names images in')
    with csv_path.open(newline='') as handle:
        reader = csv.DictReader(handle)
        header = set(reader.fieldnames or ())
        rows = [(reader.line_num, row) for row in reader]   # line_num: blank lines count
    if not rows:
        raise DatasetLayoutError(f'{csv_path} has no rows')
    if set(POSES_COLUMNS[:5]) <= header:
        positions, quaternions, frame = _geodetic_positions(csv_path, origin)
    elif set(METRIC_COLUMNS) <= header:
        positions, quaternions = _metric_positions(csv_path, rows, header)
        frame = {'kind': 'local', 'csv': str(csv_path)}
    else:
        raise DatasetLayoutError(
            f'{csv_path}: header {sorted(header)} has neither the WGS84 columns '
            f'{",".join(POSES_COLUMNS)} nor the metric columns image,x_m,y_m[,z_m]')
    defaults = {'condition': condition, 'sequence': sequence, 'split': split, 'role': role}
    labels = _label_columns(csv_path, rows, defaults)
    paths = [_image_path(folder, row['image'], f'{csv_path}:{number}') for number, row in rows]
    return make_dataset('folder_csv', root, paths, positions_m=positions,
                        quaternions_xyzw=quaternions, frame=frame, **labels)


def _geodetic_positions(csv_path: Path, origin: Optional[OriginLike]) -> Tuple[
        np.ndarray, np.ndarray, Dict[str, Any]]:
    columns = read_poses_csv(csv_path)
    geodetic = np.stack([np.asarray(columns[name], np.float64) for name in POSES_COLUMNS[2:5]],
                        axis=-1)
    origin = as_origin(origin) or GeodeticOrigin(*geodetic[0])
    positions = geodetic_to_enu(geodetic[:, 0], geodetic[:, 1], geodetic[:, 2], origin)
    quaternions = np.stack([columns[name] for name in QUATERNION_COLUMNS], axis=-1)
    return positions, _unit_quaternions(quaternions, csv_path), enu_frame(origin)


def _metric_positions(csv_path: Path, rows: CsvRows,
                      header: Set[str]) -> Tuple[np.ndarray, np.ndarray]:
    has_z = 'z_m' in header
    present = [name for name in QUATERNION_COLUMNS if name in header]
    if present and len(present) != 4:
        raise DatasetLayoutError(f'{csv_path}: has quaternion column(s) {present} but not all '
                                 f'of {",".join(QUATERNION_COLUMNS)}; give all four or none')
    positions = np.zeros((len(rows), 3))
    quaternions = np.full((len(rows), 4), np.nan)
    for index, (number, row) in enumerate(rows):
        names = ('x_m', 'y_m') + (('z_m',) if has_z else ())
        positions[index, :len(names)] = _numbers(row, names, f'{csv_path}:{number}')
        if present:
            quaternions[index] = _numbers(row, QUATERNION_COLUMNS, f'{csv_path}:{number}')
    if present:
        quaternions = _unit_quaternions(quaternions, csv_path)
    return positions, quaternions


def _numbers(row: Mapping[str, str], names: Sequence[str], where: str) -> List[float]:
    try:
        return [float(row[name]) for name in names]
    except (TypeError, ValueError):
        values = {name: row.get(name) for name in names}
        raise DatasetLayoutError(f'{where}: {values} must all be numbers') from None


def _unit_quaternions(quaternions: npt.ArrayLike, csv_path: Path) -> npt.NDArray[np.float64]:
    quaternions = np.asarray(quaternions, np.float64)
    norms = np.linalg.norm(quaternions, axis=1, keepdims=True)
    bad = np.flatnonzero(~(norms[:, 0] > 1e-9))
    if len(bad):
        raise DatasetLayoutError(f'{csv_path}: data row {bad[0] + 1} has a zero quaternion; '
                                 'give a unit qx,qy,qz,qw (0,0,0,1 for identity)')
    return quaternions / norms


def _label_columns(csv_path: Path, rows: CsvRows, defaults: Mapping[str, str]) -> Columns:
    labels: Columns = {'conditions': [], 'sequences': [], 'splits': [], 'roles': [],
                       'place_ids': []}
    for number, row in rows:
        where = f'{csv_path}:{number}'
        value = {key: (row.get(key) or '').strip() or default
                 for key, default in defaults.items()}
        if value['split'] not in SPLITS:
            raise DatasetLayoutError(f'{where}: split {value["split"]!r} is not one of {SPLITS}')
        if value['role'] not in ROLES:
            raise DatasetLayoutError(f'{where}: role {value["role"]!r} is not one of {ROLES}')
        place = (row.get('place_id') or '').strip() or '-1'
        try:
            labels['place_ids'].append(int(place))
        except ValueError:
            raise DatasetLayoutError(f'{where}: place_id {place!r} is not an integer') from None
        for key in ('condition', 'sequence', 'split', 'role'):
            labels[f'{key}s'].append(value[key])
    return labels


def _image_path(folder: Path, name: Optional[str], where: str) -> str:
    path = folder / (name or '')
    if not name or not path.is_file():
        raise DatasetLayoutError(f'{where}: image {path} does not exist')
    return str(path)


# --- synthetic world ---------------------------------------------------------------------


def _with_place_set_options(loader: _Loader) -> _Loader:
    """Expose every PlaceSetConfig field as a keyword option (kept in sync with the config)."""
    defaults = PlaceSetConfig()
    parameters = [inspect.Parameter('root', inspect.Parameter.KEYWORD_ONLY)] + [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                          default=getattr(defaults, f.name)) for f in fields(PlaceSetConfig)]
    # a function takes any attribute; inspect.signature (the registry's option check) reads this
    loader.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return loader


@DATASETS.register('synthetic')
@_with_place_set_options
def load_synthetic(*, root: str | Path, **options: Any) -> PlaceDataset:
    """Load place sets of the synthetic town, rendered once into the cache folder ``root``.

    Options are the fields of :class:`vl_attention.training.datasets.PlaceSetConfig`
    (``num_places``, ``conditions``, ``width``, ``height``, ``held_out_places``,
    ...). Rows follow :func:`place_recognition_splits`: training places are split
    ``train``; held-out places are split ``test``, role ``database`` under the
    first condition and ``query`` under the others; training places within
    ``negative_distance_m`` of a held-out place are left out. Images are held in
    memory (``pixels``); positions are ENU metres at the town's origin, place
    ids the index along the route, sequences ``pass<k>`` per drive.
    """
    if isinstance(options.get('town'), dict):        # e.g. from a YAML recipe
        town = dict(options['town'])
        town['origin'] = as_origin(town.get('origin')) or TownConfig().origin
        options['town'] = TownConfig(**town)
    if 'conditions' in options:
        conditions = options['conditions']
        options['conditions'] = (conditions,) if isinstance(conditions, str) else \
            tuple(conditions)
    config = PlaceSetConfig(**options)
    splits = place_recognition_splits(load_place_views(config, root), config)
    parts = ((splits.train, 'train', ''), (splits.database, 'test', 'database'),
             (splits.queries, 'test', 'query'))
    join = np.concatenate
    return make_dataset(
        'synthetic', root, [''] * sum(len(views) for views, _, _ in parts),
        pixels=join([views.images for views, _, _ in parts]),
        positions_m=join([views.positions_m for views, _, _ in parts]),
        quaternions_xyzw=join([views.quaternions_xyzw for views, _, _ in parts]),
        place_ids=join([views.place_ids for views, _, _ in parts]),
        conditions=join([views.conditions for views, _, _ in parts]),
        sequences=[f'pass{k}' for views, _, _ in parts for k in views.pass_ids],
        splits=[split for views, split, _ in parts for _ in range(len(views))],
        roles=[role for views, _, role in parts for _ in range(len(views))],
        frame=enu_frame(config.town.origin))
