"""Image preprocessing, defined once and recorded with every exported model.

Frames enter as ``uint8`` arrays ``(H, W, 3)`` in RGB order. They are resized
to the network's input size (stretch, no crop), scaled to [0, 1], normalised
with the backbone's mean/std and laid out as ``float32 (B, 3, H, W)``. Every
backend calls :func:`preprocess_frames`, so all backends see identical input.
"""

from dataclasses import dataclass

import cv2
import numpy as np

INTERPOLATIONS = {'bilinear': cv2.INTER_LINEAR, 'bicubic': cv2.INTER_CUBIC,
                  'area': cv2.INTER_AREA}


class FrameError(ValueError):
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
    resize: str = 'stretch'

    def __post_init__(self):
        if self.input_height < 32 or self.input_width < 32:
            raise ValueError(f'input size {self.input_height}x{self.input_width} is too small; '
                             'use at least 32x32 pixels')
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f'interpolation {self.interpolation!r} is not one of '
                             f'{sorted(INTERPOLATIONS)}')
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError('mean and std need three values each, std > 0')

    @classmethod
    def for_backbone(cls, normalization, *, input_height, input_width):
        """Preprocessing at a chosen input size with a backbone's normalisation."""
        return cls(input_height=int(input_height), input_width=int(input_width),
                   mean=tuple(float(v) for v in normalization.mean),
                   std=tuple(float(v) for v in normalization.std),
                   interpolation=normalization.interpolation)


def check_frame(frame):
    """Raise :class:`FrameError` unless ``frame`` is a non-empty uint8 (H, W, 3) array."""
    if not isinstance(frame, np.ndarray):
        raise FrameError(f'a frame must be a numpy array, got {type(frame).__name__}')
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise FrameError(f'a frame must be uint8 (H, W, 3) RGB, got {frame.dtype} '
                         f'{frame.shape}; convert mono or BGR images to RGB first')
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise FrameError(f'frame of size {frame.shape[1]}x{frame.shape[0]} is empty')


def preprocess_frames(frames, preprocessing):
    """Stack frames into the normalised ``float32 (B, 3, H, W)`` network input."""
    size = (preprocessing.input_width, preprocessing.input_height)
    interpolation = INTERPOLATIONS[preprocessing.interpolation]
    batch = np.empty((len(frames), size[1], size[0], 3), dtype=np.float32)
    for index, frame in enumerate(frames):
        check_frame(frame)
        if frame.shape[1::-1] != size:
            frame = cv2.resize(frame, size, interpolation=interpolation)
        batch[index] = frame
    scale = np.float32(255.0) * np.asarray(preprocessing.std, dtype=np.float32)
    offset = np.asarray(preprocessing.mean, dtype=np.float32) / np.asarray(
        preprocessing.std, dtype=np.float32)
    batch /= scale
    batch -= offset
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
