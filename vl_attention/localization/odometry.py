"""Odometry between two camera frames, with the bad inputs odometry really has.

:class:`OdometryBuffer` keeps recent planar odometry poses ``(stamp, x, y,
yaw)`` in the odom frame and answers "how did the robot move between image
stamps t0 and t1, expressed in the robot frame at t0". It refuses, with a
reason, what a filter must not trust:

* a message older than the newest (out of order) is dropped and counted;
* a jump faster than ``max_speed_mps`` is not motion: the buffer restarts
  from the new pose and that interval falls back to the bounded-speed model;
* no message for ``timeout_s`` (odometry stopped) falls back the same way.
"""

from collections import Counter, deque
from dataclasses import dataclass
from typing import Optional

import numpy as np

from vl_attention.localization.place_filter import Motion


@dataclass(frozen=True)
class OdometryConfig:
    """Acceptance bounds of odometry."""

    max_speed_mps: float = 15.0
    timeout_s: float = 1.0
    history: int = 400


class OdometryBuffer:
    """Recent odometry poses; :meth:`motion` gives the relative motion between stamps."""

    def __init__(self, config: OdometryConfig = OdometryConfig()):
        self.config = config
        self.poses: deque[np.ndarray] = deque(maxlen=config.history)   # (stamp, x, y, yaw)
        self.rejected: Counter[str] = Counter()

    def add(self, stamp_s: float, x_m: float, y_m: float, yaw_rad: float) -> str:
        """Store a pose; returns '' or the reason it was not used."""
        values = np.array([stamp_s, x_m, y_m, yaw_rad], np.float64)
        if not np.all(np.isfinite(values)):
            return self._reject('non_finite', 'odometry with NaN/inf values ignored')
        if self.poses and stamp_s <= self.poses[-1][0]:
            return self._reject('out_of_order', f'odometry stamp {stamp_s:.3f} s is not after '
                                f'{self.poses[-1][0]:.3f} s; message ignored')
        if self.poses:
            last = self.poses[-1]
            speed = np.hypot(x_m - last[1], y_m - last[2]) / (stamp_s - last[0])
            if speed > self.config.max_speed_mps:
                self.poses.clear()
                self.poses.append(values)
                return self._reject('jump', f'odometry jumped at {speed:.1f} m/s (> '
                                    f'max_speed_mps {self.config.max_speed_mps:g}); restarted '
                                    'from the new pose')
        self.poses.append(values)
        return ''

    def _reject(self, key: str, reason: str) -> str:
        self.rejected[key] += 1
        return reason

    def motion(self, start_s: float, end_s: float) -> Motion:
        """Relative motion in the robot frame at ``start_s``, or bounded-speed with the reason."""
        dt = max(end_s - start_s, 0.0)
        problem = self._coverage_problem(start_s, end_s)
        if problem:
            return Motion(dt_s=dt, source=f'bounded_speed ({problem})')
        a, b = self._interpolate(start_s), self._interpolate(end_s)
        delta = b[:2] - a[:2]
        cos, sin = np.cos(a[2]), np.sin(a[2])
        local = np.array([cos * delta[0] + sin * delta[1], -sin * delta[0] + cos * delta[1]])
        return Motion(dt_s=dt, translation_m=local, source='odometry')

    def pose_at(self, stamp_s: float) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """Return the planar odom pose ``(position, quaternion xyzw)`` at ``stamp_s`` or None."""
        if self._coverage_problem(stamp_s, stamp_s):
            return None
        x, y, yaw = self._interpolate(stamp_s)
        return (np.array([x, y, 0.0]), np.array([0.0, 0.0, np.sin(yaw / 2), np.cos(yaw / 2)]))

    def _coverage_problem(self, start_s: float, end_s: float) -> str:
        if len(self.poses) < 2:
            return 'no odometry yet'
        first, last = self.poses[0][0], self.poses[-1][0]
        if start_s < first:
            return 'odometry restarted after a jump' if self.rejected['jump'] else \
                'odometry starts after the previous frame'
        if end_s - last > self.config.timeout_s:
            return f'no odometry for {end_s - last:.1f} s (timeout {self.config.timeout_s:g} s)'
        return ''

    def _interpolate(self, stamp_s: float) -> np.ndarray:
        table = np.asarray(self.poses)
        stamp_s = min(stamp_s, table[-1, 0])   # short extrapolation gaps hold the last pose
        yaw = np.unwrap(table[:, 3])
        return np.array([np.interp(stamp_s, table[:, 0], table[:, 1]),
                         np.interp(stamp_s, table[:, 0], table[:, 2]),
                         np.interp(stamp_s, table[:, 0], yaw)])


def yaw_from_quaternion(x: float, y: float, z: float, w: float) -> float:
    """Yaw (rad) of a quaternion (rotation about z, REP 103)."""
    return float(np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z)))


def motion_without_odometry(previous_s: Optional[float], stamp_s: Optional[float],
                            default_dt_s: float) -> Motion:
    """Bounded-speed motion over the time between two frames (``default_dt_s`` if unknown)."""
    if previous_s is None or stamp_s is None or stamp_s <= previous_s:
        return Motion(dt_s=default_dt_s)
    return Motion(dt_s=stamp_s - previous_s)
