"""Per-frame records of a bag evaluation, used by the offline run, live replay and reports."""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence

import numpy as np

from vl_attention.geo import rotation_angle_deg


@dataclass(frozen=True)
class FrameRecord:
    """One query frame: ground truth, what the localizer said, and how fast."""

    truth: Any                     # FrameTruth
    responded: bool                # realtime: a fix came back (offline: always)
    accepted: bool                 # confidence >= min_confidence: published as a fix
    confidence: float              # nan where unknown (the node does not publish it)
    position_enu_m: np.ndarray     # nan without an estimate
    orientation_xyzw: Optional[np.ndarray]   # None without an estimate
    position_covariance_m2: np.ndarray
    latency_ms: float              # nan without a response

    @property
    def has_estimate(self) -> bool:
        """Whether a position was produced (offline: also for rejected frames)."""
        return bool(np.all(np.isfinite(self.position_enu_m)))


@dataclass(frozen=True)
class BagRun:
    """Records of one model on the query bags plus what the report needs besides them."""

    model: str
    records: tuple[FrameRecord, ...]
    truth: Any                     # GroundTruth
    skipped: Dict[str, Any]
    wall_s: float
    info: Dict[str, Any] = field(default_factory=dict)
    # estimate name -> records (offline tracking)
    modes: Dict[str, Any] = field(default_factory=dict)


def record_from_result(truth: Any, result: Any, latency_ms: float) -> FrameRecord:
    """Turn one offline :class:`LocalizationResult` into a record (``None``: no estimate)."""
    if result is None:
        return FrameRecord(truth, True, False, float('nan'), np.full(3, np.nan), None,
                           np.full((3, 3), np.nan), latency_ms)
    return FrameRecord(truth, True, bool(result.ok), float(result.confidence),
                       np.asarray(result.position_enu_m, np.float64),
                       np.asarray(result.orientation_xyzw, np.float64),
                       np.asarray(result.position_covariance_m2, np.float64), latency_ms)


def horizontal_errors(records: Sequence[FrameRecord]) -> np.ndarray:
    """``(N, 2)`` east/north errors (estimate - truth) of records with an estimate."""
    return np.array([r.position_enu_m[:2] - r.truth.position_enu_m[:2]
                     for r in records]).reshape(-1, 2)


def rotation_errors_deg(records: Sequence[FrameRecord]) -> Optional[np.ndarray]:
    """Rotation errors (deg) of the records, or None when the ground truth has no orientation."""
    if not records or records[0].truth.orientation_xyzw is None:
        return None
    return np.asarray(rotation_angle_deg(np.array([r.orientation_xyzw for r in records]),
                                         np.array([r.truth.orientation_xyzw for r in records])))
