"""``localize_node``: camera images in, NavSatFix / PoseWithCovarianceStamped / diagnostics out.

A thin adapter: the subscription callback only stores the newest frame; a
worker thread decodes, embeds, searches and publishes, so inference never
blocks the executor and stale frames are dropped (and counted), not queued.

Parameters are checked at start and on every SetParameters request
(:mod:`vl_attention.ros.params`); accepted changes take effect from the next
frame, and those that cannot change live are read-only. Services:
``~/reset`` (std_srvs/Trigger) forgets the place filter's belief,
``~/reload_map`` re-reads ``map_dir`` and keeps the loaded map if the new one
is refused.

Frames (REP 105): the published pose is ``base_frame``'s in ``map_frame``. The
camera's mounting comes from the ``camera_*`` parameters or, with
``camera_extrinsic_source: tf``, from ``/tf_static`` (base_frame -> camera_frame,
composed here: no tf2_ros needed); ``publish_tf`` adds map->odom on ``/tf``.

The subscriptions take QoS overrides (``qos_overrides.<topic>.subscription.reliability``,
``.depth``, ``.history``; the ROS 2 convention, read-only parameters), and with ``rectify``
frames are undistorted with the newest ``camera_info`` (:mod:`vl_attention.ros.rectify`).
"""

import copy
from dataclasses import replace
import sys
import threading
import time
import traceback

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import SetParametersResult
import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, QoSProfile, qos_profile_sensor_data,
                       ReliabilityPolicy)
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, NavSatFix
from std_srvs.srv import Trigger
try:   # a ROS install has it; with the PyPI wheels, setup generates it (build_tf2_msgs.sh)
    from tf2_msgs.msg import TFMessage
except ImportError:
    TFMessage = None

from vl_attention.data.images import ImageDecodeError
from vl_attention.engine.embedder import create_embedder
from vl_attention.engine.preprocess import FrameError
from vl_attention.errors import one_line, VLAttentionError
from vl_attention.localization import health, Localizer
from vl_attention.localization.frames import (camera_in_base, check_mounting, in_map_frame,
                                              map_to_odom, robot_result, StaticTransforms)
from vl_attention.localization.odometry import OdometryBuffer, OdometryConfig, yaw_from_quaternion
from vl_attention.localization.pipeline import LatestFrameSlot, LocalizationStats
from vl_attention.mapping import load_map, read_manifest
from vl_attention.mapping.map_format import poses_frame_of
from vl_attention.ros import conversions
from vl_attention.ros.params import (CAMERA_INFO_TOPIC, CAMERA_MOUNTING_PARAMS,
                                     camera_extrinsic, check_values, COMPRESSED_IMAGE_TOPIC,
                                     declare_parameters, DIAGNOSTICS_TOPIC, embedder_config,
                                     FIX_TOPIC, IMAGE_TOPIC, localizer_config, map_origin,
                                     PARAMS_BY_NAME, ParameterError, POSE_TOPIC,
                                     TF_STATIC_TOPIC, TF_TOPIC, TRACKING_PARAMS,
                                     tracking_config)
from vl_attention.ros.rectify import Rectifier

# What start-up may raise on purpose (bad parameters, maps, backends): one line, exit code 1.
# rclpy's own ParameterException (e.g. a -p value of the wrong type at declare time) is bad
# input too; anything else is a bug and keeps its traceback.
STARTUP_ERRORS = (VLAttentionError, ParameterException)
ODOMETRY_DEPTH = 50
# tf2's /tf_static profile: latched, so a late subscriber still gets every static transform
TF_STATIC_QOS = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                           reliability=ReliabilityPolicy.RELIABLE)


def _overridable_subscription(node, message_type, topic, callback, qos):
    """Subscribe with ``qos`` as the default of the ``qos_overrides.<topic>.*`` parameters.

    A copy is handed over: rclpy writes the overrides into the profile it is given, and
    ``qos_profile_sensor_data`` is shared by the whole process.
    """
    return node.create_subscription(
        message_type, topic, callback, copy.copy(qos),
        qos_overriding_options=QoSOverridingOptions.with_default_policies())


class _LocalizeCore:
    """What both node kinds share: configure (map, model, publishers), activate, deactivate.

    A plain :class:`LocalizeNode` does all three at construction; the
    :class:`LifecycleLocalizeNode` does them on its managed transitions.
    """

    def _init_core(self):
        self.slot = LatestFrameSlot()
        self._worker = None
        self._subscriptions_active = []
        self._diagnostics_timer = None
        self._localizer_lock = threading.Lock()   # the worker's frame vs. swaps and resets
        self.params = declare_parameters(self)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _configure(self):
        self.localizer = self._create_localizer()
        self.stats = LocalizationStats()
        self._odometry_lock = threading.Lock()
        self.odometry = OdometryBuffer(OdometryConfig(max_speed_mps=self.params['max_speed_mps']))
        self._previous_stamp_s = None
        self.last_result = None
        self._calibration = None        # the newest camera_info (rectify), set by its callback
        self.rectifier = None
        self._rectify_problem = ''
        self._tf_lock = threading.Lock()
        self.static_transforms = StaticTransforms()   # /tf_static, set by its callback
        self._extrinsic_problem = ''
        if self.params['camera_extrinsic_source'] == 'tf' and TFMessage is None:
            raise ParameterError('camera_extrinsic_source tf needs tf2_msgs, which is not '
                                 'installed (install ros-<distro>-tf2-msgs, or set the camera_* '
                                 'parameters with camera_extrinsic_source:=parameters)')
        self._create_publishers()
        self.create_service(Trigger, '~/reset', self._on_reset)
        self.create_service(Trigger, '~/reload_map', self._on_reload_map)

    def _activate(self):
        self.slot = LatestFrameSlot()
        self._subscriptions_active = [self._subscribe_images(), self._subscribe_odometry(),
                                      self._subscribe_camera_info(),
                                      self._subscribe_tf_static()]
        self._diagnostics_timer = self.create_timer(float(self.params['diagnostics_period_s']),
                                                    self._publish_diagnostics)
        self._worker = threading.Thread(target=self._work, name='localize_worker', daemon=True)
        self._worker.start()

    def _deactivate(self):
        for subscription in self._subscriptions_active:
            if subscription is not None:
                self.destroy_subscription(subscription)
        self._subscriptions_active = []
        if self._diagnostics_timer is not None:
            self.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = None
        self._stop_worker()

    def _stop_worker(self):
        self.slot.close()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
            self._worker = None

    def _create_localizer(self):
        map_dir = self.params['map_dir']
        if not map_dir:
            raise ParameterError('parameter map_dir is empty; set it to a map built with '
                                 '`vl-attention build-map` (e.g. -p map_dir:=/path/to/map)')
        # a missing or foreign map, or one the mounting contradicts, fails before the model
        # loads (~8 s)
        _check_mounting(read_manifest(map_dir), self.params)
        embedder = create_embedder(embedder_config(self.params, map_dir))
        map_ = load_map(map_dir, expected_fingerprint=embedder.fingerprint)
        self.get_logger().info(
            f'map {map_dir}: {map_.manifest.count} images, model {embedder.card.model_name} '
            f'({embedder.fingerprint}) on {embedder.backend_description}')
        localizer = self._localizer_for(map_, embedder, self.params)
        if localizer.refinement_note:
            self.get_logger().info(localizer.refinement_note)
        return localizer

    @staticmethod
    def _localizer_for(map_, embedder, values):
        return Localizer(map_, embedder=embedder, config=localizer_config(values),
                         tracking=tracking_config(values))

    def _on_set_parameters(self, parameters):
        """Check a SetParameters request against every rule; apply it or refuse it whole."""
        changes = {param.name: param.value for param in parameters
                   if param.name in PARAMS_BY_NAME}
        if not changes:
            return SetParametersResult(successful=True)
        try:
            values = check_values(self.params | changes)
            if getattr(self, 'localizer', None) is not None:   # a lifecycle node: configured
                _check_mounting(self.localizer.map.manifest, values)
            self._apply(values, set(changes))
        except VLAttentionError as error:   # ParameterError, or a config the values make
            self.get_logger().warning(f'parameters refused: {error}')
            return SetParametersResult(successful=False, reason=str(error))
        self.get_logger().info('parameters set: ' + ', '.join(
            f'{name}={values[name]!r}' for name in sorted(changes)))
        return SetParametersResult(successful=True)

    def _apply(self, values, changed):
        """Make accepted values take effect (the next frame sees them)."""
        config = localizer_config(values)
        if getattr(self, 'localizer', None) is None:   # an unconfigured lifecycle node
            self.params = values                       # configure reads them
            return
        if changed & set(TRACKING_PARAMS):
            localizer = self._localizer_for(self.localizer.map, self.localizer.embedder, values)
            with self._odometry_lock:
                self.odometry.config = replace(self.odometry.config,
                                               max_speed_mps=values['max_speed_mps'])
            with self._localizer_lock:
                self.localizer = localizer  # a new filter: it relocalizes from the next frame
        else:
            with self._localizer_lock:
                self.localizer.config = config
        if 'diagnostics_period_s' in changed:
            self.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = self.create_timer(values['diagnostics_period_s'],
                                                        self._publish_diagnostics)
        self.params = values

    def _on_reset(self, request, response):
        with self._localizer_lock:
            self.localizer.reset()
        response.success = True
        response.message = ('place filter reset: relocalizing globally from the next frame'
                            if self.localizer.place_filter is not None else
                            'no place filter runs (use_filter is false); every frame is '
                            'localized on its own')
        self.get_logger().info(response.message)
        return response

    def _on_reload_map(self, request, response):
        map_dir, old = self.params['map_dir'], self.localizer
        try:
            map_ = load_map(map_dir, expected_fingerprint=old.embedder.fingerprint)
            _check_mounting(map_.manifest, self.params)
            localizer = self._localizer_for(map_, old.embedder, self.params)
        except Exception as error:  # whatever is wrong with the new map, keep the running one
            response.success = False
            response.message = (f'map {map_dir} refused, keeping the loaded map '
                                f'({old.map.manifest.count} images): ' + one_line(error))
            # an expected refusal (a damaged or foreign map) is one line; a bug keeps its
            # traceback in the log
            self.get_logger().error(response.message if isinstance(error, VLAttentionError)
                                    else f'{response.message}\n{traceback.format_exc()}')
            return response
        with self._localizer_lock:
            self.localizer = localizer
        response.success = True
        response.message = f'map {map_dir} reloaded: {map_.manifest.count} images'
        self.get_logger().info(response.message)
        return response

    def _create_tf_publisher(self):
        if not self.params['publish_tf']:
            return None
        if TFMessage is None:
            self.get_logger().warning('publish_tf is set but tf2_msgs is not installed; '
                                      'map->odom is not published (install ros-<distro>-tf2-msgs)')
            return None
        if not self.params['odom_topic']:
            raise ParameterError('publish_tf needs odom_topic: map->odom is computed from '
                                 'odometry (-p odom_topic:=/odom)')
        return self.create_publisher(TFMessage, TF_TOPIC, 10)

    def _create_publishers(self):
        self.fix_publisher = self.create_publisher(NavSatFix, FIX_TOPIC, 10)
        self.pose_publisher = self.create_publisher(PoseWithCovarianceStamped, POSE_TOPIC, 10)
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC,
                                                           10)
        self.tf_publisher = self._create_tf_publisher()

    def _subscribe_images(self):
        transport = self.params['image_transport']
        if transport not in ('raw', 'compressed'):
            raise ParameterError(f"image_transport must be 'raw' or 'compressed', got "
                                 f'{transport!r}')
        message_type, topic = (Image, IMAGE_TOPIC) if transport == 'raw' \
            else (CompressedImage, COMPRESSED_IMAGE_TOPIC)
        subscription = _overridable_subscription(self, message_type, topic, self._on_image,
                                                 qos_profile_sensor_data)
        self.get_logger().info(f'listening for {message_type.__name__} on '
                               f'{self.resolve_topic_name(topic)}')
        return subscription

    def _subscribe_odometry(self):
        topic = self.params['odom_topic']
        if not topic:
            return None
        self.get_logger().info(f'odometry from {self.resolve_topic_name(topic)}')
        return _overridable_subscription(self, Odometry, topic, self._on_odometry,
                                         QoSProfile(depth=ODOMETRY_DEPTH))

    def _subscribe_camera_info(self):
        if not self.params['rectify']:
            return None
        topic = self.resolve_topic_name(CAMERA_INFO_TOPIC)
        self.rectifier = Rectifier(source=topic)
        self.get_logger().info(f'rectify: undistorting frames with CameraInfo from {topic}')
        return _overridable_subscription(self, CameraInfo, CAMERA_INFO_TOPIC,
                                         self._on_camera_info, qos_profile_sensor_data)

    def _on_camera_info(self, msg):
        self._calibration = conversions.camera_info_to_calibration(msg)  # the worker reads it

    def _rectify(self, frame):
        """Undistort ``frame`` with the newest camera_info (unchanged when it cannot be)."""
        frame = self.rectifier(frame, self._calibration)
        problem = self.rectifier.state.problem
        if problem and problem != self._rectify_problem:  # once per new reason, not per frame
            self.get_logger().warning(f'rectify: {problem}')
        self._rectify_problem = problem
        return frame

    def _subscribe_tf_static(self):
        if self.params['camera_extrinsic_source'] != 'tf':
            return None
        self.get_logger().info(f"camera extrinsic: {self.params['base_frame']} -> "
                               f"{self.params['camera_frame'] or '<image frame_id>'} from "
                               f'{TF_STATIC_TOPIC}')
        return self.create_subscription(TFMessage, TF_STATIC_TOPIC, self._on_tf_static,
                                        TF_STATIC_QOS)

    def _on_tf_static(self, msg):
        with self._tf_lock:
            for transform in msg.transforms:
                try:
                    self.static_transforms.set(transform.header.frame_id,
                                               transform.child_frame_id,
                                               conversions.transform_to_pose(transform.transform))
                except VLAttentionError as error:
                    self.get_logger().warning(f'{TF_STATIC_TOPIC}: {error}',
                                              throttle_duration_sec=5.0)

    def _base_T_camera(self, image_frame_id):
        """Return the camera body frame in base_frame (None while /tf_static lacks it)."""
        if self.params['camera_extrinsic_source'] != 'tf':
            return camera_extrinsic(self.params).pose()
        base, camera = self.params['base_frame'], self.params['camera_frame'] or image_frame_id
        with self._tf_lock:
            try:
                base_T_frame = self.static_transforms.lookup(base, camera)
                problem = ''
            except VLAttentionError as error:   # a loop in the published transforms
                base_T_frame, problem = None, str(error)
            if base_T_frame is None and not problem:   # the frame list only when it is missing
                known = ', '.join(self.static_transforms.frames()) or 'none yet'
                problem = (f'no transform {base} -> {camera!r} on {TF_STATIC_TOPIC} (frames: '
                           f'{known}); no pose is published until it arrives')
        if problem and problem != self._extrinsic_problem:   # once per new reason
            self.get_logger().warning(f'camera extrinsic: {problem}')
        self._extrinsic_problem = problem
        if base_T_frame is None:
            return None
        return camera_in_base(base_T_frame, camera, self.params['camera_frame_convention'])

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
        slot = self.slot
        while rclpy.ok() and not slot.closed:
            item = self.slot.take(timeout_s=0.5)
            if item is not None:
                self._process(*item)

    def _process(self, msg, received_at):
        try:
            frame = conversions.image_to_rgb(
                msg, max_image_pixels=int(self.params['max_image_pixels']))
            if self.rectifier is not None:
                frame = self._rectify(frame)
            stamp_s = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            with self._localizer_lock:
                result = self.localizer.localize(frame, stamp_s=stamp_s,
                                                 motion=self._motion(stamp_s))
        except ImageDecodeError as error:
            self._reject(error, error)
            return
        except FrameError as error:
            self._reject(error, error, reason='bad_frame')
            return
        except Exception as error:  # a bug must not kill the worker: log its traceback, go on
            self.stats.on_rejected(f'internal error: {error!r}', reason='internal_error')
            self.get_logger().error(f'frame failed: {error!r}\n{traceback.format_exc()}',
                                    throttle_duration_sec=5.0)
            return
        self.stats.on_result(result, (time.perf_counter() - received_at) * 1e3)
        self.last_result = result
        self._publish(result, msg.header)

    def _reject(self, error, message, **reason):
        self.stats.on_rejected(error, **reason)
        self.get_logger().warning(f'rejected frame: {message}', throttle_duration_sec=5.0)

    def _publish(self, result, image_header):
        base_T_camera = self._base_T_camera(image_header.frame_id)
        if base_T_camera is None:
            return
        result = in_map_frame(robot_result(result, base_T_camera,
                                           self.localizer.map.manifest.geodetic_origin),
                              map_origin(self.params))
        fix_header = type(image_header)(stamp=image_header.stamp,
                                        frame_id=self.params['navsat_frame_id']
                                        or image_header.frame_id)
        if self.params['publish_navsatfix'] and (result.ok or self.params['publish_no_fix']):
            self.fix_publisher.publish(conversions.result_to_navsatfix(result, fix_header))
        if self.params['publish_pose'] and result.ok:
            pose_header = type(image_header)(stamp=image_header.stamp,
                                             frame_id=self.params['map_frame'])
            self.pose_publisher.publish(conversions.result_to_pose(result, pose_header))
        if self.tf_publisher is not None and result.ok:
            self._publish_map_to_odom(result, image_header)

    def _publish_map_to_odom(self, result, image_header):
        stamp_s = image_header.stamp.sec + image_header.stamp.nanosec * 1e-9
        with self._odometry_lock:
            base_in_odom = self.odometry.pose_at(stamp_s)
        if base_in_odom is None:
            return
        correction = map_to_odom((result.position_enu_m, result.orientation_xyzw), base_in_odom)
        header = type(image_header)(stamp=image_header.stamp, frame_id=self.params['map_frame'])
        self.tf_publisher.publish(TFMessage(transforms=[conversions.pose_to_transform(
            correction, header, self.params['odom_frame'])]))

    def _publish_diagnostics(self):
        try:
            config, problems = health.health_config(self.params), []
        except VLAttentionError as error:  # e.g. max_rate_hz below min_rate_hz at run time
            config, problems = health.HealthConfig(), [f'{error}; using the defaults']
        snapshot = self.stats.snapshot(dropped=self.slot.dropped, window_s=config.window_s)
        assessment = health.assess(snapshot, time.monotonic(), config)
        embedder = self.localizer.embedder
        static_values = {'backend': embedder.backend_name,
                         'backend_description': embedder.backend_description,
                         'model': embedder.card.model_name,
                         'model_fingerprint': embedder.fingerprint,
                         'map_images': self.localizer.map.manifest.count}
        static_values.update(_tracking_values(self.last_result, self.localizer))
        static_values['rectification'] = 'off' if self.rectifier is None \
            else self.rectifier.state.note
        if self.rectifier is not None and self.rectifier.state.problem:
            problems.append(f'rectify: {self.rectifier.state.problem}')
        static_values['camera_extrinsic'] = self.params['camera_extrinsic_source']
        if self._extrinsic_problem:
            problems.append(f'camera extrinsic: {self._extrinsic_problem}')
        self.diagnostics_publisher.publish(conversions.stats_to_diagnostics(
            snapshot, name=f'{self.get_fully_qualified_name()}: visual localization',
            hardware_id=self.params['map_dir'], stamp=self.get_clock().now().to_msg(),
            static_values=static_values, assessment=assessment,
            warn_reason='; '.join(problems)))

    def destroy_node(self):
        """Stop the worker (if it started) before tearing the node down."""
        if hasattr(self, 'slot'):
            self._stop_worker()
        return super().destroy_node()


class LocalizeNode(_LocalizeCore, Node):
    """Visual localization against a prebuilt map (``ros2 run``: configured and active at once)."""

    def __init__(self, **node_kwargs):
        super().__init__('localize_node', **node_kwargs)
        try:
            self._init_core()
            self._configure()
            self._activate()
        except BaseException:
            self.destroy_node()  # a half-built node still releases what it created
            raise


class LifecycleLocalizeNode(_LocalizeCore, LifecycleNode):
    """The same node, managed (REP 2002): configure loads the map and model, activate subscribes.

    Parameters are declared (and checked) at construction, so they can be set
    before ``configure``; a failed ``configure`` returns FAILURE with one line
    in the log and the node stays unconfigured.
    """

    def __init__(self, **node_kwargs):
        super().__init__('localize_node', **node_kwargs)
        self._init_core()

    def on_configure(self, state):
        """Load the map and its model; create the publishers and services."""
        try:
            self._configure()
        except STARTUP_ERRORS as error:
            self.get_logger().error('configure failed: ' + one_line(error))
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state):
        """Subscribe to the camera (and odometry) and start the worker."""
        self._activate()
        return super().on_activate(state)

    def on_deactivate(self, state):
        """Stop listening; the map and model stay loaded."""
        self._deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state):
        """Drop the map and model."""
        self.localizer = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state):
        """Stop everything."""
        self._deactivate()
        return TransitionCallbackReturn.SUCCESS


def _check_mounting(manifest, values):
    """Refuse a camera mounting in ``values`` on a map whose poses already hold it (base)."""
    check_mounting(poses_frame_of(manifest.build), _mounting(values))


def _mounting(values):
    """Describe the camera mounting ``values`` apply ('' when none: camera = base)."""
    if values['camera_extrinsic_source'] == 'tf':
        return 'camera_extrinsic_source:=tf'
    return ', '.join(f'{name}={values[name]}' for name in CAMERA_MOUNTING_PARAMS
                     if values[name] != 0.0)


def _tracking_values(result, localizer):
    """Filter state, pose source, inliers, refinement note and why no fix, for diagnostics."""
    values = {'filter': 'on' if localizer.place_filter is not None else 'off',
              'refinement': 'on' if localizer.refiner is not None else
              (localizer.refinement_note or 'off')}
    if result is not None:
        values |= {'filter_state': result.filter_state or 'none',
                   'pose_source': result.pose_source, 'inliers': result.inliers,
                   'motion': result.motion_source or 'none',
                   'last_refinement_failure': result.refinement or 'none',
                   'no_fix_reason': 'none' if result.ok else (result.reason or 'none')}
    return values


def main(args=None, *, node_class=None):
    """Entry point of ``localize_node`` (``ros2 run vl_attention localize_node``).

    Returns 1 after one line on stderr when start-up fails on purpose (a bad
    parameter, map or backend); 0 after Ctrl-C.
    """
    try:
        rclpy.init(args=args)
    except KeyboardInterrupt:
        rclpy.try_shutdown()
        return 0
    except _rclpy.RCLError as error:  # rcl refuses malformed --ros-args (e.g. `-p name:=`)
        print('localize_node: ' + one_line(error), file=sys.stderr)
        return 1
    try:
        node = (node_class or LocalizeNode)()
    except (KeyboardInterrupt, ExternalShutdownException):
        rclpy.try_shutdown()
        return 0
    except STARTUP_ERRORS as error:
        print('localize_node: ' + one_line(error), file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def lifecycle_main(args=None):
    """Entry point of ``localize_lifecycle_node``: the managed node, unconfigured at start."""
    return main(args, node_class=LifecycleLocalizeNode)


if __name__ == '__main__':
    sys.exit(main())
