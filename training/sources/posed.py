"""Public datasets with metric 6-DoF poses: Oxford RobotCar, 7-Scenes, Cambridge Landmarks.

Orientations are given, as everywhere in the package, for the camera's REP 103
body frame (x forward, y left, z up). 7-Scenes and Cambridge pose the optical
frame (x right, y down, z forward), so ``R_body = R_optical @ OPTICAL_IN_BODY^T``.

The scenes of 7-Scenes and of Cambridge each live in their own reconstruction
frame; to keep distance-based ground truth honest when several scenes are
loaded together, scene ``k`` (in sorted order) is shifted by
``k * scene_spacing_m`` along x (recorded in ``frame['scene_offsets_m']``),
so images of different scenes are never within positive distance.
"""

import csv
import logging
from pathlib import Path
import re
from typing import Any, cast, Dict, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from vl_attention.config import ConfigError
from vl_attention.data.synthetic.camera import OPTICAL_IN_BODY
from vl_attention.data.association import Associator, PositionTrack, sorted_track
from vl_attention.evaluation.place_dataset import PlaceDataset
# vl_attention.training.* is Any to mypy (setup.cfg): cast() states what its calls return
from vl_attention.training.sources.base import (DatasetLayoutError, DATASETS, make_dataset,
                                                require_path)

LOGGER = logging.getLogger(__name__)
TRAVERSAL_NAME = re.compile(r'^\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}$')
INS_COLUMNS = ('timestamp', 'northing', 'easting', 'down', 'utm_zone', 'roll', 'pitch', 'yaw')
# NED world axes written in ENU, and the FRD body axes written in FLU (REP 103).
NED_IN_ENU = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
FRD_IN_FLU = np.diag([1.0, -1.0, -1.0])
# the columns an adapter collects row by row, by make_dataset keyword
Columns = Dict[str, List[Any]]


def body_quaternions_from_optical(rotations_optical_to_world: np.ndarray) -> np.ndarray:
    """Quaternions ``(x, y, z, w)`` of the body frame from optical-to-world matrices."""
    return Rotation.from_matrix(rotations_optical_to_world @ OPTICAL_IN_BODY.T).as_quat()


# --- Oxford RobotCar ---------------------------------------------------------------------


@DATASETS.register('oxford_robotcar')
def load_oxford_robotcar(*, root: str | Path, traversals: Optional[Sequence[str]] = None,
                         conditions: Optional[Mapping[str, str]] = None,
                         camera: str = 'stereo/centre', max_gap_s: float = 0.5, every_nth: int = 1,
                         split: str = 'train') -> PlaceDataset:
    """Load Oxford RobotCar traversals (Maddern et al., "1 Year, 1000km", IJRR 2017).

    Layout (one folder per traversal, named by its start time)::

        root/2014-12-09-13-21-02/stereo/centre/1418132416737115.png   (or .jpg)
        root/2014-12-09-13-21-02/gps/ins.csv

    Image names are microsecond timestamps. ``ins.csv`` has the columns
    ``timestamp,ins_status,latitude,longitude,altitude,northing,easting,down,
    utm_zone,velocity_north,velocity_east,velocity_down,roll,pitch,yaw``
    (radians, NED). Positions are the INS's UTM ``(easting, northing, -down)``
    linearly interpolated at each image stamp (samples at most ``max_gap_s``
    apart, else the frame is skipped; every ``ins_status`` is used);
    orientations are the INS body attitude (slerped) turned into ENU / REP 103
    axes. The INS-to-camera extrinsics of the SDK are not applied (the lever
    arm is about a metre). Every ``every_nth`` frame on the track is kept.

    The raw release stores Bayer (GBRG) mosaics: demosaic them with the
    dataset SDK (``python/image.py``, ``load_image``) into RGB files of the
    same names first; single-channel images are refused with that hint.
    ``sequences`` are the traversal names, ``conditions`` come from the
    ``conditions`` mapping ``{traversal: label}`` (e.g. ``night``, ``snow``).
    """
    root = cast(Path, require_path(
        root, 'the RobotCar folder holding <YYYY-MM-DD-HH-MM-SS>/ traversals'))
    if int(every_nth) < 1:
        raise ConfigError(f'every_nth={every_nth} must be >= 1')
    conditions = dict(conditions or {})
    names = _traversal_names(root, traversals)
    unknown = sorted(set(conditions) - set(names))
    if unknown:
        raise ConfigError(f'conditions names traversal(s) {unknown} that are not loaded; '
                          f'the traversals are {names}')
    columns: Columns = {'image_paths': [], 'positions_m': [], 'quaternions_xyzw': [],
                        'sequences': []}
    zones = set()
    for name in names:
        track, zone = _read_ins(require_path(root / name / 'gps' / 'ins.csv',
                                             'the INS poses of the traversal'))
        zones.add(zone)
        _add_traversal(columns, root / name, camera, track, max_gap_s, int(every_nth))
    if len(zones) > 1:
        raise DatasetLayoutError(f'traversals span UTM zones {sorted(zones)}; load them apart')
    if not columns['image_paths']:
        raise DatasetLayoutError(f'{root}: no image of traversals {names} lies on its INS track')
    return make_dataset('oxford_robotcar', root, columns.pop('image_paths'), splits=split,
                        conditions=[conditions.get(name, '') for name in columns['sequences']],
                        frame={'kind': 'utm', 'zone': zones.pop(),
                               'axes': 'easting, northing, up'}, **columns)


def _traversal_names(root: Path, traversals: Optional[Sequence[str]]) -> List[str]:
    if traversals is not None:
        for name in traversals:
            require_path(root / name, 'a traversal folder named by its start time')
        return list(traversals)
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and TRAVERSAL_NAME.match(p.name))
    if not names:
        raise DatasetLayoutError(f'{root} has no traversal folder named YYYY-MM-DD-HH-MM-SS')
    return names


def _read_ins(path: Path) -> Tuple[PositionTrack, str]:
    with path.open(newline='') as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in INS_COLUMNS if name not in (reader.fieldnames or ())]
        if missing:
            raise DatasetLayoutError(f'{path}: missing column(s) {missing}')
        stamps, values, angles, zones = [], [], [], set()
        for number, row in enumerate(reader, start=2):
            try:
                stamps.append(int(row['timestamp']) * 1000)
                values.append((float(row['easting']), float(row['northing']),
                               -float(row['down'])))
                angles.append((float(row['yaw']), float(row['pitch']), float(row['roll'])))
            except (TypeError, ValueError):
                raise DatasetLayoutError(f'{path}:{number}: timestamp, easting, northing, '
                                         'down, roll, pitch, yaw must be numbers') from None
            zones.add(row['utm_zone'])
    if not stamps:
        raise DatasetLayoutError(f'{path} has no INS samples')
    ned_frd = Rotation.from_euler('ZYX', angles).as_matrix()
    quaternions = Rotation.from_matrix(NED_IN_ENU @ ned_frd @ FRD_IN_FLU).as_quat()
    if len(zones) > 1:
        raise DatasetLayoutError(f'{path} spans UTM zones {sorted(zones)}')
    return sorted_track(stamps, values, quaternions), zones.pop()


def _add_traversal(columns: Columns, folder: Path, camera: str, track: PositionTrack,
                   max_gap_s: float, every_nth: int) -> None:
    images = require_path(folder / camera, 'the camera images named <timestamp_us>.png')
    files = sorted((int(p.stem), p) for p in images.iterdir()
                   if p.suffix.lower() in ('.png', '.jpg') and p.stem.isdigit())
    if not files:
        raise DatasetLayoutError(f'{images} holds no <timestamp_us>.png / .jpg image')
    _refuse_bayer(files[0][1])
    associator, kept, skipped = Associator(track, max_gap_s=max_gap_s), 0, 0
    for stamp_us, path in files:
        result = associator(stamp_us * 1000)
        if not result.ok:
            skipped += 1
            continue
        if kept % every_nth == 0:
            columns['image_paths'].append(str(path))
            columns['positions_m'].append(result.values)
            columns['quaternions_xyzw'].append(result.orientation_xyzw)
            columns['sequences'].append(folder.name)
        kept += 1
    LOGGER.info('%s: %d images on the INS track, %d outside it', folder.name, kept, skipped)


def _refuse_bayer(path: Path) -> None:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DatasetLayoutError(f'{path} is not a readable image')
    if image.ndim == 2:
        raise DatasetLayoutError(
            f'{path} has one channel: a raw Bayer (GBRG) mosaic. Demosaic the traversal with '
            'the RobotCar SDK (python/image.py load_image) into RGB images of the same names')


# --- 7-Scenes ----------------------------------------------------------------------------


@DATASETS.register('seven_scenes')
def load_seven_scenes(*, root: str | Path, scenes: Optional[Sequence[str]] = None,
                      scene_spacing_m: float = 1000.0) -> PlaceDataset:
    """Load Microsoft 7-Scenes (Shotton et al., "Scene Coordinate Regression Forests", CVPR 2013).

    Layout::

        root/chess/TrainSplit.txt            lines "sequence1", "sequence2", ...
        root/chess/TestSplit.txt
        root/chess/seq-01/frame-000000.color.png
        root/chess/seq-01/frame-000000.pose.txt   4x4 camera-to-world, metres

    Training sequences are split ``train`` / role ``database``, test sequences
    ``test`` / ``query``; sequences are ``<scene>/seq-XX``. Depth images are
    not read. Non-finite poses give NaN rows.
    """
    root = cast(Path, require_path(root, 'the 7-Scenes folder holding one folder per scene'))
    scenes = _scene_names(root, scenes, 'TrainSplit.txt')
    columns: Columns = {'image_paths': [], 'matrices': [], 'sequences': [], 'splits': [],
                        'roles': []}
    offsets = {}
    for index, scene in enumerate(scenes):
        offsets[scene] = [index * float(scene_spacing_m), 0.0, 0.0]
        for split_file, split, role in (('TrainSplit.txt', 'train', 'database'),
                                        ('TestSplit.txt', 'test', 'query')):
            for sequence in _split_sequences(root / scene / split_file):
                count = _add_sequence(columns, root / scene / sequence, offsets[scene])
                columns['sequences'] += [f'{scene}/{sequence}'] * count
                columns['splits'] += [split] * count
                columns['roles'] += [role] * count
    matrices = np.asarray(columns.pop('matrices'), np.float64).reshape(-1, 4, 4)
    positions, quaternions = _poses_from_matrices(matrices)
    return make_dataset('seven_scenes', root, columns.pop('image_paths'), positions_m=positions,
                        quaternions_xyzw=quaternions, frame=_scene_frame('7-scenes', offsets),
                        **columns)


def _scene_names(root: Path, scenes: Optional[Sequence[str]], marker: str) -> List[str]:
    if scenes is not None:
        for scene in scenes:
            require_path(root / scene / marker, f'the split file of scene {scene}')
        return sorted(scenes)
    names = sorted(p.parent.name for p in root.glob(f'*/{marker}'))
    if not names:
        raise DatasetLayoutError(f'{root} has no <scene>/{marker}; root must be the folder '
                                 'holding the scene folders')
    return names


def _split_sequences(path: Path) -> List[str]:
    require_path(path, 'the list of the split\'s sequences ("sequence1" per line)')
    sequences = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            match = re.fullmatch(r'\s*sequence(\d+)\s*', line)
            if not match:
                raise DatasetLayoutError(f'{path}:{number}: {line!r} is not "sequence<N>"')
            sequences.append(f'seq-{int(match.group(1)):02d}')
    return sequences


def _add_sequence(columns: Columns, folder: Path, offset_m: Sequence[float]) -> int:
    require_path(folder, 'a sequence folder of frame-XXXXXX.color.png / .pose.txt')
    images = sorted(folder.glob('frame-*.color.png'))
    if not images:
        raise DatasetLayoutError(f'{folder} holds no frame-XXXXXX.color.png')
    for image in images:
        pose_path = require_path(image.with_name(image.name.replace('.color.png', '.pose.txt')),
                                 f'the 4x4 camera-to-world pose of {image.name}')
        try:
            matrix = np.loadtxt(pose_path, dtype=np.float64)
        except ValueError as error:
            raise DatasetLayoutError(f'{pose_path}: not a 4x4 matrix ({error})') from None
        if matrix.shape != (4, 4):
            raise DatasetLayoutError(f'{pose_path}: holds a {matrix.shape} array, not 4x4')
        matrix = matrix.copy()
        matrix[:3, 3] += offset_m
        columns['image_paths'].append(str(image))
        columns['matrices'].append(matrix)
    return len(images)


def _poses_from_matrices(matrices: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    positions = np.full((len(matrices), 3), np.nan)
    quaternions = np.full((len(matrices), 4), np.nan)
    finite = np.isfinite(matrices).all(axis=(1, 2))
    if finite.any():
        positions[finite] = matrices[finite, :3, 3]
        quaternions[finite] = body_quaternions_from_optical(matrices[finite, :3, :3])
    if not finite.all():
        LOGGER.warning('%d poses are not finite; their rows have NaN poses', (~finite).sum())
    return positions, quaternions


def _scene_frame(dataset: str, offsets: Mapping[str, Sequence[float]]) -> Dict[str, Any]:
    return {'kind': 'scene', 'dataset': dataset, 'scene_offsets_m': offsets,
            'orientation': 'camera body (x forward, y left, z up) in the scene frame'}


# --- Cambridge Landmarks -----------------------------------------------------------------


@DATASETS.register('cambridge')
def load_cambridge(*, root: str | Path, scenes: Optional[Sequence[str]] = None,
                   scene_spacing_m: float = 1000.0) -> PlaceDataset:
    """Load Cambridge Landmarks (Kendall et al., "PoseNet", ICCV 2015).

    Layout::

        root/KingsCollege/dataset_train.txt
        root/KingsCollege/dataset_test.txt
        root/KingsCollege/seq1/frame00001.png

    Each list has 3 header lines, then ``seqX/frameNNNNN.png X Y Z W P Q R``:
    the camera centre and the quaternion ``(w, x, y, z)`` of the
    VisualSFM (NVM) reconstruction, which rotates world into camera
    coordinates; it is inverted and turned into the body frame here.
    ``dataset_train`` rows are split ``train`` / role ``database``,
    ``dataset_test`` rows ``test`` / ``query``; sequences are ``<Scene>/seqX``.
    """
    root = cast(Path, require_path(
        root, 'the Cambridge Landmarks folder holding one folder per scene'))
    scenes = _scene_names(root, scenes, 'dataset_train.txt')
    columns: Columns = {'image_paths': [], 'poses': [], 'sequences': [], 'splits': [],
                        'roles': []}
    offsets = {}
    for index, scene in enumerate(scenes):
        offsets[scene] = [index * float(scene_spacing_m), 0.0, 0.0]
        for list_name, split, role in (('dataset_train.txt', 'train', 'database'),
                                       ('dataset_test.txt', 'test', 'query')):
            rows = _read_pose_list(require_path(root / scene / list_name,
                                                'the image list with poses'))
            for image, pose in rows:
                columns['image_paths'].append(str(root / scene / image))
                columns['poses'].append(list(np.add(pose[:3], offsets[scene])) + pose[3:])
                columns['sequences'].append(f'{scene}/{Path(image).parts[0]}')
            columns['splits'] += [split] * len(rows)
            columns['roles'] += [role] * len(rows)
    poses = np.asarray(columns.pop('poses'), np.float64).reshape(-1, 7)
    world_to_camera = Rotation.from_quat(poses[:, [4, 5, 6, 3]]).as_matrix()
    quaternions = body_quaternions_from_optical(np.transpose(world_to_camera, (0, 2, 1)))
    return make_dataset('cambridge', root, columns.pop('image_paths'), positions_m=poses[:, :3],
                        quaternions_xyzw=quaternions, frame=_scene_frame('cambridge', offsets),
                        **columns)


def _read_pose_list(path: Path) -> List[Tuple[str, List[float]]]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines()[3:], start=4):
        if not line.strip():
            continue
        fields = line.split()
        try:
            pose = [float(value) for value in fields[1:]]
        except ValueError:
            pose = []
        if len(fields) != 8 or len(pose) != 7:
            raise DatasetLayoutError(f'{path}:{number}: {line!r} is not '
                                     '"seqX/frameNNNNN.png X Y Z W P Q R"')
        image = path.parent / fields[0]
        if not image.is_file():
            raise DatasetLayoutError(f'{path}:{number}: image {image} does not exist')
        rows.append((fields[0], pose))
    return rows
