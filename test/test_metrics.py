"""Metrics against hand-computed cases: ties, queries without positives, the ratio-test PR."""

import tracemalloc

import numpy as np
import pytest

from vl_attention.evaluation.metrics import (average_precision, covariance_honesty,
                                             latency_summary, pose_error_summary, pose_errors,
                                             positives, precision_recall_curve,
                                             ratio_test_scores, recall_at_full_precision,
                                             recall_at_n, retrieval_metrics,
                                             within_radius_mask)
from vl_attention.geo import quaternion_from_yaw_pitch_roll


def test_recall_at_n_leaves_out_queries_without_positives():
    ranked = np.array([[3, 1, 2], [0, 4, 5], [7, 8, 9]])
    positives = [np.array([1]), np.array([0, 5]), np.array([], dtype=int)]
    recalls, without = recall_at_n(ranked, positives, n_values=(1, 2, 3))
    assert recalls == {1: 0.5, 2: 1.0, 3: 1.0}
    assert without == 1


def test_positives_hand_case_is_inclusive_sorted_int64():
    database = np.array([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0], [1.0, 0.0], [0.0, -5.0001]])
    queries = np.array([[0.0, 0.0], [10.0, 1.0], [100.0, 100.0]])
    found = positives(queries, database, 5.0)
    # query 0: itself (0 m), row 3 (1 m), row 1 at exactly 5 m (inclusive); row 4 is 5.0001 m
    assert [rows.tolist() for rows in found] == [[0, 1, 3], [2], []]
    assert all(rows.dtype == np.int64 for rows in found)
    np.testing.assert_array_equal(within_radius_mask(queries, database, 5.0),
                                  [[1, 1, 0, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]])
    assert positives(np.zeros((0, 2)), database, 5.0) == ()
    assert [rows.tolist() for rows in positives(queries[:1], np.zeros((0, 2)), 5.0)] == [[]]


def test_positives_errors_name_the_problem():
    with pytest.raises(ValueError, match='same columns'):
        positives(np.zeros((1, 2)), np.zeros((1, 3)), 1.0)
    with pytest.raises(ValueError, match='finite'):
        positives(np.array([[np.nan, 0.0]]), np.zeros((1, 2)), 1.0)
    with pytest.raises(ValueError, match='radius_m=-1'):
        positives(np.zeros((1, 2)), np.zeros((1, 2)), -1.0)


def test_positives_of_100k_database_points_never_allocate_a_dense_matrix():
    rng = np.random.default_rng(0)
    database = rng.uniform(0.0, 10_000.0, size=(100_000, 2))
    queries = rng.uniform(0.0, 10_000.0, size=(2_000, 2))
    tracemalloc.start()
    found = positives(queries, database, 25.0)
    _, peak_bytes = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    dense_bytes = len(queries) * len(database) * 8       # one float64 distance matrix
    assert peak_bytes < dense_bytes / 20, (peak_bytes, dense_bytes)
    # the same answer as brute force on a sample of queries (about 2 positives each here)
    for query in range(0, len(queries), 97):
        distances = np.linalg.norm(database - queries[query], axis=1)
        np.testing.assert_array_equal(found[query], np.flatnonzero(distances <= 25.0))
    assert 1.0 < np.mean([len(rows) for rows in found]) < 5.0


def test_ratio_test_scores_without_positions_is_the_plain_ratio_test():
    similarities = np.array([[1.0, 0.5], [0.5, 0.5], [1.0, 1.0], [0.9, 0.6]])
    indices = np.array([[0, 1], [2, 3], [4, 5], [6, 7]])
    d1, d2 = np.sqrt(2 - 2 * 0.9), np.sqrt(2 - 2 * 0.6)
    np.testing.assert_allclose(ratio_test_scores(similarities, indices),
                               [1.0, 0.0, 0.0, 1 - d1 / d2])


def test_ratio_test_scores_exclude_the_best_matchs_own_place():
    similarities = np.array([[0.9, 0.89, 0.6], [0.9, 0.89, 0.6]])
    indices = np.array([[0, 1, 2], [0, 3, 2]])
    positions_m = np.array([[0.0, 0.0], [3.0, 0.0], [100.0, 0.0], [60.0, 0.0]])
    d = np.sqrt(2 - 2 * similarities[0])
    # query 0: row 1 lies 3 m from the best, so the runner-up is row 2; query 1: row 3 (60 m)
    np.testing.assert_allclose(ratio_test_scores(similarities, indices, positions_m, 25.0),
                               [1 - d[0] / d[2], 1 - d[0] / d[1]])
    # index-only: the exclusion counts frames (row 1 is 1 frame from row 0, row 2 is 2 frames)
    np.testing.assert_allclose(ratio_test_scores(similarities, indices, None, 1),
                               [1 - d[0] / d[2], 1 - d[0] / d[1]])
    # given scores rank the queries: query 0 is right, query 1 (positive 5) is wrong
    positives_ = [np.array([0]), np.array([5])]
    for scores, expected_auc in (([0.7, 0.2], 0.5), ([0.2, 0.7], 0.25)):
        result, curve = retrieval_metrics(similarities, indices, positives_, n_values=(1,),
                                          scores=np.array(scores))
        np.testing.assert_array_equal(curve['scores'], scores)
        assert result['pr_auc'] == pytest.approx(expected_auc)


def test_precision_recall_with_ties_and_query_without_positives():
    scores = [0.9, 0.5, 0.5, 0.1]
    correct = [True, False, True, True]      # the last query has no positive: never correct
    has_positive = [True, True, True, False]
    precision, recall, thresholds = precision_recall_curve(scores, correct, has_positive)
    np.testing.assert_allclose(thresholds, [0.9, 0.5, 0.1])
    np.testing.assert_allclose(precision, [1.0, 2 / 3, 0.5])
    np.testing.assert_allclose(recall, [1 / 3, 2 / 3, 2 / 3])
    assert average_precision(precision, recall) == pytest.approx(1 / 3 + (1 / 3) * (2 / 3))
    assert recall_at_full_precision(precision, recall) == pytest.approx(1 / 3)


def test_perfect_and_hopeless_rankings():
    precision, recall, _ = precision_recall_curve([0.3, 0.2], [True, True], [True, True])
    assert average_precision(precision, recall) == pytest.approx(1.0)
    assert recall_at_full_precision(precision, recall) == 1.0
    precision, recall, _ = precision_recall_curve([0.3, 0.2], [False, False], [True, True])
    assert average_precision(precision, recall) == 0.0
    assert recall_at_full_precision(precision, recall) == 0.0


def test_pose_errors_and_threshold_fractions():
    estimated = np.array([[0.1, 0, 0], [0, 0.4, 0], [6, 0, 0]])
    yaw_deg = np.array([1.0, 4.0, 1.0])
    position, rotation = pose_errors(estimated, np.zeros((3, 3)),
                                     quaternion_from_yaw_pitch_roll(np.radians(yaw_deg)),
                                     quaternion_from_yaw_pitch_roll(np.zeros(3)))
    np.testing.assert_allclose(position, [0.1, 0.4, 6.0])
    np.testing.assert_allclose(rotation, yaw_deg, atol=1e-9)
    summary = pose_error_summary(position, rotation)
    assert summary['position_median_m'] == pytest.approx(0.4)
    assert summary['within_0.25m_2deg'] == pytest.approx(1 / 3)
    assert summary['within_0.5m_5deg'] == pytest.approx(2 / 3)
    assert summary['within_5m_10deg'] == pytest.approx(2 / 3)


def test_covariance_honesty_hand_case_and_calibrated_sampling():
    result = covariance_honesty(np.array([[1.0, 0.0], [0.0, 3.0]]), np.stack([np.eye(2)] * 2))
    assert result['nees_mean'] == pytest.approx(5.0)
    assert result['inside_ellipse_fraction'] == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    covariance = np.array([[4.0, 1.0], [1.0, 2.0]])
    errors = rng.multivariate_normal(np.zeros(2), covariance, size=20000)
    honest = covariance_honesty(errors, np.broadcast_to(covariance, (20000, 2, 2)))
    assert honest['inside_ellipse_fraction'] == pytest.approx(0.95, abs=0.01)
    assert honest['nees_mean'] == pytest.approx(2.0, abs=0.05)


def test_latency_summary():
    summary = latency_summary([10, 20, 30, 40, 50], wall_s=0.5)
    assert summary['latency_p50_ms'] == 30 and summary['throughput_hz'] == 10
