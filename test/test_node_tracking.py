"""localize_node with the place filter, PnP refinement and odometry in, over real ROS 2."""


import cv2
import numpy as np
import pytest
from builtin_interfaces.msg import Time
from nav_msgs.msg import Odometry

from vl_attention.mapping import load_map, read_poses_csv
from vl_attention.ros.process import start_localize_node, stop_process
from vl_attention.ros.replay import ReplayClient

pytestmark = pytest.mark.ros


def _odometry(stamp_ns, position, yaw_rad):
    msg = Odometry()
    msg.header.stamp = Time(sec=int(stamp_ns) // 10**9, nanosec=int(stamp_ns) % 10**9)
    msg.header.frame_id = 'odom'
    msg.child_frame_id = 'base_link'
    msg.pose.pose.position.x, msg.pose.pose.position.y = float(position[0]), float(position[1])
    msg.pose.pose.orientation.z = float(np.sin(yaw_rad / 2))
    msg.pose.pose.orientation.w = float(np.cos(yaw_rad / 2))
    return msg


def test_node_publishes_filtered_and_refined_poses_with_odometry_in(
        ros_env, tiny_map, tiny_world, export_cache, tmp_path):
    log = tmp_path / 'node.log'
    process = start_localize_node(
        {'map_dir': str(tiny_map), 'cache_dir': str(export_cache), 'backend': 'onnxruntime',
         'odom_topic': '/odom', 'diagnostics_period_s': 0.5},
        env=ros_env, log_path=log, remappings=[('image', '/camera/image_raw')])
    client = ReplayClient(image_topic='/camera/image_raw')
    odometry = client.create_publisher(Odometry, '/odom', 50)
    try:
        assert client.wait_for_localizer(120.0), log.read_text()
        map_ = load_map(tiny_map)
        columns = read_poses_csv(tiny_world / 'map_day' / 'poses.csv')
        truth = map_.records.position_enu_m
        # odometry in its own frame: the map's route rotated by 30 degrees and shifted
        angle = np.radians(30.0)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        headings = np.unwrap(np.arctan2(np.gradient(truth[:, 1]), np.gradient(truth[:, 0])))
        poses = {}
        for index, name in enumerate(columns['image']):
            stamp = int(columns['stamp_ns'][index])
            odometry.publish(_odometry(stamp, rotation @ truth[index, :2] + [5.0, -3.0],
                                       headings[index] + angle))
            rgb = cv2.cvtColor(cv2.imread(str(tiny_world / 'map_day' / 'images' / name)),
                               cv2.COLOR_BGR2RGB)
            client.publish_frame(rgb, stamp, frame_id='camera_optical')
            client.wait_for_response(stamp, timeout_s=15.0)
            poses[index] = client.responses.poses.get(stamp)
        answered = {k: p for k, p in poses.items() if p is not None}
        assert len(answered) >= len(poses) // 2, log.read_text()[-3000:]
        errors = [np.hypot(p.pose.pose.position.x - truth[k, 0],
                           p.pose.pose.position.y - truth[k, 1]) for k, p in answered.items()]
        assert np.median(errors) < 0.5
        sigma = [np.sqrt(p.pose.covariance[0]) for p in answered.values()]
        assert 0.0 < np.median(sigma) < 2.0
        values = client.latest_diagnostics()
        assert values['filter'] == 'on' and values['filter_state'] == 'tracking', values
        assert values['pose_source'] == 'pnp' and int(values['inliers']) >= 12, values
        assert values['motion'] == 'odometry', values
        assert values['no_fix_reason'] == 'none', values   # the last frame had a fix
    finally:
        client.close()
        assert stop_process(process) == 0, log.read_text()[-2000:]


def test_published_pose_is_the_robots_with_a_camera_extrinsic(
        ros_env, tiny_map, tiny_world, export_cache, tmp_path):
    """Camera 1.5 m ahead, 0.4 m up, looking 90 deg left: the pose is base_link's, not its."""
    from scipy.spatial.transform import Rotation

    from vl_attention.localization.frames import base_in_map, Extrinsic
    log = tmp_path / 'node.log'
    extrinsic = Extrinsic(xyz_m=(1.5, 0.0, 0.4), rpy_deg=(0.0, 0.0, 90.0))
    process = start_localize_node(
        {'map_dir': str(tiny_map), 'cache_dir': str(export_cache), 'backend': 'onnxruntime',
         'use_filter': False, 'camera_x_m': 1.5, 'camera_z_m': 0.4, 'camera_yaw_deg': 90.0,
         'base_frame': 'base_footprint'},
        env=ros_env, log_path=log, remappings=[('image', '/camera/image_raw')])
    client = ReplayClient(image_topic='/camera/image_raw')
    try:
        assert client.wait_for_localizer(120.0), log.read_text()
        records = load_map(tiny_map).records
        columns = read_poses_csv(tiny_world / 'map_day' / 'poses.csv')
        index = 9
        rgb = cv2.cvtColor(cv2.imread(str(tiny_world / 'map_day' / 'images' /
                                          columns['image'][index])), cv2.COLOR_BGR2RGB)
        stamp = 7_000_000_000
        for _ in range(4):
            client.publish_frame(rgb, stamp, frame_id='camera_optical')
            if client.wait_for_response(stamp, timeout_s=15.0) is not None:
                break
        answer = client.wait_for_pose(stamp)
        assert answer is not None, f'no pose for the frame; node log:\n{log.read_text()}'
        pose = answer.pose.pose
        expected, orientation = base_in_map(
            (records.position_enu_m[index], records.orientation_xyzw[index]), extrinsic.pose())
        got = np.array([pose.position.x, pose.position.y, pose.position.z])
        assert np.linalg.norm(got - expected) < 0.1, (got, expected)
        # the camera itself is 1.5 m away: this is not the camera's pose
        assert np.linalg.norm(got - records.position_enu_m[index]) > 1.4
        quaternion = [pose.orientation.x, pose.orientation.y, pose.orientation.z,
                      pose.orientation.w]
        angle = (Rotation.from_quat(quaternion).inv() * Rotation.from_quat(orientation))
        assert np.degrees(angle.magnitude()) < 1.0
    finally:
        client.close()
        assert stop_process(process) == 0, log.read_text()[-2000:]
