"""Start ``localize_node`` in a separate process (demo, tests, realtime evaluation)."""

import os
import random
import subprocess
import sys

from vl_attention.errors import VLAttentionError

# What isolates a run: its domain, and local-only discovery. ROS_AUTOMATIC_DISCOVERY_RANGE exists
# from Iron on; Humble only knows ROS_LOCALHOST_ONLY. Both are set, each distro reads its own.
ROS_ENVIRONMENT_KEYS = ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_LOCALHOST_ONLY')


class NodeProcessError(VLAttentionError, RuntimeError):
    """The ``localize_node`` process did not start or answer; its log says why."""


def isolated_ros_environment(domain_id=None, base=None):
    """Return an environment for a ROS 2 run that sees no other run (localhost, own domain)."""
    env = dict(os.environ if base is None else base)
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['ROS_LOCALHOST_ONLY'] = '1'
    env['ROS_DOMAIN_ID'] = str(domain_id if domain_id is not None else random.randint(1, 100))
    env['PYTHONUNBUFFERED'] = '1'
    return env


def localize_node_command(parameters, *, remappings=(), params_file=None):
    """Return the argv that runs the node with this interpreter (no ``ros2`` CLI needed)."""
    command = [sys.executable, '-m', 'vl_attention.ros.node', '--ros-args']
    if params_file:
        command += ['--params-file', str(params_file)]
    for name, value in parameters.items():
        command += ['-p', f'{name}:={_param_literal(value)}']
    for source, target in remappings:
        command += ['-r', f'{source}:={target}']
    return command


def start_localize_node(parameters, *, env, remappings=(), params_file=None, log_path=None):
    """Start the node; its output goes to ``log_path`` (or is inherited)."""
    output = open(log_path, 'w') if log_path else None
    try:
        return subprocess.Popen(
            localize_node_command(parameters, remappings=remappings, params_file=params_file),
            env=env, stdout=output, stderr=subprocess.STDOUT if output else None)
    finally:
        if output is not None:
            output.close()


def stop_process(process, timeout_s=10.0):
    """SIGINT (like Ctrl-C), then SIGKILL if it does not exit; return the exit code."""
    if process.poll() is None:
        process.send_signal(subprocess.signal.SIGINT)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def _param_literal(value):
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, str):
        return value if value else "''"
    return repr(value)
