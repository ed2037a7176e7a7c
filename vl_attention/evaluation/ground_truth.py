"""Ground truth of a query bag in the map's local ENU frame, interpolated to image stamps.

Sources (the type is read from the bag's connection, see :mod:`vl_attention.data.rosbag_reader`):

* ``sensor_msgs/NavSatFix``: WGS84 positions, converted to ENU at the map's origin;
  no orientation, so rotation errors are "n/a", never 0;
* ``geometry_msgs/PoseStamped``, ``PoseWithCovarianceStamped``, ``nav_msgs/Odometry``:
  positions and orientations in a local ENU frame anchored at ``gt_origin``
  (default: the map's own origin). When the two origins differ, positions
  are moved through WGS84 into the map's frame; orientations are kept, since
  the ENU axes of origins a few kilometres apart differ by well under 0.1 deg.

Stamps are associated as the map builder does (:class:`~vl_attention.data.association.
Associator`): linear interpolation of positions, slerp of orientations, and frames
outside the track or inside a gap longer than ``max_gap_s`` are skipped and counted.
"""

import collections
from dataclasses import dataclass
import itertools
from typing import Any, Callable, Counter, Dict, Iterator, Optional, Tuple

import numpy as np

from vl_attention.data.rosbag_reader import image_messages, read_positions
from vl_attention.geo import enu_to_geodetic, GeodeticOrigin, geodetic_to_enu
from vl_attention.data.association import Associator, PositionTrack


@dataclass(frozen=True)
class GroundTruth:
    """A time-sorted ground-truth track in the map's ENU frame."""

    topic: str
    msgtype: str
    track: PositionTrack
    frame: str                 # how the values were brought into the map frame

    @property
    def has_orientation(self) -> bool:
        """Whether rotation errors can be computed (not for NavSatFix)."""
        return self.track.orientations_xyzw is not None

    def describe(self) -> Dict[str, Any]:
        """JSON-ready description for reports."""
        return {'topic': self.topic, 'type': self.msgtype, 'samples': len(self.track.stamps_ns),
                'orientation': self.has_orientation, 'frame': self.frame}


@dataclass(frozen=True)
class FrameTruth:
    """Ground truth of one image: ENU position and (if known) orientation."""

    stamp_ns: int
    position_enu_m: np.ndarray
    orientation_xyzw: Optional[np.ndarray] = None


def read_ground_truth(reader: Any, topic: str, *, map_origin: GeodeticOrigin,
                      gt_origin: Optional[GeodeticOrigin] = None) -> GroundTruth:
    """Read ``topic`` of an open bag reader into a :class:`GroundTruth` in the map frame."""
    positions = read_positions(reader, topic)
    track = positions.track
    if positions.geodetic:
        values = track.values
        enu = geodetic_to_enu(values[:, 0], values[:, 1], values[:, 2], map_origin)
        return GroundTruth(topic, positions.msgtype, PositionTrack(track.stamps_ns, enu),
                           'WGS84 -> ENU at the map origin')
    if gt_origin is None or gt_origin == map_origin:
        return GroundTruth(topic, positions.msgtype, track,
                           'pose frame taken as the map frame (same origin)')
    enu = geodetic_to_enu(*enu_to_geodetic(track.values, gt_origin), map_origin)
    return GroundTruth(topic, positions.msgtype,
                       PositionTrack(track.stamps_ns, enu, track.orientations_xyzw),
                       f'pose frame at origin {gt_origin} -> WGS84 -> ENU at the map origin')


def frames_with_truth(reader: Any, image_topic: str, truth: GroundTruth, *, max_gap_s: float,
                      skipped: Counter[str], max_frames: int = 0,
                      ) -> Iterator[Tuple[FrameTruth, Callable[[], Any]]]:
    """Yield ``(FrameTruth, decode)`` per image that has ground truth.

    Frames without it are not yielded; ``skipped`` (a Counter) counts them by
    reason (``before_first_position``, ``after_last_position``, ``gap_too_long``).
    ``max_frames`` > 0 reads only that many image messages.
    """
    associator = Associator(truth.track, max_gap_s=max_gap_s)
    messages = image_messages(reader, image_topic)
    for stamp_ns, decode in itertools.islice(messages, max_frames or None):
        association = associator(stamp_ns)
        if not association.ok:
            skipped[association.reason] += 1
            continue
        yield FrameTruth(int(stamp_ns), np.asarray(association.values, np.float64),
                         association.orientation_xyzw), decode


def truth_by_stamp(reader: Any, image_topic: str, truth: GroundTruth, *, max_gap_s: float,
                   max_frames: int = 0) -> Tuple[Dict[int, FrameTruth], Counter[str]]:
    """Ground truth per image stamp, decoding no image: ``({stamp_ns: FrameTruth}, skipped)``."""
    skipped: Counter[str] = collections.Counter()
    frames = {frame.stamp_ns: frame for frame, _ in
              frames_with_truth(reader, image_topic, truth, max_gap_s=max_gap_s,
                                skipped=skipped, max_frames=max_frames)}
    return frames, skipped
