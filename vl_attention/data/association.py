"""Associate image stamps with a position track: interpolation within a maximum gap.

A frame at time t gets a position when samples ``t0 <= t <= t1`` bracket it
and ``t1 - t0 <= max_gap_s`` (a sample stamped exactly t always qualifies):
positions are interpolated linearly, orientations by slerp. Frames before the
first sample, after the last, or inside a longer gap are skipped and counted.
"""

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from vl_attention.config import ConfigError
from vl_attention.errors import VLAttentionError


class AssociationError(VLAttentionError, ValueError):
    """A position track is unusable (empty, unsorted)."""


@dataclass(frozen=True)
class PositionTrack:
    """Time-sorted position samples: ``values`` (N, 3) and optional quaternions (N, 4)."""

    stamps_ns: np.ndarray
    values: np.ndarray
    orientations_xyzw: np.ndarray = None

    def __post_init__(self):
        if len(self.stamps_ns) == 0:
            raise AssociationError('the position source holds no samples')
        if np.any(np.diff(self.stamps_ns) < 0):
            raise AssociationError('position stamps must be sorted; sort them by time first')


@dataclass(frozen=True)
class Association:
    """Result for one frame: ``ok`` False says why it was skipped (``reason``)."""

    ok: bool
    reason: str = ''
    values: np.ndarray = None
    orientation_xyzw: np.ndarray = None


def sorted_track(stamps_ns, values, orientations_xyzw=None):
    """Build a :class:`PositionTrack` from unsorted samples (duplicate stamps keep the first)."""
    stamps_ns = np.asarray(stamps_ns, np.int64)
    order = np.argsort(stamps_ns, kind='stable')
    keep = np.concatenate([[True], np.diff(stamps_ns[order]) > 0]) if len(order) else order
    order = order[keep.astype(bool)]
    values = np.asarray(values, np.float64)[order]
    orientations = None if orientations_xyzw is None else \
        np.asarray(orientations_xyzw, np.float64)[order]
    return PositionTrack(stamps_ns[order], values, orientations)


class Associator:
    """Look up frame stamps on a :class:`PositionTrack`."""

    def __init__(self, track, *, max_gap_s):
        if max_gap_s < 0:
            raise ConfigError(f'max_gap_s must be >= 0, got {max_gap_s}')
        self.track = track
        self.max_gap_ns = int(round(max_gap_s * 1e9))

    def __call__(self, stamp_ns):
        """Associate one frame stamp."""
        stamps = self.track.stamps_ns
        after = int(np.searchsorted(stamps, stamp_ns, side='left'))
        if after < len(stamps) and stamps[after] == stamp_ns:
            return self._sample(after, after, 0.0)
        if after == 0:
            return Association(False, 'before_first_position')
        if after == len(stamps):
            return Association(False, 'after_last_position')
        before = after - 1
        span_ns = int(stamps[after] - stamps[before])
        if span_ns > self.max_gap_ns:
            return Association(False, 'gap_too_long')
        return self._sample(before, after, (stamp_ns - stamps[before]) / span_ns)

    def _sample(self, before, after, fraction):
        track = self.track
        values = track.values[before] + fraction * (track.values[after] - track.values[before])
        orientation = None
        if track.orientations_xyzw is not None:
            if before == after:
                orientation = track.orientations_xyzw[before]
            else:
                slerp = Slerp([0.0, 1.0], Rotation.from_quat(
                    track.orientations_xyzw[[before, after]]))
                orientation = slerp([fraction]).as_quat()[0]
        return Association(True, values=values, orientation_xyzw=orientation)
