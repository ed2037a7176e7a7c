"""The map's camera model: pinhole intrinsics plus distortion, as ``sensor_msgs/CameraInfo`` has.

Read from the two YAML layouts people have:

* ROS camera calibration files (``camera_calibration`` / ``camera_info_manager``):
  ``image_width``, ``image_height``, ``camera_matrix: {data: [9]}``,
  ``distortion_model``, ``distortion_coefficients: {data: [...]}``;
* flat files (the synthetic world's ``camera_info.yaml``): ``width``, ``height``,
  ``fx``, ``fy``, ``cx``, ``cy``, ``distortion_model``, ``distortion``.

Pose convention of the map (REP 103): a record's orientation is the camera
*body* frame (x forward, y left, z up) in ENU; the optical frame (x right,
y down, z forward) is ``body @ OPTICAL_IN_BODY``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.spatial.transform import Rotation
import yaml

from vl_attention.errors import VLAttentionError
from vl_attention.io import StrPath

# Columns: optical axes (x right, y down, z forward) written in the camera body frame.
OPTICAL_IN_BODY = np.array([[0.0, 0.0, 1.0],
                            [-1.0, 0.0, 0.0],
                            [0.0, -1.0, 0.0]])
DISTORTION_MODELS = ('plumb_bob', 'rational_polynomial', 'equidistant', 'none')


class CameraModelError(VLAttentionError, ValueError):
    """A camera model file or value is unusable; the message names the fix."""


@dataclass(frozen=True)
class CameraModel:
    """Intrinsics of the camera that took the map images (pixels, OpenCV conventions)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str = 'plumb_bob'
    distortion: tuple[float, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise CameraModelError(f'camera size {self.width}x{self.height} must be positive')
        values = (self.fx, self.fy, self.cx, self.cy) + tuple(self.distortion)
        if not np.all(np.isfinite(values)) or self.fx <= 0 or self.fy <= 0:
            raise CameraModelError(f'camera intrinsics fx={self.fx} fy={self.fy} cx={self.cx} '
                                   f'cy={self.cy} must be finite with positive focal lengths')
        if self.distortion_model not in DISTORTION_MODELS:
            raise CameraModelError(f'distortion model {self.distortion_model!r} is not one of '
                                   f'{DISTORTION_MODELS}')

    @property
    def matrix(self) -> np.ndarray:
        """Return the intrinsic matrix K (3, 3)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def distortion_coefficients(self) -> np.ndarray:
        """Return the OpenCV distortion vector (zeros when undistorted)."""
        coefficients = np.asarray(self.distortion, np.float64)
        return coefficients if coefficients.size else np.zeros(5)

    def scaled_to(self, width: int, height: int) -> CameraModel:
        """Return the same camera seen at another resolution (a resized image stream)."""
        if (width, height) == (self.width, self.height):
            return self
        sx, sy = width / self.width, height / self.height
        return replace(self, width=int(width), height=int(height), fx=self.fx * sx,
                       fy=self.fy * sy, cx=(self.cx + 0.5) * sx - 0.5,
                       cy=(self.cy + 0.5) * sy - 0.5)

    def to_dict(self) -> dict[str, Any]:
        """Return JSON-ready values."""
        return asdict(self) | {'distortion': list(self.distortion)}

    @classmethod
    def from_dict(cls, values: object, *, where: str = 'camera model') -> CameraModel:
        """Build from either YAML layout (see the module docs); anything else is refused."""
        if not isinstance(values, dict):
            raise CameraModelError(f'{where}: expected a mapping, got {type(values).__name__}')
        try:
            if 'camera_matrix' in values:
                return _from_ros_calibration(values)
            return cls(int(values['width']), int(values['height']), float(values['fx']),
                       float(values['fy']), float(values['cx']), float(values['cy']),
                       str(values.get('distortion_model', 'plumb_bob')),
                       tuple(float(v) for v in values.get('distortion', ()) or ()))
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, CameraModelError):
                raise
            raise CameraModelError(
                f'{where}: {error!r}; give width, height, fx, fy, cx, cy (or a ROS camera '
                'calibration file with image_width, image_height, camera_matrix)') from error

    @classmethod
    def from_yaml(cls, path: StrPath) -> CameraModel:
        """Read a camera YAML file."""
        path = Path(path)
        if not path.is_file():
            raise CameraModelError(f'camera model file {path} does not exist')
        try:
            values = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise CameraModelError(f'{path} is not valid YAML ({error})') from error
        return cls.from_dict(values, where=str(path))


def _from_ros_calibration(values: dict[str, Any]) -> CameraModel:
    k = np.asarray(values['camera_matrix']['data'], np.float64).reshape(3, 3)
    distortion = values.get('distortion_coefficients') or {}
    return CameraModel(int(values['image_width']), int(values['image_height']), float(k[0, 0]),
                       float(k[1, 1]), float(k[0, 2]), float(k[1, 2]),
                       str(values.get('distortion_model', 'plumb_bob')),
                       tuple(float(v) for v in distortion.get('data', ()) or ()))


def world_to_optical(position_enu_m: npt.ArrayLike,
                     orientation_xyzw: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return OpenCV extrinsics (R, t) mapping ENU points into the optical frame of a pose."""
    body_in_enu = Rotation.from_quat(orientation_xyzw).as_matrix()
    rotation = (body_in_enu @ OPTICAL_IN_BODY).T
    return rotation, -rotation @ np.asarray(position_enu_m, np.float64)


def optical_to_body_pose(rotation: np.ndarray,
                         translation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the body pose (position ENU m, quaternion xyzw) of OpenCV extrinsics (R, t)."""
    optical_in_enu = rotation.T
    body_in_enu = optical_in_enu @ OPTICAL_IN_BODY.T
    return -rotation.T @ translation, Rotation.from_matrix(body_in_enu).as_quat()
