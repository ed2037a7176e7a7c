"""Image preprocessing, defined once and recorded with every exported model.

Frames enter as ``uint8`` arrays in RGB order, ``(H, W, 3)``; grayscale frames
``(H, W)`` or ``(H, W, 1)`` (Nordland, mono cameras) are replicated to three
channels. Each is brought to the network's input size by the card's
``resize`` policy, scaled to [0, 1], normalised with the backbone's mean/std
and laid out as ``float32 (B, 3, H, W)``. Every backend calls
:func:`preprocess_frames`, so all backends see identical input.

``resize`` policies (:data:`RESIZE_POLICIES`):

* ``stretch`` (default, the behaviour before the policy existed): resize to
  the input size, whatever the frame's aspect ratio;
* ``fit_pad``: keep the aspect ratio, fit the whole frame inside the input
  size and pad the rest with the normalisation mean (0 after normalising);
* ``center_crop``: keep the aspect ratio, cut the largest centred box of the
  input's aspect ratio and resize it (the frame's borders are lost).

A frame far from the trained size (over :data:`FAR_SCALE` times larger or
smaller, or an aspect ratio more than :data:`FAR_ASPECT` apart) logs one
warning per process: descriptors of such frames are usually much worse.
"""

from __future__ import annotations

from dataclasses import dataclass
import logging
import math
from typing import Sequence

import cv2
import numpy as np

from vl_attention.config import ConfigError
from vl_attention.errors import VLAttentionError

LOG = logging.getLogger(__name__)

INTERPOLATIONS = {'bilinear': cv2.INTER_LINEAR, 'bicubic': cv2.INTER_CUBIC,
                  'area': cv2.INTER_AREA}
RESIZE_POLICIES = ('stretch', 'fit_pad', 'center_crop')
DEFAULT_RESIZE = 'stretch'   # the behaviour before the policy existed: fingerprints unchanged
FAR_SCALE = 2.0     # linear scale (sqrt of the pixel-count ratio) beyond which a warning is due
FAR_ASPECT = 1.25   # ratio of aspect ratios beyond which a warning is due
# holds one entry once the far-from-trained-size warning was logged
_warned_input_size: list[str] = []


class FrameError(VLAttentionError, ValueError):
    """A frame cannot be embedded (wrong dtype, shape or size)."""


@dataclass(frozen=True)
class Normalization:
    """Mean/std and resampling the backbone's weights were trained with."""

    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    interpolation: str = 'bilinear'


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to turn a camera frame into network input."""

    input_height: int
    input_width: int
    mean: tuple
    std: tuple
    interpolation: str = 'bilinear'
    colour_order: str = 'RGB'
    resize: str = DEFAULT_RESIZE

    def __post_init__(self) -> None:
        if self.input_height < 32 or self.input_width < 32:
            raise ConfigError(f'input size {self.input_height}x{self.input_width} is too small; '
                              'use at least 32x32 pixels')
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f'interpolation {self.interpolation!r} is not one of '
                              f'{sorted(INTERPOLATIONS)}')
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError('mean and std need three values each, std > 0')
        if self.resize not in RESIZE_POLICIES:
            raise ConfigError(f'resize {self.resize!r} is not one of {list(RESIZE_POLICIES)}')

    @classmethod
    def for_backbone(cls, normalization: Normalization, *, input_height: int, input_width: int,
                     resize: str = DEFAULT_RESIZE) -> Preprocessing:
        """Preprocessing at a chosen input size and resize policy, with a backbone's mean/std."""
        return cls(input_height=int(input_height), input_width=int(input_width),
                   mean=tuple(float(v) for v in normalization.mean),
                   std=tuple(float(v) for v in normalization.std),
                   interpolation=normalization.interpolation, resize=str(resize))


def check_frame(frame: object) -> None:
    """Raise :class:`FrameError` unless ``frame`` is a non-empty uint8 RGB or grayscale array."""
    if not isinstance(frame, np.ndarray):
        raise FrameError(f'a frame must be a numpy array, got {type(frame).__name__}')
    grayscale = frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1)
    if frame.dtype != np.uint8 or not (grayscale or (frame.ndim == 3 and frame.shape[2] == 3)):
        raise FrameError(f'a frame must be uint8 (H, W, 3) RGB or (H, W) grayscale, got '
                         f'{frame.dtype} {frame.shape}; convert BGR or RGBA images to RGB first')
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise FrameError(f'frame of size {frame.shape[1]}x{frame.shape[0]} is empty')


def as_rgb(frame: np.ndarray) -> np.ndarray:
    """Return ``frame`` as ``(H, W, 3)``: grayscale is replicated to the three channels."""
    check_frame(frame)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    return np.repeat(frame.reshape(frame.shape[0], frame.shape[1], 1), 3, axis=2)


def center_crop_box(frame_height: int, frame_width: int, input_height: int,
                    input_width: int) -> tuple[int, int, int, int]:
    """Largest centred ``(x0, y0, x1, y1)`` box of the frame with the input's aspect ratio."""
    if frame_width * input_height > input_width * frame_height:     # frame is wider
        width = max(1, round(frame_height * input_width / input_height))
        x0 = (frame_width - width) // 2
        return x0, 0, x0 + width, frame_height
    height = max(1, round(frame_width * input_height / input_width))
    y0 = (frame_height - height) // 2
    return 0, y0, frame_width, y0 + height


def fit_pad_box(frame_height: int, frame_width: int, input_height: int,
                input_width: int) -> tuple[int, int, int, int]:
    """Where ``fit_pad`` puts the resized frame in the input: ``(x0, y0, x1, y1)``, centred."""
    scale = min(input_width / frame_width, input_height / frame_height)
    width = min(input_width, max(1, round(frame_width * scale)))
    height = min(input_height, max(1, round(frame_height * scale)))
    x0, y0 = (input_width - width) // 2, (input_height - height) // 2
    return x0, y0, x0 + width, y0 + height


def resize_frame(frame: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """Bring an RGB ``(h, w, 3)`` uint8 frame to the input size by the resize policy."""
    size = (preprocessing.input_width, preprocessing.input_height)
    if frame.shape[1::-1] == size:
        return frame
    interpolation = INTERPOLATIONS[preprocessing.interpolation]
    if preprocessing.resize == 'center_crop':
        x0, y0, x1, y1 = center_crop_box(frame.shape[0], frame.shape[1], size[1], size[0])
        return cv2.resize(frame[y0:y1, x0:x1], size, interpolation=interpolation)
    if preprocessing.resize == 'fit_pad':
        x0, y0, x1, y1 = fit_pad_box(frame.shape[0], frame.shape[1], size[1], size[0])
        mean_pixel = np.round(np.asarray(preprocessing.mean) * 255.0)
        canvas = np.empty((size[1], size[0], 3), np.uint8)
        canvas[:] = mean_pixel.astype(np.uint8)
        canvas[y0:y1, x0:x1] = cv2.resize(frame, (x1 - x0, y1 - y0), interpolation=interpolation)
        return canvas
    return cv2.resize(frame, size, interpolation=interpolation)


def input_size_mismatch(frame_height: int, frame_width: int, preprocessing: Preprocessing) -> str:
    """Why a frame is far from the trained input size ('' when it is close enough)."""
    height, width = preprocessing.input_height, preprocessing.input_width
    scale = math.sqrt(frame_height * frame_width / (height * width))
    aspect = (frame_width / frame_height) / (width / height)
    reasons = []
    if max(scale, 1.0 / scale) > FAR_SCALE:
        reasons.append(f'{scale:.2f}x the trained pixel scale')
    if max(aspect, 1.0 / aspect) > FAR_ASPECT:
        reasons.append(f'aspect ratio {frame_width / frame_height:.2f} against '
                       f'{width / height:.2f}')
    return ', '.join(reasons)


def warn_if_far_from_trained_size(frame_height: int, frame_width: int,
                                  preprocessing: Preprocessing) -> None:
    """Log, once per process, that a frame's size or aspect is far from the trained input."""
    if _warned_input_size:
        return
    reason = input_size_mismatch(frame_height, frame_width, preprocessing)
    if not reason:
        return
    _warned_input_size.append(reason)
    LOG.warning('frames of %dx%d are far from the model input %dx%d (%s); they are brought to '
                'it by resize: %s, and descriptors are usually worse: use a preset (or '
                "input size) near the camera's, or resize: fit_pad / center_crop to keep "
                'the aspect ratio (logged once)', frame_width, frame_height,
                preprocessing.input_width, preprocessing.input_height, reason,
                preprocessing.resize)


def reset_input_size_warning() -> None:
    """Allow the far-from-trained-size warning to be logged again (tests)."""
    _warned_input_size.clear()


def preprocess_frames(frames: Sequence[np.ndarray], preprocessing: Preprocessing) -> np.ndarray:
    """Stack frames into the normalised ``float32 (B, 3, H, W)`` network input."""
    batch = np.empty((len(frames), preprocessing.input_height, preprocessing.input_width, 3),
                     dtype=np.float32)
    for index, frame in enumerate(frames):
        frame = as_rgb(frame)
        warn_if_far_from_trained_size(frame.shape[0], frame.shape[1], preprocessing)
        batch[index] = resize_frame(frame, preprocessing)
    scale = np.float32(255.0) * np.asarray(preprocessing.std, dtype=np.float32)
    offset: np.ndarray = np.asarray(preprocessing.mean, dtype=np.float32) / np.asarray(
        preprocessing.std, dtype=np.float32)
    batch /= scale
    batch -= offset
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
