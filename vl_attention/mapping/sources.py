"""Frame sources for map building: an image folder + poses file, or rosbag2 files.

A source yields :class:`SourceFrame` in time order, each with its pose and a
``load()`` that reads the image only when called, so frames dropped by
keyframe selection or already embedded by an interrupted build cost no decoding.
Skipped frames are counted in ``stats`` (a Counter) by reason.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
import functools
from pathlib import Path
from typing import Any, Callable, cast, Iterable, Iterator, Optional, Protocol

import cv2
import numpy as np

from vl_attention.data.rosbag_reader import (BagError, BagPositions, image_messages, open_bags,
                                             read_positions)
from vl_attention.geo import (enu_to_geodetic, GeodeticOrigin, geodetic_to_enu,
                              quaternion_from_yaw_pitch_roll)
from vl_attention.data.association import Association, Associator, PositionTrack
from vl_attention.errors import VLAttentionError
from vl_attention.io import StrPath
from vl_attention.mapping.records import read_poses


class ImageReadError(VLAttentionError, ValueError):
    """An image listed in the poses file cannot be read."""


@dataclass(frozen=True)
class SourceFrame:
    """One posed frame; ``position_enu_m`` is at the source's origin."""

    image_id: str
    stamp_ns: int
    geodetic: tuple[float, ...]   # (latitude_deg, longitude_deg, altitude_m)
    orientation_xyzw: np.ndarray
    position_enu_m: np.ndarray
    load: Callable[[], np.ndarray]   # () -> uint8 RGB (H, W, 3)


class FrameSource(Protocol):
    """What map building needs of a source (:class:`FolderSource`, :class:`BagSource`)."""

    origin: Optional[GeodeticOrigin]   # set, at the latest, while frames() runs
    stats: collections.Counter[str]

    def describe(self) -> dict[str, Any]:
        """Return a JSON-ready description of the input."""
        ...

    def frames(self) -> Iterator[SourceFrame]:
        """Yield the posed frames in time order."""
        ...


def read_rgb(path: StrPath) -> np.ndarray:
    """Read an image file as uint8 RGB ``(H, W, 3)``, with a clear error if unreadable."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageReadError(f'cannot read image {path}: missing or not an image file')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class FolderSource:
    """Images in a folder, posed by a poses CSV/JSON (see :mod:`.records`)."""

    def __init__(self, images_dir: StrPath, poses_path: StrPath, *,
                 origin: Optional[GeodeticOrigin] = None) -> None:
        self.images_dir, self.poses_path = Path(images_dir), Path(poses_path)
        self.origin = origin
        self.stats: collections.Counter[str] = collections.Counter()

    def describe(self) -> dict[str, Any]:
        """JSON-ready description of the input (for manifests and resume checks)."""
        return {'kind': 'folder', 'images': str(self.images_dir.resolve()),
                'poses': str(self.poses_path.resolve())}

    def frames(self) -> Iterator[SourceFrame]:
        """Yield every listed frame."""
        columns = read_poses(self.poses_path)
        if not self.images_dir.is_dir():
            raise ImageReadError(f'image folder {self.images_dir} does not exist; give the '
                                 f'folder that holds the images {self.poses_path} names')
        geodetic = np.stack([columns[name] for name in
                             ('latitude_deg', 'longitude_deg', 'altitude_m')], axis=-1)
        if self.origin is None:
            self.origin = GeodeticOrigin(*geodetic[0])
        enu = geodetic_to_enu(geodetic[:, 0], geodetic[:, 1], geodetic[:, 2], self.origin)
        orientations = np.stack([columns[name] for name in ('qx', 'qy', 'qz', 'qw')], axis=-1)
        for row, name in enumerate(columns['image']):
            self.stats['frames'] += 1
            yield SourceFrame(name, int(columns['stamp_ns'][row]), tuple(geodetic[row]),
                              orientations[row], enu[row],
                              functools.partial(read_rgb, self.images_dir / name))


class BagSource:
    """An image topic of rosbag2 files, posed by a position topic associated by stamp.

    ``origin`` is required for pose/odometry topics (their local ENU map frame's
    geodetic origin); NavSatFix tracks default to their first fix. NavSatFix
    carries no orientation: frames get the heading of travel (pitch, roll 0).
    """

    def __init__(self, bag_paths: Iterable[StrPath], *, image_topic: str, position_topic: str,
                 max_gap_s: float = 1.0, origin: Optional[GeodeticOrigin] = None) -> None:
        self.bag_paths = [Path(path) for path in bag_paths]
        self.image_topic, self.position_topic = image_topic, position_topic
        self.max_gap_s, self.origin = float(max_gap_s), origin
        self.stats: collections.Counter[str] = collections.Counter()

    def describe(self) -> dict[str, Any]:
        """JSON-ready description of the input (for manifests and resume checks)."""
        return {'kind': 'rosbag2', 'bags': [str(path.resolve()) for path in self.bag_paths],
                'image_topic': self.image_topic, 'position_topic': self.position_topic,
                'max_gap_s': self.max_gap_s}

    def frames(self) -> Iterator[SourceFrame]:
        """Yield every image frame that has an associated pose."""
        with open_bags(self.bag_paths) as reader:
            positions = read_positions(reader, self.position_topic)
            self.stats['dropped_no_fix'] = positions.dropped_no_fix
            track = self._enu_track(positions)
            associator = Associator(track, max_gap_s=self.max_gap_s)
            for stamp_ns, decode in image_messages(reader, self.image_topic):
                self.stats['frames'] += 1
                result = associator(stamp_ns)
                if not result.ok:
                    self.stats[f'skipped_{result.reason}'] += 1
                    continue
                yield self._frame(stamp_ns, result, decode)
        self._check_associated()

    def _enu_track(self, positions: BagPositions) -> PositionTrack:
        track = cast(PositionTrack, positions.track)
        values = track.values
        if positions.geodetic:
            if self.origin is None:
                self.origin = GeodeticOrigin(*values[0])
            enu = geodetic_to_enu(values[:, 0], values[:, 1], values[:, 2], self.origin)
            return PositionTrack(track.stamps_ns, enu, heading_orientations(enu))
        if self.origin is None:
            raise BagError(f'position topic {self.position_topic!r} is {positions.msgtype}, '
                           'a pose in a local map frame; give the geodetic origin of that '
                           'frame (--origin LAT LON ALT)')
        return track

    def _frame(self, stamp_ns: int, result: Association,
               decode: Callable[[], np.ndarray]) -> SourceFrame:
        assert self.origin is not None, 'frames() sets the origin (_enu_track) first'
        position = np.asarray(result.values, np.float64)
        latitude, longitude, altitude = enu_to_geodetic(position, self.origin)
        return SourceFrame(f'{self.image_topic}@{stamp_ns}', int(stamp_ns),
                           (float(latitude), float(longitude), float(altitude)),
                           result.orientation_xyzw, position, decode)

    def _check_associated(self) -> None:
        skipped = sum(v for k, v in self.stats.items() if k.startswith('skipped_'))
        if self.stats['frames'] and skipped == self.stats['frames']:
            raise BagError(f'none of the {self.stats["frames"]} images on '
                           f'{self.image_topic!r} has a position on {self.position_topic!r} '
                           f'within max_gap_s={self.max_gap_s} ({dict(self.stats)}); check '
                           'the topics, the clocks or raise --max-gap-s')


def heading_orientations(positions_enu_m: np.ndarray) -> np.ndarray:
    """Yaw-only orientations facing the direction of travel (held while stationary)."""
    steps = np.gradient(positions_enu_m[:, :2], axis=0) if len(positions_enu_m) > 1 else \
        np.zeros((len(positions_enu_m), 2))
    yaw_rad = np.zeros(len(positions_enu_m))
    last = 0.0
    for row, (east, north) in enumerate(steps):
        if np.hypot(east, north) > 1e-6:
            last = float(np.arctan2(north, east))
        yaw_rad[row] = last
    return quaternion_from_yaw_pitch_roll(yaw_rad)
