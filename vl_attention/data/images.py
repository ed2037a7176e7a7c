"""Decode camera images (the fields of sensor_msgs/Image and CompressedImage) to uint8 RGB.

Pure numpy/OpenCV, so the node, the rosbag reader and the tests share it.
Every failure raises :class:`ImageDecodeError` naming what is wrong.
"""

import cv2
import numpy as np

# File suffixes of image files read from folders (datasets, calibration images).
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm')

# encoding -> (channels, numpy dtype, conversion to RGB or None)
RAW_ENCODINGS = {
    'rgb8': (3, np.uint8, None),
    'bgr8': (3, np.uint8, cv2.COLOR_BGR2RGB),
    'rgba8': (4, np.uint8, cv2.COLOR_RGBA2RGB),
    'bgra8': (4, np.uint8, cv2.COLOR_BGRA2RGB),
    'mono8': (1, np.uint8, cv2.COLOR_GRAY2RGB),
    '8UC1': (1, np.uint8, cv2.COLOR_GRAY2RGB),
    '8UC3': (3, np.uint8, cv2.COLOR_BGR2RGB),
    'mono16': (1, np.uint16, cv2.COLOR_GRAY2RGB),
    '16UC1': (1, np.uint16, cv2.COLOR_GRAY2RGB),
}


class ImageDecodeError(ValueError):
    """An image message cannot be turned into an RGB frame."""


def decode_raw(*, encoding, height, width, step, data, is_bigendian=False):
    """RGB ``uint8 (H, W, 3)`` from the fields of a ``sensor_msgs/Image``."""
    if encoding not in RAW_ENCODINGS:
        raise ImageDecodeError(f'unsupported encoding {encoding!r}; supported: '
                               f'{sorted(RAW_ENCODINGS)}')
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f'image size {width}x{height} is empty')
    channels, dtype, conversion = RAW_ENCODINGS[encoding]
    row_bytes = width * channels * np.dtype(dtype).itemsize
    if step < row_bytes:
        raise ImageDecodeError(f'step {step} is smaller than a {encoding} row of width '
                               f'{width} ({row_bytes} bytes)')
    if len(data) != step * height:
        raise ImageDecodeError(f'data holds {len(data)} bytes, step x height = {step * height}')
    rows = np.frombuffer(data, dtype=np.uint8).reshape(height, step)[:, :row_bytes]
    pixels = rows.copy().view(np.dtype(dtype).newbyteorder('>' if is_bigendian else '<'))
    pixels = pixels.reshape(height, width, channels)
    if dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    if conversion is None:
        return np.ascontiguousarray(pixels)
    return cv2.cvtColor(np.ascontiguousarray(pixels), conversion)


def decode_compressed(*, format, data):  # noqa: A002  (the message field is called format)
    """RGB ``uint8 (H, W, 3)`` from the fields of a ``sensor_msgs/CompressedImage``."""
    if len(data) == 0:
        raise ImageDecodeError('compressed image with no data')
    data = bytes(data)
    _check_complete(data, format)
    buffer = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageDecodeError(f'cannot decode compressed image (format {format!r}, '
                               f'{len(data)} bytes): corrupt or truncated')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _check_complete(data, format):  # noqa: A002
    # OpenCV decodes a cut-off JPEG/PNG into a partly grey image without an
    # error, so truncation is detected from the end-of-image markers.
    if data[:2] == b'\xff\xd8' and data.rstrip(b'\x00')[-2:] != b'\xff\xd9':
        raise ImageDecodeError(f'truncated JPEG ({len(data)} bytes, no end-of-image marker)')
    if data[:8] == b'\x89PNG\r\n\x1a\n' and b'IEND' not in data[-12:]:
        raise ImageDecodeError(f'truncated PNG ({len(data)} bytes, no IEND chunk)')


def encode_compressed(rgb, *, quality=90):
    """JPEG bytes of an RGB frame (for CompressedImage publishers and bag writers)."""
    ok, encoded = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ImageDecodeError('JPEG encoding failed')
    return encoded.tobytes()
