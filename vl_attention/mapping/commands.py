"""Argument groups and config conversion for ``build-map`` and ``map info|add``.

This is the command-line layer of :mod:`vl_attention.mapping` (``vl_attention.cli``
calls it); the argparse Namespace stops here and only frozen configs go on.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
import json
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np

from vl_attention.config import ConfigError
from vl_attention.engine.embedder import EmbedderConfig
from vl_attention.geo import GeodeticOrigin
from vl_attention.io import StrPath
from vl_attention.geometry.local_features import LOCAL_FEATURES
from vl_attention.mapping.builder import BagInput, MapBuildConfig
from vl_attention.mapping.index import INDEX_TYPES, IndexParams
from vl_attention.mapping.map_format import load_map, POSES_FRAMES
from vl_attention.mapping.subsampling import KeyframeConfig

EPILOG = ('inputs: either --images DIR --poses FILE (CSV or JSON), or one or more --bag PATH '
          'with --image-topic and --position-topic (NavSatFix, PoseStamped, '
          'PoseWithCovarianceStamped or Odometry; pose/odometry topics need --origin)')


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the folder / rosbag2 input options."""
    group = parser.add_argument_group('input')
    group.add_argument('--images', type=Path, help='folder of database images')
    group.add_argument('--poses', type=Path, help='poses.csv or poses.json: image,stamp_ns,'
                       'latitude_deg,longitude_deg,altitude_m,qx,qy,qz,qw')
    group.add_argument('--bag', type=Path, action='append', default=[],
                       help='rosbag2 directory (mcap or sqlite3); repeat for several bags')
    group.add_argument('--image-topic', default=BagInput.image_topic,
                       help='sensor_msgs Image or CompressedImage topic (default: %(default)s)')
    group.add_argument('--position-topic', default=BagInput.position_topic,
                       help='NavSatFix / PoseStamped / PoseWithCovarianceStamped / Odometry '
                            'topic (default: %(default)s)')
    group.add_argument('--max-gap-s', type=float, default=BagInput.max_gap_s,
                       help='longest position gap to interpolate over (default: %(default)s)')
    group.add_argument('--poses-frame', default=MapBuildConfig.poses_frame, choices=POSES_FRAMES,
                       help="what the poses describe: 'camera' (the camera body frame, x "
                            "forward) or 'base' (the robot's, e.g. its odometry; the node then "
                            'applies no camera mounting) (default: %(default)s)')
    group.add_argument('--origin', nargs=3, type=float, metavar=('LAT', 'LON', 'ALT'),
                       help='geodetic origin of the map (and of the local frame of pose '
                            'topics); default: the first pose or fix')
    group.add_argument('--keyframe-distance-m', type=float, default=0.0,
                       help='keep a frame every this many metres (0: every frame)')
    group.add_argument('--keyframe-angle-deg', type=float, default=0.0,
                       help='or when the view turned by this many degrees (0: off)')
    group.add_argument('--checkpoint-frames', type=int, default=MapBuildConfig.checkpoint_frames,
                       help='frames per resumable batch (default: %(default)s)')
    group.add_argument('--restart', action='store_true',
                       help='discard an interrupted build instead of resuming it')
    group.add_argument('--no-progress', action='store_true', help='no progress bar')
    group.add_argument('--local-features', default=MapBuildConfig.local_features,
                       choices=['none'] + LOCAL_FEATURES.names(),
                       help='local features + triangulated points for PnP refinement '
                            '(default: %(default)s)')
    group.add_argument('--camera-info', type=Path, default=None,
                       help='camera YAML (ROS calibration or width/height/fx/fy/cx/cy; default: '
                            'camera_info.yaml beside --images)')


def add_index_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the index type and its build/search parameters."""
    defaults = IndexParams()
    group = parser.add_argument_group('index')
    group.add_argument('--index-type', default='auto', choices=['auto'] + INDEX_TYPES.names(),
                       help='auto: flat_ip when small, hnsw, ivf_pq when huge (default: auto)')
    for name in ('nlist', 'pq_bytes', 'hnsw_m', 'ef_construction', 'nprobe', 'ef_search',
                 'rerank_k', 'train_sample'):
        group.add_argument('--' + name.replace('_', '-'), type=int,
                           default=getattr(defaults, name),
                           help=f'(default: {getattr(defaults, name)})')


def source_inputs(args: argparse.Namespace) -> Union[tuple[Path, Path], BagInput]:
    """``(images, poses)`` or a :class:`BagInput` from the arguments, with clear errors."""
    if args.bag and (args.images or args.poses):
        raise ConfigError('give either --images/--poses or --bag, not both')
    if args.bag:
        return BagInput(bags=tuple(args.bag), image_topic=args.image_topic,
                        position_topic=args.position_topic, max_gap_s=args.max_gap_s)
    if not (args.images and args.poses):
        raise ConfigError('no input: give --images DIR --poses FILE, or --bag PATH')
    return (args.images, args.poses)


def build_config(args: argparse.Namespace, embedder_config: EmbedderConfig, *,
                 with_index: bool = True) -> MapBuildConfig:
    """Return the :class:`MapBuildConfig` of the arguments."""
    values: dict[str, Any] = dict(
        embedder=embedder_config,
        keyframes=KeyframeConfig(args.keyframe_distance_m, args.keyframe_angle_deg),
        origin=GeodeticOrigin(*args.origin) if args.origin else None,
        checkpoint_frames=args.checkpoint_frames, restart=args.restart,
        progress=not args.no_progress,
        local_features=getattr(args, 'local_features', MapBuildConfig.local_features),
        camera_info=str(getattr(args, 'camera_info', None) or ''),
        poses_frame=getattr(args, 'poses_frame', MapBuildConfig.poses_frame))
    if with_index:
        values['index_type'] = args.index_type
        values['index_params'] = IndexParams(**{name: getattr(args, name) for name in (
            'nlist', 'pq_bytes', 'hnsw_m', 'ef_construction', 'nprobe', 'ef_search',
            'rerank_k', 'train_sample')})
    return MapBuildConfig(**values)


def map_info(map_dir: StrPath, *, verify: str = 'auto') -> dict[str, Any]:
    """Manifest plus statistics of a map, as a JSON-ready dict."""
    loaded = load_map(map_dir, verify=verify)
    records = loaded.records
    positions = records.position_enu_m
    steps_m = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    disk_bytes = sum(path.stat().st_size for path in Path(map_dir).iterdir())
    return asdict(loaded.manifest) | {'statistics': {
        'count': len(records),
        'extent_east_m': float(np.ptp(positions[:, 0])),
        'extent_north_m': float(np.ptp(positions[:, 1])),
        'median_spacing_m': float(np.median(steps_m)) if len(steps_m) else 0.0,
        'first_stamp_ns': int(records.stamp_ns.min()),
        'last_stamp_ns': int(records.stamp_ns.max()),
        'disk_bytes': int(disk_bytes), 'verified': verify}}


def format_map_info(info: Mapping[str, Any]) -> str:
    """Pretty JSON of :func:`map_info`."""
    return json.dumps(info, indent=2, default=str)
