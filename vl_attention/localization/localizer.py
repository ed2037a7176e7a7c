"""The Localizer: embed -> top-k search -> position, orientation, covariance, confidence.

No ROS here: the node and the evaluator call the same code.

* position: similarity-weighted mean (softmax over cosine similarity) of the
  top-k neighbours that lie within ``neighbour_radius_m`` of the best match,
  so an aliased place elsewhere in the map cannot drag the estimate between
  two streets;
* orientation: the best match's;
* confidence: ratio test ``1 - d1 / d2`` on descriptor distances, where d2 is
  the best match from a *different place* (farther than
  ``ratio_test_exclusion_m`` from the best), because neighbouring frames of
  one place are near-duplicates and would make every ratio close to 1;
* covariance: weighted spread of the neighbours plus a floor (``*_floor``
  standard deviations), inflated by ``1 / confidence`` so that an ambiguous
  match reports a proportionally larger uncertainty.

The published pose is chosen by ``TrackingConfig.pose_source``: ``pnp`` (the
PnP pose where refinement verified the frame, else the filter's or the single
frame's estimate), ``retrieval`` (the filter's or the single frame's estimate;
PnP only verifies), or ``regression`` (the pose head of a ``pose_attention``
model, gated by and compared with the retrieval pipeline's estimate).
"""

from dataclasses import dataclass, field, replace
import logging
import time
from typing import Optional, TYPE_CHECKING

import numpy as np
from scipy.spatial.transform import Rotation

from vl_attention.config import ConfigError
from vl_attention.geo import enu_to_geodetic, headings_from_orientations
from vl_attention.mapping.calibration import calibrate_similarities
from vl_attention.mapping.errors import MapFormatError
from vl_attention.localization.odometry import motion_without_odometry
from vl_attention.localization.place_filter import (FilterEstimate, PlaceFilter,
                                                    PlaceFilterConfig, TRACKING)
from vl_attention.localization.refinement import RefinedPose, Refiner, RefinementConfig

if TYPE_CHECKING:
    import numpy.typing as npt

    from vl_attention.engine.embedder import Embedder
    from vl_attention.io import StrPath
    from vl_attention.localization.place_filter import Motion
    from vl_attention.mapping.map_format import Map

LOG = logging.getLogger(__name__)
POSE_SOURCES = ('pnp', 'retrieval', 'regression')


@dataclass(frozen=True)
class LocalizerConfig:
    """Estimation settings."""

    top_k: int = 5
    candidates: int = 20
    neighbour_radius_m: float = 25.0
    ratio_test_exclusion_m: float = 25.0
    min_confidence: float = 0.05
    similarity_temperature: float = 0.02
    position_floor_m: float = 1.0
    orientation_floor_deg: float = 5.0

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.candidates < self.top_k:
            raise ConfigError('need 1 <= top_k <= candidates')
        if self.similarity_temperature <= 0:
            raise ConfigError('similarity_temperature must be > 0')
        if not 0.0 <= self.min_confidence < 1.0:
            raise ConfigError('min_confidence must be in [0, 1)')


@dataclass(frozen=True)
class Neighbour:
    """One retrieved database image."""

    record_index: int
    image_id: str
    similarity: float
    weight: float


@dataclass(frozen=True)
class LocalizationResult:
    """Outcome for one frame; ``ok`` False means "no fix" and ``reason`` says why."""

    ok: bool
    reason: str
    confidence: float
    position_enu_m: np.ndarray
    latitude_deg: float
    longitude_deg: float
    altitude_m: float
    orientation_xyzw: np.ndarray
    position_covariance_m2: np.ndarray
    orientation_covariance_rad2: np.ndarray
    neighbours: tuple[Neighbour, ...]
    embed_ms: float = 0.0
    search_ms: float = 0.0
    pose_source: str = 'retrieval'        # retrieval | filter | pnp | regression
    filter_state: str = ''                # '' (no filter) | initialising | tracking | lost
    filter_mass: float = float('nan')
    place_index: int = -1
    inliers: int = 0
    refinement: str = ''                  # '' = refined or not tried; else why not
    refine_ms: float = 0.0
    motion_source: str = ''               # odometry | bounded_speed (with the reason)
    single_frame: Optional['LocalizationResult'] = None
    filtered: Optional['LocalizationResult'] = None     # the filter's estimate before PnP

    def pose_covariance(self) -> np.ndarray:
        """6x6 covariance (x, y, z, rotation about x, y, z) as in PoseWithCovariance."""
        covariance = np.zeros((6, 6))
        covariance[:3, :3] = self.position_covariance_m2
        covariance[3:, 3:] = self.orientation_covariance_rad2
        return covariance


@dataclass(frozen=True)
class TrackingConfig:
    """What runs after the single-frame estimate: the place filter and PnP refinement."""

    use_filter: bool = True
    filter: PlaceFilterConfig = field(default_factory=PlaceFilterConfig)
    refine: bool = True
    refinement: RefinementConfig = field(default_factory=RefinementConfig)
    # a PnP pose at a place is a measurement of the filter: that place's belief x this ratio
    verification_ratio: float = 20.0
    # with refinement on, a filter estimate is a fix only if PnP verified a place within
    # the filter's cluster radius in the last ``verification_frames`` frames (0: never required)
    # and the estimate has not jumped since (farther than the cluster radius plus what
    # max_speed_mps or the odometry allows): a verification belongs to the track it verified
    # chosen on the synthetic validation town: night output within 5 m 0.818 / 0.955 / 0.985 /
    # 0.985 for 20 / 30 / 40 / 60, with no wrong fix and the same kidnap recovery in each
    verification_frames: int = 40
    # the published pose (module docstring): pnp | retrieval | regression
    pose_source: str = 'pnp'
    # a filter estimate is no fix on a frame whose log Bayes factor (nats) is below this: the
    # frame is less likely under the filter's belief than under a uniform one, as the first
    # frames after a kidnap are. On the validation town's kidnaps every frame published on the
    # old place had <= 0.07; 1% of the right, tracking frames had < 0.26 (night) / 0.9 (dusk).
    # float('-inf') turns the check off
    min_frame_evidence: float = 0.2
    # regression: a regressed position farther than this from the pipeline's estimate is no fix
    max_regression_offset_m: float = 25.0

    def __post_init__(self) -> None:
        if self.verification_ratio < 1.0 or self.verification_frames < 0:
            raise ConfigError('need verification_ratio >= 1 and verification_frames >= 0')
        if self.pose_source not in POSE_SOURCES:
            raise ConfigError(f'pose_source {self.pose_source!r} is not one of {POSE_SOURCES}')
        if self.max_regression_offset_m <= 0:
            raise ConfigError('max_regression_offset_m must be > 0')


class Localizer:
    """Localizes frames (or descriptors) against one map.

    :meth:`estimate` is the single-frame estimate; :meth:`localize` runs the
    whole pipeline: single frame -> place filter -> PnP refinement, as
    ``tracking`` (a :class:`TrackingConfig`) asks; ``tracking=None`` keeps
    every frame on its own (single-frame localization, no refinement). With
    refinement, a PnP pose is also a measurement of the filter, and a filter
    estimate is a fix only while PnP has verified a place near it within
    ``verification_frames`` frames: a weak descriptor can lock the filter
    onto a look-alike place, and geometry is what tells them apart. When the
    estimate jumps (a kidnap, or a jump to a look-alike), the verification,
    which was of the track it left, is void until PnP verifies the new place;
    so it is when PnP places a frame farther than ``max_offset_from_filter_m``
    from the estimate (the robot was moved, and the filter has not followed
    yet). Such a PnP pose is remembered: when the estimate reaches it within
    ``verification_frames`` frames (and the motion allowed since), the new
    track counts as verified from that frame. Nor is a filter estimate a fix
    on a frame that speaks against it (its log Bayes factor below
    ``min_frame_evidence``), as the first frames after a kidnap do.
    """

    def __init__(self, map_: 'Map', *, embedder: Optional['Embedder'] = None,
                 config: LocalizerConfig = LocalizerConfig(),
                 tracking: Optional[TrackingConfig] = None) -> None:
        if len(map_.index) == 0:
            raise MapFormatError('the map is empty; build it from at least one image')
        if embedder is not None and embedder.fingerprint != map_.manifest.model_fingerprint:
            raise MapFormatError(f'map built with model fingerprint '
                                 f'{map_.manifest.model_fingerprint}, embedder has '
                                 f'{embedder.fingerprint}; rebuild the map with this model')
        self.map = map_
        self.embedder = embedder
        self.config = config
        self.tracking = tracking = tracking or TrackingConfig(use_filter=False, refine=False)
        if tracking.pose_source == 'regression' and embedder is not None and \
                not embedder.card.has_pose:
            raise ConfigError(f'pose_source regression needs a model with a pose head; '
                              f'{embedder.card.model_name} has none (use a pose_attention '
                              'model trained on the mapped scene, or pose_source pnp)')
        self.place_filter = _create_filter(map_, tracking) if tracking.use_filter else None
        self.refiner, self.refinement_note = _create_refiner(map_, tracking)
        self._last_stamp_s: Optional[float] = None
        self._track = _TrackMotion()
        self._verification = _Verification()

    @classmethod
    def from_map(cls, map_dir: 'StrPath', *, backend: str = 'auto', threads: int = 0,
                 config: LocalizerConfig = LocalizerConfig(),
                 tracking: Optional[TrackingConfig] = None) -> 'Localizer':
        """Load a map and the model it carries; the full pipeline unless ``tracking`` says less.

        Imports no torch on the ONNX Runtime / TensorRT backends.
        """
        from vl_attention.engine.embedder import create_embedder, EmbedderConfig
        from vl_attention.mapping import load_map, map_model_dir
        model_dir = map_model_dir(map_dir)
        if model_dir is None:
            raise MapFormatError(f'{map_dir} carries no model (built before map format 3, or '
                                 'with the torch backend); rebuild it with `vl-attention '
                                 'build-map`, or create an embedder and pass it to Localizer')
        embedder = create_embedder(EmbedderConfig(export_dir=str(model_dir), backend=backend,
                                                  threads=threads))
        map_ = load_map(map_dir, expected_fingerprint=embedder.fingerprint)
        return cls(map_, embedder=embedder, config=config,
                   tracking=tracking or TrackingConfig())

    def reset(self) -> None:
        """Forget the filter's belief (global relocalization from the next frame)."""
        if self.place_filter is not None:
            self.place_filter.reset()
        self._last_stamp_s = None
        self._track = _TrackMotion()
        self._verification = _Verification()

    def localize(self, frame: np.ndarray, *, stamp_s: Optional[float] = None,
                 motion: Optional['Motion'] = None) -> LocalizationResult:
        """Embed one uint8 RGB frame and run the whole pipeline.

        ``motion`` (a :class:`Motion`, e.g. from odometry) defaults to the
        bounded-speed model over the time since the previous frame.
        """
        if self.embedder is None:
            raise ConfigError('this Localizer was made without an embedder: pass embedder=, '
                              'use Localizer.from_map, or call track() with a descriptor')
        if self.tracking.pose_source != 'regression':
            descriptor = self.embedder.embed([frame])[0]
            result = self.track(descriptor, stamp_s=stamp_s, motion=motion, frame=frame)
            return replace(result, embed_ms=self.embedder.last_latency_ms)
        descriptors, positions_m, orientations_xyzw = self.embedder.embed_with_pose([frame])
        embed_ms = self.embedder.last_latency_ms
        result = self.track(descriptors[0], stamp_s=stamp_s, motion=motion, frame=frame)
        return replace(self._regressed(result, positions_m[0], orientations_xyzw[0]),
                       embed_ms=embed_ms)

    def track(self, descriptor: np.ndarray, *, stamp_s: Optional[float] = None,
              motion: Optional['Motion'] = None,
              frame: Optional[np.ndarray] = None) -> LocalizationResult:
        """Single-frame estimate, then the filter, then refinement (with ``frame``)."""
        single, similarities, indices, reference = self._single_frame(descriptor)
        result, filtered = single, None
        if self.place_filter is not None:
            if motion is None:
                motion = motion_without_odometry(self._last_stamp_s, stamp_s,
                                                 self.tracking.filter.default_dt_s)
            estimate = self.place_filter.step(indices, similarities, motion, stamp_s=stamp_s,
                                              reference=reference, query=descriptor)
            self._void_on_jump(estimate, motion)
            self._verification.adopt(estimate, self.tracking.filter.cluster_radius_m,
                                     self.tracking.verification_frames)
            result = filtered = replace(self._filtered(single, estimate),
                                        motion_source=motion.source)
        self._last_stamp_s = stamp_s if stamp_s is not None else self._last_stamp_s
        if frame is not None and self.refiner is not None:
            refined = self._verify(result, frame, indices)
            result = self._refined(result, refined)
        elif self.refinement_note:
            result = replace(result, refinement=self.refinement_note)
        return replace(result, single_frame=single, filtered=filtered)

    def _verify(self, result: LocalizationResult, frame: np.ndarray,
                indices: np.ndarray) -> tuple[RefinedPose, float]:
        """Run PnP on the candidate places; feed a pose found back to the filter."""
        assert self.refiner is not None   # track() verifies only with a refiner
        started = time.perf_counter()
        places = _refinement_places(result, indices, self.tracking.refinement.candidates)
        refined = self.refiner.refine(frame, places, budgeted=self._budgeted(result))
        verification = self._verification
        verification.age()
        if refined.ok and self.place_filter is not None:
            self.place_filter.apply_ratios(np.array([refined.place_index]),
                                           np.array([self.tracking.verification_ratio]),
                                           evidence=False)
            if result.place_index >= 0:
                offset_m = float(np.linalg.norm(refined.position_enu_m[:2]
                                                - result.position_enu_m[:2]))
                verification.observe(refined.position_enu_m, offset_m,
                                     self.tracking.filter.cluster_radius_m,
                                     self.tracking.refinement.max_offset_from_filter_m)
        return refined, (time.perf_counter() - started) * 1e3

    def _budgeted(self, result: LocalizationResult) -> bool:
        """Return whether refinement's time budget applies: not while the filter is not tracking.

        Then the other candidates' poses are what relocalizes it.
        """
        return self.place_filter is None or result.filter_state == TRACKING

    def _void_on_jump(self, estimate: FilterEstimate, motion: 'Motion') -> None:
        """Void the PnP verification when the filter's estimate jumps to another track.

        A jump is a move since the previous estimate farther than the filter's
        ``cluster_radius_m`` plus the distance the motion model allows meanwhile
        (``max_speed_mps`` x the elapsed time, or the odometry's translation).
        """
        cfg = self.tracking.filter
        frame_reach_m = max(cfg.max_speed_mps * motion.dt_s, 0.0 if motion.translation_m is None
                            else float(np.linalg.norm(motion.translation_m)))
        jump = self._track.step(estimate, frame_reach_m, motion.dt_s)
        self._verification.move(frame_reach_m)
        if jump is None or self._verification.frames_since is None:
            return
        moved_m, reach_m, elapsed_s = jump
        if moved_m > cfg.cluster_radius_m + reach_m:
            self._verification.void(
                f'its estimate jumped {moved_m:.1f} m in {elapsed_s:.2f} s (> cluster_radius_m '
                f'{cfg.cluster_radius_m:g} + {reach_m:.1f} m of motion allowed), off the track '
                'PnP verified; no fix until PnP verifies the new place')

    def _unverified(self, result: LocalizationResult) -> LocalizationResult:
        """Return the filter's fix withdrawn when PnP has not verified its track recently."""
        frames = self.tracking.verification_frames
        since = self._verification.frames_since
        if not (result.ok and result.pose_source == 'filter' and frames) or \
                (since is not None and since < frames):
            return result
        if self._verification.void_note:
            return replace(result, ok=False, reason='filter tracking, but PnP verification '
                           f'void: {self._verification.void_note}')
        return replace(result, ok=False, reason=f'filter tracking, but PnP verified no place '
                       f'near its estimate in the last {frames} frames')

    def _single_frame(self, descriptor: np.ndarray) -> tuple[LocalizationResult, np.ndarray,
                                                             np.ndarray, np.ndarray]:
        """Single-frame result, the candidates' similarities and indices, and the reference."""
        count = self.config.candidates
        if self.place_filter is not None and \
                self.tracking.filter.likelihood == 'query_normalised':
            count = max(count, self.tracking.filter.reference_candidates)
        started = time.perf_counter()
        similarities, indices = self.map.index.search(descriptor[None], count)
        search_ms = (time.perf_counter() - started) * 1e3
        valid = indices[0] >= 0
        reference, indices = similarities[0][valid], indices[0][valid]
        similarities = reference[:self.config.candidates]
        indices = indices[:self.config.candidates]
        result = self._estimate_from(similarities, indices)
        return replace(result, search_ms=search_ms), similarities, indices, reference

    def _filtered(self, single: LocalizationResult,
                  estimate: FilterEstimate) -> LocalizationResult:
        ok = estimate.state == TRACKING
        cfg = self.tracking.filter
        reason = '' if ok else (f'filter {estimate.state}: posterior mass {estimate.mass:.2f} '
                                f'near the best place, evidence {estimate.evidence:.2f} '
                                f'nats/frame (tracking needs {cfg.tracking_mass:.2f} and '
                                f'{cfg.min_evidence:.2f})')
        floor = self.tracking.min_frame_evidence
        if ok and estimate.frame_evidence < floor:
            ok, reason = False, (f'filter tracking, but this frame contradicts its estimate '
                                 f'(log Bayes factor {estimate.frame_evidence:.2f} < '
                                 f'min_frame_evidence {floor:g} nats; a kidnap, or a frame '
                                 'unlike the map)')
        if estimate.place_index < 0:
            return replace(single, ok=False, reason=reason, pose_source='filter',
                           filter_state=estimate.state, filter_mass=estimate.mass)
        records = self.map.records
        orientation = records.orientation_xyzw[estimate.place_index]
        latitude, longitude, altitude = enu_to_geodetic(estimate.position_enu_m,
                                                        self.map.manifest.geodetic_origin)
        orientation_cov = np.eye(3) * np.radians(self.config.orientation_floor_deg) ** 2
        return replace(single, ok=ok, reason=reason, confidence=float(estimate.mass),
                       position_enu_m=estimate.position_enu_m, latitude_deg=float(latitude),
                       longitude_deg=float(longitude), altitude_m=float(altitude),
                       orientation_xyzw=orientation.copy(),
                       position_covariance_m2=estimate.position_covariance_m2,
                       orientation_covariance_rad2=orientation_cov, pose_source='filter',
                       filter_state=estimate.state, filter_mass=estimate.mass,
                       place_index=estimate.place_index)

    def _refined(self, result: LocalizationResult,
                 verification: tuple[RefinedPose, float]) -> LocalizationResult:
        refined, refine_ms = verification
        if not refined.ok:
            return replace(self._unverified(result), refinement=refined.reason,
                           inliers=refined.inliers, refine_ms=refine_ms)
        gate = self.tracking.refinement.max_offset_from_filter_m
        offset = float(np.linalg.norm(refined.position_enu_m[:2] - result.position_enu_m[:2]))
        if result.pose_source == 'filter' and result.ok and offset > gate:
            return replace(self._unverified(result), refinement=f'PnP pose {offset:.1f} m from '
                           f'the filter estimate (> max_offset_from_filter_m {gate:g}); neither '
                           'is published until they agree', inliers=refined.inliers,
                           refine_ms=refine_ms)
        if self.tracking.pose_source != 'pnp':   # PnP verified the place; its pose is not used
            return replace(result, inliers=refined.inliers, refinement='', refine_ms=refine_ms)
        latitude, longitude, altitude = enu_to_geodetic(refined.position_enu_m,
                                                        self.map.manifest.geodetic_origin)
        return replace(result, ok=True, reason='', position_enu_m=refined.position_enu_m,
                       latitude_deg=float(latitude), longitude_deg=float(longitude),
                       altitude_m=float(altitude), orientation_xyzw=refined.orientation_xyzw,
                       position_covariance_m2=refined.covariance[:3, :3],
                       orientation_covariance_rad2=refined.covariance[3:, 3:],
                       confidence=refined.confidence, pose_source='pnp',
                       inliers=refined.inliers, refinement='', refine_ms=refine_ms,
                       place_index=refined.place_index)

    def _regressed(self, result: LocalizationResult, position_m: np.ndarray,
                   orientation_xyzw: np.ndarray) -> LocalizationResult:
        """Return the pose head's pose, gated by and compared with the pipeline's ``result``.

        The regressed pose is a fix only where the pipeline has one within
        ``max_regression_offset_m``. Its covariance is the pipeline's plus the
        outer product of their difference (position and rotation vector): an
        independent estimate's disagreement is the evidence of the regression's
        error that one frame has.
        """
        offset_m = position_m - result.position_enu_m
        rotation = (Rotation.from_quat(result.orientation_xyzw).inv()
                    * Rotation.from_quat(orientation_xyzw)).as_rotvec()
        distance_m = float(np.linalg.norm(offset_m))
        gate = self.tracking.max_regression_offset_m
        ok, reason = result.ok, result.reason
        if ok and distance_m > gate:
            ok, reason = False, (f'regressed pose {distance_m:.1f} m from the {result.pose_source}'
                                 f' estimate (> max_regression_offset_m {gate:g})')
        latitude, longitude, altitude = enu_to_geodetic(position_m,
                                                        self.map.manifest.geodetic_origin)
        return replace(result, ok=ok, reason=reason, position_enu_m=np.asarray(position_m),
                       latitude_deg=float(latitude), longitude_deg=float(longitude),
                       altitude_m=float(altitude), orientation_xyzw=np.asarray(orientation_xyzw),
                       position_covariance_m2=result.position_covariance_m2
                       + np.outer(offset_m, offset_m),
                       orientation_covariance_rad2=result.orientation_covariance_rad2
                       + np.outer(rotation, rotation),
                       pose_source='regression')

    def estimate(self, descriptor: np.ndarray) -> LocalizationResult:
        """Single-frame estimate from one descriptor ``(D,)`` (no filter, no refinement)."""
        return self._single_frame(descriptor)[0]

    def _estimate_from(self, similarities: np.ndarray,
                       indices: np.ndarray) -> LocalizationResult:
        cfg, records = self.config, self.map.records
        positions = records.position_enu_m[indices]
        confidence = ratio_test_confidence(similarities, positions, cfg.ratio_test_exclusion_m)
        near = np.linalg.norm(positions[:cfg.top_k] - positions[0], axis=1) \
            <= cfg.neighbour_radius_m
        chosen = np.flatnonzero(near)
        weights = softmax(similarities[chosen] / cfg.similarity_temperature)
        position = weights @ positions[chosen]
        position_cov = weighted_covariance(positions[chosen], weights, position) \
            + np.eye(3) * cfg.position_floor_m ** 2
        orientation = records.orientation_xyzw[indices[0]]
        orientation_cov = orientation_spread(records.orientation_xyzw[indices[chosen]], weights,
                                             orientation) \
            + np.eye(3) * np.radians(cfg.orientation_floor_deg) ** 2
        inflation = 1.0 / max(confidence, 1e-3)
        origin = self.map.manifest.geodetic_origin
        latitude, longitude, altitude = enu_to_geodetic(position, origin)
        ok = confidence >= cfg.min_confidence
        reason = '' if ok else (f'confidence {confidence:.3f} below min_confidence '
                                f'{cfg.min_confidence:.3f} (ambiguous match)')
        neighbours = tuple(Neighbour(int(indices[i]), str(records.image_id[indices[i]]),
                                     float(similarities[i]), float(w))
                           for i, w in zip(chosen, weights))
        return LocalizationResult(
            ok=ok, reason=reason, confidence=float(confidence), position_enu_m=position,
            latitude_deg=float(latitude), longitude_deg=float(longitude),
            altitude_m=float(altitude), orientation_xyzw=orientation.copy(),
            position_covariance_m2=position_cov * inflation,
            orientation_covariance_rad2=orientation_cov * inflation, neighbours=neighbours)


class _TrackMotion:
    """The filter's last position estimate and the motion allowed since (for jump checks)."""

    def __init__(self) -> None:
        self.position_m: Optional[np.ndarray] = None
        self.reach_m = 0.0
        self.elapsed_s = 0.0

    def step(self, estimate: FilterEstimate, reach_m: float,
             dt_s: float) -> Optional[tuple[float, float, float]]:
        """Return (distance moved, distance allowed, seconds) since the last estimate, or None.

        None while there is no previous estimate or this frame has none; a frame
        without an estimate adds its motion to the next comparison.
        """
        self.reach_m += reach_m
        self.elapsed_s += dt_s
        if estimate.place_index < 0:
            return None
        previous, self.position_m = self.position_m, estimate.position_enu_m
        jump = None if previous is None else (
            float(np.linalg.norm(estimate.position_enu_m[:2] - previous[:2])), self.reach_m,
            self.elapsed_s)
        self.reach_m = self.elapsed_s = 0.0
        return jump


class _Verification:
    """Whether PnP verified the filter's track lately; a PnP pose off the track, remembered.

    Ages count refined frames; ``move`` adds the motion the filter allows per
    frame, so a remembered pose is matched with where the robot may be now.
    """

    def __init__(self) -> None:
        self.frames_since: Optional[int] = None   # since PnP agreed with the track (None: never)
        self.void_note = ''                       # why the verification is void ('' if not)
        self.pending_m: Optional[np.ndarray] = None   # a PnP position off the track
        self.pending_frames = 0
        self.pending_reach_m = 0.0

    def age(self) -> None:
        """Count one more refined frame."""
        if self.frames_since is not None:
            self.frames_since += 1
        self.pending_frames += 1

    def move(self, reach_m: float) -> None:
        """Add the distance the motion model allows this frame to the pending pose's reach."""
        self.pending_reach_m += reach_m

    def void(self, note: str) -> None:
        """Withdraw the verification, saying why."""
        self.frames_since, self.void_note = None, note

    def observe(self, position_m: np.ndarray, offset_m: float, radius_m: float,
                gate_m: float) -> None:
        """Take a PnP pose ``offset_m`` from the filter's estimate.

        Within ``radius_m`` it verifies the track; otherwise it is remembered,
        and beyond ``gate_m`` it voids the track's verification.
        """
        if offset_m <= radius_m:
            self.frames_since, self.void_note, self.pending_m = 0, '', None
            return
        self.pending_m, self.pending_frames, self.pending_reach_m = position_m, 0, 0.0
        if offset_m > gate_m and self.frames_since is not None:
            self.void(f'PnP placed a frame {offset_m:.1f} m from its estimate (> '
                      f'max_offset_from_filter_m {gate_m:g}); no fix until PnP verifies the '
                      'place the filter tracks')

    def adopt(self, estimate: FilterEstimate, radius_m: float, frames: int) -> None:
        """Verify the track from the remembered PnP pose once the estimate reaches it in time.

        Only a pose newer than the track's last verification counts.
        """
        if self.pending_m is None or estimate.place_index < 0 or (
                self.frames_since is not None and self.frames_since <= self.pending_frames):
            return
        if frames and self.pending_frames >= frames:
            self.pending_m = None
            return
        distance_m = float(np.linalg.norm(estimate.position_enu_m[:2] - self.pending_m[:2]))
        if distance_m <= radius_m + self.pending_reach_m:
            self.frames_since, self.void_note, self.pending_m = self.pending_frames, '', None


def _refinement_places(result: LocalizationResult, indices: np.ndarray,
                       count: int) -> list[int]:
    """Return the filter's place first (when it has one), then the best retrieved places."""
    places = [result.place_index] if result.place_index >= 0 else []
    places += [int(i) for i in indices if int(i) not in places]
    return places[:count]


def _create_filter(map_: 'Map', tracking: TrackingConfig) -> PlaceFilter:
    calibration = map_.manifest.calibration
    if not calibration:
        assert map_.index.descriptors is not None, 'load_map keeps them beside the index'
        LOG.info('map has no similarity calibration (built before format 3); fitting it now')
        calibration = calibrate_similarities(map_.index, map_.index.descriptors,
                                             map_.records.position_enu_m).as_dict()
    return PlaceFilter(map_.records.position_enu_m,
                       headings_from_orientations(map_.records.orientation_xyzw),
                       temperature=calibration['impostor_similarity_std'],
                       config=tracking.filter, descriptors=map_.index.descriptors)


def _create_refiner(map_: 'Map', tracking: TrackingConfig) -> tuple[Optional[Refiner], str]:
    if not tracking.refine:
        return None, ''
    if map_.local_features is None:
        return None, ('refinement off: the map has no local features (built without them or '
                      'before format 3); rebuild it with --local-features sift to enable PnP')
    return Refiner(map_.local_features, tracking.refinement), ''


def descriptor_distance(similarity: 'npt.ArrayLike') -> np.ndarray:
    """Euclidean distance between unit vectors with inner product ``similarity``."""
    return np.sqrt(np.maximum(2.0 - 2.0 * np.asarray(similarity, dtype=np.float64), 0.0))


def ratio_test_confidence(similarities: np.ndarray, positions: np.ndarray,
                          exclusion_m: float) -> float:
    """``1 - d1 / d2`` with d2 from the best candidate outside ``exclusion_m`` of the best.

    When every candidate lies near the best match the last candidate's
    distance is used: a lower bound on d2, so the confidence is conservative.
    """
    if len(similarities) < 2:
        return 0.0
    distances = descriptor_distance(similarities)
    far = np.flatnonzero(np.linalg.norm(positions - positions[0], axis=1) > exclusion_m)
    second = distances[far[0]] if len(far) else distances[-1]
    if second <= 0.0:
        return 0.0
    return float(np.clip(1.0 - distances[0] / second, 0.0, 1.0))


def softmax(values: np.ndarray) -> np.ndarray:
    """Numerically stable softmax of a 1-D array."""
    shifted = np.exp(values - np.max(values))
    return shifted / shifted.sum()


def weighted_covariance(points: np.ndarray, weights: np.ndarray,
                        mean: np.ndarray) -> np.ndarray:
    """Weighted scatter matrix of ``points`` around ``mean``."""
    centred = points - mean
    return (centred * weights[:, None]).T @ centred


def orientation_spread(quaternions_xyzw: np.ndarray, weights: np.ndarray,
                       reference_xyzw: np.ndarray) -> np.ndarray:
    """Weighted covariance of small-angle rotation vectors relative to the reference."""
    relative = Rotation.from_quat(reference_xyzw).inv() * Rotation.from_quat(quaternions_xyzw)
    rotation_vectors = relative.as_rotvec()
    return weighted_covariance(rotation_vectors, weights, np.zeros(3))
