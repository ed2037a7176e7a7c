"""Run or describe a launch file with the pure-Python ``launch``/``launch_ros`` of ROS 2.

Started by the launch tests in a subprocess whose PYTHONPATH holds ``shared/ros_python``
(never imported by the test process itself):

    python launch_driver.py run FILE name:=value ...       # launch.LaunchService, like ros2 launch
    python launch_driver.py describe FILE name:=value ...  # JSON of the Node actions it makes

``launch_ros.actions`` imports ``composition_interfaces`` (composable nodes), which has no wheel;
a stand-in module takes its place, since the launch file starts no composable node.
"""

import json
import sys
import types


def _stand_in_composition_interfaces():
    srv = types.ModuleType('composition_interfaces.srv')
    srv.LoadNode = type('LoadNode', (), {'Request': type('Request', (), {}),
                                         'Response': type('Response', (), {})})
    package = types.ModuleType('composition_interfaces')
    package.srv = srv
    sys.modules.setdefault('composition_interfaces', package)
    sys.modules.setdefault('composition_interfaces.srv', srv)


def _launch_arguments(pairs):
    arguments = []
    for pair in pairs:
        name, separator, value = pair.partition(':=')
        if not separator:
            raise SystemExit(f'launch argument {pair!r} is not name:=value')
        arguments.append((name, value))
    return arguments


def run(launch_file, arguments):
    """Run the launch file until it ends or is interrupted; return the service's exit code."""
    from launch import LaunchDescription, LaunchService
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    service = LaunchService(argv=[f'{name}:={value}' for name, value in arguments])
    service.include_launch_description(LaunchDescription([IncludeLaunchDescription(
        PythonLaunchDescriptionSource(launch_file), launch_arguments=arguments)]))
    return service.run()


def describe(launch_file, arguments):
    """Print the Node actions the launch file makes for ``arguments`` (JSON lines)."""
    from launch import LaunchContext
    from launch.launch_description_sources import get_launch_description_from_python_launch_file
    from launch.utilities import perform_substitutions
    from launch_ros.actions import Node
    context = LaunchContext()
    context.launch_configurations.update(dict(arguments))
    pending = list(get_launch_description_from_python_launch_file(launch_file).entities)
    while pending:
        entity = pending.pop(0)
        if isinstance(entity, Node):
            env = {perform_substitutions(context, name): perform_substitutions(context, value)
                   for name, value in entity.additional_env or []}
            print(json.dumps({'package': entity.node_package, 'executable': entity.node_executable,
                              'additional_env': env}))
            continue
        pending.extend(entity.visit(context) or [])
    return 0


def main(argv):
    """Dispatch ``run`` / ``describe``."""
    if len(argv) < 2 or argv[0] not in ('run', 'describe'):
        raise SystemExit(__doc__)
    _stand_in_composition_interfaces()
    command, launch_file, arguments = argv[0], argv[1], _launch_arguments(argv[2:])
    return run(launch_file, arguments) if command == 'run' else describe(launch_file, arguments)


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
