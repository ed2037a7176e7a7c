"""Tests of the synthetic world: determinism, exact geometry, conditions, traversals, writers."""

import json

import numpy as np
import pytest
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from vl_attention.data.synthetic import (
    generate, generate_town, get_condition, get_preset, PinholeCamera, place_occluders,
    plan_traversal, POSES_HEADER, read_poses_csv, render, render_geometry, TraversalConfig)
from vl_attention.data.synthetic.geometry import QuadBuilder
from vl_attention.data.synthetic.occluders import Occluders
from vl_attention.geo import enu_to_geodetic, quaternion_from_yaw_pitch_roll
from vl_attention.geo import quaternion_to_matrix

TINY = get_preset('tiny')


@pytest.fixture(scope='module')
def town():
    return generate_town(TINY.seed, TINY.town)


@pytest.fixture(scope='module')
def camera():
    return PinholeCamera.from_fov(160, 120, 80.0)


@pytest.fixture(scope='module')
def street_pose(town):
    traversal = plan_traversal(town, TraversalConfig(num_frames=5, heading_jitter_deg=2.0,
                                                     pitch_jitter_deg=1.0, jitter_seed=3))
    return traversal.positions_enu_m[3], traversal.quaternions_xyzw[3]


@pytest.fixture(scope='module', params=['mcap', 'sqlite3'])
def tiny_world(request, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp(f'tiny_{request.param}')
    return generate('tiny', out_dir, storage=request.param, progress=False), request.param


def test_same_seed_gives_identical_images_and_other_seed_differs(town, camera, street_pose):
    day = get_condition('day')
    first = render(town, camera, *street_pose, day, rng_seed=5)
    again = render(generate_town(TINY.seed, TINY.town), camera, *street_pose, day, rng_seed=5)
    other = render(generate_town(TINY.seed + 1, TINY.town), camera, *street_pose, day, rng_seed=5)
    assert first.shape == (120, 160, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert np.abs(first.astype(int) - other.astype(int)).mean() > 10.0


def test_ray_cast_depth_lies_on_the_hit_quad_and_reprojects(town, camera, street_pose):
    position, quaternion = street_pose
    buffers = render_geometry(town, camera, position, quaternion)
    rows, cols = np.nonzero(buffers.quad_id >= 0)
    assert len(rows) > 0.5 * camera.width * camera.height
    pick = np.random.default_rng(0).choice(len(rows), 300, replace=False)
    rows, cols = rows[pick], cols[pick]
    points = position + buffers.depth_m[rows, cols, None] * buffers.rays_enu[:, rows, cols].T
    quads = town.quads
    q = buffers.quad_id[rows, cols]
    relative = points - quads.corner[q]
    distance_to_plane_m = np.abs(np.einsum('ij,ij->i', relative, quads.normal[q]))
    assert distance_to_plane_m.max() < 2e-3 * max(1.0, buffers.depth_m[rows, cols].max())
    for edge in (quads.edge_u[q], quads.edge_v[q]):
        coordinate = np.einsum('ij,ij->i', relative, edge) / np.einsum('ij,ij->i', edge, edge)
        assert coordinate.min() > -1e-3 and coordinate.max() < 1 + 1e-3
    pixels, depth_m = camera.project(points, position, quaternion)
    np.testing.assert_allclose(pixels, np.stack([cols, rows], axis=1), atol=0.05)
    np.testing.assert_allclose(depth_m, buffers.depth_m[rows, cols], rtol=1e-4)


def test_marker_projects_where_the_pose_says(town, camera):
    position = np.array([town.street_x_m[1] + 2.0, town.street_y_m[0] + 20.0, 1.6])
    quaternion = quaternion_from_yaw_pitch_roll(1.2, 0.1, 0.0)
    axes = quaternion_to_matrix(quaternion)
    centre = position + 8.0 * axes[:, 0]
    right, up = -axes[:, 1], axes[:, 2]
    corner = centre - 0.6 * right - 0.4 * up
    builder = QuadBuilder()
    builder.add(tuple(corner), tuple(1.2 * right), tuple(0.8 * up), town.vehicle_textures[0])
    marker = Occluders(builder.build(), np.zeros((1, 6)))
    buffers = render_geometry(town, camera, position, quaternion, occluders=marker)
    rows, cols = np.nonzero(buffers.quad_id == len(town.quads))
    corners = np.array([corner, corner + 1.2 * right, corner + 1.2 * right + 0.8 * up,
                        corner + 0.8 * up])
    pixels, _ = camera.project(corners, position, quaternion)
    np.testing.assert_allclose([cols.min(), cols.max()], [pixels[:, 0].min(), pixels[:, 0].max()],
                               atol=1.0)
    np.testing.assert_allclose([rows.min(), rows.max()], [pixels[:, 1].min(), pixels[:, 1].max()],
                               atol=1.0)
    centre_px, _ = camera.project(centre, position, quaternion)
    np.testing.assert_allclose([cols.mean(), rows.mean()], centre_px[0], atol=0.5)
    image = render(town, camera, position, quaternion, get_condition('day'), 0,
                   occluders=marker)
    assert image[int(round(centre_px[0, 1])), int(round(centre_px[0, 0]))].argmax() == 0


def test_night_is_dark_but_geometry_identical(town, camera, street_pose):
    occluders = place_occluders(town, 0.5, seed=11)
    day_geometry = render_geometry(town, camera, *street_pose, occluders=occluders)
    night_geometry = render_geometry(town, camera, *street_pose, occluders=occluders)
    np.testing.assert_array_equal(day_geometry.depth_m, night_geometry.depth_m)
    np.testing.assert_array_equal(day_geometry.quad_id, night_geometry.quad_id)
    day = render(town, camera, *street_pose, get_condition('day'), 1, occluders=occluders)
    night = render(town, camera, *street_pose, get_condition('night'), 1, occluders=occluders)
    assert day.mean() > 2.5 * night.mean()
    assert night.max() > 150
    fog = render(town, camera, *street_pose, get_condition('fog'), 1, occluders=occluders)
    far = day_geometry.depth_m > 60.0
    assert far.any()
    assert fog[far].std() < 0.5 * day[far].std()


def test_conditions_change_appearance_only(town, camera, street_pose):
    images = {name: render(town, camera, *street_pose, get_condition(name), 2)
              for name in ('day', 'dusk', 'overcast', 'rain', 'snow', 'autumn', 'night+rain')}
    names = list(images)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.array_equal(images[a], images[b]), (a, b)
    with pytest.raises(ValueError, match='known'):
        get_condition('sandstorm')


def test_occluders_depend_on_traversal_seed(town):
    first = place_occluders(town, 0.4, seed=1)
    second = place_occluders(town, 0.4, seed=2)
    assert len(first) > 5 and len(second) > 5
    assert not np.array_equal(first.boxes_enu_m[:5], second.boxes_enu_m[:5])
    np.testing.assert_array_equal(first.boxes_enu_m, place_occluders(town, 0.4, 1).boxes_enu_m)


def test_traversal_is_continuous_at_configured_speed(town):
    config = TraversalConfig(route_seed=1, lateral_offset_m=1.5, speed_mps=8.0,
                             frame_rate_hz=10.0, num_frames=400, heading_jitter_deg=3.0)
    traversal = plan_traversal(town, config)
    steps_m = np.linalg.norm(np.diff(traversal.positions_enu_m, axis=0), axis=1)
    assert np.median(steps_m) == pytest.approx(0.8, rel=1e-3)
    assert steps_m.max() < 0.81 and steps_m.min() > 0.7
    np.testing.assert_array_equal(np.diff(traversal.stamps_ns), 100_000_000)
    np.testing.assert_allclose(np.linalg.norm(traversal.quaternions_xyzw, axis=1), 1.0)
    forward = quaternion_to_matrix(traversal.quaternions_xyzw)[:, :, 0]
    turn_deg = np.degrees(np.arccos(np.clip(np.sum(forward[1:] * forward[:-1], 1), -1, 1)))
    assert turn_deg.max() < 10.0
    shifted = plan_traversal(town, TraversalConfig(route_seed=1, lateral_offset_m=0.5,
                                                   num_frames=10))
    assert np.linalg.norm(shifted.positions_enu_m[0] - traversal.positions_enu_m[0]) > 0.5


def test_world_folders_and_bags_agree(tiny_world):
    out_dir, storage = tiny_world
    world = json.loads((out_dir / 'world.json').read_text())
    assert world['preset'] == 'tiny' and world['seed'] == TINY.seed
    header = (out_dir / 'map_day' / 'poses.csv').read_text().splitlines()[0]
    assert header == ','.join(POSES_HEADER)
    typestore = get_typestore(Stores.ROS2_JAZZY)
    for entry in world['traversals']:
        poses = read_poses_csv(out_dir / entry['path'] / 'poses.csv')
        assert len(poses['image']) == entry['num_frames'] == 24
        assert (out_dir / entry['path'] / 'images' / poses['image'][-1]).is_file()
        latitude, longitude, _ = enu_to_geodetic(
            np.stack([poses['x_m'], poses['y_m'], poses['z_m']], axis=1),
            _origin(world['origin']))
        np.testing.assert_allclose(latitude, poses['latitude_deg'], atol=1e-9)
        np.testing.assert_allclose(longitude, poses['longitude_deg'], atol=1e-9)
        messages = _read_bag(out_dir / entry['bag'], typestore)
        assert set(messages) == {'/camera/image_raw', '/camera/camera_info', '/gps/fix',
                                 '/ground_truth/pose'}
        fixes = messages['/gps/fix']
        np.testing.assert_array_equal([t for t, _ in fixes], poses['stamp_ns'])
        np.testing.assert_allclose([m.latitude for _, m in fixes], poses['latitude_deg'],
                                   atol=1e-9)
        np.testing.assert_allclose([m.longitude for _, m in fixes], poses['longitude_deg'],
                                   atol=1e-9)
        gt = messages['/ground_truth/pose']
        assert all(m.header.frame_id == 'map' for _, m in gt)
        stamps = [m.header.stamp.sec * 10 ** 9 + m.header.stamp.nanosec for _, m in gt]
        np.testing.assert_array_equal(stamps, poses['stamp_ns'])
        np.testing.assert_allclose([m.pose.position.x for _, m in gt], poses['x_m'], atol=1e-6)
        np.testing.assert_allclose([m.pose.orientation.w for _, m in gt], poses['qw'],
                                   atol=1e-8)
        image = messages['/camera/image_raw'][0][1]
        assert (image.width, image.height, image.encoding) == (160, 120, 'rgb8')
        assert image.header.frame_id == 'camera_optical'
    assert storage in world['traversals'][0]['bag_storage']


def _origin(origin):
    from vl_attention.geo import GeodeticOrigin
    return GeodeticOrigin(**origin)


def _read_bag(path, typestore):
    messages = {}
    with Reader(path) as reader:
        for connection, timestamp, raw in reader.messages():
            message = typestore.deserialize_cdr(raw, connection.msgtype)
            messages.setdefault(connection.topic, []).append((timestamp, message))
    return messages


def test_bad_input_raises_clear_errors(tmp_path):
    with pytest.raises(ValueError, match='tiny'):
        generate('huge', tmp_path)
    with pytest.raises(ValueError, match='width and height'):
        PinholeCamera(0, 120, 100.0, 100.0, 0.0, 60.0)
    with pytest.raises(ValueError, match='width and height'):
        PinholeCamera.from_fov(160, 0)
    with pytest.raises(ValueError, match='storage'):
        generate('tiny', tmp_path, storage='rosbag1')
    with pytest.raises(ValueError):
        TraversalConfig(speed_mps=0.0)
