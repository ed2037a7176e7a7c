"""The field's metrics: Recall@N, ratio-test precision-recall, pose errors, covariance honesty.

Conventions (stated once, used everywhere):

* a query's *positives* are database indices that show its place; queries without
  positives are left out of Recall@N (their count is reported) but count as false
  when accepted on the precision-recall curve, since any match for them is wrong;
* the precision-recall curve sweeps a threshold over the ratio-test score
  ``1 - d1 / d2`` (descriptor distances of the best and second-best match); a
  query is *accepted* when its score is >= the threshold, and equal scores are
  accepted together (ties never split);
* recall on that curve is accepted-and-correct over queries that have positives.
"""

import numpy as np
from scipy.stats import chi2

DEFAULT_N_VALUES = (1, 5, 10, 20)
POSE_THRESHOLDS = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))


def recall_at_n(ranked_indices, positives, n_values=DEFAULT_N_VALUES):
    """Recall@N over queries with positives; also return how many queries had none.

    ``ranked_indices`` is ``(Q, K)`` database indices, best first; ``positives[q]``
    is an array of database indices.
    """
    has_positive = np.array([len(p) > 0 for p in positives])
    hits = np.array([np.isin(ranked_indices[q], positives[q]) for q in range(len(positives))])
    recalls = {}
    for n in n_values:
        first_n = hits[:, :n].any(axis=1) if len(hits) else np.zeros(0, bool)
        recalls[n] = float(first_n[has_positive].mean()) if has_positive.any() else float('nan')
    return recalls, int((~has_positive).sum())


def ratio_test_scores(similarities):
    """Score ``1 - d1/d2`` per query from the top-2 inner products of unit descriptors."""
    distances = np.sqrt(np.maximum(2.0 - 2.0 * np.asarray(similarities[:, :2], np.float64), 0))
    with np.errstate(divide='ignore', invalid='ignore'):
        scores = 1.0 - distances[:, 0] / distances[:, 1]
    return np.where(distances[:, 1] > 0, scores, 0.0)


def precision_recall_curve(scores, correct, has_positive):
    """Precision and recall at every distinct threshold, thresholds descending.

    Returns ``(precision, recall, thresholds)``; the curve starts at the
    highest score (fewest accepted queries) and ends with every query accepted.
    """
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool) & np.asarray(has_positive, dtype=bool)
    order = np.argsort(-scores, kind='stable')
    sorted_scores = scores[order]
    true_cumulative = np.cumsum(correct[order])
    # the last index of each run of equal scores: ties are accepted together
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores) != 0), len(scores) - 1]
    accepted = last_of_tie + 1
    true_accepted = true_cumulative[last_of_tie]
    positives_total = max(int(np.sum(has_positive)), 1)
    return true_accepted / accepted, true_accepted / positives_total, sorted_scores[last_of_tie]


def retrieval_metrics(similarities, indices, positives, n_values=DEFAULT_N_VALUES):
    """Recall@N and the ratio-test precision-recall summary of a ranked retrieval.

    ``similarities`` / ``indices`` are the ``(Q, k)`` top-k search results (k >= 2
    for the ratio test), ``positives[q]`` the database indices matching query q.
    Returns ``(metrics, curve)``: JSON-ready numbers, and the arrays plots need.
    """
    recalls, without = recall_at_n(indices, positives, n_values)
    has_positive = np.array([len(p) > 0 for p in positives], dtype=bool)
    correct = np.array([indices[q, 0] in positives[q] for q in range(len(positives))],
                       dtype=bool)
    scores = ratio_test_scores(similarities)
    precision, recall, thresholds = precision_recall_curve(scores, correct, has_positive)
    result = {'recall_at_n': {str(n): value for n, value in recalls.items()},
              'queries_without_positives': without,
              'pr_auc': average_precision(precision, recall),
              'recall_at_100_precision': recall_at_full_precision(precision, recall)}
    curve = {'precision': precision, 'recall': recall, 'thresholds': thresholds,
             'correct': correct, 'scores': scores}
    return result, curve


def average_precision(precision, recall):
    """Area under the PR curve as average precision (step-wise, recall increments)."""
    recall_steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_steps * precision))


def recall_at_full_precision(precision, recall):
    """Largest recall reached while precision is exactly 1 (0 if never)."""
    perfect = precision >= 1.0
    return float(recall[perfect].max()) if perfect.any() else 0.0


def pose_errors(estimated_xyz, true_xyz, estimated_xyzw=None, true_xyzw=None):
    """Position errors (m) and, with quaternions, rotation errors (deg), per frame."""
    from vl_attention.geo import rotation_angle_deg
    position_m = np.linalg.norm(np.asarray(estimated_xyz) - np.asarray(true_xyz), axis=-1)
    if estimated_xyzw is None:
        return position_m, None
    return position_m, np.asarray(rotation_angle_deg(estimated_xyzw, true_xyzw))


def pose_error_summary(position_m, rotation_deg=None, thresholds=POSE_THRESHOLDS):
    """Median / mean / p95 errors and the fraction within each (metres, degrees) pair."""
    summary = {'position_median_m': float(np.median(position_m)),
               'position_mean_m': float(np.mean(position_m)),
               'position_p95_m': float(np.percentile(position_m, 95))}
    if rotation_deg is not None:
        summary |= {'rotation_median_deg': float(np.median(rotation_deg)),
                    'rotation_mean_deg': float(np.mean(rotation_deg)),
                    'rotation_p95_deg': float(np.percentile(rotation_deg, 95))}
    within = fractions_within(position_m, rotation_deg, thresholds)
    return summary | {f'within_{bound}': fraction for bound, fraction in within.items()}


def fractions_within(position_m, rotation_deg=None, thresholds=POSE_THRESHOLDS, *, total=None):
    """Fraction of ``total`` frames (default: those given) within each (metres, degrees) bound.

    Keys name the bound: ``'5m_10deg'``, or ``'5m'`` when there are no
    rotation errors (the bound is then on position alone).
    """
    position_m = np.asarray(position_m)
    total = len(position_m) if total is None else total
    fractions = {}
    for metres, degrees in thresholds:
        within = position_m <= metres
        if rotation_deg is not None:
            within &= np.asarray(rotation_deg) <= degrees
        bound = f'{metres:g}m_{degrees:g}deg' if rotation_deg is not None else f'{metres:g}m'
        fractions[bound] = float(within.sum() / total)
    return fractions


def covariance_honesty(errors, covariances, probability=0.95):
    """Fraction of errors inside the ``probability`` ellipse and the mean NEES.

    ``errors`` is ``(N, d)`` (estimate - truth), ``covariances`` ``(N, d, d)``. For
    honest covariances the fraction is close to ``probability`` and the NEES
    (normalised estimation error squared) close to ``d``.
    """
    errors = np.asarray(errors, dtype=np.float64)
    nees = np.einsum('ni,nij,nj->n', errors, np.linalg.inv(covariances), errors)
    bound = chi2.ppf(probability, df=errors.shape[1])
    return {'inside_ellipse_fraction': float(np.mean(nees <= bound)),
            'expected_fraction': probability, 'nees_mean': float(np.mean(nees)),
            'nees_expected': float(errors.shape[1])}


def latency_summary(latencies_ms, wall_s=None):
    """p50/p95 latency and, given the wall time of the run, the throughput."""
    latencies_ms = np.asarray(latencies_ms, dtype=np.float64)
    summary = {'latency_p50_ms': float(np.percentile(latencies_ms, 50)),
               'latency_p95_ms': float(np.percentile(latencies_ms, 95))}
    if wall_s:
        summary['throughput_hz'] = float(len(latencies_ms) / wall_s)
    return summary
