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
"""

from dataclasses import dataclass, replace
import time

import numpy as np
from scipy.spatial.transform import Rotation

from vl_attention.geo import enu_to_geodetic


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

    def __post_init__(self):
        if self.top_k < 1 or self.candidates < self.top_k:
            raise ValueError('need 1 <= top_k <= candidates')
        if self.similarity_temperature <= 0:
            raise ValueError('similarity_temperature must be > 0')
        if not 0.0 <= self.min_confidence < 1.0:
            raise ValueError('min_confidence must be in [0, 1)')


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
    neighbours: tuple
    embed_ms: float = 0.0
    search_ms: float = 0.0

    def pose_covariance(self):
        """6x6 covariance (x, y, z, rotation about x, y, z) as in PoseWithCovariance."""
        covariance = np.zeros((6, 6))
        covariance[:3, :3] = self.position_covariance_m2
        covariance[3:, 3:] = self.orientation_covariance_rad2
        return covariance


class Localizer:
    """Localizes frames (or descriptors) against one map."""

    def __init__(self, map_, *, embedder=None, config=LocalizerConfig()):
        if len(map_.index) == 0:
            raise ValueError('the map is empty; build it from at least one image')
        if embedder is not None and embedder.fingerprint != map_.manifest.model_fingerprint:
            raise ValueError(f'map built with model fingerprint '
                             f'{map_.manifest.model_fingerprint}, embedder has '
                             f'{embedder.fingerprint}; rebuild the map with this model')
        self.map = map_
        self.embedder = embedder
        self.config = config

    def localize(self, frame):
        """Embed one uint8 RGB frame and estimate its pose."""
        descriptor = self.embedder.embed([frame])[0]
        result = self.estimate(descriptor)
        return replace(result, embed_ms=self.embedder.last_latency_ms)

    def estimate(self, descriptor):
        """Estimate a pose from one descriptor ``(D,)``."""
        started = time.perf_counter()
        similarities, indices = self.map.index.search(descriptor[None], self.config.candidates)
        search_ms = (time.perf_counter() - started) * 1e3
        similarities, indices = similarities[0], indices[0]
        valid = indices >= 0
        result = self._estimate_from(similarities[valid], indices[valid])
        return replace(result, search_ms=search_ms)

    def _estimate_from(self, similarities, indices):
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


def descriptor_distance(similarity):
    """Euclidean distance between unit vectors with inner product ``similarity``."""
    return np.sqrt(np.maximum(2.0 - 2.0 * np.asarray(similarity, dtype=np.float64), 0.0))


def ratio_test_confidence(similarities, positions, exclusion_m):
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


def softmax(values):
    """Numerically stable softmax of a 1-D array."""
    shifted = np.exp(values - np.max(values))
    return shifted / shifted.sum()


def weighted_covariance(points, weights, mean):
    """Weighted scatter matrix of ``points`` around ``mean``."""
    centred = points - mean
    return (centred * weights[:, None]).T @ centred


def orientation_spread(quaternions_xyzw, weights, reference_xyzw):
    """Weighted covariance of small-angle rotation vectors relative to the reference."""
    relative = Rotation.from_quat(reference_xyzw).inv() * Rotation.from_quat(quaternions_xyzw)
    rotation_vectors = relative.as_rotvec()
    return weighted_covariance(rotation_vectors, weights, np.zeros(3))
