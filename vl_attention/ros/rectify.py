"""Undistort camera frames with their calibration (``sensor_msgs/CameraInfo``), as image_proc does.

Pure numpy + OpenCV, no rclpy: :func:`vl_attention.ros.conversions.camera_info_to_calibration`
turns a CameraInfo message into a :class:`Calibration`; the node keeps one :class:`Rectifier`.

The remap tables are ``cv2.initUndistortRectifyMap(K, D, R, P[:, :3])``, what
``image_geometry.PinholeCameraModel.rectifyImage`` computes: the output is the rectified camera
``P`` (``K`` when ``P`` is all zeros; ``R`` all zeros is the identity). They are computed once
per calibration and frame size, so a frame costs one ``cv2.remap``. Only the ``plumb_bob`` and
``rational_polynomial`` models are supported; binning and ROI are not applied (a frame whose
size differs from the calibration's is refused).
"""

from dataclasses import dataclass

import cv2
import numpy as np

from vl_attention.errors import VLAttentionError

SUPPORTED_MODELS = ('plumb_bob', 'rational_polynomial')
# lengths of D each model may have (plumb_bob: k1 k2 p1 p2 [k3]; rational: k1 k2 p1 p2 k3..k6)
_COEFFICIENT_COUNTS = {'plumb_bob': (4, 5), 'rational_polynomial': (8,)}
UNRECTIFIED = 'frames are localized unrectified'


class RectifyError(VLAttentionError, ValueError):
    """A calibration cannot rectify a frame; the message says why in one line."""


@dataclass(frozen=True)
class Calibration:
    """The fields of ``sensor_msgs/CameraInfo`` rectification needs (row-major K, R, P)."""

    width: int
    height: int
    distortion_model: str
    d: tuple
    k: tuple
    r: tuple = ()
    p: tuple = ()

    @property
    def distorted(self) -> bool:
        """Return whether any distortion coefficient is non-zero."""
        return any(value != 0.0 for value in self.d)


@dataclass(frozen=True)
class RectifyState:
    """What rectification did to the last frame: a diagnostics note, and a problem (WARN)."""

    note: str
    problem: str = ''


def _matrix(values, shape, name):
    matrix = np.asarray(values, np.float64)
    if matrix.size != shape[0] * shape[1]:
        raise RectifyError(f'camera_info {name} has {matrix.size} values, expected '
                           f'{shape[0] * shape[1]}')
    if not np.all(np.isfinite(matrix)):
        raise RectifyError(f'camera_info {name} is not finite')
    return matrix.reshape(shape)


def _camera_matrix(matrix, name):
    if matrix[0, 0] <= 0.0 or matrix[1, 1] <= 0.0:
        raise RectifyError(f'camera_info {name} has no positive focal lengths (fx '
                           f'{matrix[0, 0]:g}, fy {matrix[1, 1]:g}): the camera is not '
                           'calibrated')
    return matrix


def rectification_maps(calibration: Calibration, size=None):
    """Return the ``cv2.remap`` tables undistorting frames of ``size`` (w, h), or RectifyError."""
    width, height = size if size is not None else (calibration.width, calibration.height)
    if (width, height) != (calibration.width, calibration.height):
        raise RectifyError(f'frame {width}x{height} differs from camera_info '
                           f'{calibration.width}x{calibration.height} (binning and ROI are not '
                           'applied)')
    model = calibration.distortion_model
    if model not in SUPPORTED_MODELS:
        raise RectifyError(f'camera_info distortion model {model!r} is not supported (use '
                           + ' or '.join(SUPPORTED_MODELS) + ')')
    if len(calibration.d) not in _COEFFICIENT_COUNTS[model]:
        raise RectifyError(f'camera_info D has {len(calibration.d)} coefficients; {model} has '
                           + ' or '.join(map(str, _COEFFICIENT_COUNTS[model])))
    d = np.asarray(calibration.d, np.float64)
    if not np.all(np.isfinite(d)):
        raise RectifyError('camera_info D is not finite')
    k = _camera_matrix(_matrix(calibration.k, (3, 3), 'K'), 'K')
    r = _matrix(calibration.r, (3, 3), 'R') if any(calibration.r) else np.eye(3)
    new_k = (_camera_matrix(_matrix(calibration.p, (3, 4), 'P')[:, :3], 'P')
             if any(calibration.p) else k)
    return cv2.initUndistortRectifyMap(k, d, r, new_k, (int(width), int(height)), cv2.CV_32FC1)


def rectify(image: np.ndarray, maps) -> np.ndarray:
    """Return ``image`` undistorted with :func:`rectification_maps` (outside pixels: black)."""
    return cv2.remap(image, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def distort(image: np.ndarray, calibration: Calibration) -> np.ndarray:
    """Return what the distorted camera sees of a rectified ``image`` (the inverse; for tests).

    Each distorted pixel is undistorted with ``cv2.undistortPoints`` (same K, D, R, P as
    :func:`rectification_maps`) and sampled there in ``image``.
    """
    height, width = image.shape[:2]
    k = _matrix(calibration.k, (3, 3), 'K')
    r = _matrix(calibration.r, (3, 3), 'R') if any(calibration.r) else np.eye(3)
    new_k = _matrix(calibration.p, (3, 4), 'P')[:, :3] if any(calibration.p) else k
    grid = np.stack(np.meshgrid(np.arange(width, dtype=np.float64),
                                np.arange(height, dtype=np.float64)), axis=-1).reshape(-1, 1, 2)
    source = cv2.undistortPoints(grid, k, np.asarray(calibration.d, np.float64), R=r, P=new_k)
    source = source.reshape(height, width, 2).astype(np.float32)
    return cv2.remap(image, source[..., 0], source[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT)


class Rectifier:
    """Rectify frames with the newest calibration; caches the maps and keeps a state.

    A frame that cannot be rectified (no calibration yet, an unsupported model, another size)
    is returned unchanged, and :attr:`state` says why (its ``problem`` is a WARN reason).
    """

    def __init__(self, source='camera_info'):
        self.source = source
        self.state = RectifyState(f'waiting for camera_info on {source}')
        self._key = None
        self._maps = None
        self._error = ''

    def __call__(self, image: np.ndarray, calibration) -> np.ndarray:
        """Return ``image`` rectified with ``calibration`` (a :class:`Calibration` or None)."""
        if calibration is None:
            self.state = RectifyState(
                f'waiting for camera_info on {self.source}',
                f'rectify is on but no camera_info arrived on {self.source}; {UNRECTIFIED}')
            return image
        if not calibration.distorted:
            self.state = RectifyState('not needed: camera_info has zero distortion')
            return image
        height, width = image.shape[:2]
        key = (calibration, width, height)
        if key != self._key:
            self._key = key
            try:
                self._maps, self._error = rectification_maps(calibration, (width, height)), ''
            except RectifyError as error:
                self._maps, self._error = None, str(error)
        if self._maps is None:
            self.state = RectifyState(f'refused: {self._error}', f'{self._error}; {UNRECTIFIED}')
            return image
        self.state = RectifyState(f'on: {calibration.distortion_model} {width}x{height}')
        return rectify(image, self._maps)
