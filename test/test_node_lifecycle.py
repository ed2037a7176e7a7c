"""The managed (lifecycle) localize_node: configure loads, activate listens, deactivate stops."""

import subprocess

import cv2
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
import pytest
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter

from vl_attention.mapping import read_poses_csv
from vl_attention.ros.process import localize_node_command, stop_process
from vl_attention.ros.replay import ReplayClient

pytestmark = pytest.mark.ros


def _transition(client, transition_id):
    request = ChangeState.Request(transition=Transition(id=transition_id))
    return client.call_service(ChangeState, '/localize_node/change_state', request,
                               timeout_s=60.0).success


def _state(client):
    return client.call_service(GetState, '/localize_node/get_state', GetState.Request(),
                               timeout_s=60.0).current_state.label


def test_lifecycle_transitions_gate_localization(ros_env, tiny_map, tiny_world, export_cache,
                                                 tmp_path):
    command = localize_node_command({'map_dir': str(tiny_map), 'cache_dir': str(export_cache),
                                     'use_filter': False},
                                    remappings=[('image', '/camera/image_raw')])
    command[command.index('vl_attention.ros.node')] = 'vl_attention.ros.lifecycle'
    log = tmp_path / 'node.log'
    with open(log, 'w') as output:
        process = subprocess.Popen(command, env=ros_env, stdout=output, stderr=subprocess.STDOUT)
    client = ReplayClient(image_topic='/camera/image_raw')
    try:
        assert _state(client) == 'unconfigured', log.read_text()
        # a parameter set before configure is checked, kept and used by configure
        request = SetParameters.Request(parameters=[
            Parameter('top_k', value=3).to_parameter_msg(),
            Parameter('camera_x_m', value=0.5).to_parameter_msg()])
        results = client.call_service(SetParameters, '/localize_node/set_parameters',
                                      request).results
        assert all(result.successful for result in results), (results, log.read_text())
        assert _transition(client, Transition.TRANSITION_CONFIGURE), log.read_text()
        assert _state(client) == 'inactive'
        columns = read_poses_csv(tiny_world / 'map_day' / 'poses.csv')
        rgb = cv2.cvtColor(cv2.imread(str(tiny_world / 'map_day' / 'images' /
                                          columns['image'][5])), cv2.COLOR_BGR2RGB)
        client.publish_frame(rgb, 1_000_000_000, frame_id='camera_optical')
        assert client.wait_for_response(1_000_000_000, timeout_s=3.0) is None  # not listening
        assert _transition(client, Transition.TRANSITION_ACTIVATE)
        assert _state(client) == 'active'
        assert client.wait_for_localizer(60.0)
        fix = None
        for attempt in range(4):
            stamp = 2_000_000_000 + attempt
            client.publish_frame(rgb, stamp, frame_id='camera_optical')
            fix = client.wait_for_response(stamp, timeout_s=15.0)
            if fix is not None:
                break
        assert fix is not None and fix.status.status >= 0, log.read_text()[-2000:]
        assert _transition(client, Transition.TRANSITION_DEACTIVATE)
        assert _state(client) == 'inactive'
        client.publish_frame(rgb, 3_000_000_000, frame_id='camera_optical')
        assert client.wait_for_response(3_000_000_000, timeout_s=3.0) is None
        assert _transition(client, Transition.TRANSITION_CLEANUP)
        assert _state(client) == 'unconfigured'
    finally:
        client.close()
        assert stop_process(process) == 0, log.read_text()[-2000:]


def test_a_bad_map_fails_configure_and_the_node_stays_unconfigured(ros_env, tmp_path):
    command = localize_node_command({'map_dir': str(tmp_path / 'no_map')})
    command[command.index('vl_attention.ros.node')] = 'vl_attention.ros.lifecycle'
    log = tmp_path / 'node.log'
    with open(log, 'w') as output:
        process = subprocess.Popen(command, env=ros_env, stdout=output, stderr=subprocess.STDOUT)
    client = ReplayClient(image_topic='/camera/image_raw')
    try:
        assert not _transition(client, Transition.TRANSITION_CONFIGURE)
        assert _state(client) == 'unconfigured'
        assert 'configure failed' in log.read_text() and 'no_map' in log.read_text()
    finally:
        client.close()
        assert stop_process(process) == 0, log.read_text()[-2000:]
