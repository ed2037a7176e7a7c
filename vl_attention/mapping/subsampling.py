"""Spatial subsampling: keep a keyframe every ``keyframe_distance_m`` or ``keyframe_angle_deg``.

A frame is kept when it lies at least ``keyframe_distance_m`` from the last
kept frame or is rotated from it by at least ``keyframe_angle_deg``; the first
frame is always kept. Zero for both keeps every frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import numpy.typing as npt

from vl_attention.config import ConfigError
from vl_attention.geo import rotation_angle_deg


@dataclass(frozen=True)
class KeyframeConfig:
    """Keyframe thresholds (0 disables one)."""

    keyframe_distance_m: float = 0.0
    keyframe_angle_deg: float = 0.0

    def __post_init__(self) -> None:
        if self.keyframe_distance_m < 0 or self.keyframe_angle_deg < 0:
            raise ConfigError('keyframe_distance_m and keyframe_angle_deg must be >= 0')

    @property
    def enabled(self) -> bool:
        """Return True when any threshold is set."""
        return self.keyframe_distance_m > 0 or self.keyframe_angle_deg > 0


class KeyframeSelector:
    """Stateful keyframe test over a stream of (ENU position, orientation)."""

    def __init__(self, config: KeyframeConfig = KeyframeConfig()) -> None:
        self.config = config
        self._last: Optional[tuple[np.ndarray, np.ndarray]] = None

    def __call__(self, position_enu_m: npt.ArrayLike, orientation_xyzw: npt.ArrayLike) -> bool:
        """Return True when this frame is a keyframe (and remember it)."""
        position_enu_m = np.asarray(position_enu_m, np.float64)
        if self._last is not None and self.config.enabled and \
                not self._far_enough(self._last, position_enu_m, orientation_xyzw):
            return False
        self._last = (position_enu_m, np.asarray(orientation_xyzw, np.float64))
        return True

    def _far_enough(self, last: tuple[np.ndarray, np.ndarray], position_enu_m: np.ndarray,
                    orientation_xyzw: npt.ArrayLike) -> bool:
        cfg, (last_position, last_orientation) = self.config, last
        if cfg.keyframe_distance_m > 0 and \
                np.linalg.norm(position_enu_m - last_position) >= cfg.keyframe_distance_m:
            return True
        return cfg.keyframe_angle_deg > 0 and \
            float(rotation_angle_deg(last_orientation, orientation_xyzw)) >= cfg.keyframe_angle_deg


def keyframe_mask(positions_enu_m: np.ndarray, orientations_xyzw: np.ndarray,
                  config: KeyframeConfig) -> np.ndarray:
    """Boolean mask of the keyframes of a whole trajectory."""
    selector = KeyframeSelector(config)
    return np.array([selector(p, q) for p, q in zip(positions_enu_m, orientations_xyzw)], bool)
