"""Decoding of sensor_msgs/Image and CompressedImage payloads, good and bad."""

import cv2
import numpy as np
import pytest

from vl_attention.data.images import (decode_compressed, decode_raw, encode_compressed,
                                      ImageDecodeError)

RGB = (np.random.default_rng(0).random((6, 5, 3)) * 255).astype(np.uint8)


def _raw(encoding, pixels, step_padding=0, big_endian=False):
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1).view(np.uint8)
    if big_endian:
        rows = pixels.astype('>u2').reshape(height, -1).view(np.uint8)
    rows = np.pad(rows, ((0, 0), (0, step_padding)))
    return dict(encoding=encoding, height=height, width=width, step=rows.shape[1],
                data=rows.tobytes(), is_bigendian=big_endian)


@pytest.mark.parametrize('encoding, pixels', [
    ('rgb8', RGB), ('bgr8', RGB[..., ::-1]),
    ('rgba8', np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)])),
    ('bgra8', np.dstack([RGB[..., ::-1], np.full(RGB.shape[:2], 7, np.uint8)])),
])
def test_colour_encodings_become_rgb(encoding, pixels):
    decoded = decode_raw(**_raw(encoding, np.ascontiguousarray(pixels), step_padding=3))
    np.testing.assert_array_equal(decoded, RGB)


def test_mono_encodings_become_grey_rgb():
    grey = RGB[..., 0]
    np.testing.assert_array_equal(decode_raw(**_raw('mono8', grey)), np.dstack([grey] * 3))
    wide = grey.astype(np.uint16) << 8
    for big_endian in (False, True):
        decoded = decode_raw(**_raw('mono16', wide, big_endian=big_endian))
        np.testing.assert_array_equal(decoded[..., 1], grey)


@pytest.mark.parametrize('change, message', [
    ({'encoding': 'yuv422_yuy2'}, 'unsupported encoding'),
    ({'height': 0, 'width': 0, 'step': 0, 'data': b''}, 'empty'),
    ({'step': 2}, 'step 2 is smaller'),
    ({'data': b'\x00' * 10}, 'data holds 10 bytes'),
])
def test_bad_raw_images_are_named(change, message):
    fields = _raw('rgb8', RGB) | change
    with pytest.raises(ImageDecodeError, match=message):
        decode_raw(**fields)


def test_compressed_round_trip_and_failures():
    photo = cv2.resize(RGB, (64, 48), interpolation=cv2.INTER_NEAREST)
    jpeg = encode_compressed(photo, quality=95)
    assert np.abs(decode_compressed(format='jpeg', data=jpeg).astype(int) - photo).mean() < 12
    ok, png = cv2.imencode('.png', cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(decode_compressed(format='png', data=png.tobytes()), photo)
    with pytest.raises(ImageDecodeError, match='truncated JPEG'):
        decode_compressed(format='jpeg', data=jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageDecodeError, match='truncated PNG'):
        decode_compressed(format='png', data=png.tobytes()[:-20])
    with pytest.raises(ImageDecodeError, match='no data'):
        decode_compressed(format='jpeg', data=b'')
    with pytest.raises(ImageDecodeError, match='cannot decode'):
        decode_compressed(format='jpeg', data=b'hello world')
