"""CompressedImage decoding: round trips, decompression bombs, foreign formats, truncation."""

import os
import struct
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
import skimage.data

from vl_attention.data import images
from vl_attention.data.images import decode_compressed, encode_compressed, ImageDecodeError

PHOTO = skimage.data.astronaut()[::2, ::2].copy()  # a real photo, 256x256 RGB
BASELINE = encode_compressed(PHOTO, quality=90)
PROGRESSIVE = cv2.imencode('.jpg', PHOTO[..., ::-1],
                           [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
RESTARTS = cv2.imencode('.jpg', PHOTO[..., ::-1], [cv2.IMWRITE_JPEG_RST_INTERVAL, 4])[1].tobytes()
PNG = cv2.imencode('.png', PHOTO[..., ::-1])[1].tobytes()
EOI = b'\xff\xd9'


def _png_chunk(kind, payload):
    return struct.pack('>I', len(payload)) + kind + payload + \
        struct.pack('>I', zlib.crc32(kind + payload))


def _jpeg_bomb(side):
    tiny = cv2.imencode('.jpg', np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    sof = tiny.index(b'\xff\xc0')
    return tiny[:sof + 5] + struct.pack('>HH', side, side) + tiny[sof + 9:]


def _png_bomb(side):
    rows = zlib.compress(b'\x00' * (side + 1) * 64, 9)
    header = struct.pack('>IIBBBBB', side, side, 8, 0, 0, 0, 0)
    return images._PNG_SIGNATURE + _png_chunk(b'IHDR', header) + _png_chunk(b'IDAT', rows) + \
        _png_chunk(b'IEND', b'')


@pytest.fixture
def imdecode_calls(monkeypatch):
    """Record every cv2.imdecode the decoder makes (the real function still runs)."""
    calls = []
    real = cv2.imdecode

    def spy(buffer, flags):
        calls.append(len(buffer))
        return real(buffer, flags)
    monkeypatch.setattr(images.cv2, 'imdecode', spy)
    return calls


def _reason(data, format='jpeg', **limits):  # noqa: A002
    with pytest.raises(ImageDecodeError) as caught:
        decode_compressed(format=format, data=data, **limits)
    return caught.value.reason, str(caught.value)


@pytest.mark.parametrize('name, data', [('baseline', BASELINE), ('progressive', PROGRESSIVE),
                                        ('restarts', RESTARTS)])
def test_jpeg_round_trip(name, data, imdecode_calls):
    decoded = decode_compressed(format='jpeg', data=data)
    assert decoded.shape == PHOTO.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - PHOTO).mean() < 4
    assert imdecode_calls == [len(data)]
    # zero padding after the end marker (some camera drivers send it) is accepted
    np.testing.assert_array_equal(decode_compressed(format='jpeg', data=data + bytes(16)),
                                  decoded)


def test_png_round_trip_is_exact():
    np.testing.assert_array_equal(decode_compressed(format='png', data=PNG), PHOTO)
    grey = cv2.imencode('.png', PHOTO[..., 0])[1].tobytes()
    np.testing.assert_array_equal(decode_compressed(format='png', data=grey),
                                  np.dstack([PHOTO[..., 0]] * 3))


@pytest.mark.parametrize('bomb', [_jpeg_bomb, _png_bomb])
def test_decompression_bombs_are_refused_from_the_header(bomb, imdecode_calls):
    data = bomb(30000)
    assert len(data) < 4000
    tracemalloc.start()
    try:
        reason, message = _reason(data)
        peak_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reason == 'too_large' and '30000x30000 = 900000000 pixels' in message
    assert 'max_image_pixels=16000000' in message
    assert imdecode_calls == [] and peak_bytes < 5_000_000


def test_size_limit_is_a_parameter():
    side = PHOTO.shape[0]
    assert _reason(BASELINE, max_image_pixels=side * side - 1)[0] == 'too_large'
    assert _reason(PNG, max_image_pixels=side * side - 1)[0] == 'too_large'
    assert decode_compressed(format='jpeg', data=BASELINE,
                             max_image_pixels=side * side).shape == PHOTO.shape


def _foreign(ext):
    if ext in ('.hdr', '.pfm'):
        return cv2.imencode(ext, np.full((64, 64, 3), 0.5, np.float32))[1].tobytes()
    return cv2.imencode(ext, np.full((64, 64, 3), 99, np.uint8))[1].tobytes()


@pytest.mark.parametrize('ext, name', [
    ('.bmp', 'BMP'), ('.tiff', 'TIFF'), ('.webp', 'WebP'), ('.ppm', 'PNM'), ('.pam', 'PNM'),
    ('.jp2', 'JPEG 2000'), ('.hdr', 'Radiance HDR'), ('.pfm', 'PFM'), ('.ras', 'Sun raster'),
    ('.gif', 'GIF'),
])
def test_foreign_formats_are_refused_by_magic_bytes(ext, name, imdecode_calls):
    data = _foreign(ext)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
    imdecode_calls.clear()  # OpenCV itself would decode them: the decoder must not try
    reason, message = _reason(data, format='jpeg')
    assert reason == 'unsupported_format' and name in message
    assert 'only JPEG and PNG are decoded' in message and imdecode_calls == []


def test_unknown_bytes_and_depth_formats_are_refused():
    reason, message = _reason(b'hello world')
    assert reason == 'unsupported_format' and '68 65 6c 6c' in message
    assert _reason(PNG, format='16UC1; compressedDepth png')[0] == 'depth_image'
    assert _reason(b'', format='jpeg')[0] == 'bad_size'


@pytest.mark.parametrize('sof, process', [(0xC3, 'lossless'), (0xC9, 'arithmetic')])
def test_exotic_jpeg_processes_are_refused(sof, process, imdecode_calls):
    position = BASELINE.index(b'\xff\xc0')
    data = BASELINE[:position + 1] + bytes([sof]) + BASELINE[position + 2:]
    reason, message = _reason(data)
    assert reason == 'unsupported_format' and process in message and imdecode_calls == []


@pytest.mark.parametrize('name, data', [('baseline', BASELINE), ('progressive', PROGRESSIVE),
                                        ('restarts', RESTARTS)])
def test_truncated_jpeg_is_refused_even_with_a_forged_end_marker(name, data):
    # cut at 40 places from the first scan to the last entropy byte, with and without an EOI
    first_scan = data.index(b'\xff\xda')
    for cut in np.linspace(first_scan + 20, len(data) - 3, 40).astype(int):
        for tail in (b'', EOI):
            reason, message = _reason(data[:cut] + tail)
            assert reason == 'truncated' and 'truncated JPEG' in message, (name, cut, tail)


def test_truncated_jpeg_is_refused_when_cut_by_a_few_bytes():
    for missing in range(1, 40):
        assert _reason(BASELINE[:-2 - missing] + EOI)[0] == 'truncated', missing


def test_progressive_jpeg_cut_between_scans_is_refused():
    # OpenCV decodes this to a blurred image without any warning; the scan bookkeeping catches it
    last_scan = PROGRESSIVE.rindex(b'\xff\xda')
    data = PROGRESSIVE[:last_scan] + EOI
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
    reason, message = _reason(data)
    assert reason == 'truncated' and 'scans missing' in message


def test_png_cut_short_is_refused_even_with_a_forged_end_chunk():
    assert _reason(PNG[:len(PNG) // 2])[0] == 'truncated'
    assert _reason(PNG[:len(PNG) // 2] + _png_chunk(b'IEND', b''))[0] == 'truncated'
    # cut at a chunk boundary and close it properly: libpng finds the image data short
    ihdr_end = 8 + 25
    first_idat = PNG[ihdr_end:ihdr_end + 8 + 8192 + 4]
    reason, message = _reason(PNG[:ihdr_end] + first_idat + _png_chunk(b'IEND', b''))
    assert reason == 'truncated' and 'truncated PNG' in message


def test_codec_messages_are_collected_and_other_stderr_is_passed_on(capfd):
    with images._codec_messages() as messages:
        os.write(2, b'Corrupt JPEG data: premature end of data segment\nfrom another thread\n')
    assert messages == ['Corrupt JPEG data: premature end of data segment']
    assert capfd.readouterr().err == 'from another thread\n'
