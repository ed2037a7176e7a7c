"""The built-in demo: map one traversal of a synthetic town, localize another over ROS 2.

1. render the synthetic world preset (cached in the work directory);
2. build a map from its daytime traversal (rebuilt when the model changes);
3. start ``localize_node`` in its own process;
4. publish the query traversal's frames to it as ``sensor_msgs/Image`` at a fixed rate,
   collect the NavSatFix / PoseWithCovarianceStamped it publishes, and compare them with
   the exact ground truth.
"""

import contextlib
from dataclasses import asdict, dataclass
import json
import logging
import os
from pathlib import Path
import time

import numpy as np

from vl_attention.errors import VLAttentionError
from vl_attention.geo import geodetic_to_enu
from vl_attention.io import atomic_write_text
from vl_attention.mapping import MapFormatError, read_manifest, read_poses_csv
from vl_attention.mapping.sources import read_rgb

LOG = logging.getLogger(__name__)
MAP_TRAVERSAL = 'map_day'


class DemoError(VLAttentionError, ValueError):
    """The demo's work directory holds an unusable world; the message says what to remove."""


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs."""

    work_dir: str = 'demo_output'
    preset: str = 'demo'
    frames: int = 0            # query frames to send (0 = the whole traversal)
    rate_hz: float = 10.0
    response_timeout_s: float = 5.0
    dds_profile: str = ''      # '' | fastdds | a path: the node's and the publisher's (launch arg)


def prepare_world(work_dir, preset):
    """Render the preset once; later runs reuse it."""
    from vl_attention.data.synthetic import generate
    world = Path(work_dir) / f'world_{preset}'
    if not (world / 'world.json').is_file():
        LOG.info('rendering synthetic world %r into %s', preset, world)
        generate(preset, world, progress=True)
    return world


def prepare_map(world, work_dir, embedder):
    """Build the map of the daytime traversal unless one for this model exists."""
    from vl_attention.mapping import load_map
    from vl_attention.mapping.builder import build_map_from_folder
    from vl_attention.engine.vocabulary import needs_map_vocabulary
    map_dir = Path(work_dir) / f'map_{world.name}'
    try:
        if needs_map_vocabulary(embedder.card):   # fitted on the map: its own fingerprint
            manifest = load_map(map_dir).manifest
            if manifest.model_name == embedder.card.model_name and 'vocabulary' in manifest.build:
                return map_dir
            raise MapFormatError(f'{map_dir} was built with {manifest.model_name}')
        load_map(map_dir, expected_fingerprint=embedder.fingerprint)
        return map_dir
    except MapFormatError:
        LOG.info('building map %s from %s', map_dir, world / MAP_TRAVERSAL)
    traversal = world / MAP_TRAVERSAL
    return build_map_from_folder(traversal / 'images', traversal / 'poses.csv', map_dir,
                                 embedder=embedder)


def query_traversal(world):
    """Return the first traversal that is not the map's."""
    names = sorted(p.name for p in world.iterdir() if (p / 'poses.csv').is_file())
    queries = [name for name in names if name != MAP_TRAVERSAL]
    if not queries:
        raise DemoError(f'{world} has no query traversal besides {MAP_TRAVERSAL}; delete it '
                        'and run the demo again to render the world anew')
    return world / queries[0]


def run_demo(cfg):
    """Run the whole demo; print per-frame fixes and return the summary dict."""
    from vl_attention.engine.embedder import create_embedder, EmbedderConfig
    work_dir = Path(cfg.work_dir)
    cache_dir = work_dir / 'exports'
    embedder = create_embedder(EmbedderConfig(cache_dir=str(cache_dir)))
    world = prepare_world(work_dir, cfg.preset)
    map_dir = prepare_map(world, work_dir, embedder)
    del embedder   # the node loads its own copy
    queries = query_traversal(world)
    summary = _localize_over_ros(cfg, map_dir, queries, cache_dir, work_dir)
    atomic_write_text(work_dir / 'summary.json', json.dumps(summary, indent=2))
    print(_format_summary(summary))
    return summary


def _localize_over_ros(cfg, map_dir, queries, cache_dir, work_dir):
    from vl_attention.ros.replay import live_localize_node
    log_path = work_dir / 'localize_node.log'
    print('waiting for localize_node (log: %s) ...' % log_path)
    with dds_profile_environment(cfg.dds_profile), live_localize_node(
            {'map_dir': str(map_dir), 'cache_dir': str(cache_dir)},
            image_topic='/camera/image_raw', log_path=log_path,
            start_timeout_s=120.0) as client:
        return _publish_and_score(cfg, client, map_dir, queries)


@contextlib.contextmanager
def dds_profile_environment(dds_profile):
    """Set the DDS profile variables of ``dds_profile`` (as the launch file does) meanwhile.

    The node inherits them from this process, and the publisher here reads them when
    rclpy starts inside the block; the previous values come back afterwards.
    """
    from vl_attention.ros.launch_args import dds_environment
    environment = dds_environment(dds_profile)
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    try:
        yield environment
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _publish_and_score(cfg, client, map_dir, queries):
    columns = read_poses_csv(queries / 'poses.csv')
    count = len(columns['image']) if cfg.frames <= 0 else min(cfg.frames,
                                                              len(columns['image']))
    period_s = 1.0 / cfg.rate_hz
    started = time.monotonic()
    for index in range(count):
        rgb = read_rgb(queries / 'images' / columns['image'][index])
        client.publish_frame(rgb, columns['stamp_ns'][index], frame_id='camera_optical')
        time.sleep(max(0.0, started + (index + 1) * period_s - time.monotonic()))
    last = columns['stamp_ns'][count - 1]
    client.wait_for_response(last, timeout_s=cfg.response_timeout_s)
    time.sleep(0.5)
    origin = read_manifest(map_dir).geodetic_origin
    rows = [_score_frame(client, columns, index, origin) for index in range(count)]
    for row in rows:
        print(_format_row(row))
    return _summarise(cfg, rows, client, queries)


def _score_frame(client, columns, index, origin):
    stamp = columns['stamp_ns'][index]
    fix = client.responses.fixes.get(stamp)
    row = {'index': index, 'stamp_ns': stamp, 'status': 'lost', 'error_m': None,
           'sigma_m': None, 'latency_ms': client.latency_ms(stamp)}
    if fix is None:
        return row
    if fix.status.status < 0:
        return row | {'status': 'no fix'}
    truth = geodetic_to_enu(columns['latitude_deg'][index], columns['longitude_deg'][index],
                            columns['altitude_m'][index], origin)
    estimate = geodetic_to_enu(fix.latitude, fix.longitude, fix.altitude, origin)
    covariance = np.array(fix.position_covariance).reshape(3, 3)
    return row | {'status': 'fix', 'error_m': float(np.linalg.norm((estimate - truth)[:2])),
                  'sigma_m': float(np.sqrt(np.trace(covariance[:2, :2]) / 2.0))}


def _summarise(cfg, rows, client, queries):
    fixes = [row for row in rows if row['status'] == 'fix']
    errors = np.array([row['error_m'] for row in fixes]) if fixes else np.array([np.nan])
    latencies = [row['latency_ms'] for row in rows if row['latency_ms'] is not None]
    return {
        'config': asdict(cfg), 'query_traversal': queries.name,
        'frames_sent': len(rows), 'fixes_received': len(fixes),
        'no_fix': sum(row['status'] == 'no fix' for row in rows),
        'lost_or_dropped': sum(row['status'] == 'lost' for row in rows),
        'median_error_m': float(np.median(errors)),
        'fraction_within_10m': float(np.mean(errors < 10.0)) if fixes else 0.0,
        'median_latency_ms': float(np.median(latencies)) if latencies else float('nan'),
        'node_diagnostics': client.latest_diagnostics(),
        'frames': rows,
    }


def _format_row(row):
    error = f'{row["error_m"]:7.2f} m' if row['error_m'] is not None else '      -  '
    sigma = f'{row["sigma_m"]:6.1f} m' if row['sigma_m'] is not None else '     -  '
    latency = f'{row["latency_ms"]:6.1f} ms' if row['latency_ms'] is not None else '      -  '
    return f'frame {row["index"]:4d}  {row["status"]:7s} error {error}  sigma {sigma}  ' \
           f'latency {latency}'


def _format_summary(summary):
    return '\n'.join([
        '',
        f'demo summary ({summary["query_traversal"]} against the daytime map)',
        f'  frames sent        {summary["frames_sent"]}',
        f'  fixes received     {summary["fixes_received"]}  (no fix: {summary["no_fix"]}, '
        f'lost/dropped: {summary["lost_or_dropped"]})',
        f'  median error       {summary["median_error_m"]:.2f} m  '
        f'(within 10 m: {100 * summary["fraction_within_10m"]:.0f}% of fixes)',
        f'  median latency     {summary["median_latency_ms"]:.1f} ms (publish -> NavSatFix)',
    ])
