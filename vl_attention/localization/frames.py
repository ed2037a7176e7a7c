"""REP 105 frames: the camera's pose in the map becomes the robot's (``base_frame``) and map->odom.

Poses are ``(position (3,), quaternion xyzw (4,))`` pairs; composition is
``a * b`` = the pose of b's frame expressed in a's parent. The map stores
camera *body* poses (x forward, y left, z up: REP 103); the camera's mounting
on the robot is ``base_T_camera`` (from TF or the node's extrinsic parameters).
"""

from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

import numpy as np
from scipy.spatial.transform import Rotation

from vl_attention.config import ConfigError
from vl_attention.geo import enu_to_geodetic

Pose = Tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Extrinsic:
    """The camera body frame in the robot's base frame (metres, degrees: roll, pitch, yaw)."""

    xyz_m: tuple = (0.0, 0.0, 0.0)
    rpy_deg: tuple = (0.0, 0.0, 0.0)

    def __post_init__(self):
        if len(self.xyz_m) != 3 or len(self.rpy_deg) != 3 or \
                not np.all(np.isfinite(np.r_[self.xyz_m, self.rpy_deg])):
            raise ConfigError(f'camera extrinsic needs 3 finite values each for xyz_m and '
                              f'rpy_deg, got {self.xyz_m} and {self.rpy_deg}')

    def pose(self) -> Pose:
        """Return base_T_camera."""
        return (np.asarray(self.xyz_m, np.float64),
                Rotation.from_euler('xyz', self.rpy_deg, degrees=True).as_quat())


def check_mounting(poses_frame: str, mounting: str) -> None:
    """Refuse a camera mounting on a map whose poses are the robot base's.

    ``mounting`` describes the mounting the caller would apply ('' for none):
    on a ``base`` map it is already inside the poses and would count twice.
    """
    if poses_frame == 'base' and mounting:
        raise ConfigError(
            f"the map's poses describe the robot base (built with --poses-frame base), so the "
            f'camera mounting is already in them and {mounting} would apply it twice; use '
            'camera_extrinsic_source:=parameters with every camera_* parameter at 0, or '
            'rebuild the map from camera poses (--poses-frame camera)')


# The camera body frame (x forward, y left, z up) in the optical frame of the same camera (z
# forward, x right, y down; REP 103's ``_optical`` suffix): optical_T_body.
OPTICAL_T_BODY: Pose = (np.zeros(3), Rotation.from_euler('xyz', (-90.0, 0.0, -90.0),
                                                         degrees=True).inv().as_quat())
CAMERA_FRAME_CONVENTIONS = ('auto', 'body', 'optical')


def is_optical_frame(frame_id: str, convention: str = 'auto') -> bool:
    """Whether ``frame_id`` is an optical frame; ``auto`` reads REP 103's ``_optical`` suffix."""
    if convention not in CAMERA_FRAME_CONVENTIONS:
        raise ConfigError(f'camera frame convention must be one of {CAMERA_FRAME_CONVENTIONS},'
                          f' got {convention!r}')
    if convention == 'auto':
        return frame_id.endswith(('_optical', '_optical_frame'))
    return convention == 'optical'


class StaticTransforms:
    """A tree of static transforms (``/tf_static``), looked up without tf2.

    Each child frame has one parent (tf's rule; a newer transform for a child
    replaces the older one). :meth:`lookup` composes the chains from both frames
    to their common root, so any two connected frames can be related.
    """

    def __init__(self) -> None:
        self._parent: Dict[str, Tuple[str, Pose]] = {}   # child -> (parent, parent_T_child)

    def set(self, parent: str, child: str, parent_T_child: Pose) -> None:
        """Add or replace the transform of ``child`` in ``parent``."""
        parent, child = parent.lstrip('/'), child.lstrip('/')
        if not parent or not child or parent == child:
            raise ConfigError(f'a transform needs two different frame ids, got '
                              f'{parent!r} -> {child!r}')
        self._parent[child] = (parent, parent_T_child)

    def _to_root(self, frame: str) -> Tuple[str, Pose]:
        """Return the root of ``frame``'s tree and root_T_frame (identity for a root)."""
        pose: Pose = (np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0]))
        for _ in range(len(self._parent) + 1):
            if frame not in self._parent:
                return frame, pose
            frame, parent_T_frame = self._parent[frame]
            pose = compose(parent_T_frame, pose)
        raise ConfigError(f'the static transforms form a loop through {frame!r}')

    def lookup(self, target: str, source: str) -> Optional[Pose]:
        """Return target_T_source, or None while the two frames are not connected."""
        target_root, root_T_target = self._to_root(target.lstrip('/'))
        source_root, root_T_source = self._to_root(source.lstrip('/'))
        if target_root != source_root:
            return None
        return compose(inverse(root_T_target), root_T_source)

    def frames(self) -> Tuple[str, ...]:
        """Every frame id the transforms name, sorted."""
        return tuple(sorted(set(self._parent) | {parent for parent, _ in self._parent.values()}))


def camera_in_base(base_T_frame: Pose, frame_id: str, convention: str = 'auto') -> Pose:
    """Return base_T_camera (the camera *body* frame) from the camera frame's pose in TF."""
    if is_optical_frame(frame_id, convention):
        return compose(base_T_frame, OPTICAL_T_BODY)
    return base_T_frame


def compose(a: Pose, b: Pose) -> Pose:
    """Return a * b."""
    rotation = Rotation.from_quat(a[1])
    return (np.asarray(a[0]) + rotation.apply(b[0]),
            (rotation * Rotation.from_quat(b[1])).as_quat())


def inverse(a: Pose) -> Pose:
    """Return a^-1."""
    rotation = Rotation.from_quat(a[1]).inv()
    return -rotation.apply(a[0]), rotation.as_quat()


def base_in_map(camera_in_map: Pose, base_T_camera: Pose) -> Pose:
    """Return map_T_base = map_T_camera * (base_T_camera)^-1."""
    return compose(camera_in_map, inverse(base_T_camera))


def map_to_odom(base_in_map_pose: Pose, base_in_odom: Pose) -> Pose:
    """Return map_T_odom = map_T_base * (odom_T_base)^-1, the correction AMCL publishes."""
    return compose(base_in_map_pose, inverse(base_in_odom))


def rotate_covariance(covariance_6x6: np.ndarray, base_T_camera: Pose,
                      camera_orientation_xyzw: np.ndarray) -> np.ndarray:
    """Carry a camera pose covariance (map-frame axes) to the base frame's origin.

    The position of the base is ``p_cam - R_cam R_bc^T t_bc``: a small map-frame
    rotation ``w`` of the camera moves it by ``[lever]x w`` with the lever
    ``R_cam R_bc^T t_bc``; orientation errors are unchanged (same axes).
    """
    lever = Rotation.from_quat(camera_orientation_xyzw).apply(
        Rotation.from_quat(base_T_camera[1]).inv().apply(base_T_camera[0]))
    jacobian = np.eye(6)
    jacobian[:3, 3:] = _skew(lever)
    return jacobian @ covariance_6x6 @ jacobian.T


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def robot_result(result, base_T_camera: Pose, origin):
    """Return the robot's (base frame's) pose of a camera result, with its covariance.

    The latitude/longitude follow the base too, so NavSatFix and the pose
    describe the same point. Results without a fix are returned unchanged.
    """
    if not result.ok:
        return result
    position, orientation = base_in_map((result.position_enu_m, result.orientation_xyzw),
                                        base_T_camera)
    covariance = rotate_covariance(result.pose_covariance(), base_T_camera,
                                   result.orientation_xyzw)
    latitude, longitude, altitude = enu_to_geodetic(position, origin)
    return replace(result, position_enu_m=position, orientation_xyzw=orientation,
                   position_covariance_m2=covariance[:3, :3],
                   orientation_covariance_rad2=covariance[3:, 3:],
                   latitude_deg=float(latitude), longitude_deg=float(longitude),
                   altitude_m=float(altitude))


def in_map_frame(result, map_T_visual: Pose):
    """Return a (base) result expressed in ``map_frame`` instead of the visual map's ENU frame.

    ``map_T_visual`` places the visual map's frame in the user's map frame (e.g. a nav2 map
    from SLAM); the covariance axes turn with it. Latitude and longitude are absolute and
    stay. Results without a fix are returned unchanged.
    """
    if not result.ok:
        return result
    position, orientation = compose(map_T_visual, (result.position_enu_m,
                                                   result.orientation_xyzw))
    rotation = Rotation.from_quat(map_T_visual[1]).as_matrix()
    return replace(result, position_enu_m=position, orientation_xyzw=orientation,
                   position_covariance_m2=rotation @ result.position_covariance_m2 @ rotation.T,
                   orientation_covariance_rad2=(rotation @ result.orientation_covariance_rad2
                                                @ rotation.T))
