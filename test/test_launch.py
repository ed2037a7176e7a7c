"""Launch arguments -> node arguments (always), and the launch file (where launch_ros exists)."""

import importlib.util
import json
import os
from pathlib import Path
import subprocess
import sys

import pytest

from vl_attention.config import ConfigError
from vl_attention.ros.launch_args import (dds_environment, dds_profile_path,
                                          default_params_file, node_arguments)

LAUNCH_FILE = Path(__file__).resolve().parents[1] / 'launch' / 'localize.launch.py'


def test_defaults_use_the_installed_params_file():
    arguments = node_arguments()
    assert arguments['executable'] == 'localize_node' and arguments['package'] == 'vl_attention'
    assert arguments['parameters'] == [default_params_file()]
    assert Path(default_params_file()).name == 'localize.yaml'
    assert ('image', '/camera/image_raw') in arguments['remappings']


def test_arguments_map_to_namespace_remappings_and_overrides(tmp_path):
    params = tmp_path / 'p.yaml'
    params.write_text('localize_node:\n  ros__parameters: {}\n')
    arguments = node_arguments(params_file=str(params), namespace='robot1',
                               image_topic='/front/image/', map_dir='/maps/town',
                               log_level='debug')
    assert arguments['namespace'] == 'robot1'
    assert arguments['parameters'] == [str(params), {'map_dir': '/maps/town'}]
    assert arguments['remappings'] == [('image', '/front/image'),
                                       ('image/compressed', '/front/image/compressed'),
                                       ('camera_info', '/front/camera_info')]
    assert arguments['arguments'][-1] == 'debug'


@pytest.mark.parametrize('image_topic, camera_info_topic', [
    ('/camera/image_raw', '/camera/camera_info'),
    ('/robot1/front/image_rect/', '/robot1/front/camera_info'),
    ('/image', '/camera_info'),
    ('image', 'camera_info'),        # relative: follows the namespace, like the image
])
def test_camera_info_is_the_one_beside_the_image(image_topic, camera_info_topic):
    assert ('camera_info', camera_info_topic) in node_arguments(
        image_topic=image_topic)['remappings']


def test_camera_info_topic_and_parameter_overrides_can_be_given():
    arguments = node_arguments(camera_info_topic='/calibration/info',
                               overrides={'rectify': True}, map_dir='/maps/town')
    assert ('camera_info', '/calibration/info') in arguments['remappings']
    assert arguments['parameters'] == [default_params_file(), {'map_dir': '/maps/town'},
                                       {'rectify': True}]


def test_bad_launch_arguments_are_named(tmp_path):
    with pytest.raises(ConfigError, match='does not exist'):
        node_arguments(params_file=str(tmp_path / 'missing.yaml'))
    with pytest.raises(ConfigError, match='image_topic is empty'):
        node_arguments(image_topic='')


@pytest.mark.skipif(importlib.util.find_spec('launch_ros') is None,
                    reason='launch_ros is not installed (no ROS 2 install; PyPI has no wheel)')
def test_launch_file_describes_the_node():
    from launch import LaunchContext
    spec = importlib.util.spec_from_file_location('localize_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = [entity.name for entity in description.entities if hasattr(entity, 'name')]
    assert {'params_file', 'namespace', 'image_topic', 'camera_info_topic', 'map_dir'} <= \
        set(names)
    context = LaunchContext()
    for entity in description.entities:
        entity.visit(context)


# --- dds_profile (docs/transport.md): the node's environment -----------------------------------

DDS_XML = Path(__file__).resolve().parents[1] / 'config' / 'dds' / 'fastdds_shm.xml'
ROS_PYTHON = Path(__file__).resolve().parents[2] / 'shared' / 'ros_python'
DRIVER = Path(__file__).with_name('launch_driver.py')


def _profile_env(path):
    return {'FASTDDS_DEFAULT_PROFILES_FILE': str(path),
            'FASTRTPS_DEFAULT_PROFILES_FILE': str(path), 'RMW_FASTRTPS_USE_QOS_FROM_XML': '0'}


def test_dds_profile_is_off_by_default():
    assert dds_environment('') == {}
    assert node_arguments()['additional_env'] == {}


def test_dds_profile_fastdds_is_the_shipped_profile():
    environment = node_arguments(dds_profile='fastdds')['additional_env']
    assert environment == _profile_env(environment['FASTDDS_DEFAULT_PROFILES_FILE'])
    assert Path(environment['FASTDDS_DEFAULT_PROFILES_FILE']).read_bytes() == \
        DDS_XML.read_bytes()


def test_dds_profile_path_is_made_absolute(tmp_path, monkeypatch):
    (tmp_path / 'mine.xml').write_text('<dds/>')
    monkeypatch.chdir(tmp_path)
    assert dds_environment('mine.xml') == _profile_env(tmp_path / 'mine.xml')


def test_missing_dds_profile_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r'dds_profile .*nope\.xml is no file.*fastdds'):
        dds_environment(str(tmp_path / 'nope.xml'))


def _describe(*arguments):
    """Return the launch file's Node actions, made by the pure-Python launch_ros."""
    import vl_attention   # the subprocess imports the same copy as this process
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        str(ROS_PYTHON), str(Path(vl_attention.__file__).parents[1]),
        os.environ.get('PYTHONPATH', '')])))
    result = subprocess.run([sys.executable, str(DRIVER), 'describe', str(LAUNCH_FILE),
                             *arguments], env=env, capture_output=True, text=True, timeout=120)
    nodes = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{')]
    return result, nodes


needs_ros_python = pytest.mark.skipif(
    not (ROS_PYTHON / 'launch_ros').is_dir() or importlib.util.find_spec('osrf_pycommon') is None,
    reason=f'needs {ROS_PYTHON} (pure-Python launch/launch_ros) and osrf_pycommon')


@needs_ros_python
def test_launch_file_node_carries_the_dds_environment(tmp_path):
    profile = tmp_path / 'mine.xml'
    profile.write_text('<dds/>')
    shipped = dds_profile_path('fastdds')   # the source tree's, or an install space's copy
    assert Path(shipped).read_bytes() == DDS_XML.read_bytes()
    for arguments, expected in (((), {}),
                                (('dds_profile:=fastdds',), _profile_env(shipped)),
                                ((f'dds_profile:={profile}', 'namespace:=robot1'),
                                 _profile_env(profile))):
        result, nodes = _describe(*arguments)
        assert result.returncode == 0, result.stderr[-3000:]
        assert [(node['package'], node['executable']) for node in nodes] == [
            ('vl_attention', 'localize_node')]
        assert nodes[0]['additional_env'] == expected, arguments


@needs_ros_python
def test_launch_file_rejects_a_missing_dds_profile(tmp_path):
    result, nodes = _describe(f'dds_profile:={tmp_path / "nope.xml"}')
    assert result.returncode != 0 and not nodes
    assert 'nope.xml is no file' in result.stderr


def test_demo_sets_the_dds_environment_for_node_and_publisher_then_restores_it(monkeypatch):
    from vl_attention.demo import dds_profile_environment
    from vl_attention.ros.process import isolated_ros_environment
    monkeypatch.setenv('FASTDDS_DEFAULT_PROFILES_FILE', '/previous.xml')
    monkeypatch.delenv('FASTRTPS_DEFAULT_PROFILES_FILE', raising=False)
    monkeypatch.delenv('RMW_FASTRTPS_USE_QOS_FROM_XML', raising=False)
    shipped = dds_profile_path('fastdds')
    with dds_profile_environment('fastdds') as environment:
        assert environment == _profile_env(shipped)
        assert {key: os.environ[key] for key in environment} == environment   # the publisher
        node_env = isolated_ros_environment()                                   # the node
        assert {key: node_env[key] for key in environment} == environment
    assert os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] == '/previous.xml'
    assert 'FASTRTPS_DEFAULT_PROFILES_FILE' not in os.environ
    with dds_profile_environment('') as environment:
        assert environment == {} and os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] == '/previous.xml'
