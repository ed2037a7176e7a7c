"""The robot_localization recipe (config/ekf_vl_attention.yaml, launch/localize_ekf.launch.py).

robot_localization cannot be installed here, so its EKF is not run: these tests check that
the recipe's YAML and launch arguments agree with what localize_node actually declares and
publishes (topic names, frames, publish_tf), and that the EKF fuses exactly x, y and yaw of
the node's pose and only velocities of the wheel odometry.
"""

import importlib.util
import json
import os
from pathlib import Path
import subprocess
import sys

import pytest
import yaml

from vl_attention.config import ConfigError
from vl_attention.ros.launch_args import (default_ekf_params_file, default_params_file,
                                          EKF_NODE_OVERRIDES, ekf_recipe_arguments,
                                          read_ekf_parameters)
from vl_attention.ros.params import PARAMS_BY_NAME, POSE_TOPIC, resolved_topic

ROOT = Path(__file__).resolve().parents[1]
EKF_YAML = ROOT / 'config' / 'ekf_vl_attention.yaml'
LAUNCH_FILE = ROOT / 'launch' / 'localize_ekf.launch.py'
DOC = ROOT / 'docs' / 'robot_localization.md'
ROS_PYTHON = ROOT.parent / 'shared' / 'ros_python'
DRIVER = Path(__file__).with_name('launch_driver.py')
# robot_localization's 15-element *_config order
STATE = ('x', 'y', 'z', 'roll', 'pitch', 'yaw', 'vx', 'vy', 'vz', 'vroll', 'vpitch', 'vyaw',
         'ax', 'ay', 'az')


@pytest.fixture(scope='module')
def ekf():
    return read_ekf_parameters(str(EKF_YAML))


def _selected(config):
    assert len(config) == len(STATE) and all(type(value) is bool for value in config), config
    return {name for name, value in zip(STATE, config) if value}


def test_the_shipped_file_is_the_installed_one_and_keyed_for_every_namespace():
    assert Path(default_ekf_params_file()).read_bytes() == EKF_YAML.read_bytes()
    assert list(yaml.safe_load(EKF_YAML.read_text())) == ['/**']


def test_pose0_is_the_node_pose_topic_fused_absolutely_as_x_y_yaw(ekf):
    assert ekf['pose0'] == resolved_topic(POSE_TOPIC) == '/' + POSE_TOPIC
    assert _selected(ekf['pose0_config']) == {'x', 'y', 'yaw'}
    assert ekf['pose0_differential'] is False and ekf['pose0_relative'] is False


def test_odom0_is_wheel_odometry_fused_as_velocities(ekf):
    assert ekf['odom0'] == '/odom'
    assert _selected(ekf['odom0_config']) == {'vx', 'vy', 'vyaw'}
    assert ekf['odom0_differential'] is False


def test_frames_are_the_node_frame_defaults_and_the_ekf_works_in_map(ekf):
    assert ekf['map_frame'] == PARAMS_BY_NAME['map_frame'].default
    assert ekf['odom_frame'] == PARAMS_BY_NAME['odom_frame'].default
    assert ekf['base_link_frame'] == PARAMS_BY_NAME['base_frame'].default
    assert ekf['world_frame'] == ekf['map_frame']   # fuses absolute poses: publishes map->odom
    assert ekf['two_d_mode'] is True
    assert ekf['smooth_lagged_data'] is True and ekf['history_length'] > 0


def test_only_the_ekf_publishes_map_to_odom(ekf):
    assert ekf['publish_tf'] is True
    assert PARAMS_BY_NAME['publish_tf'].default is False       # the node's default ...
    assert EKF_NODE_OVERRIDES == {'publish_tf': False}          # ... forced by the recipe
    localizer, _ = ekf_recipe_arguments()
    assert localizer['parameters'][-1]['publish_tf'] is False
    doc = DOC.read_text()
    assert '`publish_tf`' in doc and 'false' in doc
    node_doc = (ROOT / 'docs' / 'node.md').read_text()
    assert '| `publish_tf` | `false` |' in node_doc


def test_recipe_wires_one_odometry_and_the_node_pose_under_a_namespace(ekf):
    localizer, ekf_node = ekf_recipe_arguments()
    assert (ekf_node['package'], ekf_node['executable']) == ('robot_localization', 'ekf_node')
    assert localizer['parameters'][0] == default_params_file()
    assert localizer['parameters'][-1] == {'publish_tf': False, 'odom_topic': ekf['odom0']}
    assert ekf_node['parameters'] == [default_ekf_params_file(),
                                      {'odom0': ekf['odom0'], 'pose0': '/pose'}]
    localizer, ekf_node = ekf_recipe_arguments(namespace='robot1', odom_topic='/robot1/odom',
                                               map_dir='/maps/town')
    assert localizer['namespace'] == ekf_node['namespace'] == 'robot1'
    assert localizer['parameters'][1:] == [{'map_dir': '/maps/town'},
                                           {'publish_tf': False, 'odom_topic': '/robot1/odom'}]
    assert ekf_node['parameters'][-1] == {'odom0': '/robot1/odom', 'pose0': '/robot1/pose'}


def test_a_bad_ekf_params_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match='does not exist'):
        ekf_recipe_arguments(ekf_params_file=str(tmp_path / 'missing.yaml'))
    two = tmp_path / 'two.yaml'
    two.write_text('a: {ros__parameters: {}}\nb: {ros__parameters: {}}\n')
    with pytest.raises(ConfigError, match='must have one node key'):
        read_ekf_parameters(str(two))


@pytest.mark.skipif(not (ROS_PYTHON / 'launch_ros').is_dir()
                    or importlib.util.find_spec('osrf_pycommon') is None,
                    reason=f'needs {ROS_PYTHON} (pure-Python launch/launch_ros) and osrf_pycommon')
def test_launch_file_makes_the_node_and_the_ekf():
    import vl_attention   # the subprocess imports the same copy as this process
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        str(ROS_PYTHON), str(Path(vl_attention.__file__).parents[1]),
        os.environ.get('PYTHONPATH', '')])))
    result = subprocess.run([sys.executable, str(DRIVER), 'describe', str(LAUNCH_FILE),
                             'namespace:=robot1'], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    nodes = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{')]
    assert [(node['package'], node['executable']) for node in nodes] == [
        ('vl_attention', 'localize_node'), ('robot_localization', 'ekf_node')]
