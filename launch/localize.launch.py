"""Launch ``localize_node``: ``ros2 launch vl_attention localize.launch.py map_dir:=...``."""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from vl_attention.ros.launch_args import node_arguments

ARGUMENTS = {
    'params_file': ('', 'node parameters YAML ("" = the installed config/localize.yaml)'),
    'namespace': ('', 'namespace of the node and its topics'),
    'image_topic': ('/camera/image_raw', 'camera image topic (raw; /compressed is derived)'),
    'camera_info_topic': ('', 'CameraInfo for rectify:=true ("" = camera_info beside '
                              'image_topic)'),
    'map_dir': ('', 'map directory; overrides map_dir of the params file when given'),
    'log_level': ('info', 'ROS log level of the node'),
    'dds_profile': ('', 'Fast DDS profile for the node: "" = none, fastdds = the installed '
                        'config/dds/fastdds_shm.xml, or a path (docs/transport.md)'),
}


def _launch_node(context):
    values = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    return [Node(**node_arguments(**values))]


def generate_launch_description():
    """Declare the arguments and start the node."""
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, (default, description) in ARGUMENTS.items()]
        + [OpaqueFunction(function=_launch_node)])
