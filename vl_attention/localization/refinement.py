"""Metric 6-DoF refinement: match the frame's local features to candidate map images, then PnP.

Each candidate place's triangulated keypoints are matched (ratio test +
mutual check) and handed to :func:`~vl_attention.geometry.pnp.solve_pnp`;
the candidate with the most inliers wins, so inlier counts re-rank the
retrieval candidates. A pose with at least ``accept_inliers`` inliers ends the
search early and saves the remaining candidates' matching and RANSAC (on the
validation town it never stopped at another pose than trying all would have
chosen). Its confidence is
``inliers / (inliers + inlier_half_confidence)``.

Once ``time_budget_ms`` has passed since the frame's refinement began (its
SIFT extraction included), no further candidate is tried: the first one (the
filter's place) always is, and a frame that fails within the budget says so in
its reason. The Localizer spends no budget while its filter is not tracking:
then the retrieved candidates' poses are what relocalizes it, and it publishes
no fix whose latency matters.
"""

from dataclasses import dataclass, field, replace
import time
from typing import Sequence

import cv2
import numpy as np

from vl_attention.config import ConfigError
from vl_attention.geometry.camera_model import CameraModel
from vl_attention.geometry.local_features import (create_extractor, Features,
                                                  LocalFeatureConfig, match_features, to_gray)
from vl_attention.geometry.pnp import PnPConfig, PnPResult, solve_pnp
from vl_attention.mapping.local_feature_map import LocalFeatureMap


@dataclass(frozen=True)
class RefinementConfig:
    """How many candidates are tried and what a pose must pass."""

    candidates: int = 3
    # a pose with this many inliers ends the search (0: try every candidate); on the synthetic
    # validation town 40 chose the same poses as trying all three, 7% faster
    accept_inliers: int = 40
    # no further candidate once this much time went into the frame's refinement (0: no limit).
    # Off by default: on the demo town (11 fresh starts of 60 dusk frames, 2 loaded cores)
    # budgets of 50-60 ms cut the localize p50 by 12-25 ms but published 9-22 fixes > 5 m off
    # (1 without a budget): the filter's early lock on a lagging place went uncorrected by the
    # other candidates' poses; 80-100 ms trimmed only the p90 (docs/benchmarks.md)
    time_budget_ms: float = 0.0
    ratio_test: float = 0.9
    max_keypoints: int = 2000
    pnp: PnPConfig = field(default_factory=PnPConfig)
    max_offset_from_filter_m: float = 15.0
    inlier_half_confidence: int = 30
    # first-order PnP covariance ignores the errors of the map's triangulated points, which
    # few inliers do not average out: it is scaled by covariance_scale x (1 + covariance_inliers
    # / inliers), fitted on the synthetic validation town (night, dusk, fog, rain: 0.92-0.96
    # of refined errors in the 95% ellipse; a constant 3.8 gave 0.88-0.98)
    covariance_scale: float = 2.0
    covariance_inliers: float = 30.0

    def __post_init__(self) -> None:
        if self.candidates < 1:
            raise ConfigError('refinement candidates must be >= 1')
        if self.accept_inliers < 0:
            raise ConfigError('accept_inliers must be >= 0 (0 tries every candidate)')
        if self.time_budget_ms < 0:
            raise ConfigError('time_budget_ms must be >= 0 (0: no limit)')
        if self.covariance_scale <= 0 or self.covariance_inliers < 0:
            raise ConfigError('need covariance_scale > 0 and covariance_inliers >= 0')


@dataclass(frozen=True)
class RefinedPose:
    """The best PnP pose over the candidates, or why there is none."""

    ok: bool
    reason: str
    place_index: int
    position_enu_m: np.ndarray
    orientation_xyzw: np.ndarray
    covariance: np.ndarray
    inliers: int
    confidence: float
    candidates_tried: int = 0


class Refiner:
    """PnP against the local features of a map (:class:`LocalFeatureMap`)."""

    def __init__(self, local_map: LocalFeatureMap,
                 config: RefinementConfig = RefinementConfig()) -> None:
        self.local_map = local_map
        self.config = config
        self.extractor = create_extractor(LocalFeatureConfig(
            kind=local_map.kind, max_keypoints=config.max_keypoints,
            ratio_test=config.ratio_test))

    def refine(self, frame: np.ndarray, places: Sequence[int], *,
               budgeted: bool = True) -> RefinedPose:
        """Return the best pose of ``frame`` over the candidate ``places``.

        ``budgeted`` False tries them all whatever ``time_budget_ms``.
        """
        started = time.perf_counter()
        frame, camera = _at_map_resolution(frame, self.local_map.camera)
        query = self.extractor(to_gray(frame))
        if len(query.keypoints_px) < self.config.pnp.min_inliers:
            return _failed(f'only {len(query.keypoints_px)} local features in the frame '
                           f'(PnP needs min_inliers {self.config.pnp.min_inliers}); '
                           'too dark, blurred or textureless')
        best, reasons, tried = None, [], 0
        for place in places:
            if tried and budgeted and self._budget_spent(started):
                reasons.append(f'time_budget_ms {self.config.time_budget_ms:g} spent after '
                               f'{tried} of {len(places)} candidates')
                break
            tried += 1
            result = self._solve_at(place, query, camera)
            if result.ok and (best is None or result.inliers > best[1].inliers):
                best = (place, result)
                if self.config.accept_inliers and result.inliers >= self.config.accept_inliers:
                    break
            elif not result.ok:
                reasons.append(f'place {place}: {result.reason}')
        if best is None:
            return replace(_failed('PnP failed for every candidate tried ('
                                   + '; '.join(reasons) + ')'), candidates_tried=tried)
        place, pose = best
        confidence = pose.inliers / (pose.inliers + self.config.inlier_half_confidence)
        return RefinedPose(True, '', int(place), pose.position_enu_m, pose.orientation_xyzw,
                           pose.covariance * self.variance_factor(pose.inliers),
                           pose.inliers, float(confidence), tried)

    def variance_factor(self, inliers: int) -> float:
        """Return the factor on the first-order PnP covariance of a pose with ``inliers``."""
        return self.config.covariance_scale * (1.0 + self.config.covariance_inliers
                                               / max(inliers, 1))

    def _solve_at(self, place: int, query: Features, camera: CameraModel) -> PnPResult:
        """Match the frame's features to the 3-D points of ``place`` and solve PnP."""
        descriptors, points = self.local_map.image_points(place)
        matches = match_features(query.descriptors, descriptors, norm=self.extractor.norm,
                                 ratio_test=self.config.ratio_test)
        return solve_pnp(points[matches[:, 1]], query.keypoints_px[matches[:, 0]], camera,
                         self.config.pnp)

    def _budget_spent(self, started: float) -> bool:
        """Return whether ``time_budget_ms`` (when set) has passed since ``started``."""
        budget_ms = self.config.time_budget_ms
        return bool(budget_ms) and (time.perf_counter() - started) * 1e3 >= budget_ms


def _at_map_resolution(frame: np.ndarray,
                       camera: CameraModel) -> tuple[np.ndarray, CameraModel]:
    """Shrink a frame larger than the map's camera to its size: same scale, faster SIFT.

    Returns the frame and the camera model that matches it.
    """
    height, width = frame.shape[:2]
    if width > camera.width and height > camera.height:
        return cv2.resize(frame, (camera.width, camera.height),
                          interpolation=cv2.INTER_AREA), camera
    return frame, camera.scaled_to(width, height)


def _failed(reason: str) -> RefinedPose:
    return RefinedPose(False, reason, -1, np.full(3, np.nan), np.array([0.0, 0.0, 0.0, 1.0]),
                       np.full((6, 6), np.nan), 0, 0.0)
