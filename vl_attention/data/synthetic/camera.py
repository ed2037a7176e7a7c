"""Pinhole camera model shared by the renderer, the writers and the tests.

The camera body frame follows REP 103 (x forward, y left, z up); the optical
frame used for projection has z forward, x right and y down.  Pixel centres
sit at integer coordinates (OpenCV convention), so ``cx = (width - 1) / 2``
puts the principal point on the image centre.
"""

from dataclasses import asdict, dataclass
import math

import numpy as np

from vl_attention.config import ConfigError
from vl_attention.geo import quaternion_to_matrix

# Columns are the optical axes (x right, y down, z forward) written in the body frame.
OPTICAL_IN_BODY = np.array([[0.0, 0.0, 1.0],
                            [-1.0, 0.0, 0.0],
                            [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class PinholeCamera:
    """Undistorted pinhole intrinsics, the fields of ``sensor_msgs/CameraInfo``."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    frame_id: str = 'camera_optical'

    def __post_init__(self):
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ConfigError(
                f'camera size {self.width}x{self.height} is empty; width and height must be > 0')
        if not (self.fx > 0 and self.fy > 0):
            raise ConfigError(f'focal lengths fx={self.fx}, fy={self.fy} must be positive')

    @classmethod
    def from_fov(cls, width, height, hfov_deg=80.0, frame_id='camera_optical'):
        """Build a camera with square pixels and the principal point at the image centre."""
        if int(width) <= 0 or int(height) <= 0:
            raise ConfigError(
                f'camera size {width}x{height} is empty; width and height must be > 0')
        if not 1.0 <= hfov_deg < 179.0:
            raise ConfigError(f'hfov_deg={hfov_deg} must lie in [1, 179)')
        focal_px = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
        return cls(int(width), int(height), focal_px, focal_px,
                   (width - 1) / 2.0, (height - 1) / 2.0, frame_id)

    @property
    def matrix(self):
        """Intrinsic matrix K (3, 3)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def world_to_optical(self, position_enu_m, quaternion_xyzw):
        """Rotation (3, 3) and translation (3,) mapping ENU points into the optical frame."""
        body_in_enu = quaternion_to_matrix(quaternion_xyzw)
        optical_in_enu = body_in_enu @ OPTICAL_IN_BODY
        rotation = optical_in_enu.T
        return rotation, -rotation @ np.asarray(position_enu_m, dtype=np.float64)

    def project(self, points_enu_m, position_enu_m, quaternion_xyzw):
        """Project ENU points ``(N, 3)`` to pixels ``(N, 2)``; also return depth along z (m).

        Points behind the camera get a non-positive depth and meaningless pixels.
        """
        points = np.atleast_2d(np.asarray(points_enu_m, dtype=np.float64))
        rotation, translation = self.world_to_optical(position_enu_m, quaternion_xyzw)
        optical = points @ rotation.T + translation
        depth_m = optical[:, 2]
        safe = np.where(np.abs(depth_m) < 1e-9, 1e-9, depth_m)
        pixels = np.stack([self.fx * optical[:, 0] / safe + self.cx,
                           self.fy * optical[:, 1] / safe + self.cy], axis=1)
        return pixels, depth_m

    def ray_directions_enu(self, quaternion_xyzw):
        """Per-pixel ray directions ``(3, H, W)`` in ENU, scaled so the forward component is 1.

        A point ``position + t * ray`` then lies at depth ``t`` along the optical axis.
        """
        cols = (np.arange(self.width, dtype=np.float64) - self.cx) / self.fx
        rows = (np.arange(self.height, dtype=np.float64) - self.cy) / self.fy
        body_in_enu = quaternion_to_matrix(quaternion_xyzw)
        forward, left, up = body_in_enu[:, 0], body_in_enu[:, 1], body_in_enu[:, 2]
        rays = (forward[:, None, None]
                - left[:, None, None] * cols[None, None, :]
                - up[:, None, None] * rows[None, :, None])
        return rays.astype(np.float32)

    def to_dict(self):
        """Plain dict for JSON/YAML (distortion is zero: the renderer is an ideal pinhole)."""
        data = asdict(self)
        data['distortion_model'] = 'plumb_bob'
        data['distortion'] = [0.0] * 5
        return data
