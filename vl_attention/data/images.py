"""Decode camera images (the fields of sensor_msgs/Image and CompressedImage) to uint8 RGB.

Pure numpy/OpenCV, so the node, the rosbag reader and the tests share it.
Every failure raises :class:`ImageDecodeError` naming what is wrong, with a
machine-readable ``reason`` (one of :data:`REJECTION_REASONS`).

Compressed data is checked before OpenCV sees it: only JPEG and PNG (by magic
bytes) are decoded, the size declared in the header must be within
``max_image_pixels`` (a 600-byte JPEG can declare 30000x30000 pixels), and a
cut-off file is refused even when it ends in a forged end marker.
"""

from contextlib import contextmanager
import logging
import os
import re
import struct
import tempfile
import threading

import cv2
import numpy as np

from vl_attention.errors import VLAttentionError

LOGGER = logging.getLogger(__name__)

# File suffixes of image files read from folders (datasets, calibration images).
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm')

DEFAULT_MAX_IMAGE_PIXELS = 16_000_000
COMPRESSED_FORMATS = ('JPEG', 'PNG')

REJECTION_REASONS = {
    'too_large': 'declared width x height exceeds max_image_pixels',
    'unsupported_format': 'compressed data that is not baseline/progressive JPEG or PNG',
    'truncated': 'the data ends before the image does',
    'corrupt': 'a malformed header or entropy-coded data',
    'bad_encoding': 'a sensor_msgs/Image encoding this decoder does not know',
    'bad_size': 'width, height, step and data length disagree (or are empty)',
    'depth_image': 'a depth or float image instead of a colour/mono camera image',
}


class ImageDecodeError(VLAttentionError, ValueError):
    """An image message cannot be turned into an RGB frame; ``reason`` says why in one word."""

    def __init__(self, message, *, reason='corrupt'):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):
        return type(self), (str(self),), {'reason': self.reason}


# ---------------------------------------------------------------- raw sensor_msgs/Image

_BAYER = {'rggb': cv2.COLOR_BayerRGGB2RGB, 'bggr': cv2.COLOR_BayerBGGR2RGB,
          'gbrg': cv2.COLOR_BayerGBRG2RGB, 'grbg': cv2.COLOR_BayerGRBG2RGB}

# encoding -> (values per pixel, bytes per value, conversion to RGB or None).
# Names and layouts follow sensor_msgs/image_encodings.hpp: 'yuv422' is UYVY
# (U0 Y0 V0 Y1), 'yuv422_yuy2' is YUYV; bayer_<p> names the top-left 2x2 block.
RAW_ENCODINGS = {
    'rgb8': (3, 1, None), 'bgr8': (3, 1, cv2.COLOR_BGR2RGB),
    'rgba8': (4, 1, cv2.COLOR_RGBA2RGB), 'bgra8': (4, 1, cv2.COLOR_BGRA2RGB),
    'mono8': (1, 1, cv2.COLOR_GRAY2RGB), '8UC1': (1, 1, cv2.COLOR_GRAY2RGB),
    '8UC3': (3, 1, cv2.COLOR_BGR2RGB),
    'rgb16': (3, 2, None), 'bgr16': (3, 2, cv2.COLOR_BGR2RGB),
    'rgba16': (4, 2, cv2.COLOR_RGBA2RGB), 'bgra16': (4, 2, cv2.COLOR_BGRA2RGB),
    'mono16': (1, 2, cv2.COLOR_GRAY2RGB),
    'yuv422': (2, 1, cv2.COLOR_YUV2RGB_UYVY), 'uyvy': (2, 1, cv2.COLOR_YUV2RGB_UYVY),
    'yuv422_yuy2': (2, 1, cv2.COLOR_YUV2RGB_YUY2), 'yuyv': (2, 1, cv2.COLOR_YUV2RGB_YUY2),
    **{f'bayer_{pattern}{bits}': (1, bits // 8, code)
       for pattern, code in _BAYER.items() for bits in (8, 16)},
}
_YUV422 = ('yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv')
_CV_TYPE = re.compile(r'(8|16|32|64)([USF])C([1-4])')


def decode_raw(*, encoding, height, width, step, data, is_bigendian=False,
               max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """RGB ``uint8 (H, W, 3)`` from the fields of a ``sensor_msgs/Image``.

    16-bit encodings keep their high byte (``>> 8``) in the byte order ``is_bigendian`` gives.
    """
    channels, value_bytes, conversion = _raw_layout(encoding)
    _check_raw_size(encoding, height, width, max_image_pixels)
    row_bytes = width * channels * value_bytes
    if step < row_bytes:
        raise ImageDecodeError(f'step {step} is smaller than a {encoding} row of width '
                               f'{width} ({row_bytes} bytes)', reason='bad_size')
    if len(data) != step * height:
        raise ImageDecodeError(f'data holds {len(data)} bytes, step x height = {step * height}',
                               reason='bad_size')
    rows = np.frombuffer(data, dtype=np.uint8).reshape(height, step)[:, :row_bytes]
    if value_bytes == 2:  # the high byte of each value is exactly value >> 8
        rows = rows[:, 0::2] if is_bigendian else rows[:, 1::2]
    shape = (height, width) if channels == 1 else (height, width, channels)
    pixels = np.ascontiguousarray(rows).reshape(shape)
    if conversion is None:
        return pixels
    return cv2.cvtColor(pixels, conversion)


def _raw_layout(encoding):
    if encoding in RAW_ENCODINGS:
        return RAW_ENCODINGS[encoding]
    cv_type = _CV_TYPE.fullmatch(encoding)
    if cv_type and (cv_type.group(2) == 'F' or (cv_type.group(3) == '1' and encoding != '8UC1')):
        raise ImageDecodeError(f'encoding {encoding!r} is a depth/float image; subscribe the '
                               'node to a colour camera topic', reason='depth_image')
    raise ImageDecodeError(f'unsupported encoding {encoding!r}; supported: '
                           f'{", ".join(sorted(RAW_ENCODINGS))}', reason='bad_encoding')


def _check_raw_size(encoding, height, width, max_image_pixels):
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f'image size {width}x{height} is empty', reason='bad_size')
    _check_pixels(width, height, max_image_pixels, encoding)
    if encoding in _YUV422 and width % 2:
        raise ImageDecodeError(f'{encoding} needs an even width (pixel pairs share U and V), '
                               f'got {width}', reason='bad_size')
    if encoding.startswith('bayer_') and (width < 2 or height < 2):
        raise ImageDecodeError(f'{encoding} needs at least 2x2 pixels, got {width}x{height}',
                               reason='bad_size')


def _check_pixels(width, height, max_image_pixels, what):
    if width * height > max_image_pixels:
        raise ImageDecodeError(
            f'{what} image of {width}x{height} = {width * height} pixels exceeds '
            f'max_image_pixels={max_image_pixels}; raise the parameter or send smaller '
            'images', reason='too_large')


# ---------------------------------------------------------------- CompressedImage

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_FOREIGN_MAGIC = (
    (b'BM', 'BMP'), (b'II*\x00', 'TIFF'), (b'MM\x00*', 'TIFF'), (b'GIF8', 'GIF'),
    (b'\x00\x00\x00\x0cjP  \r\n\x87\n', 'JPEG 2000'), (b'\xff\x4f\xff\x51', 'JPEG 2000'),
    (b'#?RADIANCE', 'Radiance HDR'), (b'#?RGBE', 'Radiance HDR'), (b'v/1\x01', 'OpenEXR'),
    (b'\x59\xa6\x6a\x95', 'Sun raster'), (b'\xff\x0a', 'JPEG XL'),
    (b'\x00\x00\x00\x0cJXL ', 'JPEG XL'), (b'PF', 'PFM'), (b'Pf', 'PFM'),
)
_PNM = re.compile(rb'P[1-7]\s')
_SOF_SUPPORTED = {0xC0: 'baseline', 0xC1: 'extended sequential', 0xC2: 'progressive'}
_SOF_OTHER = {0xC3: 'lossless', 0xC5: 'hierarchical', 0xC6: 'hierarchical',
              0xC7: 'hierarchical', 0xC9: 'arithmetic', 0xCA: 'arithmetic',
              0xCB: 'arithmetic', 0xCD: 'arithmetic', 0xCE: 'arithmetic', 0xCF: 'arithmetic'}
_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
_STANDALONE = {0x01, *range(0xD0, 0xD8)}
# In entropy-coded data 0xFF is followed by 0x00 (stuffing) or RSTn; anything else is a marker.
_ENTROPY_END = re.compile(rb'\xff[^\x00\xd0-\xd7]')
MAX_JPEG_SCANS = 100  # libjpeg spends O(scans x pixels); real encoders write at most ~12


def decode_compressed(*, format, data,  # noqa: A002  (the message field is called format)
                      max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """RGB ``uint8 (H, W, 3)`` from the fields of a ``sensor_msgs/CompressedImage``.

    The container is recognised by its magic bytes, not by ``format``.
    """
    if len(data) == 0:
        raise ImageDecodeError('compressed image with no data', reason='bad_size')
    if 'compresseddepth' in str(format).lower():
        raise ImageDecodeError(f'format {format!r} is a depth/float image; subscribe the node '
                               'to a colour camera topic', reason='depth_image')
    data = bytes(data)
    if data[:3] == b'\xff\xd8\xff':
        width, height = _check_jpeg(data, max_image_pixels)
    elif data[:8] == _PNG_SIGNATURE:
        width, height = _check_png(data, max_image_pixels)
    else:
        raise ImageDecodeError(f'compressed image (format {format!r}) is {_foreign_name(data)}; '
                               f'only {" and ".join(COMPRESSED_FORMATS)} are decoded',
                               reason='unsupported_format')
    return _imdecode(data, width, height, 'JPEG' if data[0] == 0xFF else 'PNG')


def _foreign_name(data):
    for magic, name in _FOREIGN_MAGIC:
        if data.startswith(magic):
            return name
    if data[8:12] == b'WEBP' and data[:4] == b'RIFF':
        return 'WebP'
    if data[4:8] == b'ftyp':
        return 'HEIF/AVIF'
    if _PNM.match(data):
        return 'PNM (PBM/PGM/PPM/PAM)'
    return f'not a known image (starts {data[:8].hex(" ")})'


def _check_jpeg(data, max_image_pixels):
    """Walk the JPEG marker structure; return the declared ``(width, height)``."""
    frame, scans, pos = None, [], 2
    while True:
        marker, pos = _next_marker(data, pos)
        if marker == _EOI:
            break
        if marker in _STANDALONE:
            continue
        if pos + 2 > len(data):
            _truncated_jpeg(data, 'inside a marker segment')
        length = struct.unpack_from('>H', data, pos)[0]
        segment = data[pos + 2:pos + length]
        if length < 2 or len(segment) != length - 2:
            _truncated_jpeg(data, 'inside a marker segment')
        pos += length
        if marker in _SOF_SUPPORTED or marker in _SOF_OTHER:
            if frame is not None:
                raise ImageDecodeError('JPEG with two frame headers', reason='corrupt')
            frame = _jpeg_frame(marker, segment, max_image_pixels)
        elif marker == _SOS:
            if frame is None:
                raise ImageDecodeError('JPEG scan before its frame header', reason='corrupt')
            scans.append(segment)
            if len(scans) > MAX_JPEG_SCANS:
                raise ImageDecodeError(f'JPEG with more than {MAX_JPEG_SCANS} scans (a decoding '
                                       'bomb or a corrupt file)', reason='corrupt')
            match = _ENTROPY_END.search(data, pos)
            if match is None:
                _truncated_jpeg(data, 'no end-of-image marker')
            pos = match.start()
    if frame is None:
        raise ImageDecodeError('JPEG without a frame header', reason='corrupt')
    if not scans:
        _truncated_jpeg(data, 'no scan before the end marker')
    _check_scans_complete(data, frame[2], scans)
    return frame[0], frame[1]


def _next_marker(data, pos):
    if pos >= len(data):
        _truncated_jpeg(data, 'no end-of-image marker')
    if data[pos] != 0xFF:
        raise ImageDecodeError(f'corrupt JPEG: byte 0x{data[pos]:02x} at offset {pos} where a '
                               'marker should start', reason='corrupt')
    while pos < len(data) and data[pos] == 0xFF:  # fill bytes may precede a marker
        pos += 1
    if pos >= len(data):
        _truncated_jpeg(data, 'no end-of-image marker')
    return data[pos], pos + 1


def _truncated_jpeg(data, where):
    raise ImageDecodeError(f'truncated JPEG ({len(data)} bytes, {where}); the sender cut the '
                           'image short', reason='truncated')


def _jpeg_frame(marker, segment, max_image_pixels):
    """Check a SOFn segment; return ``(width, height, component ids)``."""
    if marker not in _SOF_SUPPORTED:
        raise ImageDecodeError(f'JPEG coding process SOF{marker - 0xC0} ({_SOF_OTHER[marker]}) '
                               'is not decoded; send baseline or progressive JPEG',
                               reason='unsupported_format')
    if len(segment) < 6:
        raise ImageDecodeError('JPEG frame header too short', reason='corrupt')
    precision, height, width, count = struct.unpack_from('>BHHB', segment)
    if precision != 8 or count not in (1, 3) or len(segment) < 6 + 3 * count:
        raise ImageDecodeError(f'JPEG with {precision}-bit samples and {count} components is '
                               'not decoded; send 8-bit grey or colour JPEG',
                               reason='unsupported_format')
    if width == 0 or height == 0:
        raise ImageDecodeError(f'JPEG declares size {width}x{height}', reason='corrupt')
    _check_pixels(width, height, max_image_pixels, 'JPEG')
    return width, height, tuple(segment[6 + 3 * i] for i in range(count))


def _check_scans_complete(data, components, scans):
    # A progressive JPEG cut between scans (plus an end marker) decodes without any warning to
    # a blurred image: every coefficient of every component must reach full precision (Al = 0).
    done = {component: np.zeros(64, bool) for component in components}
    for segment in scans:
        count = segment[0] if segment else 0
        if len(segment) < 4 + 2 * count:
            raise ImageDecodeError('JPEG scan header too short', reason='corrupt')
        start, end, approximation = segment[1 + 2 * count:4 + 2 * count]
        for component in segment[1:1 + 2 * count:2]:
            if component not in done or start > end or end > 63:
                raise ImageDecodeError('JPEG scan header names an unknown component or band',
                                       reason='corrupt')
            if approximation & 0x0F == 0:
                done[component][start:end + 1] = True
    if not all(bands.all() for bands in done.values()):
        _truncated_jpeg(data, 'scans missing before the end marker')


def _check_png(data, max_image_pixels):
    """Walk the PNG chunks up to IEND; return the declared ``(width, height)``."""
    if len(data) < 33:
        raise ImageDecodeError(f'truncated PNG ({len(data)} bytes, no complete IHDR)',
                               reason='truncated')
    length, kind = struct.unpack_from('>I4s', data, 8)
    if kind != b'IHDR' or length != 13:
        raise ImageDecodeError('corrupt PNG: the first chunk is not IHDR', reason='corrupt')
    width, height = struct.unpack_from('>II', data, 16)
    if width == 0 or height == 0:
        raise ImageDecodeError(f'PNG declares size {width}x{height}', reason='corrupt')
    _check_pixels(width, height, max_image_pixels, 'PNG')
    pos, idat_chunks = 8, 0
    while pos + 12 <= len(data):
        length, kind = struct.unpack_from('>I4s', data, pos)
        if pos + 12 + length > len(data):
            break
        if kind == b'IEND':
            if idat_chunks == 0:
                raise ImageDecodeError('corrupt PNG: no IDAT chunk', reason='corrupt')
            return width, height
        idat_chunks += kind == b'IDAT'
        pos += 12 + length
    raise ImageDecodeError(f'truncated PNG ({len(data)} bytes, no IEND chunk); the sender cut '
                           'the image short', reason='truncated')


# libjpeg skips bytes it cannot use before a marker with only a warning: a few are camera
# padding (some MJPEG webcams), hundreds mean a scrambled scan that decodes to garbage
MAX_EXTRANEOUS_JPEG_BYTES = 32
_EXTRANEOUS = re.compile(r'Corrupt JPEG data: (\d+) extraneous bytes before marker')


def _extraneous_bytes(line):
    """Return the bytes libjpeg says it skipped before a marker (0 for other lines)."""
    found = _EXTRANEOUS.search(line)
    return int(found.group(1)) if found else 0


def _imdecode(data, width, height, container):
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
    with _codec_messages() as messages:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    said = '; '.join(messages)
    if any(_CUT_SHORT.search(line) for line in messages):
        raise ImageDecodeError(f'truncated {container} ({len(data)} bytes): decoder says '
                               f'{said!r}; the sender cut the image short', reason='truncated')
    if any(line.startswith(('Corrupt JPEG data: bad', 'Corrupt JPEG data: found marker'))
           or _extraneous_bytes(line) > MAX_EXTRANEOUS_JPEG_BYTES for line in messages):
        raise ImageDecodeError(f'corrupt {container} ({len(data)} bytes): decoder says '
                               f'{said!r}', reason='corrupt')
    if image is None or image.shape[:2] != (height, width):
        raise ImageDecodeError(f'cannot decode {container} image ({len(data)} bytes, declares '
                               f'{width}x{height}): {said or "corrupt data"}', reason='corrupt')
    if messages:
        LOGGER.debug('%s decoder warnings: %s', container, said)
    return image


# libjpeg reports data it recovered from (a cut-off scan, bad Huffman codes) only as text on
# stderr, so that text is collected while OpenCV decodes. One decode at a time holds fd 2;
# lines from other threads are written back to stderr afterwards.
_CODEC_LINE = re.compile(r'(Corrupt JPEG data|Premature end of JPEG|libpng |Warning: unknown '
                         r'JFIF|Inconsistent progression|Invalid SOS|Unknown Adobe)')
_CUT_SHORT = re.compile(r'premature end|not enough image data|input buffer is incomplete',
                        re.IGNORECASE)
_STDERR_LOCK = threading.Lock()
_sink = []


@contextmanager
def _codec_messages():
    with _STDERR_LOCK:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: decode without listening
            yield []
            return
        if not _sink:
            _sink.append(tempfile.TemporaryFile(buffering=0))
        sink = _sink[0]
        sink.seek(0)
        sink.truncate()
        messages = []
        os.dup2(sink.fileno(), 2)
        try:
            yield messages
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines = sink.read().decode(errors='replace').splitlines()
            messages.extend(line for line in lines if _CODEC_LINE.match(line))
            others = [line for line in lines if not _CODEC_LINE.match(line)]
            if others:
                os.write(2, ('\n'.join(others) + '\n').encode())


def encode_compressed(rgb, *, quality=90):
    """JPEG bytes of an RGB frame (for CompressedImage publishers and bag writers)."""
    ok, encoded = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ImageDecodeError('JPEG encoding failed')
    return encoded.tobytes()
