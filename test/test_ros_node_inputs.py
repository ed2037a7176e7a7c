"""localize_node's inputs in its own process: QoS overrides and CameraInfo rectification.

One node, started with

* ``qos_overrides./cam/image.subscription.reliability:=reliable`` (and ``.depth:=2``): the ROS 2
  QoS-override parameters. The node's default image QoS is best effort (sensor data), which
  any publisher matches; overridden to reliable, a best-effort publisher is no longer matched
  and its frames never arrive, while a reliable one's do.
* ``rectify:=true``: frames distorted with a known plumb_bob K/D, sent with that CameraInfo,
  are undistorted before embedding and still localize; diagnostics say what rectification did,
  and an unsupported distortion model gives a WARN reason, not a crash.
"""

import time

import cv2
import numpy as np
import pytest
from rcl_interfaces.srv import GetParameters, ListParameters, SetParameters
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.qos import QoSProfile, qos_profile_sensor_data, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, NavSatStatus

from vl_attention.geo import geodetic_to_enu, GeodeticOrigin
from vl_attention.geometry.camera_model import CameraModel
from vl_attention.mapping import read_manifest, read_poses_csv
from vl_attention.ros.conversions import rgb_to_image_msg
from vl_attention.ros.process import start_localize_node, stop_process
from vl_attention.ros.rectify import Calibration, distort, UNRECTIFIED
from vl_attention.ros.replay import ReplayClient

pytestmark = pytest.mark.ros
IMAGE, CAMERA_INFO = '/cam/image', '/cam/camera_info'
QOS_PREFIX = f'qos_overrides.{IMAGE}.subscription'
PLUMB_BOB = (-0.3, 0.1, 0.001, -0.001, -0.015)
WARN = 1


@pytest.fixture(scope='module')
def node(ros_env, tiny_map, export_cache, tmp_path_factory):
    log = tmp_path_factory.mktemp('inputs_node') / 'node.log'
    process = start_localize_node(
        {'map_dir': str(tiny_map), 'cache_dir': str(export_cache), 'backend': 'onnxruntime',
         'use_filter': False, 'refine': False, 'rectify': True, 'diagnostics_period_s': 0.2,
         # sparse frames: only the rectification's WARN may show in the level
         'min_rate_hz': 0.0, 'stale_after_s': 600.0, 'max_rejected_ratio': 1.0,
         f'{QOS_PREFIX}.reliability': 'reliable', f'{QOS_PREFIX}.depth': 2},
        env=ros_env, log_path=log, remappings=[('image', IMAGE), ('camera_info', CAMERA_INFO)])
    yield {'process': process, 'log': log}
    assert stop_process(process) == 0, log.read_text()[-3000:]


@pytest.fixture(scope='module')
def client(node):
    reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    client = ReplayClient(image_topic=IMAGE, qos=reliable)
    assert client.wait_for_localizer(150.0), node['log'].read_text()
    client.info_publisher = client.create_publisher(CameraInfo, CAMERA_INFO, 10)
    yield client
    client.close()


def _frames(world):
    columns = read_poses_csv(world / 'map_day' / 'poses.csv')
    return columns, [cv2.cvtColor(cv2.imread(str(world / 'map_day' / 'images' / name)),
                                  cv2.COLOR_BGR2RGB) for name in columns['image']]


def _calibration(world, model='plumb_bob', d=PLUMB_BOB):
    camera = CameraModel.from_yaml(world / 'map_day' / 'camera_info.yaml')
    return Calibration(camera.width, camera.height, model, d,
                       (camera.fx, 0.0, camera.cx, 0.0, camera.fy, camera.cy, 0.0, 0.0, 1.0))


def _send_camera_info(client, calibration):
    msg = CameraInfo(width=calibration.width, height=calibration.height,
                     distortion_model=calibration.distortion_model)
    msg.header.frame_id = 'camera_optical'
    msg.d, msg.k = list(calibration.d), list(calibration.k)
    for _ in range(3):   # a camera sends it with every frame; a few are enough here
        client.info_publisher.publish(msg)
        time.sleep(0.05)
    time.sleep(0.3)


def _fix(client, rgb, stamp, *, publisher=None, retries=1, timeout_s=15.0):
    for _ in range(retries):
        if publisher is None:
            client.publish_frame(rgb, stamp, frame_id='camera_optical')
        else:
            msg = rgb_to_image_msg(rgb, Image())
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            publisher.publish(msg)
        fix = client.wait_for_response(stamp, timeout_s=timeout_s)
        if fix is not None:
            return fix
    return None


# ---------------------------------------------------------------- QoS overrides

def test_qos_override_parameters_are_declared_with_the_given_values(client):
    names = client.call_service(ListParameters, '/localize_node/list_parameters',
                                ListParameters.Request(prefixes=['qos_overrides'])).result.names
    assert sorted(names) == sorted(f'qos_overrides.{topic}.subscription.{policy}'
                                   for topic in (IMAGE, CAMERA_INFO)
                                   for policy in ('history', 'depth', 'reliability'))
    response = client.call_service(
        GetParameters, '/localize_node/get_parameters', GetParameters.Request(
            names=[f'{QOS_PREFIX}.reliability', f'{QOS_PREFIX}.depth', f'{QOS_PREFIX}.history',
                   f'qos_overrides.{CAMERA_INFO}.subscription.reliability']))
    assert [parameter_value_to_python(value) for value in response.values] == [
        'reliable', 2, 'keep_last', 'best_effort']   # camera_info keeps the sensor-data default


def test_qos_overrides_are_read_only(client):
    request = SetParameters.Request(parameters=[
        Parameter(f'{QOS_PREFIX}.reliability', value='best_effort').to_parameter_msg()])
    (result,) = client.call_service(SetParameters, '/localize_node/set_parameters',
                                    request).results
    assert (result.successful, result.reason) == (
        False, f'Trying to set a read-only parameter: {QOS_PREFIX}.reliability.')


def test_reliable_override_takes_effect_best_effort_frames_never_arrive(client, tiny_world):
    _, frames = _frames(tiny_world)
    best_effort = client.create_publisher(Image, IMAGE, qos_profile_sensor_data)
    try:
        time.sleep(3.0)   # the reliable publisher (same process, same topic) matched already
        assert client.image_publisher.get_subscription_count() == 1
        assert best_effort.get_subscription_count() == 0, 'the node is still best effort'
        assert _fix(client, frames[0], 1_000_000_000, publisher=best_effort,
                    timeout_s=3.0) is None
    finally:
        client.destroy_publisher(best_effort)
    fix = _fix(client, frames[0], 1_100_000_000, retries=4)
    assert fix is not None and fix.status.status == NavSatStatus.STATUS_FIX


# ---------------------------------------------------------------- rectification

def test_without_camera_info_frames_go_on_unrectified_with_a_warning(client, tiny_world):
    _, frames = _frames(tiny_world)
    assert _fix(client, frames[1], 2_000_000_000, retries=4) is not None
    warning = (f'rectify: rectify is on but no camera_info arrived on {CAMERA_INFO}; '
               f'{UNRECTIFIED}')
    # the first diagnostics after one frame may still say only 'waiting for images'
    values = client.wait_for_diagnostics(lambda v: warning in v.get('_message', ''))
    assert values['rectification'] == f'waiting for camera_info on {CAMERA_INFO}'
    assert values['_level'] == WARN


def test_distorted_frames_are_rectified_and_localize(client, tiny_world, tiny_map):
    calibration = _calibration(tiny_world)
    _send_camera_info(client, calibration)
    columns, frames = _frames(tiny_world)
    origin = GeodeticOrigin(**vars(read_manifest(tiny_map).geodetic_origin))
    errors = []
    for index in range(0, len(frames), 4):
        stamp = 3_000_000_000 + index * 200_000_000
        fix = _fix(client, distort(frames[index], calibration), stamp, retries=2)
        assert fix is not None and fix.status.status == NavSatStatus.STATUS_FIX, index
        truth = geodetic_to_enu(columns['latitude_deg'][index], columns['longitude_deg'][index],
                                columns['altitude_m'][index], origin)
        estimate = geodetic_to_enu(fix.latitude, fix.longitude, fix.altitude, origin)
        errors.append(float(np.linalg.norm(estimate[:2] - truth[:2])))
    assert np.median(errors) < 2.0 and max(errors) < 10.0, errors
    values = client.wait_for_diagnostics(lambda v: v.get('rectification', '').startswith('on'))
    assert values['rectification'] == \
        f'on: plumb_bob {calibration.width}x{calibration.height}'
    assert (values['_level'], values['_message']) == (0, 'localizing')


def test_an_unsupported_distortion_model_is_refused_with_a_reason(client, tiny_world, node):
    _send_camera_info(client, _calibration(tiny_world, 'equidistant', (0.1, 0.01, 0.0, 0.0)))
    _, frames = _frames(tiny_world)
    for offset in range(2):
        fix = _fix(client, frames[2 + offset], 9_000_000_000 + offset, retries=2)
        assert fix is not None, 'a refused calibration must not stop localization'
    reason = ("camera_info distortion model 'equidistant' is not supported (use plumb_bob or "
              'rational_polynomial)')
    values = client.wait_for_diagnostics(
        lambda v: v.get('rectification', '').startswith('refused'))
    assert values['rectification'] == f'refused: {reason}'
    assert (values['_level'], values['_message']) == (WARN, f'rectify: {reason}; {UNRECTIFIED}')
    log = node['log'].read_text()
    assert log.count(f'rectify: {reason}') == 1, 'warn once per new reason, not per frame'
    assert node['process'].poll() is None and 'Traceback' not in log
