"""Launch arguments -> node arguments (always), and the launch file (where launch_ros exists)."""

import importlib.util
from pathlib import Path

import pytest

from vl_attention.config import ConfigError
from vl_attention.ros.launch_args import default_params_file, node_arguments

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
                                       ('image/compressed', '/front/image/compressed')]
    assert arguments['arguments'][-1] == 'debug'


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
    assert {'params_file', 'namespace', 'image_topic', 'map_dir'} <= set(names)
    context = LaunchContext()
    for entity in description.entities:
        entity.visit(context)
