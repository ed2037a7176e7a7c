"""``localize_node``: camera images in, NavSatFix / PoseWithCovarianceStamped / diagnostics out.

A thin adapter: the subscription callback only stores the newest frame; a
worker thread decodes, embeds, searches and publishes, so inference never
blocks the executor and stale frames are dropped (and counted), not queued.
"""

import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, NavSatFix

from vl_attention.data.images import ImageDecodeError
from vl_attention.engine.embedder import create_embedder
from vl_attention.engine.preprocess import FrameError
from vl_attention.localization import Localizer
from vl_attention.localization.odometry import OdometryBuffer, OdometryConfig, yaw_from_quaternion
from vl_attention.localization.pipeline import LatestFrameSlot, LocalizationStats
from vl_attention.mapping import load_map
from vl_attention.ros import conversions
from vl_attention.ros.params import (declare_parameters, embedder_config, localizer_config,
                                     tracking_config)


class LocalizeNode(Node):
    """Visual localization against a prebuilt map."""

    def __init__(self, **node_kwargs):
        super().__init__('localize_node', **node_kwargs)
        self.params = declare_parameters(self)
        self.localizer = self._create_localizer()
        self.slot = LatestFrameSlot()
        self.stats = LocalizationStats()
        self._odometry_lock = threading.Lock()
        self.odometry = OdometryBuffer(OdometryConfig(max_speed_mps=self.params['max_speed_mps']))
        self._previous_stamp_s = None
        self.last_result = None
        self._create_publishers()
        self._subscribe_images()
        self._subscribe_odometry()
        self.create_timer(float(self.params['diagnostics_period_s']), self._publish_diagnostics)
        self._worker = threading.Thread(target=self._work, name='localize_worker', daemon=True)
        self._worker.start()

    def _create_localizer(self):
        map_dir = self.params['map_dir']
        if not map_dir:
            raise ValueError('parameter map_dir is empty; set it to a map built with '
                             '`vl-attention build-map` (e.g. -p map_dir:=/path/to/map)')
        embedder = create_embedder(embedder_config(self.params))
        map_ = load_map(map_dir, expected_fingerprint=embedder.fingerprint)
        self.get_logger().info(
            f'map {map_dir}: {map_.manifest.count} images, model {embedder.card.model_name} '
            f'({embedder.fingerprint}) on {embedder.backend_description}')
        localizer = Localizer(map_, embedder=embedder, config=localizer_config(self.params),
                              tracking=tracking_config(self.params))
        if localizer.refinement_note:
            self.get_logger().info(localizer.refinement_note)
        return localizer

    def _create_publishers(self):
        self.fix_publisher = self.create_publisher(NavSatFix, 'fix', 10)
        self.pose_publisher = self.create_publisher(PoseWithCovarianceStamped, 'pose', 10)
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, '/diagnostics', 10)

    def _subscribe_images(self):
        transport = self.params['image_transport']
        if transport not in ('raw', 'compressed'):
            raise ValueError(f"image_transport must be 'raw' or 'compressed', got {transport!r}")
        message_type, topic = (Image, 'image') if transport == 'raw' \
            else (CompressedImage, 'image/compressed')
        self.create_subscription(message_type, topic, self._on_image, qos_profile_sensor_data)
        self.get_logger().info(f'listening for {message_type.__name__} on '
                               f'{self.resolve_topic_name(topic)}')

    def _subscribe_odometry(self):
        topic = self.params['odom_topic']
        if topic:
            self.create_subscription(Odometry, topic, self._on_odometry, 50)
            self.get_logger().info(f'odometry from {self.resolve_topic_name(topic)}')

    def _on_odometry(self, msg):
        pose = msg.pose.pose
        stamp_s = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        yaw = yaw_from_quaternion(pose.orientation.x, pose.orientation.y, pose.orientation.z,
                                  pose.orientation.w)
        with self._odometry_lock:
            problem = self.odometry.add(stamp_s, pose.position.x, pose.position.y, yaw)
        if problem:
            self.get_logger().warning(problem, throttle_duration_sec=5.0)

    def _motion(self, stamp_s):
        previous, self._previous_stamp_s = self._previous_stamp_s, stamp_s
        if not self.params['odom_topic'] or previous is None:
            return None
        with self._odometry_lock:
            return self.odometry.motion(previous, stamp_s)

    def _on_image(self, msg):
        self.stats.on_received()
        self.slot.put((msg, time.perf_counter()))

    def _work(self):
        while rclpy.ok():
            item = self.slot.take(timeout_s=0.5)
            if item is not None:
                self._process(*item)

    def _process(self, msg, received_at):
        try:
            frame = conversions.image_to_rgb(
                msg, max_image_pixels=int(self.params['max_image_pixels']))
            stamp_s = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            result = self.localizer.localize(frame, stamp_s=stamp_s,
                                             motion=self._motion(stamp_s))
        except ImageDecodeError as error:
            self._reject(error, error)
            return
        except FrameError as error:
            self._reject(error, error, reason='bad_frame')
            return
        except Exception as error:  # a bug must not kill the worker: report and go on
            self.stats.on_rejected(f'internal error: {error!r}', reason='internal_error')
            self.get_logger().error(f'frame failed: {error!r}', throttle_duration_sec=5.0)
            return
        self.stats.on_result(result, (time.perf_counter() - received_at) * 1e3)
        self.last_result = result
        self._publish(result, msg.header)

    def _reject(self, error, message, **reason):
        self.stats.on_rejected(error, **reason)
        self.get_logger().warning(f'rejected frame: {message}', throttle_duration_sec=5.0)

    def _publish(self, result, image_header):
        fix_header = type(image_header)(stamp=image_header.stamp,
                                        frame_id=self.params['navsat_frame_id']
                                        or image_header.frame_id)
        if self.params['publish_navsatfix'] and (result.ok or self.params['publish_no_fix']):
            self.fix_publisher.publish(conversions.result_to_navsatfix(result, fix_header))
        if self.params['publish_pose'] and result.ok:
            pose_header = type(image_header)(stamp=image_header.stamp,
                                             frame_id=self.params['frame_id'])
            self.pose_publisher.publish(conversions.result_to_pose(result, pose_header))

    def _publish_diagnostics(self):
        snapshot = self.stats.snapshot(dropped=self.slot.dropped)
        embedder = self.localizer.embedder
        static_values = {'backend': embedder.backend_name,
                         'backend_description': embedder.backend_description,
                         'model': embedder.card.model_name,
                         'model_fingerprint': embedder.fingerprint,
                         'map_images': self.localizer.map.manifest.count}
        static_values.update(_tracking_values(self.last_result, self.localizer))
        self.diagnostics_publisher.publish(conversions.stats_to_diagnostics(
            snapshot, name=f'{self.get_fully_qualified_name()}: visual localization',
            hardware_id=self.params['map_dir'], stamp=self.get_clock().now().to_msg(),
            static_values=static_values))

    def destroy_node(self):
        """Stop the worker before tearing the node down."""
        self.slot.close()
        self._worker.join(timeout=5.0)
        return super().destroy_node()


def _tracking_values(result, localizer):
    """Filter state, pose source, inliers and refinement note for diagnostics."""
    values = {'filter': 'on' if localizer.place_filter is not None else 'off',
              'refinement': 'on' if localizer.refiner is not None else
              (localizer.refinement_note or 'off')}
    if result is not None:
        values |= {'filter_state': result.filter_state or 'none',
                   'pose_source': result.pose_source, 'inliers': result.inliers,
                   'last_refinement_failure': result.refinement or 'none'}
    return values


def main(args=None):
    """Entry point of ``localize_node`` (``ros2 run vl_attention localize_node``)."""
    rclpy.init(args=args)
    node = None
    try:
        node = LocalizeNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValueError, RuntimeError, OSError) as error:  # startup: one clear line
        print(f'localize_node: {error}', file=sys.stderr)
        return 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
