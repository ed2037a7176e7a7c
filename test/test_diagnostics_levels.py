"""/diagnostics levels of a real localize_node process, driven over ROS 2 from this one.

OK while frames flow, STALE after the camera stops, WARN when the frames are bad.
"""

import time

import cv2
from diagnostic_msgs.msg import DiagnosticStatus
import pytest
from sensor_msgs.msg import Image

from vl_attention.localization import health
from vl_attention.mapping import read_poses_csv
from vl_attention.ros.params import NODE_PARAMS
from vl_attention.ros.process import start_localize_node, stop_process
from vl_attention.ros.replay import ReplayClient

pytestmark = pytest.mark.ros
PERIOD_S, STALE_AFTER_S, WINDOW_S, RATE_HZ = 0.5, 3.0, 3.0, 5.0
HEALTH_PARAMS = {'diagnostics_period_s': PERIOD_S, 'stale_after_s': STALE_AFTER_S,
                 'health_window_s': WINDOW_S, 'min_rate_hz': 2.0, 'max_rate_hz': 50.0,
                 'max_rejected_ratio': 0.2}


def test_levels_are_diagnostic_msgs_levels_and_param_defaults_match():
    assert [bytes([level]) for level in (health.OK, health.WARN, health.ERROR, health.STALE)] \
        == [DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR,
            DiagnosticStatus.STALE]
    defaults = {param.name: param.default for param in NODE_PARAMS}
    assert health.health_config(defaults) == health.HealthConfig()


@pytest.fixture(scope='module')
def live(ros_env, tiny_map, export_cache, tmp_path_factory):
    """Start the node (single-frame mode, fast diagnostics) and a client that talks to it."""
    log = tmp_path_factory.mktemp('diagnostics_node') / 'node.log'
    parameters = {'map_dir': str(tiny_map), 'cache_dir': str(export_cache), 'backend': 'auto',
                  'use_filter': False, 'refine': False} | HEALTH_PARAMS
    process = start_localize_node(parameters, env=ros_env, log_path=log,
                                  remappings=[('image', '/camera/image_raw')])
    client = ReplayClient(image_topic='/camera/image_raw')
    try:
        assert client.wait_for_localizer(120.0), log.read_text()
        yield client, process, log
    finally:
        client.close()
        assert stop_process(process) == 0, log.read_text()[-2000:]


def _frames(world, count):
    columns = read_poses_csv(world / 'map_day' / 'poses.csv')
    return [cv2.cvtColor(cv2.imread(str(world / 'map_day' / 'images' / name)),
                         cv2.COLOR_BGR2RGB) for name in columns['image'][:count]]


def _bad_image(rgb):
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding='nv21', step=rgb.shape[1])
    msg.data = bytes(rgb.shape[0] * rgb.shape[1])
    return msg


def _stream_until(client, publish, predicate, timeout_s):
    """Publish at RATE_HZ until the newest localizer status satisfies ``predicate``."""
    deadline, index = time.monotonic() + timeout_s, 0
    while time.monotonic() < deadline:
        publish(index)
        index += 1
        end = time.monotonic() + 1.0 / RATE_HZ
        while time.monotonic() < end:
            values = client.latest_diagnostics()
            if values and predicate(values):
                return values
            time.sleep(0.02)
    raise AssertionError(f'never reached the expected status: {client.latest_diagnostics()}')


def _status(client):
    with client._lock:
        arrays = list(client.responses.diagnostics)
    return next(status for array in reversed(arrays) for status in array.status
                if status.name == client.localizer_status_name)


def test_ok_while_frames_flow_then_stale_then_warn_for_bad_frames(live, tiny_world, tiny_map):
    client, process, log = live
    frames = _frames(tiny_world, 6)

    def good(index):
        client.publish_frame(frames[index % len(frames)], 20_000_000_000 + index * 200_000_000)

    ok = _stream_until(client, good, lambda v: v['_level'] == health.OK, timeout_s=30.0)
    assert ok['_message'] == 'localizing' and int(ok['frames_localized']) > 0
    assert 2.0 <= float(ok['image_rate_hz']) <= 50.0 and ok['level'] == 'OK'
    status = _status(client)
    assert status.name == '/localize_node: visual localization'
    assert status.hardware_id == str(tiny_map)

    stopped_at = time.monotonic()          # the camera stops
    while time.monotonic() < stopped_at + STALE_AFTER_S + PERIOD_S + 1.5:
        values = client.latest_diagnostics()
        if values['_level'] == health.STALE:
            break
        time.sleep(0.02)
    stale_after_s = time.monotonic() - stopped_at
    assert values['_level'] == health.STALE, f'not STALE {stale_after_s:.1f} s after the stop: ' \
        f'{values}'
    assert values['_message'].startswith('no image for ') and values['level'] == 'STALE'
    assert stale_after_s >= STALE_AFTER_S - 0.3, 'STALE came before stale_after_s'
    assert float(values['image_age_s']) >= STALE_AFTER_S

    bad = _bad_image(frames[0])
    warned = _stream_until(
        client, lambda index: client.publish_message(bad, 30_000_000_000 + index),
        lambda v: v['_level'] == health.WARN and 'rejected' in v['_message'], timeout_s=15.0)
    assert float(warned['window_rejected_ratio']) > 0.2
    assert 'frames rejected in the last 3 s (max 20%)' in warned['_message']
    assert int(warned['rejected_bad_encoding']) > 0 and process.poll() is None, log.read_text()
