"""``launch/localize.launch.py`` run for real by ``launch.LaunchService``, as ``ros2 launch`` does.

How the pieces are found (no ROS 2 install, no ``ros2`` CLI here):

- ``launch``/``launch_ros``: the pure-Python Jazzy sources in ``<repo>/../shared/ros_python``,
  put on PYTHONPATH of the launch subprocess only (``test/launch_driver.py`` runs it); the test
  process never imports them. Absent folder: the module is skipped.
- the executable: ``launch_ros`` resolves ``package='vl_attention', executable='localize_node'``
  through the ament index (``get_package_prefix``, then ``<prefix>/lib/vl_attention/``). The
  editable install in .venv registers no ament index entry, so the module first runs
  ``colcon build --base-paths <repo>`` with ``--build-base/--install-base/--log-base`` in a tmp
  dir (about 1 s: a plain copy, nothing in the source tree), and the subprocess sources that
  install space's ``local_setup.bash``, which sets AMENT_PREFIX_PATH and PYTHONPATH. The launch
  file, the default params and the DDS profile then come from ``share/vl_attention`` of it.

Two launches run side by side on one isolated ROS domain: one in the root namespace, one with
``namespace:=robot1 dds_profile:=fastdds``. Each gets a mapped frame from a ReplayClient in this
process and must answer with a NavSatFix on its (namespaced) ``fix`` topic; then Ctrl-C (SIGINT to
the launch's process group) must end each launch with code 0, its node "finished cleanly" without
SIGTERM, and no traceback in the log.
"""

import importlib.util
import os
from pathlib import Path
import random
import re
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest

from vl_attention.geo import geodetic_to_enu, GeodeticOrigin
from vl_attention.mapping import read_manifest, read_poses_csv
from vl_attention.ros.launch_args import DDS_PROFILE_VARIABLES
from vl_attention.ros.process import isolated_ros_environment, ROS_ENVIRONMENT_KEYS

REPO = Path(__file__).resolve().parents[1]
ROS_PYTHON = REPO.parent / 'shared' / 'ros_python'
DRIVER = Path(__file__).with_name('launch_driver.py')
COLCON = Path(sys.executable).with_name('colcon')
NAMESPACE = 'robot1'
DDS_KEYS = DDS_PROFILE_VARIABLES + ('RMW_FASTRTPS_USE_QOS_FROM_XML',)

pytestmark = [
    pytest.mark.ros,
    pytest.mark.skipif(not (ROS_PYTHON / 'launch_ros').is_dir(),
                       reason=f'{ROS_PYTHON} (pure-Python launch/launch_ros of Jazzy) is absent'),
    pytest.mark.skipif(importlib.util.find_spec('osrf_pycommon') is None,
                       reason='launch needs osrf_pycommon: pip install osrf-pycommon'),
    pytest.mark.skipif(not COLCON.is_file(), reason=f'no colcon beside {sys.executable}'),
]


@pytest.fixture(scope='module')
def install_space(tmp_path_factory):
    """Build a colcon install space of this checkout (ament index entry, lib/vl_attention/...)."""
    base = tmp_path_factory.mktemp('colcon')
    result = subprocess.run(
        [str(COLCON), '--log-base', str(base / 'log'), 'build', '--base-paths', str(REPO),
         '--build-base', str(base / 'build'), '--install-base', str(base / 'install')],
        cwd=base, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return base / 'install'


@pytest.fixture(scope='module')
def ros_env(tmp_path_factory):
    """Put this process and the launches on one isolated domain, with no DDS profile."""
    import rclpy
    env = isolated_ros_environment(domain_id=random.randint(201, 230))
    for key in DDS_KEYS:
        env.pop(key, None)
    env['ROS_LOG_DIR'] = str(tmp_path_factory.mktemp('ros_log'))
    saved = {key: os.environ.get(key) for key in ROS_ENVIRONMENT_KEYS + DDS_KEYS}
    for key in saved:
        os.environ.pop(key, None)
    os.environ.update({key: env[key] for key in ROS_ENVIRONMENT_KEYS})
    rclpy.init()
    yield env
    rclpy.try_shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _start_launch(install, env, arguments, log_path):
    """``ros2 launch vl_attention localize.launch.py`` with the install space sourced."""
    launch_file = install / 'vl_attention' / 'share' / 'vl_attention' / 'launch' / \
        'localize.launch.py'
    env = env | {'PYTHONPATH': os.pathsep.join(filter(None, [
                     str(ROS_PYTHON), env.get('PYTHONPATH', '')])),
                 # the installed console script starts the first python3 on PATH
                 'PATH': os.pathsep.join([str(Path(sys.executable).parent), env['PATH']])}
    command = ['bash', '-c', 'source "$0/local_setup.bash" && exec "$@"', str(install),
               sys.executable, str(DRIVER), 'run', str(launch_file)]
    command += [f'{name}:={value}' for name, value in arguments.items()]
    with open(log_path, 'w') as log:   # own process group, like a launch in a terminal
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _ctrl_c(process, timeout_s=30.0):
    """SIGINT to the launch's process group, as Ctrl-C in a terminal; return the exit code.

    On Ctrl-C ``launch`` does not forward SIGINT itself (the terminal already sent it to
    every process of the group); it sends SIGTERM 5 s later to any process still running.
    """
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


@pytest.fixture(scope='module')
def launches(install_space, ros_env, tiny_map, export_cache, tmp_path_factory):
    """Two launches: root namespace, and ``robot1`` with the Fast DDS profile."""
    logs = tmp_path_factory.mktemp('launch_logs')
    params = logs / 'params.yaml'   # single-frame behaviour under test; the shared model cache
    params.write_text(f'/**:\n  ros__parameters:\n    cache_dir: {export_cache}\n'
                      '    use_filter: false\n    refine: false\n')
    common = {'map_dir': str(tiny_map), 'params_file': str(params)}
    started = {
        'plain': _start_launch(install_space, ros_env, common, logs / 'plain.log'),
        'namespaced': _start_launch(
            install_space, ros_env, common | {
                'namespace': NAMESPACE, 'image_topic': f'/{NAMESPACE}/camera/image_raw',
                'dds_profile': 'fastdds'}, logs / 'namespaced.log')}
    yield {'processes': started, 'logs': logs}
    for process in started.values():
        _ctrl_c(process)


def _log(launches, name):
    return (launches['logs'] / f'{name}.log').read_text()


def _mapped_frame(world, index=4):
    columns = read_poses_csv(world / 'map_day' / 'poses.csv')
    rgb = cv2.cvtColor(cv2.imread(str(world / 'map_day' / 'images' / columns['image'][index])),
                       cv2.COLOR_BGR2RGB)
    truth = [columns[key][index] for key in ('latitude_deg', 'longitude_deg', 'altitude_m')]
    return rgb, truth


def _fix_for_mapped_frame(launches, name, client, world, tiny_map):
    """Publish a mapped frame until its fix comes back; return the fix's error in metres."""
    from sensor_msgs.msg import NavSatStatus
    assert client.wait_for_localizer(150.0), _log(launches, name)[-3000:]
    rgb, truth = _mapped_frame(world)
    stamp = 7_000_000_000 + 123_457
    fix = None
    for _ in range(4):   # the node's side of discovery may still be completing on the first
        client.publish_frame(rgb, stamp, frame_id='camera_optical')
        fix = client.wait_for_response(stamp, timeout_s=15.0)
        if fix is not None:
            break
    assert fix is not None, f'no NavSatFix on {client.fix_topic}: ' + _log(launches, name)[-3000:]
    assert fix.status.status == NavSatStatus.STATUS_FIX
    assert fix.header.frame_id == 'camera_optical'
    origin = GeodeticOrigin(**vars(read_manifest(tiny_map).geodetic_origin))
    estimate = geodetic_to_enu(fix.latitude, fix.longitude, fix.altitude, origin)
    return float(np.linalg.norm((estimate - geodetic_to_enu(*truth, origin))[:2]))


def _node_environment(launches, name):
    """Environment of the node process the launch started (its pid is in the launch log)."""
    match = re.search(r'\[localize_node-1\]: process started with pid \[(\d+)\]',
                      _log(launches, name))
    assert match, _log(launches, name)[-3000:]
    entries = Path(f'/proc/{match.group(1)}/environ').read_bytes().split(b'\0')
    return dict(entry.decode().split('=', 1) for entry in entries if b'=' in entry)


def test_launch_without_namespace_answers_on_fix(launches, ros_env, tiny_world, tiny_map):
    from vl_attention.ros.replay import ReplayClient
    client = ReplayClient(image_topic='/camera/image_raw')
    try:
        assert client.fix_topic == '/fix'
        assert _fix_for_mapped_frame(launches, 'plain', client, tiny_world, tiny_map) < 5.0
    finally:
        client.close()
    environment = _node_environment(launches, 'plain')
    assert not set(DDS_KEYS) & set(environment), 'dds_profile is off by default'


def test_launch_in_namespace_with_dds_profile(launches, ros_env, install_space, tiny_world,
                                              tiny_map):
    from vl_attention.ros.replay import ReplayClient
    client = ReplayClient(image_topic=f'/{NAMESPACE}/camera/image_raw', namespace=NAMESPACE)
    try:
        assert client.fix_topic == f'/{NAMESPACE}/fix'
        assert _fix_for_mapped_frame(launches, 'namespaced', client, tiny_world, tiny_map) < 5.0
    finally:
        client.close()
    installed = install_space / 'vl_attention' / 'share' / 'vl_attention' / 'config' / 'dds' / \
        'fastdds_shm.xml'
    environment = _node_environment(launches, 'namespaced')
    assert {key: environment.get(key) for key in DDS_KEYS} == {
        'FASTDDS_DEFAULT_PROFILES_FILE': str(installed),
        'FASTRTPS_DEFAULT_PROFILES_FILE': str(installed),
        'RMW_FASTRTPS_USE_QOS_FROM_XML': '0'}


def test_sigint_ends_each_launch_cleanly(launches):
    for name, process in launches['processes'].items():
        assert process.poll() is None, f'{name} launch ended early: {_log(launches, name)}'
        code = _ctrl_c(process)
        log = _log(launches, name)
        assert code == 0, f'{name} launch exit code {code}: {log[-3000:]}'
        assert 'Traceback' not in log, log[-3000:]
        assert 'escalating to' not in log, f'{name}: the node ignored SIGINT: {log[-3000:]}'
        assert re.search(r'\[localize_node-1\]: process has finished cleanly', log), log[-3000:]
