"""Maps from rosbag2 files: equal to folder maps, association in bags, clear errors, CLI."""

import json

import numpy as np
import pytest
from rosbags.rosbag2 import Writer
from rosbags.typesys import get_typestore, Stores

from vl_attention.data.rosbag_reader import BagError
from vl_attention.geo import GeodeticOrigin
from vl_attention.mapping import load_map
from vl_attention.mapping.builder import (BagInput, build_map, FolderSource, make_source,
                                          MapBuildConfig)
from vl_attention.mapping.records import read_poses_csv
from vl_attention.mapping.sources import read_rgb

POSE_TOPIC = '/ground_truth/pose'


@pytest.fixture(scope='module', params=['mcap', 'sqlite3'])
def bag_world(request, tmp_path_factory):
    from vl_attention.data.synthetic import generate
    return generate('tiny', tmp_path_factory.mktemp(f'bags_{request.param}'),
                    storage=request.param, progress=False)


def world_origin(world):
    return GeodeticOrigin(**json.loads((world / 'world.json').read_text())['origin'])


@pytest.fixture(scope='module')
def folder_map(bag_world, embedder, tmp_path_factory):
    folder, origin = bag_world / 'map_day', world_origin(bag_world)
    return load_map(build_map(FolderSource(folder / 'images', folder / 'poses.csv'),
                              tmp_path_factory.mktemp('folder') / 'map', embedder=embedder,
                              cfg=MapBuildConfig(origin=origin)))


def bag_map(world, embedder, out, *, position_topic=POSE_TOPIC, origin='world', bags=None,
            **settings):
    bags = bags or (world / 'bags' / 'map_day',)
    origin = world_origin(world) if origin == 'world' else origin
    source = make_source(BagInput(bags=tuple(bags), position_topic=position_topic,
                                  **settings), origin)
    return load_map(build_map(source, out, embedder=embedder, cfg=MapBuildConfig(origin=origin)))


def test_bag_map_equals_folder_map(bag_world, folder_map, embedder, tmp_path):
    from_bag = bag_map(bag_world, embedder, tmp_path / 'map')
    assert from_bag.manifest.count == folder_map.manifest.count == 24
    np.testing.assert_array_equal(from_bag.index.descriptors, folder_map.index.descriptors)
    np.testing.assert_array_equal(from_bag.records.stamp_ns, folder_map.records.stamp_ns)
    np.testing.assert_allclose(from_bag.records.position_enu_m,
                               folder_map.records.position_enu_m, atol=1e-3)
    np.testing.assert_allclose(from_bag.records.orientation_xyzw,
                               folder_map.records.orientation_xyzw, atol=1e-6)
    assert from_bag.manifest.build['source']['kind'] == 'rosbag2'
    assert from_bag.records.image_id[0] == f'/camera/image_raw@{folder_map.records.stamp_ns[0]}'


def test_navsatfix_bag_positions_and_heading(bag_world, folder_map, embedder, tmp_path):
    from_fix = bag_map(bag_world, embedder, tmp_path / 'map', position_topic='/gps/fix',
                       origin=None)
    fix_positions = from_fix.records.position_enu_m      # origin: the first fix
    assert np.abs(fix_positions[0]).max() < 1e-6
    truth = folder_map.records.position_enu_m
    np.testing.assert_allclose(fix_positions, truth - truth[0], atol=2e-3)
    assert np.all(np.abs(from_fix.records.orientation_xyzw[:, :2]) < 1e-9)   # yaw only


def test_several_bags_make_one_map(bag_world, embedder, tmp_path):
    both = bag_map(bag_world, embedder, tmp_path / 'map',
                   bags=[bag_world / 'bags' / 'map_day', bag_world / 'bags' / 'query_night'])
    assert both.manifest.count == 48 and len(both.manifest.build['source']['bags']) == 2


def write_sparse_pose_bag(world, path, keep, *, compressed=False, pose_offset_ns=0):
    from vl_attention.data.images import encode_compressed
    store = get_typestore(Stores.ROS2_JAZZY)
    types = store.types
    poses = read_poses_csv(world / 'map_day' / 'poses.csv')
    columns = {name: np.asarray(poses[name]) for name in poses}
    rows = read_csv_xyz(world / 'map_day' / 'poses.csv')
    image_type = 'sensor_msgs/msg/' + ('CompressedImage' if compressed else 'Image')
    with Writer(path, version=8) as writer:
        image = writer.add_connection('/cam', image_type, typestore=store)
        pose = writer.add_connection('/pose', 'geometry_msgs/msg/PoseStamped', typestore=store)
        for row, name in enumerate(columns['image']):
            stamp_ns = int(columns['stamp_ns'][row])
            header = types['std_msgs/msg/Header'](stamp=types['builtin_interfaces/msg/Time'](
                sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id='camera')
            rgb = read_rgb(world / 'map_day' / 'images' / name)
            if compressed:
                message = types[image_type](header=header, format='jpeg', data=np.frombuffer(
                    encode_compressed(rgb), np.uint8))
            else:
                message = types[image_type](header=header, height=rgb.shape[0],
                                            width=rgb.shape[1], encoding='rgb8',
                                            is_bigendian=0, step=rgb.shape[1] * 3,
                                            data=rgb.reshape(-1))
            writer.write(image, stamp_ns, store.serialize_cdr(message, image_type))
            if row in keep:
                x, y, z, qx, qy, qz, qw = rows[row]
                stamp_ns += pose_offset_ns
                header = types['std_msgs/msg/Header'](stamp=types[
                    'builtin_interfaces/msg/Time'](sec=stamp_ns // 10**9,
                                                   nanosec=stamp_ns % 10**9), frame_id='map')
                message = types['geometry_msgs/msg/PoseStamped'](header=header, pose=types[
                    'geometry_msgs/msg/Pose'](position=types['geometry_msgs/msg/Point'](
                        x=x, y=y, z=z), orientation=types['geometry_msgs/msg/Quaternion'](
                        x=qx, y=qy, z=qz, w=qw)))
                writer.write(pose, stamp_ns, store.serialize_cdr(
                    message, 'geometry_msgs/msg/PoseStamped'))
    return path


def read_csv_xyz(path):
    import csv
    with open(path) as handle:
        return [tuple(float(row[k]) for k in ('x_m', 'y_m', 'z_m', 'qx', 'qy', 'qz', 'qw'))
                for row in csv.DictReader(handle)]


def test_frames_outside_the_position_track_are_skipped_and_counted(bag_world, folder_map,
                                                                   embedder, tmp_path):
    keep = set(range(2, 10)) | set(range(17, 22))          # 0.2 s period; 8 -> 17 is 1.8 s
    bag = write_sparse_pose_bag(bag_world, tmp_path / 'sparse', keep)
    mapped = bag_map(bag_world, embedder, tmp_path / 'map', bags=[bag],
                     position_topic='/pose', image_topic='/cam', max_gap_s=1.0)
    frames = mapped.manifest.build['frames']
    assert frames['frames'] == 24 and mapped.manifest.count == 13
    assert frames['skipped_before_first_position'] == 2
    assert frames['skipped_gap_too_long'] == 7 and frames['skipped_after_last_position'] == 2
    expected = sorted(keep)
    np.testing.assert_array_equal(mapped.index.descriptors,
                                  folder_map.index.descriptors[expected])
    np.testing.assert_allclose(mapped.records.position_enu_m,
                               folder_map.records.position_enu_m[expected], atol=1e-3)
    with pytest.raises(BagError, match='none of the 24 images.*--max-gap-s'):
        bag_map(bag_world, embedder, tmp_path / 'none', bags=[write_sparse_pose_bag(
            bag_world, tmp_path / 'two_poses', {0, 23}, pose_offset_ns=50_000_000)],
            position_topic='/pose', image_topic='/cam')


def test_compressed_image_bag(bag_world, folder_map, embedder, tmp_path):
    bag = write_sparse_pose_bag(bag_world, tmp_path / 'jpeg', set(range(24)), compressed=True)
    mapped = bag_map(bag_world, embedder, tmp_path / 'map', bags=[bag],
                     position_topic='/pose', image_topic='/cam')
    cosine = np.sum(mapped.index.descriptors * folder_map.index.descriptors, axis=1)
    assert mapped.manifest.count == 24 and cosine.min() > 0.9


def test_bag_errors_name_the_problem_and_the_fix(bag_world, embedder, tmp_path):
    with pytest.raises(BagError, match=r"image topic '/nope' is not in the bag.*/gps/fix \("):
        bag_map(bag_world, embedder, tmp_path / 'a', image_topic='/nope')
    with pytest.raises(BagError, match='carries sensor_msgs/msg/CameraInfo.*NavSatFix'):
        bag_map(bag_world, embedder, tmp_path / 'b', position_topic='/camera/camera_info')
    with pytest.raises(BagError, match='--origin LAT LON ALT'):
        bag_map(bag_world, embedder, tmp_path / 'c', origin=None)
    with pytest.raises(BagError, match='cannot open bag'):
        bag_map(bag_world, embedder, tmp_path / 'd', bags=[tmp_path / 'missing_bag'])
    assert not any((tmp_path / name).exists() for name in 'abcd')


def test_cli_build_map_from_bag_then_map_info(bag_world, export_cache, tmp_path, capsys):
    from vl_attention.cli import main
    origin = world_origin(bag_world)
    common = ['--backend', 'onnxruntime', '--cache-dir', str(export_cache)]
    assert main(['build-map', '--bag', str(bag_world / 'bags' / 'map_day'),
                 '--position-topic', POSE_TOPIC, '--origin', str(origin.latitude_deg),
                 str(origin.longitude_deg), str(origin.altitude_m), '--out',
                 str(tmp_path / 'map'), '--keyframe-distance-m', '3', '--no-progress',
                 '--index-type', 'hnsw', '--ef-search', '32'] + common) == 0
    capsys.readouterr()
    assert main(['map', 'info', str(tmp_path / 'map'), '--verify']) == 0
    info = json.loads(capsys.readouterr().out)
    assert info['index_type'] == 'hnsw' and info['index_params']['ef_search'] == 32
    assert 0 < info['statistics']['count'] < 24 and info['statistics']['verified'] == 'full'
    assert main(['build-map', '--bag', str(bag_world / 'bags' / 'map_day'), '--out',
                 str(tmp_path / 'x'), '--image-topic', '/nope'] + common) == 1
    assert "image topic '/nope' is not in the bag" in capsys.readouterr().err
    assert main(['build-map', '--out', str(tmp_path / 'y')] + common) == 1
    assert 'give --images DIR --poses FILE, or --bag PATH' in capsys.readouterr().err
