"""Realtime evaluation: replay a bag's image messages into a live ``localize_node`` over ROS 2.

The node runs in its own process (:mod:`vl_attention.ros.process`) with the same map,
model, backend and localizer settings as an offline run. The bag's image messages
are published unchanged (CDR bytes deserialized into rclpy messages, header stamp
and frame id kept) at recorded speed x ``rate`` by a :class:`~vl_attention.ros.replay.
ReplayClient`, which records the NavSatFix, PoseWithCovarianceStamped and /diagnostics
the node publishes back. Before the replay, warm-up copies of the first image (stamps
1, 2, ... ns) are sent until one is answered, so ROS discovery and the first, slow
inference cost no replayed frame; the node's counters are reported net of them.
Responses are matched to frames by the echoed header stamp:

* latency = publish -> NavSatFix received, in this process (so it includes DDS transport);
* a frame without any NavSatFix counts as *without response* (dropped by the node's
  newest-frame-only hand-off, or lost by best-effort transport); the node's own
  dropped counter comes from its last /diagnostics;
* an accepted fix takes its position and orientation from the pose message (ENU doubles,
  no geodetic round trip); the node publishes no confidence, so it is reported as unknown.

rclpy is imported only inside functions: the rest of the evaluation needs no ROS.
"""

import logging
from pathlib import Path
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from vl_attention.data.rosbag_reader import (header_stamp_ns, IMAGE_TYPES, open_bags,
                                             topic_connections)
from vl_attention.engine.embedder import EmbedderConfig
from vl_attention.evaluation.bag_records import BagRun, FrameRecord
from vl_attention.evaluation.ground_truth import FrameTruth, read_ground_truth, truth_by_stamp
from vl_attention.localization import LocalizerConfig
from vl_attention.ros.process import NodeProcessError

# the BagEvalConfig of evaluate_bag (which imports this module; annotated Any, no cycle)
BagEvalConfig = Any

LOG = logging.getLogger(__name__)
REPLAY_TOPIC = '/vl_attention_replay/image'
RESPONSE_TIMEOUT_S = 15.0
WARM_UP_TIMEOUT_S = 60.0


def node_parameters(embedder_cfg: EmbedderConfig, localizer_cfg: LocalizerConfig,
                    map_dir: str | Path, *, compressed: bool,
                    pose_source: str = 'pnp') -> Dict[str, Any]:
    """Parameters of the live node: the offline run's model, backend and localizer settings."""
    from dataclasses import asdict
    return {'map_dir': str(map_dir), 'model': embedder_cfg.model,
            'backend': embedder_cfg.backend, 'device': embedder_cfg.device,
            'precision': embedder_cfg.precision, 'threads': embedder_cfg.threads,
            'cache_dir': embedder_cfg.cache_dir, 'export_dir': embedder_cfg.export_dir,
            'image_transport': 'compressed' if compressed else 'raw',
            'publish_navsatfix': True, 'publish_pose': True, 'publish_no_fix': True,
            # evaluate-bag compares single-frame estimates frame by frame
            'use_filter': False, 'refine': False, 'pose_source': pose_source,
            } | asdict(localizer_cfg)


def _message_type(connections: Sequence[Any]) -> Any:
    from sensor_msgs.msg import CompressedImage, Image
    return CompressedImage if connections[0].msgtype.endswith('CompressedImage') else Image


def warm_up(client: Any, raw: bytes, message_type: Any,
            timeout_s: float = WARM_UP_TIMEOUT_S) -> Dict[str, Any]:
    """Send the bag's first image (stamps 1, 2, ... ns) until the node answers one.

    Discovery can match our publisher before the node's subscription has matched
    it, and the first inference is slow; a warm-up frame waits out both, so the
    replay's first frames are neither lost nor late. Returns the node's counters
    once it has processed everything sent so far (subtracted from the final ones).
    """
    from rclpy.serialization import deserialize_message
    message = deserialize_message(bytes(raw), message_type)
    deadline = time.monotonic() + timeout_s
    stamp_ns = 0
    while time.monotonic() < deadline:
        stamp_ns += 1
        client.publish_message(message, stamp_ns, message.header.frame_id)
        if client.wait_for_response(stamp_ns, timeout_s=2.0) is not None:
            return _settled_diagnostics(client)
    raise NodeProcessError(f'localize_node answered none of {stamp_ns} warm-up frames in '
                           f'{timeout_s:.0f} s')


def _settled_diagnostics(client: Any, timeout_s: float = 5.0) -> Dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        values: Dict[str, Any] = client.latest_diagnostics()
        if values and _processed(values) >= int(values['frames_received']) > 0:
            return values
        time.sleep(0.1)
    raise NodeProcessError('localize_node published no settled /diagnostics after the warm-up')


def _processed(values: Dict[str, Any]) -> int:
    return sum(int(values.get(key, 0)) for key in (
        'frames_localized', 'frames_no_fix', 'frames_rejected', 'frames_dropped'))


def replay(reader: Any, connections: Sequence[Any], client: Any, *, rate: float,
           max_frames: int = 0) -> List[int]:
    """Publish the bag's image messages at recorded speed x ``rate``; return their stamps."""
    from rclpy.serialization import deserialize_message
    message_type = _message_type(connections)
    published: List[int] = []
    started: Optional[float] = None
    first_stamp = 0
    for count, (_, _, raw) in enumerate(reader.messages(connections=connections)):
        if max_frames and count >= max_frames:
            break
        stamp_ns = header_stamp_ns(raw)
        message = deserialize_message(bytes(raw), message_type)
        if started is None:
            started, first_stamp = time.monotonic(), stamp_ns
        time.sleep(max(0.0, started + (stamp_ns - first_stamp) / 1e9 / rate - time.monotonic()))
        client.publish_message(message, stamp_ns, message.header.frame_id)
        published.append(stamp_ns)
    return published


def wait_for_responses(client: Any, published: Sequence[int],
                       timeout_s: float = RESPONSE_TIMEOUT_S) -> Dict[str, Any]:
    """Wait for the last frame's fix, every accepted fix's pose and settled diagnostics."""
    client.wait_for_response(published[-1], timeout_s=timeout_s)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        fixes, poses = dict(client.responses.fixes), dict(client.responses.poses)
        poses_done = all(stamp in poses for stamp, fix in fixes.items()
                         if fix.status.status >= 0)
        values = client.latest_diagnostics()
        answered = int(values.get('frames_localized', 0)) + int(values.get('frames_no_fix', 0))
        if poses_done and values and _processed(values) >= int(values['frames_received']) \
                and answered >= len(fixes):
            return values
        time.sleep(0.1)
    last: Dict[str, Any] = client.latest_diagnostics()
    return last


def record_from_messages(truth: FrameTruth, client: Any) -> FrameRecord:
    """Turn what the node published for one frame into a :class:`FrameRecord`."""
    fix = client.responses.fixes.get(truth.stamp_ns)
    pose = client.responses.poses.get(truth.stamp_ns)
    latency_ms = client.latency_ms(truth.stamp_ns)
    unknown: Dict[str, Any] = dict(
        confidence=float('nan'), position_enu_m=np.full(3, np.nan), orientation_xyzw=None,
        position_covariance_m2=np.full((3, 3), np.nan))
    if fix is None or (fix.status.status >= 0 and pose is None):
        return FrameRecord(truth, False, False, latency_ms=float('nan'), **unknown)
    if fix.status.status < 0:
        return FrameRecord(truth, True, False, latency_ms=latency_ms, **unknown)
    position, orientation = pose.pose.pose.position, pose.pose.pose.orientation
    covariance = np.asarray(pose.pose.covariance, np.float64).reshape(6, 6)[:3, :3]
    return FrameRecord(truth, True, True, float('nan'),
                       np.array([position.x, position.y, position.z]),
                       np.array([orientation.x, orientation.y, orientation.z, orientation.w]),
                       covariance, latency_ms)


def _run_info(cfg: BagEvalConfig, client: Any, published: Sequence[int],
              baseline: Dict[str, Any], final: Dict[str, Any]) -> Tuple[Dict[str, Any], float]:
    sent = [client.sent_at[s] for s in published]
    received = [client.responses.received_at[s] for s in published
                if s in client.responses.received_at]
    wall_s = (max(received) - min(sent)) if received else 0.0

    # the replay's share of a node counter (warm-up frames subtracted)
    def count(key: str) -> Optional[int]:
        return int(final.get(key, 0)) - int(baseline.get(key, 0)) if final else None
    info = {'mode': 'realtime', 'rate': cfg.rate, 'frames_published': len(published),
            'frames_without_response': sum(s not in client.responses.fixes for s in published),
            'node_frames_received': count('frames_received'),
            'node_frames_dropped': count('frames_dropped'),
            'node_frames_rejected': count('frames_rejected'),
            'backend': final.get('backend_description', 'unknown')}
    return info, wall_s


def localize_realtime(cfg: BagEvalConfig, bag_paths: Sequence[str | Path], map_dir: str | Path,
                      manifest: Any, embedder_cfg: EmbedderConfig, *,
                      log_path: str | Path) -> BagRun:
    """Replay the bags into a live node and return a :class:`BagRun` of what it published."""
    with open_bags(bag_paths) as reader:
        truth = read_ground_truth(reader, cfg.gt_topic, map_origin=manifest.geodetic_origin,
                                  gt_origin=cfg.gt_origin)
        frames, skipped = truth_by_stamp(reader, cfg.image_topic, truth,
                                         max_gap_s=cfg.max_gap_s, max_frames=cfg.max_frames)
        connections = topic_connections(reader, cfg.image_topic, IMAGE_TYPES, 'image')
        compressed = connections[0].msgtype.endswith('CompressedImage')
        parameters = node_parameters(embedder_cfg, cfg.localizer, map_dir,
                                     compressed=compressed, pose_source=cfg.pose_source)
        from vl_attention.ros.replay import live_localize_node
        with live_localize_node(parameters, image_topic=REPLAY_TOPIC, compressed=compressed,
                                log_path=log_path, domain_id=cfg.ros_domain_id,
                                start_timeout_s=cfg.node_start_timeout_s) as client:
            _, _, first_raw = next(reader.messages(connections=connections))
            baseline = warm_up(client, first_raw, _message_type(connections))
            published = replay(reader, connections, client, rate=cfg.rate,
                               max_frames=cfg.max_frames)
            diagnostics = wait_for_responses(client, published)
            records = tuple(record_from_messages(frames[stamp], client)
                            for stamp in published if stamp in frames)
            info, wall_s = _run_info(cfg, client, published, baseline, diagnostics)
    return BagRun(embedder_cfg.model, records, truth, dict(skipped), wall_s, info)
