"""localize_node and TF over real ROS 2: the camera mounting from /tf_static, map->odom on /tf."""

import threading
import time

from builtin_interfaces.msg import Time
from nav_msgs.msg import Odometry
import numpy as np
import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from scipy.spatial.transform import Rotation
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage  # a ROS install has it; `make setup` builds it for the wheels

from vl_attention.localization.frames import base_in_map, compose, Extrinsic
from vl_attention.mapping import load_map, read_poses_csv
from vl_attention.mapping.sources import read_rgb
from vl_attention.ros.conversions import pose_to_transform, transform_to_pose
from vl_attention.ros.process import start_localize_node, stop_process
from vl_attention.ros.replay import ReplayClient

pytestmark = pytest.mark.ros

LATCHED = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                     reliability=ReliabilityPolicy.RELIABLE)
IMAGE_FRAME = 'front_camera_optical_frame'


def _stamp(stamp_ns):
    return Time(sec=int(stamp_ns) // 10**9, nanosec=int(stamp_ns) % 10**9)


def _transform(parent, child, xyz, rpy_deg):
    return pose_to_transform(Extrinsic(xyz_m=xyz, rpy_deg=rpy_deg).pose(),
                             Header(frame_id=parent), child)


def _odometry(stamp_ns, x_m, y_m, yaw_rad):
    msg = Odometry()
    msg.header.stamp = _stamp(stamp_ns)
    msg.header.frame_id, msg.child_frame_id = 'odom', 'base_footprint'
    msg.pose.pose.position.x, msg.pose.pose.position.y = x_m, y_m
    msg.pose.pose.orientation.z, msg.pose.pose.orientation.w = np.sin(yaw_rad / 2), \
        np.cos(yaw_rad / 2)
    return msg


def _pose_of(msg):
    """``(position, quaternion)`` of a geometry_msgs/Pose."""
    return (np.array([msg.position.x, msg.position.y, msg.position.z]),
            np.array([msg.orientation.x, msg.orientation.y, msg.orientation.z,
                      msg.orientation.w]))


def _angle_deg(q1, q2):
    return np.degrees((Rotation.from_quat(q1).inv() * Rotation.from_quat(q2)).magnitude())


def test_pose_is_base_frames_with_the_extrinsic_from_tf_static_and_map_to_odom_closes(
        ros_env, tiny_map, tiny_world, export_cache, tmp_path):
    """Camera 1.5 m ahead, 0.4 m up, looking 90 deg left, given only as a /tf_static chain.

    The visual map's frame is placed in ``map`` by map_origin_* (as for a nav2 map).

    The chain is base_footprint -> front_camera_link -> front_camera_optical_frame (the
    image's frame_id, an optical frame: z forward). Until it arrives the node publishes no
    pose and its diagnostics WARN with the missing transform.
    """
    log = tmp_path / 'node.log'
    process = start_localize_node(
        {'map_dir': str(tiny_map), 'cache_dir': str(export_cache), 'backend': 'onnxruntime',
         'use_filter': False, 'camera_extrinsic_source': 'tf', 'base_frame': 'base_footprint',
         'odom_topic': '/odom', 'publish_tf': True, 'diagnostics_period_s': 0.3,
         'map_origin_x_m': 100.0, 'map_origin_y_m': -50.0, 'map_origin_yaw_deg': 30.0},
        env=ros_env, log_path=log, remappings=[('image', '/camera/image_raw')])
    client = ReplayClient(image_topic='/camera/image_raw')
    tf_static = client.create_publisher(TFMessage, '/tf_static', LATCHED)
    odometry = client.create_publisher(Odometry, '/odom', 50)
    received_tf, lock = [], threading.Lock()

    def on_tf(msg):
        with lock:
            received_tf.extend(msg.transforms)
    client.create_subscription(TFMessage, '/tf', on_tf, 100)
    try:
        assert client.wait_for_localizer(120.0), log.read_text()
        # odometry and /tf are not among the topics wait_for_localizer matches: a message
        # sent before discovery pairs them would be lost (seen under load)
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline and not (odometry.get_subscription_count() > 0
                                                   and client.count_publishers('/tf') > 0):
            time.sleep(0.05)
        assert odometry.get_subscription_count() > 0 and client.count_publishers('/tf') > 0
        records = load_map(tiny_map).records
        columns = read_poses_csv(tiny_world / 'map_day' / 'poses.csv')
        index = 9
        rgb = read_rgb(tiny_world / 'map_day' / 'images' / columns['image'][index])

        early, values = 5_000_000_000, None
        for _ in range(6):   # images are best effort: the first one after matching can be lost
            client.publish_frame(rgb, early, frame_id=IMAGE_FRAME)
            try:
                values = client.wait_for_diagnostics(
                    lambda v: 'no transform base_footprint' in v['_message'], timeout_s=10.0)
                break
            except TimeoutError:
                continue
        assert values is not None, f'no WARN for the missing transform:\n{log.read_text()}'
        assert values['_level'] == 1 and IMAGE_FRAME in values['_message'], values
        assert values['camera_extrinsic'] == 'tf', values
        assert client.wait_for_pose(early, timeout_s=1.0) is None, 'a pose without the extrinsic'

        tf_static.publish(TFMessage(transforms=[
            _transform('base_footprint', 'front_camera_link', (1.5, 0.0, 0.4), (0, 0, 90)),
            _transform('front_camera_link', IMAGE_FRAME, (0, 0, 0), (-90, 0, -90))]))
        stamp, odom_yaw = 7_000_000_000, np.radians(20.0)
        for offset_ns in (-100_000_000, 100_000_000):  # the frame's stamp lies between them
            odometry.publish(_odometry(stamp + offset_ns, 3.0, -2.0, odom_yaw))
        time.sleep(0.5)
        for _ in range(4):
            client.publish_frame(rgb, stamp, frame_id=IMAGE_FRAME)
            if client.wait_for_pose(stamp, timeout_s=15.0) is not None:
                break
        answer = client.wait_for_pose(stamp)
        assert answer is not None, f'no pose with the extrinsic on /tf_static:\n{log.read_text()}'
        assert answer.header.frame_id == 'map'
        got = _pose_of(answer.pose.pose)
        # the visual map's ENU frame sits at (100, -50) in map, turned 30 deg (map_origin_*)
        map_T_visual = Extrinsic(xyz_m=(100.0, -50.0, 0.0), rpy_deg=(0, 0, 30)).pose()
        camera = compose(map_T_visual, (records.position_enu_m[index],
                                        records.orientation_xyzw[index]))
        expected = base_in_map(camera, Extrinsic(xyz_m=(1.5, 0.0, 0.4), rpy_deg=(0, 0, 90)).pose())
        assert np.linalg.norm(got[0] - expected[0]) < 0.1, (got, expected)
        assert _angle_deg(got[1], expected[1]) < 1.0
        assert np.linalg.norm(got[0] - camera[0]) > 1.4  # the base's pose, not the camera's

        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            with lock:
                map_to_odom = [t for t in received_tf
                               if (t.header.stamp.sec, t.header.stamp.nanosec) == (7, 0)]
            if map_to_odom:
                break
            time.sleep(0.05)
        assert map_to_odom, f'no map->odom on /tf:\n{log.read_text()[-2000:]}'
        transform = map_to_odom[-1]
        assert (transform.header.frame_id, transform.child_frame_id) == ('map', 'odom')
        odom_T_base = (np.array([3.0, -2.0, 0.0]),
                       Rotation.from_euler('z', odom_yaw).as_quat())
        # map_T_odom * odom_T_base
        closed = compose(transform_to_pose(transform.transform), odom_T_base)
        np.testing.assert_allclose(closed[0], got[0], atol=1e-3)
        assert _angle_deg(closed[1], got[1]) < 0.01
    finally:
        client.close()
        assert stop_process(process) == 0, log.read_text()[-2000:]
