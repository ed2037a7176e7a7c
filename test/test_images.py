"""Decoding of raw sensor_msgs/Image payloads, good and bad, for every supported encoding."""

import cv2
import numpy as np
import pytest
import skimage.data

from vl_attention.data.images import decode_raw, ImageDecodeError, RAW_ENCODINGS

RGB = (np.random.default_rng(0).random((6, 5, 3)) * 255).astype(np.uint8)
# A smooth photo: demosaicing and chroma subsampling are exact only where colour varies slowly.
PHOTO = cv2.GaussianBlur(skimage.data.astronaut()[:128, 96:256], (0, 0), 3)
ROS_BAYER = {'rggb': 'RGGB', 'bggr': 'BGGR', 'gbrg': 'GBRG', 'grbg': 'GRBG'}


def _raw(encoding, pixels, step_padding=0, big_endian=False):
    height, width = pixels.shape[:2]
    if pixels.dtype == np.uint16:
        pixels = pixels.astype('>u2' if big_endian else '<u2')
    rows = np.ascontiguousarray(pixels).reshape(height, -1).view(np.uint8)
    rows = np.pad(rows, ((0, 0), (0, step_padding)))
    return dict(encoding=encoding, height=height, width=width, step=rows.shape[1],
                data=rows.tobytes(), is_bigendian=big_endian)


def _wide(pixels):
    """16-bit values whose high byte is ``pixels`` and whose low byte is noise (must vanish)."""
    noise = np.random.default_rng(1).integers(0, 256, pixels.shape)
    return (pixels.astype(np.uint16) << 8) | noise.astype(np.uint16)


def _mosaic(rgb, pattern):
    """Sample an RGB image per the ROS ``bayer_<pattern>`` layout (top-left 2x2 block)."""
    out = np.empty(rgb.shape[:2], rgb.dtype)
    for index, colour in enumerate(pattern):
        dy, dx = divmod(index, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, 'rgb'.index(colour)]
    return out


def _bt601_yuv422(rgb, order):
    """Limited-range BT.601 YUV 4:2:2 bytes, ``order`` 'uyvy' or 'yuyv', as a (H, W, 2) array."""
    r, g, b = (rgb[..., i].astype(float) for i in range(3))
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    u = (u[:, 0::2] + u[:, 1::2]) / 2  # one U and one V per horizontal pixel pair
    v = (v[:, 0::2] + v[:, 1::2]) / 2
    chroma = np.empty_like(y)
    chroma[:, 0::2], chroma[:, 1::2] = u, v
    pair = (chroma, y) if order == 'uyvy' else (y, chroma)
    return np.clip(np.round(np.dstack(pair)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize('encoding, pixels', [
    ('rgb8', RGB), ('bgr8', RGB[..., ::-1]), ('8UC3', RGB[..., ::-1]),
    ('rgba8', np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)])),
    ('bgra8', np.dstack([RGB[..., ::-1], np.full(RGB.shape[:2], 7, np.uint8)])),
])
def test_colour_encodings_become_rgb(encoding, pixels):
    decoded = decode_raw(**_raw(encoding, np.ascontiguousarray(pixels), step_padding=3))
    np.testing.assert_array_equal(decoded, RGB)


@pytest.mark.parametrize('big_endian', [False, True])
@pytest.mark.parametrize('encoding, pixels', [
    ('rgb16', RGB), ('bgr16', RGB[..., ::-1]),
    ('rgba16', np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)])),
    ('bgra16', np.dstack([RGB[..., ::-1], np.full(RGB.shape[:2], 7, np.uint8)])),
])
def test_16_bit_colour_keeps_the_high_byte_in_either_byte_order(encoding, pixels, big_endian):
    fields = _raw(encoding, _wide(pixels), step_padding=2, big_endian=big_endian)
    np.testing.assert_array_equal(decode_raw(**fields), RGB)


@pytest.mark.parametrize('big_endian', [False, True])
def test_mono_encodings_become_grey_rgb(big_endian):
    grey = RGB[..., 0]
    np.testing.assert_array_equal(decode_raw(**_raw('mono8', grey)), np.dstack([grey] * 3))
    np.testing.assert_array_equal(decode_raw(**_raw('8UC1', grey)), np.dstack([grey] * 3))
    decoded = decode_raw(**_raw('mono16', _wide(grey), big_endian=big_endian))
    np.testing.assert_array_equal(decoded, np.dstack([grey] * 3))


@pytest.mark.parametrize('encoding, order', [
    ('yuv422', 'uyvy'), ('uyvy', 'uyvy'), ('yuv422_yuy2', 'yuyv'), ('yuyv', 'yuyv')])
def test_yuv422_encodings_round_trip(encoding, order):
    decoded = decode_raw(**_raw(encoding, _bt601_yuv422(PHOTO, order), step_padding=4))
    assert decoded.shape == PHOTO.shape and decoded.dtype == np.uint8
    error = np.abs(decoded.astype(int) - PHOTO)
    assert error.mean() < 1.5 and np.percentile(error, 99) <= 6


def test_yuv422_byte_orders_are_not_interchangeable():
    uyvy = _bt601_yuv422(PHOTO, 'uyvy')
    decoded = decode_raw(**_raw('yuyv', uyvy))
    assert np.abs(decoded.astype(int) - PHOTO).mean() > 20


@pytest.mark.parametrize('bits', [8, 16])
@pytest.mark.parametrize('pattern', sorted(ROS_BAYER))
def test_bayer_encodings_round_trip(pattern, bits):
    mosaic = _mosaic(PHOTO, pattern)
    if bits == 16:
        mosaic = _wide(mosaic)
    for big_endian in (False, True) if bits == 16 else (False,):
        decoded = decode_raw(**_raw(f'bayer_{pattern}{bits}', mosaic, big_endian=big_endian))
        interior = np.abs(decoded[4:-4, 4:-4].astype(int) - PHOTO[4:-4, 4:-4])
        assert interior.mean() < 1.0, (pattern, big_endian, interior.mean())


@pytest.mark.parametrize('pattern', sorted(ROS_BAYER))
def test_bayer_patterns_are_not_interchangeable(pattern):
    mosaic = _mosaic(PHOTO, pattern)
    for other in set(ROS_BAYER) - {pattern}:
        decoded = decode_raw(**_raw(f'bayer_{other}8', mosaic))
        assert np.abs(decoded[4:-4, 4:-4].astype(int) - PHOTO[4:-4, 4:-4]).mean() > 10


def test_every_listed_encoding_is_tested():
    tested = {'rgb8', 'bgr8', '8UC3', 'rgba8', 'bgra8', 'rgb16', 'bgr16', 'rgba16', 'bgra16',
              'mono8', '8UC1', 'mono16', 'yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv'}
    tested |= {f'bayer_{pattern}{bits}' for pattern in ROS_BAYER for bits in (8, 16)}
    assert set(RAW_ENCODINGS) == tested


@pytest.mark.parametrize('encoding', ['32FC1', '16UC1', '16SC1', '64FC1', '32FC3', '32SC1'])
def test_depth_and_float_images_are_refused_by_name(encoding):
    fields = _raw('mono8', RGB[..., 0]) | {'encoding': encoding}
    with pytest.raises(ImageDecodeError, match='depth/float image; subscribe') as caught:
        decode_raw(**fields)
    assert caught.value.reason == 'depth_image'


@pytest.mark.parametrize('change, message, reason', [
    ({'encoding': 'nv12'}, 'unsupported encoding', 'bad_encoding'),
    ({'encoding': '8UC2'}, 'unsupported encoding', 'bad_encoding'),
    ({'height': 0, 'width': 0, 'step': 0, 'data': b''}, 'empty', 'bad_size'),
    ({'step': 2}, 'step 2 is smaller', 'bad_size'),
    ({'data': b'\x00' * 10}, 'data holds 10 bytes', 'bad_size'),
    ({'max_image_pixels': 29}, '5x6 = 30 pixels exceeds max_image_pixels=29', 'too_large'),
])
def test_bad_raw_images_are_named(change, message, reason):
    fields = _raw('rgb8', RGB) | change
    with pytest.raises(ImageDecodeError, match=message) as caught:
        decode_raw(**fields)
    assert caught.value.reason == reason


def test_raw_size_limit_is_checked_before_the_data():
    # A 2-byte message declaring 100000 x 100000 is refused for its size, not its length.
    fields = dict(encoding='rgb8', height=100_000, width=100_000, step=300_000, data=b'ab')
    with pytest.raises(ImageDecodeError) as caught:
        decode_raw(**fields)
    assert caught.value.reason == 'too_large'
    assert decode_raw(**(_raw('rgb8', RGB) | {'max_image_pixels': 30})).shape == (6, 5, 3)


def test_yuv422_needs_an_even_width():
    fields = _raw('yuv422', np.zeros((4, 3, 2), np.uint8))
    with pytest.raises(ImageDecodeError, match='even width') as caught:
        decode_raw(**fields)
    assert caught.value.reason == 'bad_size'
