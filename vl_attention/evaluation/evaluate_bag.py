"""``evaluate-bag``: replay query rosbags through the Localizer and score it against ground truth.

``main(cfg, bag_paths, map_dir, out_dir) -> Path`` writes ``metrics.json``, ``report.md``,
per-frame ``frames_<model>.csv`` and PNG plots (trajectory, error CDF) into ``out_dir``.

* offline (default): the same :class:`~vl_attention.localization.Localizer` the node runs,
  over every image with ground truth in stamp order, as fast as possible. ``tracking``
  (``full``, the node's default: place filter + PnP; ``filter``; ``off``: single frames)
  picks the pipeline; with it on, ``modes`` scores the single-frame, filtered and final
  (published) estimate of the same frames side by side. ``pose_source`` (``pnp``, the
  node's default; ``retrieval``; ``regression``, a ``pose_attention`` model's pose head)
  picks the published pose, as the node's parameter of that name;
* ``realtime``: a live ``localize_node`` in its own process, fed the bag's image
  messages at recorded speed x ``rate`` (see :mod:`.realtime`).

Errors are *horizontal* (east, north) position errors in metres, because the
localizer's height is the mapped camera height and carries no information; the
covariance check uses the matching 2x2 block. Pose errors are summarised over
*accepted* frames (confidence >= ``min_confidence``, i.e. what the node publishes
as a fix); ``fraction_of_frames_within`` instead counts every frame with ground
truth, rejected or unanswered ones as failures (accuracy and availability together).

Several models (``models``): ``map_dir`` then holds one map per model, named by preset
(``<map_dir>/<preset>/manifest.json``), since a map is tied to the model that built it.
"""

import collections
import csv
from dataclasses import asdict, dataclass, field, replace
import io
import logging
from pathlib import Path
import time
from typing import Any, Counter, Dict, List, Optional, Sequence, Tuple

import numpy as np

from vl_attention.config import ConfigError
from vl_attention.data.rosbag_reader import BagError, open_bags
from vl_attention.engine.embedder import create_embedder, Embedder, EmbedderConfig
from vl_attention.evaluation import metrics
from vl_attention.evaluation.bag_records import (BagRun, FrameRecord,  # noqa: F401
                                                 horizontal_errors, record_from_result,
                                                 rotation_errors_deg)
from vl_attention.evaluation.ground_truth import frames_with_truth, read_ground_truth
from vl_attention.geo import GeodeticOrigin
from vl_attention.io import atomic_write_text, make_directory
from vl_attention.localization import Localizer, LocalizerConfig, TrackingConfig
from vl_attention.localization.localizer import POSE_SOURCES
from vl_attention.mapping.map_format import carried_model_config, load_map, Map, MANIFEST_FILE

LOG = logging.getLogger(__name__)
TRACKING_MODES = {'full': TrackingConfig(), 'filter': TrackingConfig(refine=False),
                  'off': TrackingConfig(use_filter=False, refine=False)}


@dataclass(frozen=True)
class BagEvalConfig:
    """What to evaluate and how (``gt_origin``: geodetic origin of a pose GT topic's frame)."""

    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    localizer: LocalizerConfig = field(default_factory=LocalizerConfig)
    models: Tuple[str, ...] = ()
    image_topic: str = '/camera/image_raw'
    gt_topic: str = '/ground_truth/pose'
    gt_origin: Optional[GeodeticOrigin] = None
    max_gap_s: float = 1.0
    max_frames: int = 0            # image messages to use (0 = all)
    realtime: bool = False
    rate: float = 1.0              # realtime replay speed, multiple of the recorded speed
    node_start_timeout_s: float = 180.0
    ros_domain_id: Optional[int] = None      # realtime: None = a random isolated domain
    tracking: str = 'full'         # offline: full | filter | off (see the module docstring)
    pose_source: str = 'pnp'       # the published pose: pnp | retrieval | regression

    def __post_init__(self) -> None:
        if self.tracking not in TRACKING_MODES:
            raise ConfigError(f'tracking {self.tracking!r} is not one of '
                              f'{", ".join(TRACKING_MODES)}')
        if self.pose_source not in POSE_SOURCES:
            raise ConfigError(f'pose_source {self.pose_source!r} is not one of '
                              f'{", ".join(POSE_SOURCES)}')
        if self.rate <= 0:
            raise ConfigError(f'rate must be > 0 (a multiple of the recorded speed), got '
                              f'{self.rate}')
        if self.max_gap_s < 0 or self.max_frames < 0:
            raise ConfigError('max_gap_s and max_frames must be >= 0')


def tracking_config(cfg: BagEvalConfig) -> TrackingConfig:
    """Return the Localizer's tracking settings for ``cfg.tracking`` and ``cfg.pose_source``."""
    return replace(TRACKING_MODES[cfg.tracking], pose_source=cfg.pose_source)


def localize_offline(cfg: BagEvalConfig, bag_paths: Sequence[str | Path], map_: Map,
                     embedder: Embedder, model: str) -> BagRun:
    """Run the Localizer over every image of the bags that has ground truth."""
    localizer = Localizer(map_, embedder=embedder, config=cfg.localizer,
                          tracking=tracking_config(cfg))
    skipped: Counter[str] = collections.Counter()
    records: List[FrameRecord] = []
    modes: Dict[str, List[FrameRecord]] = {'single_frame': [], 'filtered': []} \
        if cfg.tracking != 'off' else {}
    with open_bags(bag_paths) as reader:
        truth = read_ground_truth(reader, cfg.gt_topic, map_origin=map_.manifest.geodetic_origin,
                                  gt_origin=cfg.gt_origin)
        started = time.perf_counter()
        for frame_truth, decode in frames_with_truth(reader, cfg.image_topic, truth,
                                                     max_gap_s=cfg.max_gap_s, skipped=skipped,
                                                     max_frames=cfg.max_frames):
            frame_started = time.perf_counter()
            result = localizer.localize(decode(), stamp_s=frame_truth.stamp_ns * 1e-9)
            latency_ms = (time.perf_counter() - frame_started) * 1e3
            records.append(record_from_result(frame_truth, result, latency_ms))
            for mode, mode_records in modes.items():
                mode_records.append(record_from_result(frame_truth, getattr(result, mode),
                                                       latency_ms))
        wall_s = time.perf_counter() - started
    info = {'mode': 'offline', 'backend': embedder.backend_description,
            'tracking': cfg.tracking, 'pose_source': cfg.pose_source}
    stages = {mode: tuple(items) for mode, items in modes.items()} | (
        {'output': tuple(records)} if modes else {})
    return BagRun(model, tuple(records), truth, dict(skipped), wall_s, info, stages)


def pose_summary(records: Sequence[FrameRecord]) -> Dict[str, Optional[float]]:
    """Error statistics of records with an estimate (rotation 'n/a' without GT orientation)."""
    position_m = np.linalg.norm(horizontal_errors(records), axis=1)
    rotation_deg = rotation_errors_deg(records)
    summary: Dict[str, Optional[float]] = {
        **metrics.pose_error_summary(position_m, rotation_deg)}
    if rotation_deg is None:
        summary |= {'rotation_median_deg': None, 'rotation_mean_deg': None,
                    'rotation_p95_deg': None}
    return summary


def fraction_of_frames_within(records: Sequence[FrameRecord]) -> Dict[str, float]:
    """Per threshold: accepted frames within it over all frames (rejected count as failures)."""
    accepted = [r for r in records if r.accepted]
    if not accepted:
        return metrics.fractions_within(np.zeros(0), np.zeros(0), total=len(records))
    return metrics.fractions_within(np.linalg.norm(horizontal_errors(accepted), axis=1),
                                    rotation_errors_deg(accepted), total=len(records))


def score_run(run: BagRun) -> Dict[str, Any]:
    """All numbers of one run (JSON-ready)."""
    records = run.records
    if not records:
        raise BagError(f'no image of the bag(s) has ground truth on {run.truth.topic!r} '
                       f'(skipped: {run.skipped}); check the topics or raise --max-gap-s')
    accepted = [r for r in records if r.accepted]
    estimated = [r for r in records if r.has_estimate]
    latencies = [r.latency_ms for r in records if np.isfinite(r.latency_ms)]
    result: Dict[str, Any] = {
        'model': run.model, 'frames_scored': len(records),
        'frames_skipped_without_ground_truth': dict(run.skipped),
        'frames_responded': sum(r.responded for r in records),
        'frames_accepted': len(accepted), **mode_summary(records),
        'latency': metrics.latency_summary(latencies, run.wall_s) if latencies else None}
    if len(estimated) > len(accepted):
        result['all_estimates'] = pose_summary(estimated)
    if run.modes:
        result['modes'] = {mode: mode_summary(items) for mode, items in run.modes.items()}
    return result | run.info


def mode_summary(records: Sequence[FrameRecord]) -> Dict[str, Any]:
    """Summarise one estimate (a run, or one stage of it): fixes, errors, covariance honesty."""
    accepted = [r for r in records if r.accepted]
    return {'acceptance_rate': len(accepted) / len(records),
            'fraction_of_frames_within': fraction_of_frames_within(records),
            'accepted': pose_summary(accepted) if accepted else None,
            'covariance_honesty': covariance_summary(accepted) if accepted else None}


def covariance_summary(records: Sequence[FrameRecord]) -> Dict[str, float]:
    """Covariance honesty of the horizontal errors against the published 2x2 covariances."""
    covariances = np.array([r.position_covariance_m2[:2, :2] for r in records])
    return metrics.covariance_honesty(horizontal_errors(records), covariances)


def records_csv(records: Sequence[FrameRecord]) -> str:
    """Per-frame records as CSV text (one row per frame; empty cells where unknown)."""
    header = ['stamp_ns', 'responded', 'accepted', 'confidence', 'east_m', 'north_m', 'up_m',
              'sigma_east_m', 'sigma_north_m', 'truth_east_m', 'truth_north_m', 'truth_up_m',
              'position_error_m', 'rotation_error_deg', 'latency_ms']
    rotation_deg = rotation_errors_deg([r for r in records if r.has_estimate])
    rotation_of = iter(rotation_deg if rotation_deg is not None else [])
    stream = io.StringIO()
    writer = csv.writer(stream)
    writer.writerow(header)
    for r in records:
        error = np.linalg.norm(r.position_enu_m[:2] - r.truth.position_enu_m[:2])
        rotation = next(rotation_of, None) if r.has_estimate else None
        sigma = np.sqrt(np.diag(r.position_covariance_m2)[:2])
        writer.writerow([r.truth.stamp_ns, int(r.responded), int(r.accepted)] + [
            _cell(v) for v in (r.confidence, *r.position_enu_m, *sigma, *r.truth.position_enu_m,
                               error, rotation, r.latency_ms)])
    return stream.getvalue()


def _cell(value: Optional[float]) -> str:
    return '' if value is None or not np.isfinite(value) else f'{float(value):.6f}'


def model_map_dir(map_dir: str | Path, model: str, several: bool) -> Path:
    """Map of ``model``: ``map_dir`` itself, or ``map_dir/<model>`` with several models."""
    map_dir = Path(map_dir)
    candidate = map_dir / Path(model).stem
    if several or (not (map_dir / MANIFEST_FILE).is_file() and
                   (candidate / MANIFEST_FILE).is_file()):
        if not (candidate / MANIFEST_FILE).is_file():
            raise ConfigError(f'no map for model {model!r} at {candidate}: with several models, '
                              '--map must hold one map per model named by preset '
                              '(<map>/<preset>/manifest.json)')
        return candidate
    return map_dir


def evaluate_model(cfg: BagEvalConfig, bag_paths: Sequence[str | Path], map_dir: str | Path,
                   model: str, out_dir: str | Path) -> Tuple[BagRun, Map]:
    """One model, offline or realtime; return ``(BagRun, map)``."""
    embedder_cfg = replace(cfg.embedder, model=model)
    if cfg.realtime:
        from vl_attention.evaluation.realtime import localize_realtime
        map_ = load_map(map_dir)
        run = localize_realtime(cfg, bag_paths, map_dir, map_.manifest, embedder_cfg,
                                log_path=Path(out_dir) / f'localize_node_{Path(model).stem}.log')
        return replace(run, model=model), map_
    embedder = create_embedder(carried_model_config(embedder_cfg, map_dir))   # as the node
    map_ = load_map(map_dir, expected_fingerprint=embedder.fingerprint)
    return localize_offline(cfg, bag_paths, map_, embedder, embedder.card.model_name), map_


def describe_map(map_dir: str | Path, map_: Map) -> Dict[str, Any]:
    """Map description for reports."""
    manifest = map_.manifest
    return {'path': str(Path(map_dir).resolve()), 'images': manifest.count,
            'model': manifest.model_name, 'model_fingerprint': manifest.model_fingerprint,
            'descriptor_dim': manifest.descriptor_dim, 'index_type': manifest.index_type,
            'geodetic_origin': asdict(manifest.geodetic_origin)}


def main(cfg: BagEvalConfig, bag_paths: Sequence[str | Path], map_dir: str | Path,
         out_dir: str | Path) -> Path:
    """Evaluate every configured model on the query bags; write the report; return ``out_dir``."""
    from vl_attention.evaluation.report import write_bag_report
    out_dir = make_directory(out_dir, 'report directory')
    models = cfg.models or (cfg.embedder.model,)
    runs = []
    for model in models:
        model_dir = model_map_dir(map_dir, model, several=len(models) > 1)
        run, map_ = evaluate_model(cfg, bag_paths, model_dir, model, out_dir)
        result = score_run(run) | {'map': describe_map(model_dir, map_),
                                   'ground_truth': run.truth.describe()}
        LOG.info('%s: %d frames, median error %s m', model, result['frames_scored'],
                 (result['accepted'] or {}).get('position_median_m'))
        atomic_write_text(out_dir / f'frames_{Path(run.model).stem}.csv', records_csv(run.records))
        runs.append((result, run, map_))
    description = {'bags': [str(Path(p).resolve()) for p in bag_paths],
                   'image_topic': cfg.image_topic, 'gt_topic': cfg.gt_topic,
                   'max_gap_s': cfg.max_gap_s, 'mode': 'realtime' if cfg.realtime else 'offline',
                   'rate': cfg.rate if cfg.realtime else None,
                   'localizer': asdict(cfg.localizer),
                   'tracking': None if cfg.realtime else cfg.tracking,
                   'pose_source': cfg.pose_source}
    return write_bag_report(out_dir, description, runs)
