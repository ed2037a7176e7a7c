"""The field's metrics: Recall@N, ratio-test precision-recall, pose errors, covariance honesty.

Conventions (stated once, used everywhere):

* a query's *positives* are database indices that show its place; queries without
  positives are left out of Recall@N (their count is reported) but count as false
  when accepted on the precision-recall curve, since any match for them is wrong;
* positives from positions are the database points within ``radius_m`` (inclusive)
  of the query, found with a KD-tree (:func:`positives`), so memory grows with
  the number of positives and never with queries x database;
* the precision-recall curve sweeps a threshold over the node's confidence,
  :func:`~vl_attention.localization.localizer.ratio_test_confidence`: ``1 - d1 / d2``
  with d2 from the best candidate farther than an exclusion radius from the best
  match (:func:`ratio_test_scores`); a query is *accepted* when its score is >= the
  threshold, and equal scores are accepted together (ties never split);
* recall on that curve is accepted-and-correct over queries that have positives.
"""

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree
from scipy.stats import chi2

from vl_attention.localization.localizer import ratio_test_confidence

DEFAULT_N_VALUES = (1, 5, 10, 20)
POSE_THRESHOLDS = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))


def recall_at_n(ranked_indices: np.ndarray, positives: Sequence[np.ndarray],
                n_values: Sequence[int] = DEFAULT_N_VALUES) -> Tuple[Dict[int, float], int]:
    """Recall@N over queries with positives; also return how many queries had none.

    ``ranked_indices`` is ``(Q, K)`` database indices, best first; ``positives[q]``
    is an array of database indices.
    """
    has_positive = np.array([len(p) > 0 for p in positives], dtype=bool)
    hits = np.array([np.isin(ranked_indices[q], positives[q]) for q in range(len(positives))])
    recalls: Dict[int, float] = {}
    for n in n_values:
        first_n = np.asarray(hits[:, :n].any(axis=1)) if len(hits) else np.zeros(0, bool)
        recalls[n] = float(first_n[has_positive].mean()) if has_positive.any() else float('nan')
    return recalls, int((~has_positive).sum())


def positives(query_xy_m: npt.ArrayLike, database_xy_m: npt.ArrayLike,
              radius_m: float) -> Tuple[npt.NDArray[np.int64], ...]:
    """Per query, the sorted ``int64`` database indices within ``radius_m`` (inclusive).

    ``query_xy_m`` is ``(Q, d)`` and ``database_xy_m`` ``(N, d)`` metric
    coordinates (planar x, y in metres for every caller here). A KD-tree over
    the database answers the ball queries: no ``(Q, N)`` distance matrix is built.
    """
    query = _points(query_xy_m, 'query_xy_m')
    database = _points(database_xy_m, 'database_xy_m')
    if query.shape[1] != database.shape[1]:
        raise ValueError(f'query_xy_m has {query.shape[1]} coordinates per point and '
                         f'database_xy_m {database.shape[1]}; pass the same columns')
    if not np.isfinite(radius_m) or radius_m < 0:
        raise ValueError(f'radius_m={radius_m} must be a finite distance >= 0')
    if not len(query) or not len(database):
        return tuple(np.zeros(0, np.int64) for _ in range(len(query)))
    found = cKDTree(database).query_ball_point(query, r=radius_m, return_sorted=True)
    return tuple(np.asarray(rows, dtype=np.int64) for rows in found)


def within_radius_mask(query_xy_m: npt.ArrayLike, database_xy_m: npt.ArrayLike,
                       radius_m: float) -> npt.NDArray[np.bool_]:
    """Boolean ``(Q, N)`` mask of :func:`positives`: for small sets only, e.g. one batch."""
    found = positives(query_xy_m, database_xy_m, radius_m)
    mask = np.zeros((len(found), len(np.asarray(database_xy_m))), dtype=bool)
    rows = np.repeat(np.arange(len(found)), [len(columns) for columns in found])
    mask[rows, np.concatenate(found) if found else np.zeros(0, np.int64)] = True
    return mask


def _points(points: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or not np.isfinite(array).all():
        raise ValueError(f'{name} must be a finite (count, coordinates) array, got shape '
                         f'{array.shape}; drop or fill rows without a position first')
    return array


def ratio_test_scores(similarities: npt.ArrayLike, indices: npt.ArrayLike,
                      database_positions: Optional[npt.ArrayLike] = None,
                      exclusion: float = 0.0) -> npt.NDArray[np.float64]:
    """Return the node's ratio-test confidence of every query's ranked candidates.

    ``similarities`` / ``indices`` are ``(Q, k)`` search results, best first.
    With ``database_positions`` (``(N, d)``, metres) the runner-up is the best
    candidate farther than ``exclusion`` metres from the best match, exactly as
    :class:`~vl_attention.localization.Localizer` computes ``confidence``.
    Without positions the database index stands in for the position, so
    ``exclusion`` counts frames (``0``: the plain ratio test against the second match).
    """
    similarity = np.asarray(similarities, dtype=np.float64)
    ranked = np.asarray(indices)
    if database_positions is None:
        positions = ranked[..., None].astype(np.float64)
    else:
        positions = np.asarray(database_positions, dtype=np.float64)[ranked]
    return np.array([ratio_test_confidence(row, places, exclusion)
                     for row, places in zip(similarity, positions)], dtype=np.float64)


def precision_recall_curve(scores: npt.ArrayLike, correct: npt.ArrayLike,
                           has_positive: npt.ArrayLike) -> Tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
    """Precision and recall at every distinct threshold, thresholds descending.

    Returns ``(precision, recall, thresholds)``; the curve starts at the
    highest score (fewest accepted queries) and ends with every query accepted.
    """
    score = np.asarray(scores, dtype=np.float64)
    hit = np.asarray(correct, dtype=bool) & np.asarray(has_positive, dtype=bool)
    order = np.argsort(-score, kind='stable')
    sorted_scores = score[order]
    true_cumulative = np.cumsum(hit[order])
    # the last index of each run of equal scores: ties are accepted together
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores) != 0), len(score) - 1]
    accepted = last_of_tie + 1
    true_accepted = true_cumulative[last_of_tie]
    positives_total = max(int(np.sum(has_positive)), 1)
    return true_accepted / accepted, true_accepted / positives_total, sorted_scores[last_of_tie]


def retrieval_metrics(similarities: np.ndarray, indices: np.ndarray,
                      positives: Sequence[np.ndarray],
                      n_values: Sequence[int] = DEFAULT_N_VALUES, *,
                      scores: Optional[np.ndarray] = None,
                      ) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """Recall@N and the ratio-test precision-recall summary of a ranked retrieval.

    ``similarities`` / ``indices`` are the ``(Q, k)`` top-k search results (k >= 2
    for the ratio test), ``positives[q]`` the database indices matching query q.
    ``scores`` are per-query confidences (default: :func:`ratio_test_scores`
    without positions, i.e. against the second match).
    Returns ``(metrics, curve)``: JSON-ready numbers, and the arrays plots need.
    """
    recalls, without = recall_at_n(indices, positives, n_values)
    has_positive = np.array([len(p) > 0 for p in positives], dtype=bool)
    correct = np.array([indices[q, 0] in positives[q] for q in range(len(positives))],
                       dtype=bool)
    if scores is None:
        scores = ratio_test_scores(similarities, indices)
    precision, recall, thresholds = precision_recall_curve(scores, correct, has_positive)
    result: Dict[str, Any] = {
        'recall_at_n': {str(n): value for n, value in recalls.items()},
        'queries_without_positives': without,
        'pr_auc': average_precision(precision, recall),
        'recall_at_100_precision': recall_at_full_precision(precision, recall)}
    curve = {'precision': precision, 'recall': recall, 'thresholds': thresholds,
             'correct': correct, 'scores': scores}
    return result, curve


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the PR curve as average precision (step-wise, recall increments)."""
    recall_steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_steps * precision))


def recall_at_full_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Largest recall reached while precision is exactly 1 (0 if never)."""
    perfect = precision >= 1.0
    return float(recall[perfect].max()) if perfect.any() else 0.0


def pose_errors(estimated_xyz: npt.ArrayLike, true_xyz: npt.ArrayLike,
                estimated_xyzw: Optional[npt.ArrayLike] = None,
                true_xyzw: Optional[npt.ArrayLike] = None,
                ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Position errors (m) and, with quaternions, rotation errors (deg), per frame."""
    from vl_attention.geo import rotation_angle_deg
    position_m = np.linalg.norm(np.asarray(estimated_xyz) - np.asarray(true_xyz), axis=-1)
    if estimated_xyzw is None or true_xyzw is None:
        return position_m, None
    return position_m, np.asarray(rotation_angle_deg(estimated_xyzw, true_xyzw))


def pose_error_summary(position_m: npt.ArrayLike, rotation_deg: Optional[npt.ArrayLike] = None,
                       thresholds: Sequence[Tuple[float, float]] = POSE_THRESHOLDS,
                       ) -> Dict[str, float]:
    """Median / mean / p95 errors and the fraction within each (metres, degrees) pair."""
    position = np.asarray(position_m, dtype=np.float64)
    summary = {'position_median_m': float(np.median(position)),
               'position_mean_m': float(np.mean(position)),
               'position_p95_m': float(np.percentile(position, 95))}
    if rotation_deg is not None:
        rotation = np.asarray(rotation_deg, dtype=np.float64)
        summary |= {'rotation_median_deg': float(np.median(rotation)),
                    'rotation_mean_deg': float(np.mean(rotation)),
                    'rotation_p95_deg': float(np.percentile(rotation, 95))}
    within = fractions_within(position_m, rotation_deg, thresholds)
    return summary | {f'within_{bound}': fraction for bound, fraction in within.items()}


def fractions_within(position_m: npt.ArrayLike, rotation_deg: Optional[npt.ArrayLike] = None,
                     thresholds: Sequence[Tuple[float, float]] = POSE_THRESHOLDS, *,
                     total: Optional[int] = None) -> Dict[str, float]:
    """Fraction of ``total`` frames (default: those given) within each (metres, degrees) bound.

    Keys name the bound: ``'5m_10deg'``, or ``'5m'`` when there are no
    rotation errors (the bound is then on position alone).
    """
    position = np.asarray(position_m)
    total = len(position) if total is None else total
    fractions = {}
    for metres, degrees in thresholds:
        within = position <= metres
        if rotation_deg is not None:
            within &= np.asarray(rotation_deg) <= degrees
        bound = f'{metres:g}m_{degrees:g}deg' if rotation_deg is not None else f'{metres:g}m'
        fractions[bound] = float(within.sum() / total)
    return fractions


def covariance_honesty(errors: npt.ArrayLike, covariances: npt.ArrayLike,
                       probability: float = 0.95) -> Dict[str, float]:
    """Fraction of errors inside the ``probability`` ellipse and the mean NEES.

    ``errors`` is ``(N, d)`` (estimate - truth), ``covariances`` ``(N, d, d)``. For
    honest covariances the fraction is close to ``probability`` and the NEES
    (normalised estimation error squared) close to ``d``.
    """
    error = np.asarray(errors, dtype=np.float64)
    inverse = np.linalg.inv(np.asarray(covariances, dtype=np.float64))
    nees: np.ndarray = np.einsum('ni,nij,nj->n', error, inverse, error)
    bound = chi2.ppf(probability, df=error.shape[1])
    return {'inside_ellipse_fraction': float(np.mean(nees <= bound)),
            'expected_fraction': probability, 'nees_mean': float(np.mean(nees)),
            'nees_expected': float(error.shape[1])}


def latency_summary(latencies_ms: npt.ArrayLike,
                    wall_s: Optional[float] = None) -> Dict[str, float]:
    """p50/p95 latency and, given the wall time of the run, the throughput."""
    latencies = np.asarray(latencies_ms, dtype=np.float64)
    summary = {'latency_p50_ms': float(np.percentile(latencies, 50)),
               'latency_p95_ms': float(np.percentile(latencies, 95))}
    if wall_s:
        summary['throughput_hz'] = float(len(latencies) / wall_s)
    return summary
