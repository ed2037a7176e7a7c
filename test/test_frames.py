"""REP 105 frame algebra: the robot's pose from the camera's, map->odom, covariance transport."""

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vl_attention.config import ConfigError
from vl_attention.localization.frames import (base_in_map, camera_in_base, check_mounting,
                                              compose, Extrinsic, in_map_frame, inverse,
                                              is_optical_frame, map_to_odom, rotate_covariance,
                                              StaticTransforms)


def _pose(xyz, rpy_deg):
    return np.asarray(xyz, float), Rotation.from_euler('xyz', rpy_deg, degrees=True).as_quat()


def test_base_pose_from_a_camera_mounted_forward_up_and_yawed():
    # camera 1.2 m ahead, 0.3 m left, 1.5 m up, yawed 90 deg left on the robot
    extrinsic = Extrinsic(xyz_m=(1.2, 0.3, 1.5), rpy_deg=(0.0, 0.0, 90.0)).pose()
    # robot at (10, 20, 0) facing north (yaw 90 deg): camera faces west, sits at
    # (10 - 0.3, 20 + 1.2, 1.5)
    camera = (np.array([9.7, 21.2, 1.5]), Rotation.from_euler('z', 180, degrees=True).as_quat())
    position, orientation = base_in_map(camera, extrinsic)
    np.testing.assert_allclose(position, [10.0, 20.0, 0.0], atol=1e-12)
    yaw = Rotation.from_quat(orientation).as_euler('xyz', degrees=True)[2]
    np.testing.assert_allclose(yaw, 90.0, atol=1e-9)


def test_map_to_odom_closes_the_chain():
    base_in_map_pose = (np.array([5.0, 2.0, 0.0]), Rotation.from_euler('z', 30, degrees=True)
                        .as_quat())
    base_in_odom = (np.array([1.0, -1.0, 0.0]), Rotation.from_euler('z', -15, degrees=True)
                    .as_quat())
    map_T_odom = map_to_odom(base_in_map_pose, base_in_odom)
    position, orientation = compose(map_T_odom, base_in_odom)
    np.testing.assert_allclose(position, base_in_map_pose[0], atol=1e-12)
    np.testing.assert_allclose(abs(np.dot(orientation, base_in_map_pose[1])), 1.0, atol=1e-12)
    identity = compose(map_T_odom, inverse(map_T_odom))
    np.testing.assert_allclose(identity[0], 0.0, atol=1e-12)


def test_camera_rotation_uncertainty_becomes_base_position_uncertainty():
    extrinsic = Extrinsic(xyz_m=(2.0, 0.0, 0.0)).pose()    # camera 2 m ahead of the base
    covariance = np.zeros((6, 6))
    covariance[5, 5] = np.radians(1.0) ** 2                # 1 deg of yaw only
    moved = rotate_covariance(covariance, extrinsic, np.array([0.0, 0.0, 0.0, 1.0]))
    # a yaw error swings the base 2 m behind the camera sideways: sigma_y = 2 m x 1 deg
    np.testing.assert_allclose(np.sqrt(moved[1, 1]), 2.0 * np.radians(1.0), rtol=1e-9)
    np.testing.assert_allclose(moved[0, 0], 0.0, atol=1e-15)
    np.testing.assert_allclose(moved[5, 5], covariance[5, 5])


def test_static_transforms_compose_a_chain_and_relate_two_branches():
    tree = StaticTransforms()
    tree.set('base_link', 'mast', _pose((0.2, 0.0, 1.0), (0, 0, 90)))
    tree.set('/mast', 'camera_link', _pose((0.5, 0.0, 0.0), (0, 0, 0)))  # tf2 drops the '/'
    tree.set('base_link', 'imu', _pose((0.0, 0.0, 0.1), (0, 0, 0)))
    # the mast is yawed 90 deg: 0.5 m along its x is 0.5 m to the robot's left
    position, orientation = tree.lookup('base_link', 'camera_link')
    np.testing.assert_allclose(position, [0.2, 0.5, 1.0], atol=1e-12)
    np.testing.assert_allclose(Rotation.from_quat(orientation).as_euler('xyz', degrees=True),
                               [0, 0, 90], atol=1e-9)
    imu_T_camera = tree.lookup('imu', 'camera_link')   # across two branches of the tree
    np.testing.assert_allclose(imu_T_camera[0], [0.2, 0.5, 0.9], atol=1e-12)
    back = compose(tree.lookup('camera_link', 'imu'), imu_T_camera)
    np.testing.assert_allclose(back[0], 0.0, atol=1e-12)
    assert tree.lookup('base_link', 'gps') is None    # not (yet) connected
    assert tree.frames() == ('base_link', 'camera_link', 'imu', 'mast')


def test_static_transforms_refuse_a_loop_and_a_self_transform():
    tree = StaticTransforms()
    tree.set('a', 'b', _pose((1, 0, 0), (0, 0, 0)))
    tree.set('b', 'a', _pose((1, 0, 0), (0, 0, 0)))
    with pytest.raises(ConfigError, match='loop'):
        tree.lookup('a', 'c')
    with pytest.raises(ConfigError, match='two different frame ids'):
        tree.set('a', 'a', _pose((0, 0, 0), (0, 0, 0)))


def test_an_optical_camera_frame_becomes_the_body_frame_the_map_stores():
    # REP 103 optical frame: z forward, x right, y down, mounted 1 m ahead of the base
    base_T_optical = _pose((1.0, 0.0, 0.0), (-90, 0, -90))
    assert is_optical_frame('front_camera_optical_frame')
    assert not is_optical_frame('front_camera_link')
    assert not is_optical_frame('front_camera_optical_frame', 'body')
    base_T_body = camera_in_base(base_T_optical, 'front_camera_optical_frame')
    np.testing.assert_allclose(base_T_body[0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(abs(np.dot(base_T_body[1], [0, 0, 0, 1])), 1.0, atol=1e-12)
    assert camera_in_base(base_T_optical, 'front_camera_link') is base_T_optical
    with pytest.raises(ConfigError, match='convention'):
        is_optical_frame('camera', 'sideways')


def test_a_mounting_on_a_map_of_base_poses_is_refused_as_counted_twice():
    check_mounting('camera', 'camera_x_m=1.5')   # camera poses: the mounting is needed
    check_mounting('base', '')                   # base poses, no mounting: consistent
    with pytest.raises(ConfigError, match=r'camera_x_m=1.5 would apply it twice'):
        check_mounting('base', 'camera_x_m=1.5')


def test_a_result_moves_into_the_users_map_frame_with_its_covariance_axes():
    @dataclass(frozen=True)
    class Result:   # the LocalizationResult fields in_map_frame reads
        ok: bool
        position_enu_m: np.ndarray
        orientation_xyzw: np.ndarray
        position_covariance_m2: np.ndarray
        orientation_covariance_rad2: np.ndarray
        latitude_deg: float = 48.0

    result = Result(True, np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 0.0, 1.0]),
                    np.diag([4.0, 1.0, 0.25]), np.diag([0.01, 0.02, 0.03]))
    moved = in_map_frame(result, _pose((10.0, 5.0, 0.0), (0, 0, 90)))
    np.testing.assert_allclose(moved.position_enu_m, [10.0, 6.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(Rotation.from_quat(moved.orientation_xyzw).as_euler('xyz')[2],
                               np.pi / 2, atol=1e-12)
    # the long 2 m sigma along the visual map's east is along the map's north after a 90 deg turn
    np.testing.assert_allclose(moved.position_covariance_m2, np.diag([1.0, 4.0, 0.25]),
                               atol=1e-12)
    np.testing.assert_allclose(moved.orientation_covariance_rad2, np.diag([0.02, 0.01, 0.03]),
                               atol=1e-12)
    assert moved.latitude_deg == 48.0   # geodetic: absolute, unchanged
    failed = SimpleNamespace(ok=False)
    assert in_map_frame(failed, _pose((10.0, 5.0, 0.0), (0, 0, 90))) is failed
