"""Launch ``localize_node``: ``ros2 launch vl_attention localize.launch.py map_dir:=...``."""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from vl_attention.ros.launch_args import NODE_LAUNCH_ARGUMENTS, node_arguments

ARGUMENTS = NODE_LAUNCH_ARGUMENTS


def _launch_node(context):
    values = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    return [Node(**node_arguments(**values))]


def generate_launch_description():
    """Declare the arguments and start the node."""
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, (default, description) in ARGUMENTS.items()]
        + [OpaqueFunction(function=_launch_node)])
