"""Queries as one route-ordered sequence through the place filter: filtered Recall@1 and fixes.

The same :class:`~vl_attention.localization.place_filter.PlaceFilter` the node
runs, without odometry (bounded speed along the database route). The database
is the map: its positions (metres) where the dataset has them, else its index
along the route (one unit per image). Speeds are in database units per query.
"""

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np

from vl_attention.config import ConfigError
from vl_attention.localization.place_filter import Motion, PlaceFilter, PlaceFilterConfig, \
    TRACKING
from vl_attention.mapping.index import MapIndex


@dataclass(frozen=True)
class SequenceConfig:
    """Motion bounds of the sequence, in database spacings per query."""

    max_step: float = 2.0          # the fastest a query moves along the route per frame
    speed_bins: int = 9
    candidates: int = 20
    cluster_spacings: float = 3.0  # the estimate's cluster radius, in spacings

    def __post_init__(self) -> None:
        if self.max_step <= 0 or self.candidates < 1 or self.cluster_spacings <= 0:
            raise ConfigError('need max_step > 0, candidates >= 1 and cluster_spacings > 0')


def route_layout(count: int,
                 database_xy_m: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
    """Return database positions ``(N, 3)``, headings along the route, and the spacing."""
    if database_xy_m is None:
        xy = np.column_stack([np.arange(count, dtype=float), np.zeros(count)])
    else:
        xy = np.asarray(database_xy_m, np.float64)[:, :2]
    if count < 2:
        return np.column_stack([xy, np.zeros(count)]), np.zeros(count), 1.0
    step = np.gradient(xy, axis=0)
    headings = np.arctan2(step[:, 1], step[:, 0])
    spacing = float(np.median(np.linalg.norm(np.diff(xy, axis=0), axis=1)))
    return np.column_stack([xy, np.zeros(count)]), headings, max(spacing, 1e-6)


def filter_sequence(database: np.ndarray, queries: np.ndarray, positives: Sequence,
                    *, database_xy_m: Optional[np.ndarray] = None,
                    config: SequenceConfig = SequenceConfig(),
                    filter_config: Optional[PlaceFilterConfig] = None,
                    splits: Optional[dict[str, tuple[int, int]]] = None) -> dict:
    """Single-frame and filtered Recall@1, fix rate and fix precision, per split of queries.

    ``splits`` maps a name to a ``(start, stop)`` query range; each split runs a
    fresh filter (default: one split, ``all``). A *fix* is a frame the filter
    calls tracking; ``fix_precision`` is the share of fixes at a positive.
    """
    positions, headings, spacing = route_layout(len(database), database_xy_m)
    filter_config = filter_config or PlaceFilterConfig()
    filter_config = replace(filter_config, max_speed_mps=config.max_step * spacing,
                            speed_bins=config.speed_bins,
                            cluster_radius_m=config.cluster_spacings * spacing)
    index = MapIndex.build(database, 'flat_ip')
    count = min(max(config.candidates, filter_config.reference_candidates), len(database))
    reference, candidates = index.search(queries, count)
    temperature = _temperature(index, database, positions, spacing, filter_config)
    rows = {}
    for name, (start, stop) in (splits or {'all': (0, len(queries))}).items():
        place_filter = PlaceFilter(positions, headings, temperature=temperature,
                                   config=filter_config, descriptors=database)
        rows[name] = _run_split(place_filter, queries, reference, candidates, positives,
                                config.candidates, start, stop)
    return rows


def _temperature(index: MapIndex, database: np.ndarray, positions: np.ndarray, spacing: float,
                 filter_config: PlaceFilterConfig) -> float:
    """Fit the map-calibrated temperature only for the likelihood that uses it."""
    if filter_config.likelihood != 'map_calibrated':
        return 1.0
    from vl_attention.mapping.calibration import calibrate_similarities
    return calibrate_similarities(index, database, positions,
                                  exclusion_m=5.0 * spacing).impostor_similarity_std


def _run_split(place_filter: PlaceFilter, queries: np.ndarray, reference: np.ndarray,
               candidates: np.ndarray, positives: Sequence, top: int, start: int,
               stop: int) -> dict:
    """Step the filter over queries ``start:stop``; the split's row."""
    single, filtered, tracking = [], [], []
    for query in range(start, stop):
        estimate = place_filter.step(candidates[query, :top], reference[query, :top],
                                     Motion(dt_s=1.0), reference=reference[query],
                                     query=queries[query])
        positive = set(positives[query])
        single.append(int(candidates[query, 0]) in positive)
        filtered.append(estimate.place_index in positive)
        tracking.append(estimate.state == TRACKING)
    hits, fixes = np.array(filtered, bool), np.array(tracking, bool)
    return {'queries': stop - start, 'single_frame_recall_at_1': float(np.mean(single)),
            'filtered_recall_at_1': float(np.mean(hits)),
            'tracking_fraction': float(np.mean(fixes)),
            'fix_precision': float(np.mean(hits[fixes])) if fixes.any() else None}
