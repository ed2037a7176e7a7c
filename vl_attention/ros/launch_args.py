"""Turn ``localize.launch.py`` arguments into ``launch_ros.actions.Node`` keyword arguments.

Kept free of launch/launch_ros so it is tested where those are not installed.
"""

from pathlib import Path

from vl_attention.config import ConfigError, find_config_file

DEFAULT_PARAMS_FILE = 'localize.yaml'


def default_params_file():
    """Installed (or source-tree) ``config/localize.yaml``."""
    return str(find_config_file(DEFAULT_PARAMS_FILE, what='node parameters'))


def image_remappings(image_topic):
    """Remap the node's ``image`` (and ``image/compressed``) to ``image_topic``."""
    image_topic = image_topic.rstrip('/')
    if not image_topic:
        raise ConfigError('image_topic is empty; give the camera topic, e.g. /camera/image_raw')
    return [('image', image_topic), ('image/compressed', f'{image_topic}/compressed')]


def node_arguments(*, params_file='', namespace='', image_topic='/camera/image_raw',
                   map_dir='', log_level='info'):
    """Keyword arguments for ``launch_ros.actions.Node`` running ``localize_node``."""
    params_file = params_file or default_params_file()
    if not Path(params_file).is_file():
        raise ConfigError(f'params file {params_file} does not exist')
    parameters = [params_file]
    if map_dir:
        parameters.append({'map_dir': map_dir})
    return {
        'package': 'vl_attention',
        'executable': 'localize_node',
        'name': 'localize_node',
        'namespace': namespace,
        'parameters': parameters,
        'remappings': image_remappings(image_topic),
        'arguments': ['--ros-args', '--log-level', log_level],
        'output': 'screen',
    }
