"""Publish frames to a running ``localize_node`` and collect what it publishes back.

Used by the demo, the node tests and realtime evaluation: a real rclpy node in
this process talking over ROS 2 to the node in another.
"""

import contextlib
from dataclasses import dataclass, field
import logging
import os
import threading
import time

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, NavSatFix

from vl_attention.data.images import encode_compressed
from vl_attention.ros.conversions import rgb_to_image_msg, stamp_to_ns
from vl_attention.ros.process import (isolated_ros_environment, NodeProcessError,
                                      ROS_ENVIRONMENT_KEYS, start_localize_node, stop_process)

LOG = logging.getLogger(__name__)


@dataclass
class Responses:
    """Messages received from the localizer, keyed by the stamp of the input image (ns)."""

    fixes: dict = field(default_factory=dict)
    poses: dict = field(default_factory=dict)
    received_at: dict = field(default_factory=dict)
    diagnostics: list = field(default_factory=list)


class ReplayClient(Node):
    """Publishes camera frames and records fixes, poses and diagnostics."""

    def __init__(self, *, image_topic='/camera/image_raw', namespace='', compressed=False,
                 qos=None):
        """Publish on ``image_topic`` with ``qos`` (None: sensor data, as the node expects)."""
        super().__init__('vl_attention_replay', namespace=namespace or '/')
        self.compressed = compressed
        topic = f'{image_topic}/compressed' if compressed else image_topic
        self.image_publisher = self.create_publisher(
            CompressedImage if compressed else Image, topic,
            qos if qos is not None else qos_profile_sensor_data)
        prefix = f'/{namespace.strip("/")}' if namespace.strip('/') else ''
        self.localizer_status_name = f'{prefix}/localize_node: visual localization'
        self.responses = Responses()
        self._lock = threading.Lock()
        self.sent_at = {}
        self.fix_topic, self.pose_topic = f'{prefix}/fix', f'{prefix}/pose'
        self.fix_subscription = self.create_subscription(NavSatFix, self.fix_topic,
                                                         self._on_fix, 100)
        self.pose_subscription = self.create_subscription(
            PoseWithCovarianceStamped, self.pose_topic, self._on_pose, 100)
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self)
        self._stop = threading.Event()
        self._spinner = threading.Thread(target=self._spin, daemon=True)
        self._spinner.start()

    def _spin(self):
        # spin_once in a loop that close() stops and joins: shutting the executor down while
        # another thread waits in it can leave that thread spinning on the GIL (seen once in
        # CI, a hung test teardown)
        while not self._stop.is_set() and self.context.ok():
            self._executor.spin_once(timeout_sec=0.05)

    def wait_for_localizer(self, timeout_s=120.0):
        """Block until images reach the localizer and its fixes and poses reach us."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            # all three matched: a message sent before that would be lost. Node.count_publishers
            # rather than Subscription.get_publisher_count, which Humble's rclpy lacks.
            if self.image_publisher.get_subscription_count() > 0 \
                    and self.count_publishers(self.fix_topic) > 0 \
                    and self.count_publishers(self.pose_topic) > 0:
                return True
            time.sleep(0.1)
        return False

    def publish_frame(self, rgb, stamp_ns, frame_id='camera'):
        """Publish one RGB frame stamped ``stamp_ns``."""
        msg = CompressedImage() if self.compressed else Image()
        if self.compressed:
            msg.format = 'jpeg'
            msg.data = encode_compressed(rgb)
        else:
            rgb_to_image_msg(rgb, msg)
        self.publish_message(msg, stamp_ns, frame_id)

    def publish_message(self, msg, stamp_ns, frame_id='camera'):
        """Publish a prepared image message (also malformed ones, for tests)."""
        msg.header.stamp = Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
        msg.header.frame_id = frame_id
        self.sent_at[stamp_ns] = time.perf_counter()
        self.image_publisher.publish(msg)

    def wait_for_response(self, stamp_ns, timeout_s=10.0):
        """Wait until a fix for ``stamp_ns`` arrived; return it or None."""
        return self._wait_for(self.responses.fixes, stamp_ns, timeout_s)

    def wait_for_pose(self, stamp_ns, timeout_s=5.0):
        """Wait until the pose for ``stamp_ns`` arrived; return it or None.

        The node publishes the fix and the pose back to back, on two topics: one can
        arrive before the other.
        """
        return self._wait_for(self.responses.poses, stamp_ns, timeout_s)

    def _wait_for(self, received, stamp_ns, timeout_s):
        """Poll ``received`` (a dict the callbacks fill) for ``stamp_ns``; its value or None."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if stamp_ns in received:
                    return received[stamp_ns]
            time.sleep(0.01)
        return None

    def latency_ms(self, stamp_ns):
        """Time from publishing a frame to receiving its fix, in ms (None if no fix)."""
        with self._lock:
            received = self.responses.received_at.get(stamp_ns)
        sent = self.sent_at.get(stamp_ns)
        return None if received is None or sent is None else (received - sent) * 1e3

    def _on_fix(self, msg):
        with self._lock:
            stamp = stamp_to_ns(msg.header.stamp)
            self.responses.fixes[stamp] = msg
            self.responses.received_at[stamp] = time.perf_counter()

    def _on_pose(self, msg):
        with self._lock:
            self.responses.poses[stamp_to_ns(msg.header.stamp)] = msg

    def _on_diagnostics(self, msg):
        with self._lock:
            self.responses.diagnostics.append(msg)

    def latest_diagnostics(self):
        """Key -> value of the newest localizer diagnostics status (empty if none yet)."""
        with self._lock:
            for array in reversed(self.responses.diagnostics):
                for status in array.status:
                    if status.name == self.localizer_status_name:
                        return {kv.key: kv.value for kv in status.values} | {
                            '_level': int.from_bytes(status.level, 'little')
                            if isinstance(status.level, bytes) else int(status.level),
                            '_message': status.message}
        return {}

    def wait_for_diagnostics(self, predicate, timeout_s=10.0):
        """Return the newest localizer diagnostics once ``predicate(values)`` holds.

        ``values`` as :meth:`latest_diagnostics` gives them; TimeoutError after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            values = self.latest_diagnostics()
            if values and predicate(values):
                return values
            time.sleep(0.05)
        raise TimeoutError(f'diagnostics never satisfied the check: {self.latest_diagnostics()}')

    def call_service(self, service_type, name, request, timeout_s=30.0):
        """Call service ``name`` and return its response (the executor thread completes it)."""
        client = self.create_client(service_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout_s):
                raise TimeoutError(f'no service {name} within {timeout_s} s')
            future = client.call_async(request)
            deadline = time.monotonic() + timeout_s
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.01)
            if not future.done():
                raise TimeoutError(f'{name} did not answer within {timeout_s} s')
            return future.result()
        finally:
            self.destroy_client(client)

    def close(self):
        """Stop spinning (the spinner thread ends first) and destroy the node."""
        self._stop.set()
        self._spinner.join(timeout=5.0)
        self._executor.shutdown()
        self.destroy_node()


@contextlib.contextmanager
def live_localize_node(parameters, *, image_topic, log_path, compressed=False, domain_id=None,
                       start_timeout_s=180.0):
    """Run ``localize_node`` in its own process and yield a :class:`ReplayClient` talking to it.

    Both sit on an isolated ROS domain (localhost only; a random domain id
    unless ``domain_id`` is given, or this process's own when rclpy is already
    running here). The node's image input is remapped to ``image_topic``. On
    exit the client closes, the node is stopped and the environment restored.
    """
    own_context = not rclpy.ok()
    if not own_context:  # this process already talks ROS: the node must join its domain
        domain_id = int(os.environ.get('ROS_DOMAIN_ID', '0'))
    env = isolated_ros_environment(domain_id=domain_id)
    saved = {key: os.environ.get(key) for key in ROS_ENVIRONMENT_KEYS}
    os.environ.update({key: env[key] for key in ROS_ENVIRONMENT_KEYS})
    remapping = (('image/compressed', f'{image_topic}/compressed') if compressed
                 else ('image', image_topic))
    node = start_localize_node(parameters, env=env, log_path=log_path, remappings=[remapping])
    client = None
    try:
        if own_context:
            rclpy.init()
        client = ReplayClient(image_topic=image_topic, compressed=compressed)
        if not client.wait_for_localizer(timeout_s=start_timeout_s) or node.poll() is not None:
            raise NodeProcessError(f'localize_node did not start; see {log_path}')
        yield client
    finally:
        if client is not None:
            client.close()
        if own_context:
            rclpy.try_shutdown()
        exit_code = stop_process(node)
        _restore_environment(saved)
        LOG.info('localize_node exited with code %s (log: %s)', exit_code, log_path)


def _restore_environment(saved):
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
