"""Launch ``localize_node`` beside robot_localization's EKF (docs/robot_localization.md).

``ros2 launch vl_attention localize_ekf.launch.py map_dir:=/maps/town odom_topic:=/odom``:
the EKF (``config/ekf_vl_attention.yaml``) fuses wheel odometry and the node's pose and
publishes map->odom, so the node runs with ``publish_tf`` false and reads the same odometry.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from vl_attention.ros.launch_args import ekf_recipe_arguments, NODE_LAUNCH_ARGUMENTS

ARGUMENTS = NODE_LAUNCH_ARGUMENTS | {
    'ekf_params_file': ('', 'robot_localization EKF parameters ("" = the installed '
                            'config/ekf_vl_attention.yaml)'),
    'odom_topic': ('', 'wheel odometry for the EKF (odom0) and the motion model of the node '
                       '("" = odom0 of the EKF params file)'),
}


def _launch_nodes(context):
    values = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    localizer, ekf = ekf_recipe_arguments(**values)
    return [Node(**localizer), Node(**ekf)]


def generate_launch_description():
    """Declare the arguments and start both nodes."""
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, (default, description) in ARGUMENTS.items()]
        + [OpaqueFunction(function=_launch_nodes)])
