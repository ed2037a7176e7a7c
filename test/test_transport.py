"""Camera-sized images between two processes: the shipped DDS profiles deliver them.

A publisher process sends 640x480 rgb8 ``sensor_msgs/Image`` at 30 Hz to a
subscriber process that counts distinct frames, with the Fast DDS shared-memory
profile of ``config/dds/fastdds_shm.xml`` in both environments. The same run with
the default transport settings is measured and logged, not asserted: it depends
on the host's socket buffers. Running this file as a script is the helper each
side of the test runs (``publish`` or ``subscribe``).
"""

import argparse
import json
import logging
import os
from pathlib import Path
import random
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree

import pytest

LOGGER = logging.getLogger(__name__)
CONFIG_DDS = Path(__file__).resolve().parents[1] / 'config' / 'dds'
FASTDDS_PROFILE = CONFIG_DDS / 'fastdds_shm.xml'
CYCLONEDDS_PROFILE = CONFIG_DDS / 'cyclonedds_shm.xml'
FRAME_BYTES_1280X720_RGB8 = 1280 * 720 * 3
TOPIC = 'transport_test/image'


def _profile_environment(profile):
    """Variables that make Fast DDS 2.x and 3.x read ``profile`` (None: defaults)."""
    if profile is None:
        return {}
    return {'FASTDDS_DEFAULT_PROFILES_FILE': str(profile),
            'FASTRTPS_DEFAULT_PROFILES_FILE': str(profile),
            'RMW_FASTRTPS_USE_QOS_FROM_XML': '0'}


def _environment(profile):
    from vl_attention.ros.process import isolated_ros_environment
    base = {key: value for key, value in os.environ.items()
            if key not in ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE',
                           'RMW_FASTRTPS_USE_QOS_FROM_XML', 'FASTDDS_BUILTIN_TRANSPORTS')}
    env = isolated_ros_environment(domain_id=random.randint(201, 232), base=base)
    env['RMW_IMPLEMENTATION'] = 'rmw_fastrtps_cpp'
    return dict(env, **_profile_environment(profile))


def measure_delivery(*, profile, qos, width, height, rate_hz, frames, timeout_s=60.0):
    """Run a publisher and a subscriber process; return ``(published, received)``."""
    env = _environment(profile)
    common = ['--qos', qos, '--width', str(width), '--height', str(height),
              '--frames', str(frames)]
    subscriber = subprocess.Popen([sys.executable, __file__, 'subscribe', *common], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    publisher = subprocess.Popen([sys.executable, __file__, 'publish', *common, '--rate-hz',
                                  str(rate_hz)], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    try:
        published_out, published_err = publisher.communicate(timeout=timeout_s)
        received_out, received_err = subscriber.communicate(timeout=timeout_s)
    finally:
        for process in (publisher, subscriber):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert publisher.returncode == 0, published_err[-2000:]
    assert subscriber.returncode == 0, received_err[-2000:]
    published = json.loads(published_out.strip().splitlines()[-1])['published']
    received = json.loads(received_out.strip().splitlines()[-1])['received']
    LOGGER.info('%s %dx%d at %g Hz, profile %s: %d of %d frames arrived', qos, width, height,
                rate_hz, profile.name if profile else 'default', received, published)
    return published, received


@pytest.mark.ros
@pytest.mark.parametrize('qos', ['sensor_data', 'reliable'])
def test_the_shared_memory_profile_delivers_640x480_rgb8_at_30_hz(qos):
    published, received = measure_delivery(profile=FASTDDS_PROFILE, qos=qos, width=640,
                                           height=480, rate_hz=30.0, frames=90)
    assert published == 90
    assert received >= 0.95 * published, f'{received} of {published} frames arrived'
    default_published, default_received = measure_delivery(
        profile=None, qos=qos, width=640, height=480, rate_hz=30.0, frames=90)
    # measured only: with the default transport the loss depends on the socket buffers
    print(f'\n{qos} 640x480 rgb8 at 30 Hz: profile {received}/{published}, default '
          f'{default_received}/{default_published}')


@pytest.mark.ros
def test_the_shared_memory_profile_delivers_1280x720_rgb8():
    published, received = measure_delivery(profile=FASTDDS_PROFILE, qos='sensor_data',
                                           width=1280, height=720, rate_hz=30.0, frames=60)
    assert received >= 0.95 * published, f'{received} of {published} frames arrived'


def test_the_fastdds_profile_gives_shared_memory_room_for_1280x720_rgb8():
    root = ElementTree.parse(FASTDDS_PROFILE).getroot()
    space = {'dds': 'http://www.eprosima.com'}
    descriptors = {d.findtext('dds:transport_id', namespaces=space): d
                   for d in root.iterfind('.//dds:transport_descriptor', space)}
    participant = root.find('.//dds:participant[@is_default_profile="true"]', space)
    used = [t.text for t in participant.iterfind('.//dds:userTransports/dds:transport_id',
                                                 space)]
    assert participant.findtext('.//dds:useBuiltinTransports', namespaces=space) == 'false'
    kinds = {descriptors[name].findtext('dds:type', namespaces=space): descriptors[name]
             for name in used}
    assert set(kinds) == {'SHM', 'UDPv4'}  # UDP stays for discovery and other hosts
    shm = kinds['SHM']
    segment_size = int(shm.findtext('dds:segment_size', namespaces=space))
    assert segment_size == 32 * 1024 * 1024
    assert segment_size // FRAME_BYTES_1280X720_RGB8 == 12  # frames in flight
    assert int(shm.findtext('dds:maxMessageSize', namespaces=space)) >= \
        FRAME_BYTES_1280X720_RGB8 + 1024
    for kind in ('data_writer', 'data_reader'):
        profile = root.find(f'.//dds:{kind}[@is_default_profile="true"]', space)
        assert profile.findtext('.//dds:data_sharing/dds:kind', namespaces=space) == 'OFF'


def test_the_cyclonedds_profile_is_well_formed_with_the_same_room():
    root = ElementTree.parse(CYCLONEDDS_PROFILE).getroot()
    space = {'c': 'https://cdds.io/config'}
    assert root.tag == '{https://cdds.io/config}CycloneDDS'
    domain = root.find('c:Domain', space)
    assert domain.get('id') == 'any'
    receive_buffer = domain.find('c:Internal/c:SocketReceiveBufferSize', space).get('min')
    assert receive_buffer == '32MiB'
    assert 32 * 1024 * 1024 // FRAME_BYTES_1280X720_RGB8 == 12
    assert domain.findtext('c:General/c:MaxMessageSize', namespaces=space) == '65500B'
    assert domain.findtext('c:Internal/c:Watermarks/c:WhcHigh', namespaces=space) == '8MiB'
    # iceoryx shared memory cannot carry sensor_msgs/Image (variable size): not switched on
    assert domain.find('c:SharedMemory', space) is None


def _parse(argv):
    parser = argparse.ArgumentParser(description='one side of the transport test')
    parser.add_argument('role', choices=['publish', 'subscribe'])
    parser.add_argument('--qos', choices=['sensor_data', 'reliable'], required=True)
    parser.add_argument('--width', type=int, required=True)
    parser.add_argument('--height', type=int, required=True)
    parser.add_argument('--frames', type=int, required=True)
    parser.add_argument('--rate-hz', type=float, default=30.0)
    parser.add_argument('--timeout-s', type=float, default=40.0)
    return parser.parse_args(argv)


def _qos(name):
    from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
    if name == 'sensor_data':
        return qos_profile_sensor_data
    return QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def _publish(args, node):
    import numpy as np
    from sensor_msgs.msg import Image
    publisher = node.create_publisher(Image, TOPIC, _qos(args.qos))
    deadline = time.monotonic() + args.timeout_s
    while publisher.get_subscription_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # let the subscriber's side of discovery finish too
    pixels = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), np.uint8)
    message = Image(height=args.height, width=args.width, encoding='rgb8',
                    step=args.width * 3, data=pixels.tobytes())
    period_s, start = 1.0 / args.rate_hz, time.monotonic()
    for number in range(args.frames):
        message.header.frame_id = str(number)
        message.header.stamp = node.get_clock().now().to_msg()
        publisher.publish(message)
        time.sleep(max(0.0, start + (number + 1) * period_s - time.monotonic()))
    if args.qos == 'reliable':
        publisher.wait_for_all_acked(timeout=_duration(5.0))
    time.sleep(1.0)  # best effort: the last frames are still in flight
    return {'published': args.frames}


def _duration(seconds):
    from rclpy.duration import Duration
    return Duration(seconds=seconds)


def _subscribe(args, node):
    import rclpy
    from sensor_msgs.msg import Image
    seen, size_ok = set(), True
    expected_bytes = args.width * args.height * 3

    def on_image(message):
        nonlocal size_ok
        size_ok &= len(message.data) == expected_bytes
        seen.add(message.header.frame_id)

    node.create_subscription(Image, TOPIC, on_image, _qos(args.qos))
    deadline = time.monotonic() + args.timeout_s
    last_change, count = time.monotonic(), 0
    while time.monotonic() < deadline and len(seen) < args.frames:
        rclpy.spin_once(node, timeout_sec=0.05)
        if len(seen) != count:
            last_change, count = time.monotonic(), len(seen)
        if count and time.monotonic() - last_change > 3.0:
            break  # the stream ended; the rest was lost
    return {'received': len(seen) if size_ok else 0}


def main(argv=None):
    """Run one side of the transport test; print its count as one JSON line."""
    import rclpy
    args = _parse(argv)
    rclpy.init()
    node = rclpy.create_node(f'transport_test_{args.role}')
    try:
        result = (_publish if args.role == 'publish' else _subscribe)(args, node)
    finally:
        node.destroy_node()
        rclpy.shutdown()
    sys.stdout.write(json.dumps(result) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
