"""localize_node's parameters and services, over real rclpy with the node in its own process.

* start-up: every bad parameter value or type and every bad map gives one line on stderr and
  exit code 1, and a bad ``map_dir`` is refused before the model is loaded;
* runtime: SetParameters changes take effect from the next frame, bad ones are refused with a
  reason, read-only ones cannot change;
* services: ``~/reset`` restarts the place filter, ``~/reload_map`` re-reads ``map_dir`` and
  keeps the loaded map when the new one is refused.
"""

import json
import random
import shutil
import subprocess
import time

import cv2
import numpy as np
import pytest
from rclpy.parameter import Parameter, parameter_value_to_python
from rcl_interfaces.srv import GetParameters, SetParameters
from sensor_msgs.msg import NavSatStatus
from std_srvs.srv import Trigger

from vl_attention.localization import Localizer, TrackingConfig
from vl_attention.mapping import load_map, read_poses_csv
from vl_attention.ros.node import _tracking_values
from vl_attention.ros.params import (check_values, descriptor, NODE_PARAMS, PARAMS_BY_NAME,
                                     ParameterError, tracking_config)
from vl_attention.ros.process import (isolated_ros_environment, localize_node_command,
                                      start_localize_node, stop_process)
from vl_attention.ros.replay import ReplayClient

DEFAULTS = {param.name: param.default for param in NODE_PARAMS}
RANGE_HELP = {name: PARAMS_BY_NAME[name].description
              for name in ('top_k', 'neighbour_radius_m', 'diagnostics_period_s',
                           'refine_time_budget_ms')}


# ---------------------------------------------------------------- the validator (no ROS)

@pytest.mark.parametrize('name, value, message', [
    ('top_k', -1, f"parameter top_k is -1, outside 1 .. 1000: {RANGE_HELP['top_k']}"),
    ('top_k', 'abc', "parameter top_k must be an integer, got str 'abc' (e.g. -p top_k:=5)"),
    ('top_k', 21, 'parameter top_k (21) must not exceed candidates (20): the neighbours are '
     'taken among them'),
    ('neighbour_radius_m', -1.0, 'parameter neighbour_radius_m is -1.0, outside 0 .. 100000: '
     + RANGE_HELP['neighbour_radius_m']),
    ('diagnostics_period_s', 0.0, 'parameter diagnostics_period_s is 0.0, outside 0.01 .. '
     f"3600: {RANGE_HELP['diagnostics_period_s']}"),
    ('backend', 'no_such_backend', "parameter backend is 'no_such_backend'; use one of: auto, "
     'tensorrt, onnxruntime, torch, onnxruntime-cuda, onnxruntime-cpu, torch-cuda, torch-cpu'),
    ('publish_pose', 'yes', "parameter publish_pose must be a boolean, got str 'yes' (e.g. -p "
     'publish_pose:=true)'),
    ('min_confidence', 1.0, 'parameter min_confidence is 1.0, outside 0 .. 0.999: below this '
     'confidence the frame gives no fix'),
    ('refine_time_budget_ms', -5.0, 'parameter refine_time_budget_ms is -5.0, outside 0 .. '
     f"10000: {RANGE_HELP['refine_time_budget_ms']}"),
])
def test_bad_values_are_refused_with_one_line(name, value, message):
    with pytest.raises(ParameterError) as caught:
        check_values(DEFAULTS | {name: value})
    assert str(caught.value) == message


def test_diagnostics_thresholds_are_checked_together():
    with pytest.raises(ParameterError, match='max_rate_hz 0.5 is below min_rate_hz 1'):
        check_values(DEFAULTS | {'max_rate_hz': 0.5})
    assert check_values(DEFAULTS | {'max_rate_hz': 2.0})['max_rate_hz'] == 2.0


def test_an_integer_for_a_float_parameter_becomes_a_float():
    values = check_values(DEFAULTS | {'neighbour_radius_m': 25, 'min_confidence': 0})
    assert values['neighbour_radius_m'] == 25.0 and type(values['neighbour_radius_m']) is float
    assert values['min_confidence'] == 0.0 and type(values['min_confidence']) is float


def test_the_refinement_time_budget_reaches_the_localizer_config():
    assert tracking_config(DEFAULTS).refinement.time_budget_ms == 0.0
    values = check_values(DEFAULTS | {'refine_time_budget_ms': 60})
    assert tracking_config(values).refinement.time_budget_ms == 60.0


def test_verification_frames_reach_the_tracking_config_and_refuse_a_negative():
    assert tracking_config(DEFAULTS).verification_frames == 40
    assert tracking_config(check_values(DEFAULTS | {'verification_frames': 10})) \
        .verification_frames == 10
    with pytest.raises(ParameterError, match='verification_frames'):
        check_values(DEFAULTS | {'verification_frames': -1})


def test_diagnostics_say_why_the_latest_frame_gave_no_fix(tiny_map, embedder):
    localizer = Localizer(load_map(tiny_map), embedder=embedder, tracking=TrackingConfig())
    result = localizer.localize(np.full((120, 160, 3), 90, np.uint8), stamp_s=0.0)
    assert not result.ok and result.reason.startswith('filter initialising: ')
    values = _tracking_values(result, localizer)
    assert values['no_fix_reason'] == result.reason
    assert values['filter_state'] == 'initialising'


def test_every_default_passes_and_descriptors_carry_ranges_choices_and_read_only():
    assert check_values(DEFAULTS) == DEFAULTS
    read_only = {param.name for param in NODE_PARAMS if descriptor(param).read_only}
    assert read_only == {'map_dir', 'model', 'backend', 'device', 'precision', 'export_dir',
                         'threads', 'cache_dir', 'image_transport', 'odom_topic', 'use_filter',
                         'refine', 'refine_time_budget_ms', 'verification_frames',
                         'pose_source', 'publish_tf',
                         'rectify', 'camera_extrinsic_source'}
    top_k = descriptor(PARAMS_BY_NAME['top_k']).integer_range[0]
    assert (top_k.from_value, top_k.to_value) == (1, 1000)
    radius = descriptor(PARAMS_BY_NAME['neighbour_radius_m'])
    assert radius.dynamic_typing and radius.floating_point_range[0].from_value == 0.0
    assert descriptor(PARAMS_BY_NAME['device']).additional_constraints == \
        'one of: auto, cpu, cuda'
    for param in NODE_PARAMS:  # every number has a range, and its default lies inside it
        if isinstance(param.default, (int, float)) and not isinstance(param.default, bool):
            assert param.low <= param.default <= param.high, param.name


# ---------------------------------------------------------------- start-up, in a subprocess

def _run_node(arguments, tmp_path, timeout_s=120):
    env = isolated_ros_environment(domain_id=random.randint(201, 215))
    command = localize_node_command({}) + arguments
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s,
                          cwd=tmp_path)


@pytest.mark.ros
@pytest.mark.parametrize('argument, line', [
    ('top_k:=abc', "parameter top_k must be an integer, got str 'abc' (e.g. -p top_k:=5)"),
    ('top_k:=-1', f"parameter top_k is -1, outside 1 .. 1000: {RANGE_HELP['top_k']}"),
    ('top_k:=30', 'parameter top_k (30) must not exceed candidates (20): the neighbours are '
     'taken among them'),
    ('neighbour_radius_m:=-1', 'parameter neighbour_radius_m is -1.0, outside 0 .. 100000: '
     + RANGE_HELP['neighbour_radius_m']),
    ('diagnostics_period_s:=0', 'parameter diagnostics_period_s is 0.0, outside 0.01 .. 3600: '
     + RANGE_HELP['diagnostics_period_s']),
    ('backend:=no_such_backend', "parameter backend is 'no_such_backend'; use one of: auto, "
     'tensorrt, onnxruntime, torch, onnxruntime-cuda, onnxruntime-cpu, torch-cuda, torch-cpu'),
    ('image_transport:=theora', "parameter image_transport is 'theora'; use one of: raw, "
     'compressed'),
    ('publish_pose:=[1,2]', 'parameter publish_pose must be a boolean, got list [1, 2] (e.g. '
     '-p publish_pose:=true)'),
])
def test_bad_parameter_at_start_gives_one_line_and_exit_code_1(argument, line, tmp_path):
    result = _run_node(['-p', argument, '-p', f'map_dir:={tmp_path}'], tmp_path)
    assert (result.returncode, result.stderr) == (1, f'localize_node: {line}\n')


@pytest.mark.ros
def test_a_camera_mounting_on_a_map_of_base_poses_is_refused_before_the_model_loads(
        tiny_map, tmp_path):
    base_map = tmp_path / 'base_map'
    shutil.copytree(tiny_map, base_map)
    manifest = json.loads((base_map / 'manifest.json').read_text())
    manifest['build']['poses_frame'] = 'base'   # as `build-map --poses-frame base` writes it
    (base_map / 'manifest.json').write_text(json.dumps(manifest))
    result = _run_node(['-p', f'map_dir:={base_map}', '-p', 'camera_x_m:=1.5',
                        '-p', f'cache_dir:={tmp_path}'], tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("localize_node: the map's poses describe the robot base")
    assert 'camera_x_m=1.5 would apply it twice' in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.ros
def test_missing_or_unreadable_map_is_refused_before_the_model_loads(tmp_path):
    cache = tmp_path / 'cache'
    cache.mkdir()
    result = _run_node(['-p', f'map_dir:={tmp_path / "no_map"}', '-p', f'cache_dir:={cache}'],
                       tmp_path)
    assert (result.returncode, result.stderr) == (
        1, f'localize_node: {tmp_path / "no_map"} is not a map: manifest.json is missing; '
        'build one with `vl-attention build-map`\n')
    bad = tmp_path / 'bad_json'
    bad.mkdir()
    (bad / 'manifest.json').write_text('{')
    result = _run_node(['-p', f'map_dir:={bad}', '-p', f'cache_dir:={cache}'], tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f'localize_node: {bad / "manifest.json"} is not valid JSON')
    assert result.stderr.count('\n') == 1 and result.stderr.endswith('rebuild the map\n')
    assert list(cache.iterdir()) == [], 'the model was loaded (exported) before the map check'


@pytest.mark.ros
def test_map_with_a_missing_file_gives_one_line(tiny_map, export_cache, tmp_path):
    broken = tmp_path / 'broken_map'
    shutil.copytree(tiny_map, broken)
    manifest = json.loads((broken / 'manifest.json').read_text())
    missing = sorted(manifest['files'])[0]
    (broken / missing).unlink()
    result = _run_node(['-p', f'map_dir:={broken}', '-p', f'cache_dir:={export_cache}',
                        '-p', 'backend:=onnxruntime'], tmp_path)
    errors = [line for line in result.stderr.splitlines() if 'localize_node:' in line]
    assert result.returncode == 1, result.stderr
    assert errors == [f'localize_node: {broken / missing} is missing; rebuild the map'], \
        result.stderr
    assert 'Traceback' not in result.stderr


@pytest.mark.ros
def test_regression_pose_source_on_a_model_without_a_pose_head_is_refused(tiny_map, export_cache,
                                                                          tmp_path):
    result = _run_node(['-p', f'map_dir:={tiny_map}', '-p', f'cache_dir:={export_cache}',
                        '-p', 'backend:=onnxruntime', '-p', 'pose_source:=regression'], tmp_path)
    errors = [line for line in result.stderr.splitlines() if 'localize_node:' in line]
    assert result.returncode == 1, result.stderr
    assert len(errors) == 1 and errors[0].startswith(
        'localize_node: pose_source regression needs a model with a pose head; '), result.stderr
    assert 'Traceback' not in result.stderr


# ---------------------------------------------------------------- runtime, over ROS

@pytest.fixture(scope='module')
def nodes(ros_env, tiny_map, export_cache, tmp_path_factory):
    """Start a single-frame node (root namespace) and a filtered one (/filtered, map copy)."""
    logs = tmp_path_factory.mktemp('param_node_logs')
    map_copy = tmp_path_factory.mktemp('reloadable') / 'map'
    shutil.copytree(tiny_map, map_copy)
    common = {'cache_dir': str(export_cache), 'backend': 'onnxruntime', 'refine': False}
    single = start_localize_node(
        common | {'map_dir': str(tiny_map), 'use_filter': False, 'neighbour_radius_m': 25},
        env=ros_env, log_path=logs / 'single.log', remappings=[('image', '/single/image')])
    filtered = start_localize_node(
        common | {'map_dir': str(map_copy), 'use_filter': True}, env=ros_env,
        log_path=logs / 'filtered.log',
        remappings=[('__ns', '/filtered'), ('image', '/filtered/image')])
    yield {'single': single, 'filtered': filtered, 'logs': logs, 'map_copy': map_copy}
    codes = [stop_process(process) for process in (single, filtered)]
    assert codes == [0, 0], ' '.join((logs / name).read_text()[-2000:]
                                     for name in ('single.log', 'filtered.log'))


def _client(nodes, name, **kwargs):
    client = ReplayClient(**kwargs)
    assert client.wait_for_localizer(150.0), (nodes['logs'] / f'{name}.log').read_text()
    return client


@pytest.fixture(scope='module')
def single(nodes):
    client = _client(nodes, 'single', image_topic='/single/image')
    yield client
    client.close()


@pytest.fixture(scope='module')
def filtered(nodes):
    client = _client(nodes, 'filtered', image_topic='/filtered/image', namespace='filtered')
    yield client
    client.close()


def _set(client, node_name, **values):
    request = SetParameters.Request(parameters=[
        Parameter(name, value=value).to_parameter_msg() for name, value in values.items()])
    return client.call_service(SetParameters, f'{node_name}/set_parameters', request).results


def _get(client, node_name, name):
    response = client.call_service(GetParameters, f'{node_name}/get_parameters',
                                   GetParameters.Request(names=[name]))
    return parameter_value_to_python(response.values[0])


def _frames(world, traversal='map_day'):
    columns = read_poses_csv(world / traversal / 'poses.csv')
    return [cv2.cvtColor(cv2.imread(str(world / traversal / 'images' / name)),
                         cv2.COLOR_BGR2RGB) for name in columns['image']]


class Stamps:
    """Increasing stamps 0.2 s apart (the traversal's 5 Hz), one sequence per module."""

    def __init__(self, start_ns):
        self.value = start_ns

    def next(self):
        self.value += 200_000_000
        return self.value


@pytest.fixture(scope='module')
def stamps():
    return Stamps(100_000_000_000)


def _answer(client, rgb, stamp, *, retries=1, timeout_s=15.0):
    for _ in range(retries):
        client.publish_frame(rgb, stamp)
        fix = client.wait_for_response(stamp, timeout_s=timeout_s)
        if fix is not None:
            return fix
    return None


def test_min_confidence_change_takes_effect_on_the_next_frame(single, tiny_world, stamps):
    rgb = _frames(tiny_world, 'query_night')[3]  # a map frame itself has confidence 1.0
    stamp = stamps.next()
    fix = _answer(single, rgb, stamp, retries=4)
    assert fix is not None and fix.status.status == NavSatStatus.STATUS_FIX
    results = _set(single, '/localize_node', min_confidence=0.99)
    assert [(r.successful, r.reason) for r in results] == [(True, '')]
    stamp = stamps.next()
    fix = _answer(single, rgb, stamp)
    assert fix is not None and fix.status.status == NavSatStatus.STATUS_NO_FIX
    assert _set(single, '/localize_node', min_confidence=0.05)[0].successful
    stamp = stamps.next()
    assert _answer(single, rgb, stamp).status.status == NavSatStatus.STATUS_FIX


def test_publish_navsatfix_false_stops_fixes_but_not_poses(single, tiny_world, stamps):
    rgb = _frames(tiny_world)[5]
    assert _set(single, '/localize_node', publish_navsatfix=False)[0].successful
    try:
        stamp = stamps.next()
        single.publish_frame(rgb, stamp)
        deadline = time.monotonic() + 15.0
        while stamp not in single.responses.poses and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stamp in single.responses.poses, 'the frame was not processed'
        time.sleep(0.5)
        assert stamp not in single.responses.fixes
    finally:
        assert _set(single, '/localize_node', publish_navsatfix=True)[0].successful
    stamp = stamps.next()
    assert _answer(single, rgb, stamp) is not None


@pytest.mark.parametrize('values, reason', [
    ({'top_k': -1}, 'Parameter top_k out of range. Min: 1, Max: 1000, value: -1'),
    ({'top_k': 21}, 'parameter top_k (21) must not exceed candidates (20): the neighbours are '
     'taken among them'),
    ({'neighbour_radius_m': 'far'}, 'parameter neighbour_radius_m must be a number, got str '
     "'far' (e.g. -p neighbour_radius_m:=25.0)"),
    ({'backend': 'no_such_backend'}, 'Trying to set a read-only parameter: backend.'),
    ({'map_dir': '/elsewhere'}, 'Trying to set a read-only parameter: map_dir.'),
    ({'use_filter': True}, 'Trying to set a read-only parameter: use_filter.'),
])
def test_bad_or_read_only_changes_are_refused_with_a_reason(single, values, reason):
    (name,) = values
    before = _get(single, '/localize_node', name)
    results = _set(single, '/localize_node', **values)
    assert [(r.successful, r.reason) for r in results] == [(False, reason)]
    assert _get(single, '/localize_node', name) == before


def test_top_k_and_candidates_change_together(single, tiny_world, stamps):
    results = _set(single, '/localize_node', candidates=5, top_k=5)
    assert [r.successful for r in results] == [True, True]
    results = _set(single, '/localize_node', top_k=6)
    assert not results[0].successful and 'must not exceed candidates (5)' in results[0].reason
    assert [r.successful for r in _set(single, '/localize_node', candidates=20)] == [True]
    stamp = stamps.next()
    assert _answer(single, _frames(tiny_world)[2], stamp) is not None


def _diagnostics_count(client, seconds):
    start = len(client.responses.diagnostics)
    time.sleep(seconds)
    return sum(1 for array in client.responses.diagnostics[start:]
               for status in array.status if status.name == client.localizer_status_name)


def test_diagnostics_period_change_recreates_the_timer(single):
    assert _set(single, '/localize_node', diagnostics_period_s=0.2)[0].successful
    try:
        time.sleep(0.5)
        fast = _diagnostics_count(single, 3.0)
    finally:
        assert _set(single, '/localize_node', diagnostics_period_s=1.0)[0].successful
    time.sleep(1.5)
    slow = _diagnostics_count(single, 3.0)
    assert fast >= 10 and slow <= 4, (fast, slow)


def _track(client, frames, stamps, start=0):
    """Feed the traversal in order until the filter reports a fix; return the next index."""
    for index in range(start, len(frames)):
        fix = _answer(client, frames[index], stamps.next(), retries=4 if index == start else 1)
        if fix is not None and fix.status.status == NavSatStatus.STATUS_FIX:
            return index + 1
    raise AssertionError('the filter never reached tracking on the mapped traversal')


def test_reset_service_restarts_the_filter(filtered, tiny_world, stamps):
    frames = _frames(tiny_world)
    following = _track(filtered, frames, stamps)
    fix = _answer(filtered, frames[following], stamps.next())
    assert fix.status.status == NavSatStatus.STATUS_FIX, 'tracking goes on without a reset'
    response = filtered.call_service(Trigger, '/filtered/localize_node/reset', Trigger.Request())
    assert (response.success, response.message) == (
        True, 'place filter reset: relocalizing globally from the next frame')
    fix = _answer(filtered, frames[following + 1], stamps.next())
    assert fix.status.status == NavSatStatus.STATUS_NO_FIX  # initialising again


def test_filter_parameter_change_restarts_the_filter(filtered, tiny_world, stamps):
    frames = _frames(tiny_world)
    assert filtered.call_service(Trigger, '/filtered/localize_node/reset',
                                 Trigger.Request()).success
    following = _track(filtered, frames, stamps)
    assert _set(filtered, '/filtered/localize_node', max_speed_mps=20.0)[0].successful
    fix = _answer(filtered, frames[following], stamps.next())
    assert fix.status.status == NavSatStatus.STATUS_NO_FIX
    assert _get(filtered, '/filtered/localize_node', 'max_speed_mps') == 20.0


def _map_images(client, expected, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        values = client.latest_diagnostics()
        if values.get('map_images') == str(expected):
            return True
        time.sleep(0.1)
    return False


def test_reload_map_reads_map_dir_again_and_keeps_the_old_map_on_failure(
        filtered, nodes, photo_map, tiny_world, stamps):
    map_copy = nodes['map_copy']
    reload_map = '/filtered/localize_node/reload_map'
    response = filtered.call_service(Trigger, reload_map, Trigger.Request())
    assert (response.success, response.message) == (True, f'map {map_copy} reloaded: 24 images')
    shutil.rmtree(map_copy)
    shutil.copytree(photo_map, map_copy)  # another map, same model: 12 images
    response = filtered.call_service(Trigger, reload_map, Trigger.Request())
    assert (response.success, response.message) == (True, f'map {map_copy} reloaded: 12 images')
    assert _map_images(filtered, 12)
    (map_copy / 'manifest.json').write_text('{')
    response = filtered.call_service(Trigger, reload_map, Trigger.Request())
    assert not response.success
    assert response.message.startswith(f'map {map_copy} refused, keeping the loaded map (12 '
                                       f'images): {map_copy / "manifest.json"} is not valid JSON')
    assert _map_images(filtered, 12)
    assert _answer(filtered, _frames(tiny_world)[0], stamps.next(), retries=2) is not None
    assert nodes['filtered'].poll() is None
