"""evaluate-bag: ground-truth readers, offline report on a synthetic bag, CLI, realtime mode."""

import csv
import json

import cv2
import numpy as np
import pytest

from conftest import BASELINE_MODEL
from rosbags.rosbag2 import Writer
from rosbags.typesys import get_typestore, Stores

from vl_attention.data.rosbag_reader import BagError, open_bags
from vl_attention.data.synthetic.bags import RosbagWriter
from vl_attention.data.synthetic import PinholeCamera, read_poses_csv
from vl_attention.engine.embedder import EmbedderConfig
from vl_attention.evaluation.evaluate_bag import BagEvalConfig, main
from vl_attention.evaluation.ground_truth import read_ground_truth, truth_by_stamp
from vl_attention.geo import (enu_to_geodetic, GeodeticOrigin, geodetic_to_enu,
                              quaternion_from_yaw_pitch_roll, rotation_angle_deg)
from vl_attention.mapping import read_manifest

SECOND = 1_000_000_000
PNGS = ('trajectory_effnet_lite0_gem.png', 'error_cdf.png')


def _world_origin(world):
    return GeodeticOrigin(**json.loads((world / 'world.json').read_text())['origin'])


def _traversal_bag(world_dir, traversal, path):
    """Write one traversal of a synthetic world as an mcap bag (image, fix, GT pose)."""
    world = json.loads((world_dir / 'world.json').read_text())
    camera = {k: v for k, v in world['camera'].items() if not k.startswith('distortion')}
    columns = read_poses_csv(world_dir / traversal / 'poses.csv')
    with RosbagWriter(path, PinholeCamera(**camera), _world_origin(world_dir)) as writer:
        for row, name in enumerate(columns['image']):
            bgr = cv2.imread(str(world_dir / traversal / 'images' / name))
            writer.write(bgr[..., ::-1], columns['stamp_ns'][row],
                         [columns[k][row] for k in ('x_m', 'y_m', 'z_m')],
                         [columns[k][row] for k in ('qx', 'qy', 'qz', 'qw')])
    return path


@pytest.fixture(scope='module')
def tiny_bag(tiny_world, tmp_path_factory):
    """Write the tiny world's night query traversal as an mcap bag."""
    return _traversal_bag(tiny_world, 'query_night',
                          tmp_path_factory.mktemp('query_bag') / 'query_night')


def _config(tiny_world, export_cache, **changes):
    embedder = EmbedderConfig(model=BASELINE_MODEL, backend='onnxruntime',
                              cache_dir=str(export_cache))
    return BagEvalConfig(embedder=embedder, gt_origin=_world_origin(tiny_world), **changes)


@pytest.fixture(scope='module')
def offline(tiny_bag, tiny_map, tiny_world, export_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp('offline')
    return main(_config(tiny_world, export_cache, tracking='off'), [tiny_bag], tiny_map, out)


def test_tracking_modes_score_the_same_frames_stage_by_stage(
        offline, tiny_bag, tiny_map, tiny_world, export_cache, tmp_path):
    out = main(_config(tiny_world, export_cache), [tiny_bag], tiny_map, tmp_path)
    (run,) = json.loads((out / 'metrics.json').read_text())['runs']
    (single,) = json.loads((offline / 'metrics.json').read_text())['runs']
    assert run['tracking'] == 'full' and set(run['modes']) == {'single_frame', 'filtered',
                                                               'output'}
    # the single-frame stage of the full pipeline is the tracking-off run, frame for frame
    modes = run['modes']
    assert modes['single_frame']['acceptance_rate'] == single['acceptance_rate']
    assert modes['single_frame']['accepted'] == single['accepted']
    assert modes['output']['acceptance_rate'] == run['acceptance_rate']
    # 24 night frames: the filter needs min_updates frames before its first fix
    assert modes['filtered']['acceptance_rate'] <= 21 / 24
    report = (out / 'report.md').read_text()
    assert '| effnet_lite0_gem | filtered |' in report and '| effnet_lite0_gem | output |' \
        in report


def _positions(records):
    return np.array([record.position_enu_m for record in records])


def test_pose_source_picks_the_published_stage(tiny_map, tiny_world, export_cache, tmp_path):
    from vl_attention.engine.embedder import create_embedder
    from vl_attention.evaluation.evaluate_bag import localize_offline
    from vl_attention.mapping.map_format import load_map
    day_bag = _traversal_bag(tiny_world, 'map_day', tmp_path / 'day')   # day frames refine
    map_ = load_map(tiny_map)
    embedder = create_embedder(_config(tiny_world, export_cache).embedder)
    runs = {source: localize_offline(_config(tiny_world, export_cache, pose_source=source),
                                     [day_bag], map_, embedder, 'effnet_lite0_gem')
            for source in ('pnp', 'retrieval')}
    pnp, retrieval = runs['pnp'].modes, runs['retrieval'].modes
    assert runs['retrieval'].info['pose_source'] == 'retrieval'
    # the same filter runs under both: PnP verifies in both, it is published only under pnp
    np.testing.assert_allclose(_positions(pnp['filtered']), _positions(retrieval['filtered']))
    np.testing.assert_allclose(_positions(retrieval['output']), _positions(retrieval['filtered']))
    moved = np.linalg.norm(_positions(pnp['output']) - _positions(pnp['filtered']), axis=1)
    assert np.nanmax(moved) > 0.05     # some frames were refined: their PnP pose is published


def test_pose_source_regression_without_a_pose_head_is_a_one_line_error(
        tiny_bag, tiny_map, export_cache, tmp_path, capsys):
    from vl_attention import cli
    argv = ['evaluate-bag', '--map', str(tiny_map), '--bag', str(tiny_bag), '--gt-topic',
            '/gps/fix', '--out', str(tmp_path), '--pose-source', 'regression',
            '--max-frames', '2', '--backend', 'onnxruntime', '--cache-dir', str(export_cache)]
    assert cli.main(argv) == 1
    error = capsys.readouterr().err
    assert 'pose_source regression needs a model with a pose head' in error
    assert 'Traceback' not in error


def _frames(out):
    with open(out / 'frames_effnet_lite0_gem.csv', newline='') as handle:
        return list(csv.DictReader(handle))


def test_offline_report_has_files_and_sane_numbers(offline, tiny_map):
    for name in PNGS:
        assert cv2.imread(str(offline / name)) is not None, name
    document = json.loads((offline / 'metrics.json').read_text())
    (run,) = document['runs']
    assert run['frames_scored'] == 24 and run['frames_responded'] == 24
    assert run['frames_skipped_without_ground_truth'] == {}
    assert run['map']['model_fingerprint'] == read_manifest(tiny_map).model_fingerprint
    assert document['software']['onnxruntime'] and run['mode'] == 'offline'
    fractions = [run['acceptance_rate'], run['covariance_honesty']['inside_ellipse_fraction']]
    fractions += list(run['fraction_of_frames_within'].values())
    fractions += [v for k, v in run['accepted'].items() if k.startswith('within_')]
    assert all(0.0 <= value <= 1.0 for value in fractions), fractions
    # night queries with occluders, 0.5 m beside the day map, frames 2 m apart: measured
    # (effnet_lite0_gem, ONNX Runtime) median 2.76 m, p95 9.9 m, 75% accepted. A median
    # beyond two frame spacings means broken association or frames; near 0, a leak of truth
    assert 0.3 <= run['accepted']['position_median_m'] < 4.0, run['accepted']
    assert run['accepted']['rotation_median_deg'] < 10.0
    assert run['acceptance_rate'] >= 0.25
    assert np.isfinite(run['covariance_honesty']['nees_mean'])
    assert run['latency']['latency_p50_ms'] > 0 and run['latency']['throughput_hz'] > 0
    report = (offline / 'report.md').read_text()
    assert '| effnet_lite0_gem | 24 |' in report and 'trajectory_effnet_lite0_gem.png' in report


def test_per_frame_records_match_the_summary_and_the_map_frame(offline, tiny_world, tiny_map):
    rows = _frames(offline)
    (run,) = json.loads((offline / 'metrics.json').read_text())['runs']
    accepted = [float(r['position_error_m']) for r in rows if r['accepted'] == '1']
    assert len(accepted) == run['frames_accepted']
    assert np.median(accepted) == pytest.approx(run['accepted']['position_median_m'])
    # ground truth in the map frame = the traversal's WGS84 poses at the map origin
    columns = read_poses_csv(tiny_world / 'query_night' / 'poses.csv')
    expected = geodetic_to_enu(columns['latitude_deg'], columns['longitude_deg'],
                               columns['altitude_m'], read_manifest(tiny_map).geodetic_origin)
    truth = np.array([[float(r['truth_east_m']), float(r['truth_north_m'])] for r in rows])
    np.testing.assert_allclose(truth, expected[:, :2], atol=1e-3)


def test_pose_ground_truth_through_gt_origin_equals_navsatfix(tiny_bag, tiny_map, tiny_world):
    map_origin = read_manifest(tiny_map).geodetic_origin
    with open_bags([tiny_bag]) as reader:
        pose = read_ground_truth(reader, '/ground_truth/pose', map_origin=map_origin,
                                 gt_origin=_world_origin(tiny_world))
        fix = read_ground_truth(reader, '/gps/fix', map_origin=map_origin)
        unmoved = read_ground_truth(reader, '/ground_truth/pose', map_origin=map_origin)
    np.testing.assert_allclose(pose.track.values, fix.track.values, atol=1e-3)
    assert pose.has_orientation and not fix.has_orientation
    # without --gt-origin the pose frame is taken as the map's: off by the origins' distance
    offset_m = np.linalg.norm(unmoved.track.values[0, :2] - pose.track.values[0, :2])
    assert offset_m > 1.0


def _write_gt_bag(path, origin):
    """Image stamps 1.25, 2.5 (gap), 5.0 (after) s; GT at 1, 2, 4 s: x = 0, 10, 30 m."""
    store = get_typestore(Stores.ROS2_JAZZY)
    types = store.types
    samples = [(1, (0.0, 0.0, 0.0), 0.0), (2, (10.0, 0.0, 2.0), 90.0),
               (4, (30.0, 0.0, 2.0), 90.0)]
    with Writer(path, version=8) as writer:
        topics = {'/pwc': 'geometry_msgs/msg/PoseWithCovarianceStamped',
                  '/odom': 'nav_msgs/msg/Odometry', '/ps': 'geometry_msgs/msg/PoseStamped',
                  '/fix': 'sensor_msgs/msg/NavSatFix', '/image': 'sensor_msgs/msg/Image'}
        connections = {topic: writer.add_connection(topic, msgtype, typestore=store)
                       for topic, msgtype in topics.items()}
        for seconds, xyz, yaw_deg in samples:
            header = types['std_msgs/msg/Header'](
                stamp=types['builtin_interfaces/msg/Time'](sec=seconds, nanosec=0), frame_id='map')
            quaternion = quaternion_from_yaw_pitch_roll(np.radians(yaw_deg))
            pose = types['geometry_msgs/msg/Pose'](
                position=types['geometry_msgs/msg/Point'](*xyz),
                orientation=types['geometry_msgs/msg/Quaternion'](*(float(q) for q in quaternion)))
            with_cov = types['geometry_msgs/msg/PoseWithCovariance'](pose=pose,
                                                                     covariance=np.zeros(36))
            twist = types['geometry_msgs/msg/TwistWithCovariance'](
                twist=types['geometry_msgs/msg/Twist'](
                    linear=types['geometry_msgs/msg/Vector3'](0.0, 0.0, 0.0),
                    angular=types['geometry_msgs/msg/Vector3'](0.0, 0.0, 0.0)),
                covariance=np.zeros(36))
            latitude, longitude, altitude = enu_to_geodetic(np.array(xyz), origin)
            status = types['sensor_msgs/msg/NavSatStatus'](status=0, service=1)
            messages = {
                '/pwc': types['geometry_msgs/msg/PoseWithCovarianceStamped'](header, with_cov),
                '/odom': types['nav_msgs/msg/Odometry'](header, 'base_link', with_cov, twist),
                '/ps': types['geometry_msgs/msg/PoseStamped'](header, pose),
                '/fix': types['sensor_msgs/msg/NavSatFix'](
                    header, status, float(latitude), float(longitude), float(altitude),
                    np.zeros(9), 0)}
            for topic, message in messages.items():
                writer.write(connections[topic], seconds * SECOND,
                             store.serialize_cdr(message, topics[topic]))
        for stamp_ns in (1_250_000_000, 2_500_000_000, 5 * SECOND):
            header = types['std_msgs/msg/Header'](
                stamp=types['builtin_interfaces/msg/Time'](sec=stamp_ns // SECOND,
                                                           nanosec=stamp_ns % SECOND),
                frame_id='camera')
            image = types['sensor_msgs/msg/Image'](header, 2, 2, 'rgb8', 0, 6,
                                                   np.zeros(12, np.uint8))
            writer.write(connections['/image'], stamp_ns,
                         store.serialize_cdr(image, 'sensor_msgs/msg/Image'))
    return path


@pytest.mark.parametrize('topic', ['/pwc', '/odom', '/ps', '/fix'])
def test_ground_truth_readers_interpolate_and_skip_gaps(topic, tmp_path):
    origin = GeodeticOrigin(48.1, 11.5, 520.0)
    bag = _write_gt_bag(tmp_path / 'gt', origin)
    with open_bags([bag]) as reader:
        truth = read_ground_truth(reader, topic, map_origin=origin)
        frames, skipped = truth_by_stamp(reader, '/image', truth, max_gap_s=1.0)
    # 1.25 s is a quarter of the way from (0, 0, 0) at yaw 0 to (10, 0, 2) at yaw 90
    (frame,) = frames.values()
    assert frame.stamp_ns == 1_250_000_000
    np.testing.assert_allclose(frame.position_enu_m, [2.5, 0.0, 0.5], atol=1e-6)
    assert dict(skipped) == {'gap_too_long': 1, 'after_last_position': 1}
    if topic == '/fix':
        assert frame.orientation_xyzw is None and not truth.has_orientation
    else:
        expected = quaternion_from_yaw_pitch_roll(np.radians(22.5))
        assert rotation_angle_deg(frame.orientation_xyzw, expected) < 1e-6


def test_missing_ground_truth_topic_names_the_topics_present(tiny_bag, tiny_map, tiny_world,
                                                             export_cache, tmp_path):
    cfg = _config(tiny_world, export_cache, gt_topic='/odometry/filtered')
    with pytest.raises(BagError) as error:
        main(cfg, [tiny_bag], tiny_map, tmp_path)
    message = str(error.value)
    assert "'/odometry/filtered' is not in the bag" in message
    assert '/ground_truth/pose (geometry_msgs/msg/PoseStamped)' in message
    assert '/gps/fix (sensor_msgs/msg/NavSatFix)' in message


def test_cli_models_table_with_navsatfix_ground_truth(tiny_bag, tiny_map, export_cache,
                                                      tmp_path, capsys):
    from vl_attention import cli
    maps = tmp_path / 'maps'
    maps.mkdir()
    (maps / 'effnet_lite0_gem').symlink_to(tiny_map, target_is_directory=True)
    out = tmp_path / 'report'
    argv = ['evaluate-bag', '--map', str(maps), '--bag', str(tiny_bag), '--gt-topic',
            '/gps/fix', '--out', str(out), '--tracking', 'off', '--models', 'effnet_lite0_gem',
            '--max-frames', '6', '--backend', 'onnxruntime', '--cache-dir', str(export_cache)]
    assert cli.main(argv) == 0
    (run,) = json.loads((out / 'metrics.json').read_text())['runs']
    assert run['frames_scored'] == 6
    # NavSatFix has no orientation: rotation errors are unknown, not 0
    assert run['accepted']['rotation_median_deg'] is None
    assert set(run['fraction_of_frames_within']) == {'0.25m', '0.5m', '5m'}
    assert '| n/a |' in capsys.readouterr().out
    assert cli.main(argv[:-4] + ['--models', 'effnet_lite0_gem,resnet50_gem']) == 1
    assert 'no map for model' in capsys.readouterr().err


@pytest.mark.ros
@pytest.mark.slow
def test_realtime_agrees_with_offline_frame_by_frame(offline, tiny_bag, tiny_map, tiny_world,
                                                     export_cache, tmp_path):
    pytest.importorskip('rclpy')
    import random
    cfg = _config(tiny_world, export_cache, realtime=True, rate=0.5,
                  ros_domain_id=random.randint(201, 230))
    out = main(cfg, [tiny_bag], tiny_map, tmp_path / 'realtime')
    (run,) = json.loads((out / 'metrics.json').read_text())['runs']
    assert run['frames_published'] == 24 and run['frames_without_response'] == 0
    assert run['node_frames_dropped'] == 0 and run['node_frames_received'] == 24
    live, reference = _frames(out), _frames(offline)
    assert [r['stamp_ns'] for r in live] == [r['stamp_ns'] for r in reference]
    assert [r['accepted'] for r in live] == [r['accepted'] for r in reference]
    for row, expected in zip(live, reference):
        if row['accepted'] == '1':
            for key in ('east_m', 'north_m', 'position_error_m', 'sigma_east_m'):
                assert float(row[key]) == pytest.approx(float(expected[key]), abs=1e-4), key
    assert run['latency']['latency_p50_ms'] > 0
