"""Turn ``localize.launch.py`` arguments into ``launch_ros.actions.Node`` keyword arguments.

Kept free of launch/launch_ros so it is tested where those are not installed.
"""

from pathlib import Path

from vl_attention.config import ConfigError, find_config_file

DEFAULT_PARAMS_FILE = 'localize.yaml'
# dds_profile:=fastdds picks this installed profile (docs/transport.md); other values are paths
DDS_PROFILE_NAMES = {'fastdds': 'dds/fastdds_shm.xml'}
# Fast DDS 3.x (Kilted on) reads FASTDDS_*, 2.x (Humble, Jazzy) FASTRTPS_*: both are set
DDS_PROFILE_VARIABLES = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE')


def default_params_file():
    """Installed (or source-tree) ``config/localize.yaml``."""
    return str(find_config_file(DEFAULT_PARAMS_FILE, what='node parameters'))


def image_remappings(image_topic):
    """Remap the node's ``image`` (and ``image/compressed``) to ``image_topic``."""
    image_topic = image_topic.rstrip('/')
    if not image_topic:
        raise ConfigError('image_topic is empty; give the camera topic, e.g. /camera/image_raw')
    return [('image', image_topic), ('image/compressed', f'{image_topic}/compressed')]


def dds_profile_path(dds_profile: str) -> str:
    """Absolute path of ``dds_profile``: '' (none), 'fastdds' (the installed one) or a path."""
    if not dds_profile:
        return ''
    if dds_profile in DDS_PROFILE_NAMES:
        return str(find_config_file(DDS_PROFILE_NAMES[dds_profile], what='DDS profile'))
    path = Path(dds_profile).expanduser()
    if not path.is_file():
        raise ConfigError(f'dds_profile {dds_profile} is no file; give a Fast DDS XML profile '
                          f'path, {", ".join(DDS_PROFILE_NAMES)} or \'\' (none)')
    return str(path.resolve())


def dds_environment(dds_profile: str) -> dict:
    """Environment that makes Fast DDS load ``dds_profile`` (empty when it is '')."""
    path = dds_profile_path(dds_profile)
    if not path:
        return {}
    # the XML profile sets transports only; QoS stay those the node asks for
    return {name: path for name in DDS_PROFILE_VARIABLES} | {'RMW_FASTRTPS_USE_QOS_FROM_XML': '0'}


def node_arguments(*, params_file='', namespace='', image_topic='/camera/image_raw',
                   map_dir='', log_level='info', dds_profile=''):
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
        'additional_env': dds_environment(dds_profile),
    }
