"""ROS message <-> numpy / library types. The only module that knows message layouts."""

import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseWithCovarianceStamped, TransformStamped
import numpy as np
from sensor_msgs.msg import CompressedImage, NavSatFix, NavSatStatus

from vl_attention.data.images import decode_compressed, decode_raw, DEFAULT_MAX_IMAGE_PIXELS
from vl_attention.localization import health
from vl_attention.ros.rectify import Calibration


def image_to_rgb(msg, *, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """Decode ``sensor_msgs/Image`` or ``CompressedImage`` to RGB ``uint8 (H, W, 3)``.

    Raises ``ImageDecodeError`` (with a ``reason`` key) for anything it refuses, including
    images whose declared width x height exceeds ``max_image_pixels``.
    """
    if isinstance(msg, CompressedImage):
        return decode_compressed(format=msg.format, data=msg.data,
                                 max_image_pixels=max_image_pixels)
    return decode_raw(encoding=msg.encoding, height=msg.height, width=msg.width,
                      step=msg.step, data=memoryview(msg.data).cast('B'),
                      is_bigendian=bool(msg.is_bigendian), max_image_pixels=max_image_pixels)


def camera_info_to_calibration(msg):
    """Return the rectify :class:`~vl_attention.ros.rectify.Calibration` of a CameraInfo."""
    return Calibration(width=int(msg.width), height=int(msg.height),
                       distortion_model=str(msg.distortion_model),
                       d=tuple(float(v) for v in msg.d), k=tuple(float(v) for v in msg.k),
                       r=tuple(float(v) for v in msg.r), p=tuple(float(v) for v in msg.p))


def result_to_navsatfix(result, header):
    """Convert a result to NavSatFix; no fix gives ``STATUS_NO_FIX``, unknown covariance."""
    msg = NavSatFix()
    msg.header = header
    msg.status.service = 0
    if not result.ok:
        msg.status.status = NavSatStatus.STATUS_NO_FIX
        msg.latitude = msg.longitude = msg.altitude = float('nan')
        msg.position_covariance_type = NavSatFix.COVARIANCE_TYPE_UNKNOWN
        return msg
    msg.status.status = NavSatStatus.STATUS_FIX
    msg.latitude = result.latitude_deg
    msg.longitude = result.longitude_deg
    msg.altitude = result.altitude_m
    # NavSatFix covariance is expressed in the local ENU tangent plane, as ours is.
    msg.position_covariance = [float(v) for v in result.position_covariance_m2.reshape(-1)]
    msg.position_covariance_type = NavSatFix.COVARIANCE_TYPE_KNOWN
    return msg


def result_to_pose(result, header):
    """Convert a result with a fix to PoseWithCovarianceStamped (ENU map frame)."""
    msg = PoseWithCovarianceStamped()
    msg.header = header
    position = msg.pose.pose.position
    position.x, position.y, position.z = (float(v) for v in result.position_enu_m)
    orientation = msg.pose.pose.orientation
    orientation.x, orientation.y, orientation.z, orientation.w = (
        float(v) for v in result.orientation_xyzw)
    msg.pose.covariance = [float(v) for v in result.pose_covariance().reshape(-1)]
    return msg


def stats_to_diagnostics(snapshot, *, name, hardware_id, stamp, static_values, assessment=None,
                         warn_reason=''):
    """Build a DiagnosticArray with one status summarising the localizer.

    One combined status (diagnostic_updater's ``<node>: <task>`` name, the map as
    ``hardware_id``): its level and message are ``assessment`` (from
    :func:`vl_attention.localization.health.assess`; computed now with the default
    thresholds when omitted), merged with a WARN ``warn_reason`` if one is given.
    """
    if assessment is None:
        assessment = health.assess(snapshot, time.monotonic())
    level, message = health.merge_summaries(
        [(assessment.level, assessment.message)] + ([(health.WARN, warn_reason)]
                                                    if warn_reason else []))
    status = DiagnosticStatus(name=name, hardware_id=hardware_id, level=bytes([level]),
                              message=message)
    values = {
        'frames_received': snapshot.frames_received,
        'frames_localized': snapshot.frames_localized,
        'frames_no_fix': snapshot.frames_no_fix,
        'frames_rejected': snapshot.frames_rejected,
        'frames_dropped': snapshot.frames_dropped,
        'rate_hz': f'{snapshot.rate_hz:.2f}',
        'latency_ms_p50': f'{snapshot.latency_ms_p50:.1f}',
        'latency_ms_p95': f'{snapshot.latency_ms_p95:.1f}',
        'confidence': f'{snapshot.last_confidence:.3f}',
        'last_error': snapshot.last_error,
    }
    values.update({f'rejected_{reason}': count
                   for reason, count in sorted(snapshot.rejected_by_reason.items())})
    values.update(assessment.key_values)
    values.update(static_values)
    status.values = [KeyValue(key=key, value=str(value)) for key, value in values.items()]
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status = [status]
    return array


def pose_to_transform(pose, header, child_frame_id):
    """``geometry_msgs/TransformStamped`` of a ``(position, quaternion xyzw)`` pose."""
    msg = TransformStamped()
    msg.header = header
    msg.child_frame_id = child_frame_id
    translation, rotation = msg.transform.translation, msg.transform.rotation
    translation.x, translation.y, translation.z = (float(v) for v in pose[0])
    rotation.x, rotation.y, rotation.z, rotation.w = (float(v) for v in pose[1])
    return msg


def transform_to_pose(transform):
    """``(position, quaternion xyzw)`` of a ``geometry_msgs/Transform``."""
    translation, rotation = transform.translation, transform.rotation
    return (np.array([translation.x, translation.y, translation.z], np.float64),
            np.array([rotation.x, rotation.y, rotation.z, rotation.w], np.float64))


def stamp_to_ns(stamp):
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def rgb_to_image_msg(rgb, msg):
    """Fill a ``sensor_msgs/Image`` with an RGB frame (rgb8); returns ``msg``."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = 'rgb8'
    msg.is_bigendian = 0
    msg.step = msg.width * 3
    msg.data = rgb.tobytes()  # bytes, not ndarray: ~40x faster to assign
    return msg
