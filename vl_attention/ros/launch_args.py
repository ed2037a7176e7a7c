"""Turn launch arguments into ``launch_ros.actions.Node`` keyword arguments.

``localize.launch.py`` (the node) and ``localize_ekf.launch.py`` (the node beside
robot_localization's EKF, docs/robot_localization.md). Kept free of launch/launch_ros so it is
tested where those are not installed.
"""

from pathlib import Path

import yaml

from vl_attention.config import ConfigError, find_config_file
from vl_attention.ros.topics import (CAMERA_INFO_TOPIC, COMPRESSED_IMAGE_TOPIC, IMAGE_TOPIC,
                                     POSE_TOPIC, resolved_topic)

# name -> (default, description) of the launch arguments both launch files declare
NODE_LAUNCH_ARGUMENTS = {
    'params_file': ('', 'localize_node parameters YAML ("" = the installed config/localize.yaml)'),
    'namespace': ('', 'namespace of the node(s) and their topics'),
    'image_topic': ('/camera/image_raw', 'camera image topic (raw; /compressed is derived)'),
    'camera_info_topic': ('', 'CameraInfo for rectify:=true ("" = camera_info beside '
                              'image_topic)'),
    'map_dir': ('', 'map directory; overrides map_dir of the params file when given'),
    'log_level': ('info', 'ROS log level of localize_node'),
    'dds_profile': ('', 'Fast DDS profile for localize_node: "" = none, fastdds = the installed '
                        'config/dds/fastdds_shm.xml, or a path (docs/transport.md)'),
}
DEFAULT_PARAMS_FILE = 'localize.yaml'
EKF_PARAMS_FILE = 'ekf_vl_attention.yaml'
# robot_localization's EKF publishes map->odom: the node must not (docs/robot_localization.md)
EKF_NODE_OVERRIDES = {'publish_tf': False}
# dds_profile:=fastdds picks this installed profile (docs/transport.md); other values are paths
DDS_PROFILE_NAMES = {'fastdds': 'dds/fastdds_shm.xml'}
# Fast DDS 3.x (Kilted on) reads FASTDDS_*, 2.x (Humble, Jazzy) FASTRTPS_*: both are set
DDS_PROFILE_VARIABLES = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE')


def default_params_file():
    """Installed (or source-tree) ``config/localize.yaml``."""
    return str(find_config_file(DEFAULT_PARAMS_FILE, what='node parameters'))


def camera_info_topic_for(image_topic):
    """Return the camera_info beside ``image_topic`` (``/cam/image_raw`` -> ``/cam/camera_info``).

    The image_transport convention: a camera's image and its CameraInfo share a namespace.
    """
    parent, slash, _ = image_topic.rstrip('/').rpartition('/')
    return f'{parent}{slash}{CAMERA_INFO_TOPIC}'


def image_remappings(image_topic, camera_info_topic=''):
    """Remap the node's ``image``, ``image/compressed`` and ``camera_info`` to the camera's.

    ``camera_info_topic`` '' is the one beside ``image_topic`` (:func:`camera_info_topic_for`).
    """
    image_topic = image_topic.rstrip('/')
    if not image_topic:
        raise ConfigError('image_topic is empty; give the camera topic, e.g. /camera/image_raw')
    return [(IMAGE_TOPIC, image_topic), (COMPRESSED_IMAGE_TOPIC, f'{image_topic}/compressed'),
            (CAMERA_INFO_TOPIC, camera_info_topic or camera_info_topic_for(image_topic))]


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
                   map_dir='', log_level='info', dds_profile='', camera_info_topic='',
                   overrides=None):
    """Keyword arguments for ``launch_ros.actions.Node`` running ``localize_node``.

    ``overrides`` (name: value) are applied after the params file and ``map_dir``.
    """
    params_file = params_file or default_params_file()
    if not Path(params_file).is_file():
        raise ConfigError(f'params file {params_file} does not exist')
    parameters = [params_file]
    if map_dir:
        parameters.append({'map_dir': map_dir})
    if overrides:
        parameters.append(dict(overrides))
    return {
        'package': 'vl_attention',
        'executable': 'localize_node',
        'name': 'localize_node',
        'namespace': namespace,
        'parameters': parameters,
        'remappings': image_remappings(image_topic, camera_info_topic),
        'arguments': ['--ros-args', '--log-level', log_level],
        'output': 'screen',
        'additional_env': dds_environment(dds_profile),
    }


def default_ekf_params_file():
    """Installed (or source-tree) ``config/ekf_vl_attention.yaml``."""
    return str(find_config_file(EKF_PARAMS_FILE, what='robot_localization EKF parameters'))


def read_ekf_parameters(path=''):
    """Return the ``ros__parameters`` of an EKF params file (the one key it must have)."""
    path = path or default_ekf_params_file()
    if not Path(path).is_file():
        raise ConfigError(f'EKF params file {path} does not exist')
    values = yaml.safe_load(Path(path).read_text())
    if not isinstance(values, dict) or len(values) != 1:
        raise ConfigError(f'EKF params file {path} must have one node key (e.g. /**), got '
                          f'{list(values) if isinstance(values, dict) else values!r}')
    (section,) = values.values()
    if not isinstance(section, dict) or 'ros__parameters' not in section:
        raise ConfigError(f'EKF params file {path} has no ros__parameters')
    return section['ros__parameters']


def ekf_recipe_arguments(*, ekf_params_file='', odom_topic='', namespace='', **node_kwargs):
    """Keyword arguments of the two nodes of ``localize_ekf.launch.py``: ``(localizer, ekf)``.

    The EKF (robot_localization ``ekf_node``, world_frame map) fuses the wheel odometry
    (``odom0``) and the node's pose (``pose0``) and publishes map->odom, so the node runs with
    ``publish_tf`` false; it reads the same odometry for its motion model (``odom_topic``).
    ``odom_topic`` '' is the params file's ``odom0``; ``pose0`` follows the namespace.
    """
    ekf_params_file = ekf_params_file or default_ekf_params_file()
    odom_topic = odom_topic or read_ekf_parameters(ekf_params_file)['odom0']
    localizer = node_arguments(namespace=namespace, overrides=EKF_NODE_OVERRIDES | {
        'odom_topic': odom_topic}, **node_kwargs)
    ekf = {
        'package': 'robot_localization',
        'executable': 'ekf_node',
        'name': 'ekf_filter_node',
        'namespace': namespace,
        'parameters': [ekf_params_file, {'odom0': odom_topic,
                                         'pose0': resolved_topic(POSE_TOPIC, namespace)}],
        'output': 'screen',
    }
    return localizer, ekf
