"""Dataset adapters for a robot's own data: rosbag2, image folder + CSV, the synthetic world."""

import csv

import cv2
import numpy as np
import pytest

from vl_attention.data.synthetic.bags import RosbagWriter
from vl_attention.data.synthetic.camera import PinholeCamera
from vl_attention.geo import GeodeticOrigin, geodetic_to_enu, quaternion_from_yaw_pitch_roll
from vl_attention.training.datasets import (load_place_views, place_recognition_splits,
                                            PlaceSetConfig)
from vl_attention.training.sources import DatasetLayoutError, load_dataset

ORIGIN = GeodeticOrigin(47.0, 8.0, 400.0)
POSE_TOPIC, FIX_TOPIC, IMAGE_TOPIC = '/ground_truth/pose', '/gps/fix', '/camera/image_raw'
FRAMES = 6


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Keep the default frame cache out of the home folder."""
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    return tmp_path / 'xdg' / 'vl_attention' / 'frames'


def colour(index):
    return np.array([40 * index % 256, 255 - 30 * index, 17 * index + 3], np.uint8)


def solid(index, height=24, width=32):
    return np.broadcast_to(colour(index), (height, width, 3)).copy()


def bag_truth(offset_m):
    positions = np.stack([offset_m + 3.0 * np.arange(FRAMES), np.arange(FRAMES) * 0.5,
                          np.full(FRAMES, 1.5)], axis=1)
    return positions, quaternion_from_yaw_pitch_roll(0.2 * np.arange(FRAMES))


def write_bag(path, storage, offset_m, first_stamp_ns):
    positions, quaternions = bag_truth(offset_m)
    with RosbagWriter(path, PinholeCamera.from_fov(32, 24), ORIGIN, storage=storage) as writer:
        for index in range(FRAMES):
            writer.write(solid(index), first_stamp_ns + index * 500_000_000, positions[index],
                         quaternions[index])
    return path


@pytest.fixture(scope='module')
def bags(tmp_path_factory):
    folder = tmp_path_factory.mktemp('bags')
    return (write_bag(folder / 'run_a', 'mcap', 0.0, 10**18),
            write_bag(folder / 'run_b', 'sqlite3', 100.0, 2 * 10**18))


def test_rosbag2_pose_topic_rows_values_and_frames(bags, tmp_path):
    data = load_dataset('rosbag2', root=list(bags), image_topic=IMAGE_TOPIC,
                        position_topic=POSE_TOPIC, origin=(47.0, 8.0, 400.0),
                        condition='day', cache_dir=tmp_path)
    assert len(data) == 2 * FRAMES and data.has_poses
    assert list(data.sequences) == ['run_a'] * FRAMES + ['run_b'] * FRAMES
    assert set(data.conditions) == {'day'} and set(data.splits) == {'train'}
    for part, offset_m in ((slice(0, FRAMES), 0.0), (slice(FRAMES, None), 100.0)):
        positions, quaternions = bag_truth(offset_m)
        np.testing.assert_allclose(data.positions_m[part], positions, atol=1e-9)
        np.testing.assert_allclose(data.quaternions_xyzw[part], quaternions, atol=1e-9)
    for row in (0, 4, FRAMES + 2):
        np.testing.assert_array_equal(data.load_image(row), solid(row % FRAMES))
        assert str(tmp_path) in data.image_paths[row] and data.image_paths[row].endswith('.png')
    assert data.frame == {'kind': 'enu', 'origin': {'latitude_deg': 47.0, 'longitude_deg': 8.0,
                                                    'altitude_m': 400.0}}


def test_rosbag2_reuses_cached_frames_and_keeps_every_nth(bags, tmp_path):
    options = dict(image_topic=IMAGE_TOPIC, position_topic=POSE_TOPIC, origin=ORIGIN,
                   cache_dir=tmp_path)
    first = load_dataset('rosbag2', root=bags[0], **options)
    with open(first.image_paths[1], 'wb') as handle:      # a reused file is not rewritten
        handle.write(cv2.imencode('.png', np.zeros((2, 2, 3), np.uint8))[1].tobytes())
    again = load_dataset('rosbag2', root=bags[0], **options)
    assert list(again.image_paths) == list(first.image_paths)
    assert again.load_image(1).shape == (2, 2, 3)
    np.testing.assert_array_equal(again.load_image(2), solid(2))
    every_third = load_dataset('rosbag2', root=bags[0], every_nth=3, **options)
    assert list(every_third.image_paths) == list(first.image_paths[::3])
    np.testing.assert_allclose(every_third.positions_m, bag_truth(0.0)[0][::3], atol=1e-9)


def test_rosbag2_navsatfix_shares_the_first_fix_origin(bags, private_cache):
    data = load_dataset('rosbag2', root=list(bags), image_topic=IMAGE_TOPIC,
                        position_topic=FIX_TOPIC)
    truth = np.concatenate([bag_truth(0.0)[0], bag_truth(100.0)[0]])
    np.testing.assert_allclose(data.positions_m, truth - truth[0], atol=2e-3)
    latitude, longitude, altitude = (data.frame['origin'][key] for key in
                                     ('latitude_deg', 'longitude_deg', 'altitude_m'))
    np.testing.assert_allclose(geodetic_to_enu(latitude, longitude, altitude, ORIGIN),
                               truth[0], atol=2e-3)
    assert np.all(np.abs(data.quaternions_xyzw[:, :2]) < 1e-9)       # heading only
    assert sorted(p.name.split('-')[0] for p in private_cache.iterdir()) == ['run_a', 'run_b']
    assert all(path.startswith(str(private_cache)) for path in data.image_paths)


def test_rosbag2_errors_name_the_problem(bags, tmp_path):
    with pytest.raises(DatasetLayoutError, match=r'nope.* is missing: a rosbag2 directory'):
        load_dataset('rosbag2', root=tmp_path / 'nope', image_topic=IMAGE_TOPIC,
                     position_topic=POSE_TOPIC)
    with pytest.raises(ValueError, match=r'needs image_topic=.*/camera/image_raw \(sensor_msgs'):
        load_dataset('rosbag2', root=bags[0], position_topic=POSE_TOPIC)
    with pytest.raises(ValueError, match='give the geodetic origin'):
        load_dataset('rosbag2', root=bags[0], image_topic=IMAGE_TOPIC,
                     position_topic=POSE_TOPIC, cache_dir=tmp_path)


def write_csv(path, header, rows):
    with open(path, 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def image_folder(root, count):
    (root / 'images').mkdir(parents=True)
    names = [f'{index:03d}.png' for index in range(count)]
    for index, name in enumerate(names):
        cv2.imwrite(str(root / 'images' / name), cv2.cvtColor(solid(index), cv2.COLOR_RGB2BGR))
    return names


def test_folder_csv_map_builder_poses(tmp_path):
    names = image_folder(tmp_path, 3)
    latitudes = 48.1 + np.arange(3) * 10.0 / 111_195.0
    write_csv(tmp_path / 'poses.csv', ['image', 'stamp_ns', 'latitude_deg', 'longitude_deg',
                                       'altitude_m', 'qx', 'qy', 'qz', 'qw', 'condition'],
              [[name, index, lat, 11.5, 520.0, 0, 0, 0, 2.0, 'night' if index else '']
               for index, (name, lat) in enumerate(zip(names, latitudes))])
    data = load_dataset('folder_csv', root=tmp_path, condition='day', sequence='drive1')
    assert len(data) == 3 and data.has_poses
    np.testing.assert_allclose(data.positions_m[:, 1], [0.0, 10.0, 20.0], atol=0.05)
    np.testing.assert_allclose(data.positions_m[:, [0, 2]], 0.0, atol=1e-3)
    np.testing.assert_allclose(data.quaternions_xyzw, [[0, 0, 0, 1]] * 3)
    assert list(data.conditions) == ['day', 'night', 'night']
    assert set(data.sequences) == {'drive1'} and data.frame['kind'] == 'enu'
    assert data.frame['origin']['latitude_deg'] == pytest.approx(48.1)
    np.testing.assert_array_equal(data.load_image(2), solid(2))


def test_folder_csv_metric_with_label_columns(tmp_path):
    names = image_folder(tmp_path, 4)
    write_csv(tmp_path / 'poses.csv',
              ['image', 'x_m', 'y_m', 'qx', 'qy', 'qz', 'qw', 'split', 'role', 'place_id',
               'sequence'],
              [[names[0], 1.0, 2.0, 0, 0, 0, 1, 'train', '', 5, 'a'],
               [names[1], 3.0, 4.0, 0, 0, 1, 1, 'val', 'database', 6, 'a'],
               [names[2], 5.0, 6.0, 0, 0, 0, 1, 'test', 'database', '', 'b'],
               [names[3], 7.0, 8.0, 0, 0, 0, 1, '', 'query', 7, '']])
    data = load_dataset('folder_csv', root=tmp_path, split='test', sequence='z')
    np.testing.assert_allclose(data.positions_m, [[1, 2, 0], [3, 4, 0], [5, 6, 0], [7, 8, 0]])
    np.testing.assert_allclose(data.quaternions_xyzw[1], [0, 0, 2 ** -0.5, 2 ** -0.5])
    assert list(data.splits) == ['train', 'val', 'test', 'test']
    assert list(data.roles) == ['', 'database', 'database', 'query']
    assert list(data.place_ids) == [5, 6, -1, 7] and list(data.sequences) == ['a', 'a', 'b', 'z']
    assert data.frame['kind'] == 'local'
    np.testing.assert_array_equal(data.load_image(3), solid(3))


def test_folder_csv_position_only_has_no_orientation(tmp_path):
    names = image_folder(tmp_path, 2)
    write_csv(tmp_path / 'list.csv', ['image', 'x_m', 'y_m', 'z_m'],
              [[names[0], 0, 0, 1], [names[1], 5, 0, 2]])
    data = load_dataset('folder_csv', root=tmp_path, csv_file='list.csv')
    assert data.has_positions and not data.has_poses
    np.testing.assert_allclose(data.positions_m[:, 2], [1, 2])


@pytest.mark.parametrize('row, message', [
    (['000.png', 'east', 0], r'poses\.csv:3: .*must all be numbers'),
    (['missing.png', 1, 0], r'poses\.csv:3: image .*missing\.png does not exist'),
    (['000.png', 1, 0, 'autumn'], r"poses\.csv:3: split 'autumn' is not one of"),
])
def test_folder_csv_bad_rows_name_the_line(tmp_path, row, message):
    names = image_folder(tmp_path, 1)
    write_csv(tmp_path / 'poses.csv', ['image', 'x_m', 'y_m', 'split'],
              [[names[0], 0, 0, 'train'], row])
    with pytest.raises(DatasetLayoutError, match=message):
        load_dataset('folder_csv', root=tmp_path)


def test_folder_csv_missing_files(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r'poses\.csv is missing: the poses CSV'):
        load_dataset('folder_csv', root=tmp_path)
    write_csv(tmp_path / 'poses.csv', ['image', 'east', 'north'], [['a.png', 0, 0]])
    with pytest.raises(DatasetLayoutError, match=r'images is missing: the image folder'):
        load_dataset('folder_csv', root=tmp_path)
    (tmp_path / 'images').mkdir()
    with pytest.raises(DatasetLayoutError, match=r'neither the WGS84 columns'):
        load_dataset('folder_csv', root=tmp_path)


SYNTHETIC = dict(num_places=10, conditions=('day', 'night'), width=48, height=32,
                 held_out_places=3)


def test_synthetic_rows_follow_place_recognition_splits(tmp_path):
    data = load_dataset('synthetic', root=tmp_path, **{**SYNTHETIC, 'conditions': ['day',
                                                                                   'night']})
    config = PlaceSetConfig(**SYNTHETIC)
    splits = place_recognition_splits(load_place_views(config, tmp_path), config)
    parts = {'train': splits.train, 'database': splits.database, 'query': splits.queries}
    train = data.select(split='train')
    database, queries = data.select(role='database'), data.select(role='query')
    assert len(data) == sum(len(part) for part in parts.values())
    assert len(splits.train) < 2 * (10 - 3)           # the buffer places were dropped
    for subset, views in ((train, parts['train']), (database, parts['database']),
                          (queries, parts['query'])):
        np.testing.assert_array_equal(subset.pixels, views.images)
        np.testing.assert_array_equal(subset.positions_m, views.positions_m)
        np.testing.assert_array_equal(subset.quaternions_xyzw, views.quaternions_xyzw)
        np.testing.assert_array_equal(subset.place_ids, views.place_ids)
        assert list(subset.sequences) == [f'pass{k}' for k in views.pass_ids]
    assert set(train.roles) == {''} and set(database.splits) == set(queries.splits) == {'test'}
    assert set(database.conditions) == {'day'} and set(queries.conditions) == {'night'}
    assert set(database.place_ids) == set(queries.place_ids) == {7, 8, 9}
    np.testing.assert_array_equal(data.load_image(len(data) - 1), splits.queries.images[-1])
    assert data.has_poses and data.frame['origin']['latitude_deg'] == pytest.approx(47.3769)


def test_synthetic_rejects_unknown_options(tmp_path):
    unknown = r"does not take option\(s\) \['num_place'\].*'num_places'"
    with pytest.raises(ValueError, match=unknown):
        load_dataset('synthetic', root=tmp_path, num_place=3)
    with pytest.raises(ValueError, match='held_out_places=12 must lie in'):
        load_dataset('synthetic', root=tmp_path, num_places=10, held_out_places=12)
