"""Localizer estimation on hand-made maps, and end to end on real photos."""

import numpy as np
import pytest

from vl_attention.geo import GeodeticOrigin, quaternion_from_yaw_pitch_roll
from vl_attention.localization import Localizer, LocalizerConfig
from vl_attention.localization.localizer import descriptor_distance, ratio_test_confidence
from vl_attention.mapping import load_map, Map, MapIndex, MapManifest
from vl_attention.mapping.records import records_from_columns

ORIGIN = GeodeticOrigin(47.0, 8.0, 400.0)
METRE_DEG = 1.0 / 111_195.0


def _unit(vectors):
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _map(descriptors, north_m, yaw_deg=None):
    count = len(descriptors)
    yaw = np.radians(yaw_deg if yaw_deg is not None else np.zeros(count))
    records = records_from_columns(
        [f'{i}.png' for i in range(count)], np.arange(count),
        ORIGIN.latitude_deg + np.asarray(north_m) * METRE_DEG,
        np.full(count, ORIGIN.longitude_deg), np.full(count, ORIGIN.altitude_m),
        quaternion_from_yaw_pitch_roll(yaw), ORIGIN)
    index = MapIndex.create('flat_ip', descriptors.shape[1])
    index.add(descriptors)
    manifest = MapManifest(model_name='hand', model_fingerprint='hand', count=count,
                           descriptor_dim=descriptors.shape[1], geodetic_origin=ORIGIN)
    return Map(manifest, index, records)


def test_position_is_similarity_weighted_mean_of_nearby_neighbours():
    rng = np.random.default_rng(0)
    base = _unit(rng.normal(size=(1, 64)))[0]
    # places 0..2 along a street (0, 5, 10 m) look alike; place 3 is far away and different
    database = _unit([base + 0.05 * rng.normal(size=64) for _ in range(3)]
                     + [rng.normal(size=64)])
    localizer = Localizer(_map(database, [0.0, 5.0, 10.0, 500.0]),
                          config=LocalizerConfig(top_k=3, candidates=4))
    query = database[1] + 0.01 * (database[0] - database[1])
    result = localizer.estimate(_unit(query))
    similarities = database[:3] @ _unit(query)
    weights = np.exp((similarities - similarities.max()) / 0.02)
    expected_north = weights @ np.array([0.0, 5.0, 10.0]) / weights.sum()
    assert result.ok
    assert result.position_enu_m[1] == pytest.approx(expected_north, abs=1e-3)
    assert result.latitude_deg == pytest.approx(ORIGIN.latitude_deg
                                                + expected_north * METRE_DEG, abs=1e-8)
    assert result.neighbours[0].record_index == 1
    assert sum(n.weight for n in result.neighbours) == pytest.approx(1.0)


def test_aliased_neighbour_far_away_is_not_averaged_in():
    rng = np.random.default_rng(1)
    place = _unit(rng.normal(size=(1, 32)))[0]
    database = _unit([place, place + 0.002 * rng.normal(size=32), rng.normal(size=32)])
    localizer = Localizer(_map(database, [0.0, 900.0, 450.0]),
                          config=LocalizerConfig(top_k=3, candidates=3,
                                                 neighbour_radius_m=25.0))
    query = _unit(place + 0.01 * rng.normal(size=32))
    result = localizer.estimate(query)
    assert result.neighbours[0].record_index == 0
    assert abs(result.position_enu_m[1]) < 1e-6          # not pulled towards 900 m
    assert [n.record_index for n in result.neighbours] == [0]
    # the aliased twin 900 m away makes the match ambiguous: the ratio test sees it
    assert result.confidence < 0.2


def test_ratio_test_uses_a_different_place_as_runner_up():
    similarities = np.array([0.9, 0.89, 0.5])
    positions = np.array([[0.0, 0, 0], [3.0, 0, 0], [100.0, 0, 0]])
    d = descriptor_distance(similarities)
    expected = 1.0 - d[0] / d[2]           # the 3 m neighbour is the same place
    assert ratio_test_confidence(similarities, positions, 25.0) == pytest.approx(expected)
    # all candidates near the best: the last one is a conservative runner-up
    assert ratio_test_confidence(similarities, positions * 0.01, 25.0) == pytest.approx(expected)
    assert ratio_test_confidence(similarities[:1], positions[:1], 25.0) == 0.0


def test_ambiguous_match_gives_no_fix_with_reason():
    rng = np.random.default_rng(2)
    twin = _unit(rng.normal(size=(1, 16)))[0]
    database = np.stack([twin, twin])
    localizer = Localizer(_map(database, [0.0, 300.0]),
                          config=LocalizerConfig(top_k=1, candidates=2, min_confidence=0.1))
    result = localizer.estimate(twin)
    assert not result.ok
    assert 'below min_confidence' in result.reason and result.confidence < 0.1


def test_covariance_has_floor_grows_with_spread_and_ambiguity():
    rng = np.random.default_rng(3)
    place = _unit(rng.normal(size=(1, 64)))[0]
    database = _unit([place, place, place, rng.normal(size=64)])
    config = LocalizerConfig(top_k=3, candidates=4, position_floor_m=2.0)
    tight = Localizer(_map(database, [0.0, 0.0, 0.0, 1000.0]), config=config).estimate(place)
    spread = Localizer(_map(database, [0.0, 8.0, 16.0, 1000.0]), config=config).estimate(place)
    inflation = 1.0 / tight.confidence
    np.testing.assert_allclose(np.diag(tight.position_covariance_m2), [4 * inflation] * 3,
                               rtol=1e-6)
    assert spread.position_covariance_m2[1, 1] > tight.position_covariance_m2[1, 1] + 10.0
    covariance = spread.pose_covariance()
    assert covariance.shape == (6, 6) and np.allclose(covariance, covariance.T)
    assert np.all(np.linalg.eigvalsh(covariance) > 0)


def test_orientation_is_the_best_match():
    rng = np.random.default_rng(4)
    database = _unit(rng.normal(size=(3, 32)))
    localizer = Localizer(_map(database, [0.0, 100.0, 200.0], yaw_deg=[0.0, 90.0, 180.0]))
    result = localizer.estimate(database[1])
    np.testing.assert_allclose(np.abs(result.orientation_xyzw),
                               np.abs(quaternion_from_yaw_pitch_roll(np.radians(90.0))),
                               atol=1e-9)


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match='top_k'):
        LocalizerConfig(top_k=10, candidates=5)
    with pytest.raises(ValueError, match='min_confidence'):
        LocalizerConfig(min_confidence=1.5)


def test_real_photos_localize_to_their_own_place(photo_map, embedder, photos):
    localizer = Localizer(load_map(photo_map), embedder=embedder)
    for index, (name, rgb) in enumerate(photos.items()):
        # a different view of the same place: cropped and brightened
        view = np.clip(rgb[10:-10, 12:-12].astype(np.int16) + 20, 0, 255).astype(np.uint8)
        result = localizer.localize(view)
        assert result.neighbours[0].image_id.endswith(name + '.png')
        assert result.ok and result.position_enu_m[1] == pytest.approx(100.0 * index, abs=1.0)
        assert result.embed_ms > 0 and result.search_ms >= 0
