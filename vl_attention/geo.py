"""Geodesy and rotations shared by the map, the localizer and the synthetic world.

Conventions used everywhere in the package:

* positions in a map live in a local East-North-Up (ENU) tangent plane whose
  origin is a :class:`GeodeticOrigin` on the WGS84 ellipsoid;
* quaternions are ``(x, y, z, w)`` as in ``geometry_msgs/Quaternion`` and give
  the orientation of the camera frame (REP 103 body axes: x forward, y left,
  z up) in the ENU frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np
import numpy.typing as npt
import pymap3d
from scipy.spatial.transform import Rotation

from vl_attention.config import ConfigError


@dataclass(frozen=True)
class GeodeticOrigin:
    """WGS84 point that anchors a local ENU frame."""

    latitude_deg: float
    longitude_deg: float
    altitude_m: float = 0.0

    def __post_init__(self) -> None:
        if not -90.0 <= self.latitude_deg <= 90.0:
            raise ConfigError(
                f'latitude_deg={self.latitude_deg} is outside [-90, 90]; '
                'give the origin in decimal degrees')
        if not -180.0 <= self.longitude_deg <= 180.0:
            raise ConfigError(
                f'longitude_deg={self.longitude_deg} is outside [-180, 180]; '
                'give the origin in decimal degrees')


def geodetic_to_enu(latitude_deg: npt.ArrayLike, longitude_deg: npt.ArrayLike,
                    altitude_m: npt.ArrayLike, origin: GeodeticOrigin) -> np.ndarray:
    """Convert WGS84 coordinates (scalars or arrays) to ENU metres, shape ``(..., 3)``."""
    east, north, up = pymap3d.geodetic2enu(
        np.asarray(latitude_deg, dtype=np.float64),
        np.asarray(longitude_deg, dtype=np.float64),
        np.asarray(altitude_m, dtype=np.float64),
        origin.latitude_deg, origin.longitude_deg, origin.altitude_m)
    return np.stack([east, north, up], axis=-1)


def enu_to_geodetic(enu_m: npt.ArrayLike,
                    origin: GeodeticOrigin) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Convert ENU metres ``(..., 3)`` to ``(latitude_deg, longitude_deg, altitude_m)``."""
    enu_m = np.asarray(enu_m, dtype=np.float64)
    latitude, longitude, altitude = pymap3d.enu2geodetic(
        enu_m[..., 0], enu_m[..., 1], enu_m[..., 2],
        origin.latitude_deg, origin.longitude_deg, origin.altitude_m)
    return np.asarray(latitude), np.asarray(longitude), np.asarray(altitude)


def normalize_quaternion(quaternion_xyzw: npt.ArrayLike) -> np.ndarray:
    """Return unit quaternions ``(..., 4)``; a zero quaternion is an error."""
    quaternion_xyzw = np.asarray(quaternion_xyzw, dtype=np.float64)
    norm = np.linalg.norm(quaternion_xyzw, axis=-1, keepdims=True)
    if np.any(norm < 1e-12):
        raise ValueError('quaternion with zero norm; orientations must be valid rotations')
    return quaternion_xyzw / norm


def quaternion_from_yaw_pitch_roll(yaw_rad: npt.ArrayLike, pitch_rad: npt.ArrayLike = 0.0,
                                   roll_rad: npt.ArrayLike = 0.0) -> np.ndarray:
    """Quaternion ``(x, y, z, w)`` from intrinsic Z-Y-X (yaw, pitch, roll) angles."""
    angles = np.stack(np.broadcast_arrays(yaw_rad, pitch_rad, roll_rad), axis=-1)
    return Rotation.from_euler('ZYX', angles).as_quat()


def quaternion_to_matrix(quaternion_xyzw: npt.ArrayLike) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` from quaternions ``(x, y, z, w)``."""
    return Rotation.from_quat(normalize_quaternion(quaternion_xyzw)).as_matrix()


def rotation_angle_deg(quaternion_a_xyzw: npt.ArrayLike,
                       quaternion_b_xyzw: npt.ArrayLike) -> Union[float, np.ndarray]:
    """Angle of the relative rotation between two orientations, in degrees.

    A float for two orientations, an array for arrays of them.
    """
    relative = (Rotation.from_quat(normalize_quaternion(quaternion_a_xyzw)).inv()
                * Rotation.from_quat(normalize_quaternion(quaternion_b_xyzw)))
    return np.degrees(relative.magnitude())


def headings_from_orientations(orientations_xyzw: npt.ArrayLike) -> np.ndarray:
    """Return the yaw (rad, ENU, from east) of each camera's forward (x) axis."""
    q = np.asarray(orientations_xyzw, np.float64).reshape(-1, 4)
    x, y, z, w = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    forward_east = 1.0 - 2.0 * (y * y + z * z)
    forward_north = 2.0 * (x * y + w * z)
    return np.arctan2(forward_north, forward_east)
