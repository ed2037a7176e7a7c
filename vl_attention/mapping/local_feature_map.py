"""Local features and triangulated 3-D points of the map images (for PnP refinement).

On disk, inside the map directory (plain ``.npy``, no pickle, memory-mappable)::

    features/offsets.npy       int64 (N + 1,)   image i owns rows offsets[i]:offsets[i+1]
    features/keypoints.npy     float32 (M, 2)   pixel x, y in the map image
    features/descriptors.npy   uint8 (M, D)     ORB (D = 32) or SIFT (D = 128) descriptors
    features/points.npy        float32 (M, 3)   ENU point of the keypoint, NaN if none
    camera.json                the map camera's :class:`CameraModel`

3-D points are triangulated from each image and up to ``pair_count`` of its
spatial neighbours (``min_baseline_m`` .. ``max_baseline_m`` away, looking
within ``max_heading_difference_deg``); a keypoint keeps the first point that
passes the reprojection, depth and parallax checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import json
from pathlib import Path
from typing import Any, Iterable, Sequence, Tuple

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

from vl_attention.geo import headings_from_orientations
from vl_attention.geometry.camera_model import CameraModel
from vl_attention.geometry.local_features import (create_extractor, Features,
                                                  LocalFeatureConfig, match_features, to_gray)
from vl_attention.geometry.pnp import triangulate, TriangulationConfig
from vl_attention.io import StrPath
from vl_attention.mapping.errors import MapFormatError

FEATURES_DIR = 'features'
CAMERA_FILE = 'camera.json'
FEATURE_FILES = tuple(f'{FEATURES_DIR}/{name}.npy'
                      for name in ('offsets', 'keypoints', 'descriptors', 'points'))


@dataclass(frozen=True)
class LocalFeatureBuildConfig:
    """How map features are extracted and triangulated."""

    features: LocalFeatureConfig = field(default_factory=LocalFeatureConfig)
    triangulation: TriangulationConfig = field(default_factory=TriangulationConfig)
    pair_count: int = 4
    pair_ratio_test: float = 0.8   # map images share the condition: be strict
    min_baseline_m: float = 0.5
    max_baseline_m: float = 12.0
    max_heading_difference_deg: float = 30.0


@dataclass(frozen=True)
class LocalFeatureMap:
    """Keypoints, descriptors and 3-D points of every map image, in one flat table."""

    kind: str
    offsets: np.ndarray
    keypoints_px: np.ndarray
    descriptors: np.ndarray
    points_enu_m: np.ndarray
    camera: CameraModel

    def __len__(self) -> int:
        """Return the number of map images."""
        return len(self.offsets) - 1

    def image_points(self, place: int) -> Tuple[np.ndarray, np.ndarray]:
        """Return descriptors and ENU points of the keypoints of ``place`` with a 3-D point."""
        rows = slice(int(self.offsets[place]), int(self.offsets[place + 1]))
        points = np.asarray(self.points_enu_m[rows])
        valid = np.isfinite(points[:, 0])
        return np.asarray(self.descriptors[rows])[valid], points[valid]

    def statistics(self) -> dict[str, Any]:
        """Return counts for the manifest."""
        triangulated = int(np.isfinite(self.points_enu_m[:, 0]).sum())
        return {'kind': self.kind, 'images': len(self), 'keypoints': len(self.keypoints_px),
                'points': triangulated,
                'points_per_image': triangulated / max(len(self), 1)}


def extract_all(images: Iterable[np.ndarray], config: LocalFeatureConfig) -> list[Features]:
    """Extract the features of every image, in order."""
    extractor = create_extractor(config)
    return [extractor(to_gray(image)) for image in images]


def build_local_feature_map(features: Sequence[Features], positions_enu_m: np.ndarray,
                            orientations_xyzw: np.ndarray, camera: CameraModel,
                            config: LocalFeatureBuildConfig) -> LocalFeatureMap:
    """Triangulate each image's keypoints against its neighbours and pack the table."""
    norm = create_extractor(config.features).norm
    pairs = neighbour_pairs(positions_enu_m, orientations_xyzw, config)
    points = [np.full((len(f.keypoints_px), 3), np.nan, np.float32) for f in features]
    for i, partners in enumerate(pairs):
        for j in partners:
            _triangulate_pair(features, points, i, int(j), positions_enu_m, orientations_xyzw,
                              camera, config, norm)
    offsets = np.concatenate([[0], np.cumsum([len(f.keypoints_px) for f in features])])
    dim = features[0].descriptors.shape[1] if features else 32
    return LocalFeatureMap(
        config.features.kind, offsets.astype(np.int64),
        _stack([f.keypoints_px for f in features], (0, 2), np.float32),
        _stack([f.descriptors for f in features], (0, dim), np.uint8),
        _stack(points, (0, 3), np.float32), camera)


def concatenate_local_feature_maps(parts: Sequence[LocalFeatureMap]) -> LocalFeatureMap:
    """Join feature tables in map order (the first part's camera and kind)."""
    first = parts[0]
    sizes = np.cumsum([0] + [int(part.offsets[-1]) for part in parts[:-1]])
    shifted = [np.asarray(part.offsets[1:]) + shift for part, shift in zip(parts, sizes)]
    offsets = np.concatenate([first.offsets[:1]] + shifted)
    keypoints, descriptors, points = (
        np.concatenate([np.asarray(getattr(part, name)) for part in parts])
        for name in ('keypoints_px', 'descriptors', 'points_enu_m'))
    return LocalFeatureMap(first.kind, offsets.astype(np.int64), keypoints, descriptors, points,
                           first.camera)


def _stack(parts: Sequence[np.ndarray], empty_shape: tuple[int, ...],
           dtype: npt.DTypeLike) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(empty_shape, dtype)


def _triangulate_pair(features: Sequence[Features], points: list[np.ndarray], i: int, j: int,
                      positions: np.ndarray, orientations: np.ndarray, camera: CameraModel,
                      config: LocalFeatureBuildConfig, norm: int) -> None:
    fi, fj = features[i], features[j]
    matches = match_features(fi.descriptors, fj.descriptors, norm=norm,
                             ratio_test=config.pair_ratio_test)
    if len(matches) == 0:
        return
    triangulated = triangulate(camera, (positions[i], orientations[i]),
                               (positions[j], orientations[j]),
                               fi.keypoints_px[matches[:, 0]], fj.keypoints_px[matches[:, 1]],
                               config.triangulation)
    for image, rows in ((i, matches[:, 0]), (j, matches[:, 1])):
        empty = np.isnan(points[image][rows, 0]) & np.isfinite(triangulated[:, 0])
        points[image][rows[empty]] = triangulated[empty]


def neighbour_pairs(positions_enu_m: np.ndarray, orientations_xyzw: np.ndarray,
                    config: LocalFeatureBuildConfig) -> list[np.ndarray]:
    """List, per image, the later images that overlap it (baseline and heading bounds)."""
    positions = np.asarray(positions_enu_m, np.float64)
    headings = headings_from_orientations(orientations_xyzw)
    tree = cKDTree(positions)
    pairs = []
    for i, near in enumerate(tree.query_ball_point(positions, config.max_baseline_m)):
        near = np.asarray([j for j in near if j > i], np.int64)
        baseline = np.linalg.norm(positions[near] - positions[i], axis=1) if len(near) else []
        turn = np.degrees(np.abs(np.angle(np.exp(1j * (headings[near] - headings[i])))))
        keep = near[(np.asarray(baseline) >= config.min_baseline_m)
                    & (turn <= config.max_heading_difference_deg)] if len(near) else near
        order = np.argsort(np.linalg.norm(positions[keep] - positions[i], axis=1))
        pairs.append(keep[order][:config.pair_count])
    return pairs


def save_local_feature_map(directory: StrPath, local_map: LocalFeatureMap) -> None:
    """Write the feature table and camera model into a (staging) map directory."""
    directory = Path(directory)
    (directory / FEATURES_DIR).mkdir(exist_ok=True)
    for name, array in zip(FEATURE_FILES, (local_map.offsets, local_map.keypoints_px,
                                           local_map.descriptors, local_map.points_enu_m)):
        np.save(directory / name, np.ascontiguousarray(array), allow_pickle=False)
    (directory / CAMERA_FILE).write_text(json.dumps(local_map.camera.to_dict(), indent=2))


def load_local_feature_map(directory: StrPath, kind: str) -> LocalFeatureMap:
    """Read the table of :func:`save_local_feature_map` (the caller checks checksums)."""
    directory = Path(directory)
    try:
        arrays = [np.load(directory / name, mmap_mode='r', allow_pickle=False)
                  for name in FEATURE_FILES]
        camera = CameraModel.from_dict(json.loads((directory / CAMERA_FILE).read_text()),
                                       where=str(directory / CAMERA_FILE))
    except (OSError, ValueError) as error:
        raise MapFormatError(f'{directory}: local features unreadable ({error}); rebuild the '
                             'map') from error
    offsets, keypoints, descriptors, points = arrays
    _check_table(directory, offsets, keypoints, descriptors, points)
    return LocalFeatureMap(kind, np.asarray(offsets), keypoints, descriptors, points, camera)


def _check_table(directory: Path, offsets: np.ndarray, keypoints: np.ndarray,
                 descriptors: np.ndarray, points: np.ndarray) -> None:
    rows = len(keypoints)
    problems = []
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != rows \
            or np.any(np.diff(offsets) < 0):
        problems.append('offsets do not partition the keypoints')
    if keypoints.shape != (rows, 2) or points.shape != (rows, 3) or \
            descriptors.ndim != 2 or len(descriptors) != rows or descriptors.dtype != np.uint8:
        problems.append(f'shapes disagree (keypoints {keypoints.shape}, descriptors '
                        f'{descriptors.shape} {descriptors.dtype}, points {points.shape})')
    if problems:
        raise MapFormatError(f'{directory}/{FEATURES_DIR}: {"; ".join(problems)}; rebuild the '
                             'map')


def features_of(image: np.ndarray, config: LocalFeatureConfig) -> Features:
    """Extract the features of one query frame."""
    return create_extractor(config)(to_gray(image))
