"""Camera paths along the streets: closed loops through junctions with exact poses.

A route is a rectangle of streets chosen by ``route_seed``, driven counter-clockwise
with rounded corners.  Traversals of the same route differ in lateral offset,
heading and pitch jitter, speed, frame rate and start time; every frame's pose
is exact ground truth.
"""

from dataclasses import dataclass
import math

import numpy as np

from vl_attention.config import ConfigError
from vl_attention.geo import quaternion_from_yaw_pitch_roll

TURN_RADIUS_M = 7.0
PATH_STEP_M = 0.1


@dataclass(frozen=True)
class TraversalConfig:
    """How one traversal drives a route; ``lateral_offset_m`` is to the right of the centre line.

    Give ``num_frames`` or ``route_length_m`` (the other is derived from speed and
    frame rate); with neither, one lap of the loop is driven.
    """

    route_seed: int = 0
    lateral_offset_m: float = 2.0
    camera_height_m: float = 1.6
    heading_jitter_deg: float = 0.0
    pitch_jitter_deg: float = 0.0
    jitter_seed: int = 0
    speed_mps: float = 8.0
    frame_rate_hz: float = 10.0
    num_frames: int = None
    route_length_m: float = None
    start_offset_m: float = 0.0
    start_time_ns: int = 1_700_000_000_000_000_000

    def __post_init__(self):
        if self.speed_mps <= 0 or self.frame_rate_hz <= 0:
            raise ConfigError('speed_mps and frame_rate_hz must be positive')
        if self.num_frames is not None and self.num_frames < 1:
            raise ConfigError(f'num_frames={self.num_frames} must be >= 1')
        if abs(self.lateral_offset_m) > TURN_RADIUS_M - 1.0:
            raise ConfigError(f'|lateral_offset_m| must be < {TURN_RADIUS_M - 1.0} m')


@dataclass(frozen=True)
class Traversal:
    """Per-frame ground truth: stamps (N,) int64 ns, positions (N, 3) ENU m, quaternions (N, 4)."""

    config: TraversalConfig
    stamps_ns: np.ndarray
    positions_enu_m: np.ndarray
    quaternions_xyzw: np.ndarray
    loop_length_m: float

    def __len__(self):
        """Return the number of frames."""
        return len(self.stamps_ns)


def route_corners(town, route_seed):
    """Junctions (4, 2) at the corners of the route's rectangle, counter-clockwise."""
    rng = np.random.default_rng([int(route_seed), 0x7007e])
    xs, ys = town.street_x_m, town.street_y_m
    i0, i1 = np.sort(rng.choice(len(xs), 2, replace=False))
    j0, j1 = np.sort(rng.choice(len(ys), 2, replace=False))
    return np.array([[xs[i0], ys[j0]], [xs[i1], ys[j0]], [xs[i1], ys[j1]], [xs[i0], ys[j1]]])


def _centre_line(corners):
    """Dense closed centre-line polyline (M, 2) with quarter-circle left turns at corners."""
    pieces = []
    for k in range(4):
        start, end = corners[k], corners[(k + 1) % 4]
        direction = (end - start) / np.linalg.norm(end - start)
        length = np.linalg.norm(end - start) - 2 * TURN_RADIUS_M
        steps = np.arange(0.0, length, PATH_STEP_M)
        pieces.append(start + direction * TURN_RADIUS_M + steps[:, None] * direction)
        left = np.array([-direction[1], direction[0]])
        centre = end - direction * TURN_RADIUS_M + left * TURN_RADIUS_M
        angles = np.arange(0.0, math.pi / 2, PATH_STEP_M / TURN_RADIUS_M)
        radial = -left[None, :] * np.cos(angles)[:, None] + direction[None, :] * np.sin(
            angles)[:, None]
        pieces.append(centre + TURN_RADIUS_M * radial)
    return np.concatenate(pieces)


def _offset_loop(centre_line, offset_m):
    """Shift a closed polyline sideways (positive = right); return points and arc length."""
    tangent = np.roll(centre_line, -1, axis=0) - np.roll(centre_line, 1, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    right = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
    path = centre_line + offset_m * right
    path = np.vstack([path, path[:1]])
    arc_m = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    return path, arc_m


def _smooth_jitter(distance_m, amplitude_deg, rng):
    """Smooth random angle (rad) along the path: a sum of three slow sinusoids."""
    if amplitude_deg <= 0:
        return np.zeros_like(distance_m)
    periods = rng.uniform(15.0, 80.0, 3)
    phases = rng.uniform(0.0, 2 * math.pi, 3)
    waves = np.sin(2 * math.pi * distance_m[:, None] / periods + phases).sum(axis=1)
    return np.radians(amplitude_deg) * waves / math.sqrt(1.5)


def plan_traversal(town, config):
    """Poses and stamps of every frame of a traversal."""
    path, arc_m = _offset_loop(_centre_line(route_corners(town, config.route_seed)),
                               config.lateral_offset_m)
    loop_m = float(arc_m[-1])
    step_m = config.speed_mps / config.frame_rate_hz
    if config.num_frames is not None:
        num_frames = config.num_frames
    else:
        num_frames = int((config.route_length_m or loop_m) / step_m)
    distance_m = config.start_offset_m + step_m * np.arange(num_frames)
    along = np.mod(distance_m, loop_m)
    x_m = np.interp(along, arc_m, path[:, 0])
    y_m = np.interp(along, arc_m, path[:, 1])
    heading = np.unwrap(np.arctan2(np.diff(path[:, 1]), np.diff(path[:, 0])))
    yaw = np.interp(along, 0.5 * (arc_m[1:] + arc_m[:-1]), heading)
    rng = np.random.default_rng([int(config.jitter_seed), 0x717])
    yaw = yaw + _smooth_jitter(distance_m, config.heading_jitter_deg, rng)
    pitch = _smooth_jitter(distance_m, config.pitch_jitter_deg, rng)
    positions = np.stack([x_m, y_m, np.full(num_frames, config.camera_height_m)], axis=1)
    period_ns = 1e9 / config.frame_rate_hz
    stamps = config.start_time_ns + np.round(np.arange(num_frames) * period_ns).astype(np.int64)
    return Traversal(config=config, stamps_ns=stamps, positions_enu_m=positions,
                     quaternions_xyzw=quaternion_from_yaw_pitch_roll(yaw, pitch, 0.0),
                     loop_length_m=loop_m)
