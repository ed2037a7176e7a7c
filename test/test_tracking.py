"""The place filter, odometry handling, triangulation and PnP on hand-made cases."""

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vl_attention.geometry.camera_model import CameraModel, world_to_optical
from vl_attention.localization.odometry import OdometryBuffer
from vl_attention.geo import headings_from_orientations
from vl_attention.localization.place_filter import (Motion, PlaceFilter, PlaceFilterConfig,
                                                    TRACKING)
from vl_attention.geometry.pnp import PnPConfig, project, solve_pnp, triangulate

CAMERA = CameraModel(320, 240, 190.0, 190.0, 159.5, 119.5)
# the likelihood that needs only the retrieved similarities (no map descriptors)
SCORES_ONLY = dict(likelihood='map_calibrated', min_evidence=0.0)


def _route(count=300):
    return np.stack([np.arange(count, dtype=float), np.zeros(count), np.zeros(count)], axis=1)


def _noisy_scores(rng, count, true_place, signal=0.1):
    scores = rng.normal(0.5, 0.05, count)
    scores[true_place] += signal
    order = np.argsort(-scores)[:20]
    return order, scores[order]


def test_filter_converges_on_a_route_where_single_frames_mostly_fail():
    rng = np.random.default_rng(0)
    places = _route()
    place_filter = PlaceFilter(places, np.zeros(len(places)), temperature=0.05,
                               config=PlaceFilterConfig(max_speed_mps=3.0, cluster_radius_m=3.0,
                                                        temperature_scale=1.0, **SCORES_ONLY))
    single, filtered = [], []
    for frame in range(120):
        candidates, scores = _noisy_scores(rng, len(places), frame)
        estimate = place_filter.step(candidates, scores, Motion(dt_s=1.0))
        single.append(candidates[0] == frame)
        filtered.append(abs(estimate.place_index - frame) <= 1)
    assert np.mean(single) < 0.8
    assert np.mean(filtered[40:]) > 0.95
    assert estimate.state == TRACKING


def test_filter_recovers_from_a_kidnap():
    rng = np.random.default_rng(1)
    places = _route()
    place_filter = PlaceFilter(places, np.zeros(len(places)), temperature=0.05,
                               config=PlaceFilterConfig(max_speed_mps=3.0, cluster_radius_m=3.0,
                                                        temperature_scale=1.0, **SCORES_ONLY))
    truth = list(range(60)) + list(range(200, 280))
    errors = []
    for frame, place in enumerate(truth):
        candidates, scores = _noisy_scores(rng, len(places), place, signal=0.15)
        estimate = place_filter.step(candidates, scores, Motion(dt_s=1.0))
        errors.append(abs(estimate.place_index - place))
    assert max(errors[20:60]) <= 1
    recovered = next(k for k in range(60, len(truth)) if all(e <= 1 for e in errors[k:k + 10]))
    assert recovered - 60 < 40, f'took {recovered - 60} frames to relocalize'


def _descriptor_route(rng, count=300, dim=64):
    descriptors = rng.standard_normal((count, dim)).astype(np.float32)
    return descriptors / np.linalg.norm(descriptors, axis=1, keepdims=True)


def _query(rng, descriptors, place, signal):
    query = signal * descriptors[place] + rng.standard_normal(descriptors.shape[1]) / 8.0
    return (query / np.linalg.norm(query)).astype(np.float32)


def _zscore_filter(descriptors):
    return PlaceFilter(_route(len(descriptors)), np.zeros(len(descriptors)), temperature=0.05,
                       config=PlaceFilterConfig(max_speed_mps=3.0, cluster_radius_m=3.0),
                       descriptors=descriptors)


def _retrieve(descriptors, query, count=20):
    similarities = descriptors @ query
    order = np.argsort(-similarities)[:count]
    return order, similarities[order]


def test_zscore_filter_tracks_places_that_retrieval_ranks_low():
    rng = np.random.default_rng(4)
    descriptors = _descriptor_route(rng)
    place_filter = _zscore_filter(descriptors)
    single, filtered, ranks = [], [], []
    for frame in range(150):
        query = _query(rng, descriptors, frame, signal=0.25)
        candidates, similarities = _retrieve(descriptors, query)
        ranks.append(int(np.sum(descriptors @ query > descriptors[frame] @ query)))
        estimate = place_filter.step(candidates, similarities, Motion(dt_s=1.0), query=query)
        single.append(candidates[0] == frame)
        filtered.append(abs(estimate.place_index - frame) <= 1)
    assert np.mean(single) < 0.5
    assert np.mean(np.array(ranks) >= 20) > 0.2, 'the true place must often miss the top 20'
    assert np.mean(filtered[50:]) > 0.95
    assert estimate.state == TRACKING and estimate.evidence > 0.3


def test_zscore_filter_does_not_claim_tracking_when_the_descriptor_says_nothing():
    rng = np.random.default_rng(5)
    descriptors = _descriptor_route(rng)
    place_filter = _zscore_filter(descriptors)
    states, evidence = [], []
    for _ in range(200):
        query = _query(rng, descriptors, 0, signal=0.0)    # unrelated to every place
        candidates, similarities = _retrieve(descriptors, query)
        estimate = place_filter.step(candidates, similarities, Motion(dt_s=1.0), query=query)
        states.append(estimate.state)
        evidence.append(estimate.evidence)
    assert TRACKING not in states
    assert np.mean(evidence) < 0.3


def test_zscore_filter_needs_descriptors_and_the_query():
    places = _route(20)
    with pytest.raises(ValueError, match='descriptors'):
        PlaceFilter(places, np.zeros(20), temperature=0.05)
    place_filter = _zscore_filter(_descriptor_route(np.random.default_rng(0), 20))
    with pytest.raises(ValueError, match='query descriptor'):
        place_filter.step(np.array([0]), np.array([0.9]), Motion(dt_s=1.0))


def test_an_extra_measurement_moves_the_belief_but_not_the_evidence():
    rng = np.random.default_rng(6)
    descriptors = _descriptor_route(rng, 50)
    place_filter = _zscore_filter(descriptors)
    query = _query(rng, descriptors, 10, signal=0.3)
    place_filter.step(*_retrieve(descriptors, query), Motion(dt_s=1.0), query=query)
    evidence = place_filter.evidence
    place_filter.apply_ratios(np.array([30]), np.array([1e6]), evidence=False)
    assert place_filter.evidence == evidence
    assert place_filter.estimate().place_index == 30


def test_odometry_moves_the_posterior_along_the_place_heading():
    places = np.array([[x, y, 0.0] for y in (0.0, 50.0) for x in range(0, 100, 2)], float)
    headings = np.where(places[:, 1] > 0, np.pi, 0.0)   # the north row faces west
    place_filter = PlaceFilter(places, headings, temperature=0.05,
                               config=PlaceFilterConfig(**SCORES_ONLY))
    start = [10, 60]   # (20, 0) facing east and (20, 50) facing west
    place_filter.update(np.array(start + [0]), np.array([0.9, 0.9, 0.5]))
    place_filter.predict(Motion(dt_s=1.0, translation_m=np.array([6.0, 0.0]),
                                source='odometry'))
    place_weights = {}
    for key, weight in zip(place_filter.indices // place_filter.speed_count,
                           place_filter.weights):
        place_weights[key] = place_weights.get(key, 0.0) + weight
    east = max((k for k in place_weights if k < 50), key=place_weights.get)
    west = max((k for k in place_weights if k >= 50), key=place_weights.get)
    np.testing.assert_allclose(places[east], [26.0, 0.0, 0.0])
    np.testing.assert_allclose(places[west], [14.0, 50.0, 0.0])


def test_filter_resets_after_a_long_gap_and_reports_lost():
    places = _route(50)
    place_filter = PlaceFilter(places, np.zeros(50), temperature=0.05,
                               config=PlaceFilterConfig(max_gap_s=5.0, temperature_scale=1.0,
                                                        **SCORES_ONLY))
    for frame in range(10):
        place_filter.step(np.array([frame]), np.array([0.9]), Motion(dt_s=1.0))
    assert len(place_filter.indices) > 0
    place_filter.step(np.array([30, 31]), np.array([0.5, 0.5]), Motion(dt_s=60.0))
    assert place_filter.state != TRACKING
    for frame in range(30, 45):     # back on the route: tracking again
        estimate = place_filter.step(np.array([frame, 5]), np.array([0.9, 0.3]),
                                     Motion(dt_s=1.0))
    assert estimate.state == TRACKING and abs(estimate.place_index - 44) <= 1
    place_filter.reset()
    assert place_filter.state == 'initialising' and len(place_filter.indices) == 0


def test_headings_of_yaw_only_orientations():
    yaw = np.radians([0.0, 90.0, -135.0])
    quaternions = Rotation.from_euler('z', yaw[:, None]).as_quat()
    np.testing.assert_allclose(headings_from_orientations(quaternions), yaw, atol=1e-12)


@pytest.mark.parametrize('problem, stamps, positions, expected', [
    ('out of order', [1.0, 0.5], [(0, 0), (0.1, 0)], 'not after'),
    ('jump', [1.0, 1.1], [(0, 0), (50, 0)], 'jumped'),
    ('nan', [1.0, 1.1], [(0, 0), (np.nan, 0)], 'NaN'),
])
def test_bad_odometry_is_refused_with_a_reason(problem, stamps, positions, expected):
    buffer = OdometryBuffer()
    assert buffer.add(stamps[0], *positions[0], 0.0) == ''
    assert expected in buffer.add(stamps[1], *positions[1], 0.0), problem


def test_odometry_motion_is_in_the_robot_frame_and_stopped_odometry_falls_back():
    buffer = OdometryBuffer()
    for k in range(11):     # driving north (yaw 90 deg) at 2 m/s
        buffer.add(k * 0.1, 0.0, 0.2 * k, np.pi / 2)
    motion = buffer.motion(0.2, 0.7)
    assert motion.source == 'odometry'
    np.testing.assert_allclose(motion.translation_m, [1.0, 0.0], atol=1e-9)
    stale = buffer.motion(0.9, 5.0)
    assert stale.translation_m is None and 'no odometry for' in stale.source


def _scene(rng, count=80):
    return np.column_stack([rng.uniform(8, 30, count), rng.uniform(-8, 8, count),
                            rng.uniform(-2, 6, count)])


def test_pnp_recovers_a_known_pose_to_a_centimetre():
    rng = np.random.default_rng(3)
    points = _scene(rng)
    position = np.array([1.0, -0.5, 1.2])
    orientation = Rotation.from_euler('zyx', [4.0, -2.0, 1.0], degrees=True).as_quat()
    pixels, depth = project(CAMERA, points, position, orientation)
    inside = (depth > 0) & np.all((pixels > 0) & (pixels < [320, 240]), axis=1)
    result = solve_pnp(points[inside], pixels[inside], CAMERA)
    assert result.ok, result.reason
    assert np.linalg.norm(result.position_enu_m - position) < 0.01
    angle = (Rotation.from_quat(result.orientation_xyzw).inv()
             * Rotation.from_quat(orientation)).magnitude()
    assert np.degrees(angle) < 0.01
    assert np.all(np.linalg.eigvalsh(result.covariance) > 0)


@pytest.mark.parametrize('ransac', ['usac', 'epnp'])
def test_pnp_finds_the_pose_among_outliers_through_lens_distortion(ransac):
    rng = np.random.default_rng(7)
    camera = CameraModel(320, 240, 190.0, 190.0, 159.5, 119.5,
                         distortion=(-0.25, 0.08, 0.001, -0.001, 0.0))
    points = _scene(rng, 200)
    position = np.array([1.0, -0.5, 1.2])
    orientation = Rotation.from_euler('zyx', [4.0, -2.0, 1.0], degrees=True).as_quat()
    rotation, translation = world_to_optical(position, orientation)
    pixels = cv2.projectPoints(points, cv2.Rodrigues(rotation)[0], translation, camera.matrix,
                               camera.distortion_coefficients)[0].reshape(-1, 2)
    outliers = rng.random(len(points)) < 0.7
    pixels[outliers] = rng.uniform([0, 0], [320, 240], (outliers.sum(), 2))
    result = solve_pnp(points, pixels, camera, PnPConfig(ransac=ransac))
    assert result.ok, result.reason
    assert result.inliers == np.count_nonzero(~outliers)
    assert np.linalg.norm(result.position_enu_m - position) < 0.01


def test_pnp_config_names_its_ransac_choices():
    with pytest.raises(ValueError, match="ransac='loransac': choose one of"):
        PnPConfig(ransac='loransac')


def test_pnp_covariance_grows_with_pixel_noise_and_degenerate_input_gets_a_reason():
    rng = np.random.default_rng(4)
    points = _scene(rng, 150)
    position, orientation = np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0])
    pixels, _ = project(CAMERA, points, position, orientation)
    clean = solve_pnp(points, pixels, CAMERA)
    noisy = solve_pnp(points, pixels + rng.normal(0, 1.5, pixels.shape), CAMERA)
    assert np.trace(noisy.covariance[:3, :3]) > 4 * np.trace(clean.covariance[:3, :3])
    line = np.column_stack([np.linspace(10, 30, 40), np.zeros(40), np.zeros(40)])
    result = solve_pnp(line, project(CAMERA, line, position, orientation)[0], CAMERA)
    assert not result.ok and 'collinear' in result.reason
    few = solve_pnp(points[:5], pixels[:5], CAMERA, PnPConfig())
    assert not few.ok and 'fewer than min_inliers' in few.reason


def test_triangulation_is_exact_on_synthetic_views():
    rng = np.random.default_rng(5)
    points = _scene(rng, 60)
    pose_a = (np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0]))
    pose_b = (np.array([1.5, 2.0, 0.0]),
              Rotation.from_euler('z', 5.0, degrees=True).as_quat())
    pixels_a, _ = project(CAMERA, points, *pose_a)
    pixels_b, _ = project(CAMERA, points, *pose_b)
    triangulated = triangulate(CAMERA, pose_a, pose_b, pixels_a, pixels_b)
    kept = np.isfinite(triangulated[:, 0])
    assert kept.mean() > 0.9
    np.testing.assert_allclose(triangulated[kept], points[kept], atol=1e-6)
