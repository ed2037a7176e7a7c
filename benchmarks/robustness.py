"""Robustness: a bad-frame corpus, frames arriving faster than they are localized, RSS over time.

Sections (in-process, no ROS node is started; 2 CPU cores, not a timed test):

* ``corpus``: bad inputs generated here (truncated JPEG / PNG, forged end markers,
  decompression bombs, foreign formats, raw ``sensor_msgs/Image`` with wrong sizes, steps
  or encodings, depth and NaN images, empty data) built as real ``sensor_msgs`` messages and
  passed through ``vl_attention.ros.conversions.image_to_rgb``, the node's decoder; library
  frames (float, NaN, RGBA, empty arrays) go through ``preprocess.as_rgb``, the check
  ``Localizer.localize`` applies. Per case: rejected, reason, ms, peak RSS growth. Good
  frames must still decode afterwards, and the whole corpus is then repeated
  ``--corpus-rounds`` times to check the rejection path for leaks.
* ``overload``: the synthetic ``demo`` world (``--preset``) is rendered and its day
  traversal mapped in a child process, in a temporary directory (``--work-dir`` keeps
  it); ``Localizer.from_map`` (the node's pipeline: place filter and PnP) on its dusk
  queries at 320x240 and 640x480: p50 / p95 ms per frame and the sustainable rate; then
  a camera thread offers raw Image messages faster than that to the node's
  ``LatestFrameSlot`` while a worker decodes and localizes them as ``localize_node``
  does (frames dropped, age of each answer), at 0.8, 2 and 4 times the sustainable
  rate, then at a camera's ``--camera-hz`` (60) for ``--camera-seconds`` (180) with
  VmRSS before and after. The node's queue and drop policy is recorded as text.
* ``rss``: ``--frames`` frames (640x480, read from disk) localized in sequence, VmRSS
  every 50 frames: growth from frame 100 to the end and its slope (a leak check).

``python benchmarks/robustness.py [--sections corpus,overload,rss] [--frames 600]`` prints
the tables and writes benchmarks/results/robustness.json.
"""

# first, before numpy loads: the node's BLAS thread default (see vl_attention/__init__.py)
import vl_attention  # noqa: F401,I100

import argparse
import json
import os
from pathlib import Path
import platform
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

import cv2
import numpy as np

from vl_attention.io import write_report_sections

ROOT = Path(__file__).resolve().parents[1]
EOI = b'\xff\xd9'
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
REPEATS = 3               # timed calls per corpus case (median reported)
WARMUP_FRAMES = 5
LATENCY_FRAMES = 60
OVERLOAD_SECONDS = 6.0
OVERLOAD_FACTORS = (0.8, 2.0, 4.0)   # offered rate / sustainable rate
OVERLOAD_SIZES = ((320, 240), (640, 480))   # native size of the demo world, and upscaled
OVERLOAD_SPAN = 40        # frames of the route the camera thread cycles over (held in memory)
RSS_EVERY = 50


# ---------------------------------------------------------------- process memory

def _status_kb(key):
    """Return a ``/proc/self/status`` value in kB (``VmRSS``, ``VmHWM``)."""
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith(key + ':'):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak():
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        with open('/proc/self/clear_refs', 'w') as handle:
            handle.write('5')
        return True
    except OSError:
        return False


class PeakMeter:
    """Peak RSS growth of a block: VmHWM after minus VmRSS before (VmHWM reset when possible)."""

    def __init__(self):
        self.resettable = _reset_peak()

    def measure(self, function):
        """Call ``function``; return ``(its result or exception, ms, peak growth in MB)``."""
        if self.resettable:
            _reset_peak()
            base = _status_kb('VmRSS')
        else:  # only growth of the process' high-water mark is visible
            base = _status_kb('VmHWM')
        started = time.perf_counter()
        try:
            outcome = function()
        except Exception as error:  # the outcome of a case, not a failure of the benchmark
            outcome = error
        elapsed_ms = (time.perf_counter() - started) * 1e3
        return outcome, elapsed_ms, max(0, _status_kb('VmHWM') - base) / 1024


# ---------------------------------------------------------------- the corpus

def _photo():
    """Return a real photo (scikit-image's astronaut, 256x256 RGB) or a textured stand-in."""
    try:
        import skimage.data
        return np.ascontiguousarray(skimage.data.astronaut()[::2, ::2])
    except ImportError:
        rng = np.random.default_rng(0)
        ramp = np.add.outer(np.arange(256), np.arange(256)).astype(np.uint8)
        return np.dstack([ramp, ramp[::-1], rng.integers(0, 255, (256, 256), np.uint8)])


def _encode(ext, image, *params):
    """Encode an RGB (or float) image with OpenCV; return the bytes."""
    if image.ndim == 3 and image.dtype == np.uint8:
        image = image[..., ::-1]
    ok, data = cv2.imencode(ext, np.ascontiguousarray(image), list(params))
    if not ok:
        raise RuntimeError(f'OpenCV cannot encode {ext}')
    return data.tobytes()


def _png_chunk(kind, payload):
    """Return one PNG chunk with its CRC."""
    return struct.pack('>I', len(payload)) + kind + payload + \
        struct.pack('>I', zlib.crc32(kind + payload))


def _jpeg_bomb(side):
    """Return an 8x8 JPEG whose frame header declares ``side`` x ``side`` pixels."""
    tiny = _encode('.jpg', np.zeros((8, 8, 3), np.uint8))
    sof = tiny.index(b'\xff\xc0')
    return tiny[:sof + 5] + struct.pack('>HH', side, side) + tiny[sof + 9:]


def _png_bomb(side):
    """Return a PNG declaring ``side`` x ``side`` grey pixels with 64 zero rows of data."""
    rows = zlib.compress(b'\x00' * (side + 1) * 64, 9)
    header = struct.pack('>IIBBBBB', side, side, 8, 0, 0, 0, 0)
    return PNG_SIGNATURE + _png_chunk(b'IHDR', header) + _png_chunk(b'IDAT', rows) + \
        _png_chunk(b'IEND', b'')


def _with_sof(jpeg, marker):
    """Return ``jpeg`` with its SOF0 marker replaced by ``marker`` (e.g. 0xC3 lossless)."""
    position = jpeg.index(b'\xff\xc0')
    return jpeg[:position + 1] + bytes([marker]) + jpeg[position + 2:]


def _jpeg_zero_size(jpeg):
    """Return ``jpeg`` with a frame header declaring 0x0 pixels."""
    sof = jpeg.index(b'\xff\xc0')
    return jpeg[:sof + 5] + struct.pack('>HH', 0, 0) + jpeg[sof + 9:]


def _jpeg_scrambled(jpeg):
    """Return ``jpeg`` with 64 random bytes (no 0xFF) written into the middle of its scan."""
    scan = jpeg.rindex(b'\xff\xda')
    middle = (scan + len(jpeg)) // 2
    noise = np.random.default_rng(1).integers(0, 0xFF, 64, dtype=np.uint8).tobytes()
    return jpeg[:middle] + noise + jpeg[middle + 64:]


def _png_crc_broken(png):
    """Return ``png`` with a byte of its first IDAT chunk flipped (its CRC no longer matches)."""
    position = png.index(b'IDAT') + 40
    return png[:position] + bytes([png[position] ^ 0xFF]) + png[position + 1:]


def _png_zero_size():
    """Return a PNG whose IHDR declares 0x0 pixels."""
    header = struct.pack('>IIBBBBB', 0, 0, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + _png_chunk(b'IHDR', header) + \
        _png_chunk(b'IDAT', zlib.compress(b'\x00')) + _png_chunk(b'IEND', b'')


def _png_cut_at_chunk(png):
    """Return the IHDR and the first IDAT chunk of ``png``, closed with a proper IEND."""
    ihdr_end = 8 + 25
    length = struct.unpack_from('>I', png, ihdr_end)[0]
    return png[:ihdr_end + 12 + length] + _png_chunk(b'IEND', b'')


def _compressed_cases(photo):
    """Return ``(name, format, data)`` of the bad CompressedImage payloads."""
    baseline = _encode('.jpg', photo, cv2.IMWRITE_JPEG_QUALITY, 90)
    progressive = _encode('.jpg', photo, cv2.IMWRITE_JPEG_PROGRESSIVE, 1)
    png = _encode('.png', photo)
    first_scan = baseline.index(b'\xff\xda')
    cases = [
        ('jpeg_truncated_half', 'jpeg', baseline[:len(baseline) // 2]),
        ('jpeg_truncated_fake_eoi', 'jpeg', baseline[:len(baseline) * 3 // 5] + EOI),
        ('jpeg_missing_5_bytes_fake_eoi', 'jpeg', baseline[:-7] + EOI),
        ('jpeg_headers_only', 'jpeg', baseline[:first_scan + 14]),
        ('jpeg_headers_only_fake_eoi', 'jpeg', baseline[:first_scan + 14] + EOI),
        ('jpeg_soi_only', 'jpeg', baseline[:3]),
        ('jpeg_progressive_cut_between_scans', 'jpeg',
         progressive[:progressive.rindex(b'\xff\xda')] + EOI),
        ('jpeg_scrambled_entropy', 'jpeg', _jpeg_scrambled(baseline)),
        ('jpeg_zero_size', 'jpeg', _jpeg_zero_size(baseline)),
        ('jpeg_bomb_30000x30000', 'jpeg', _jpeg_bomb(30000)),
        ('jpeg_bomb_65535x65535', 'jpeg', _jpeg_bomb(65535)),
        ('jpeg_lossless_sof3', 'jpeg', _with_sof(baseline, 0xC3)),
        ('jpeg_arithmetic_sof9', 'jpeg', _with_sof(baseline, 0xC9)),
        ('png_truncated_half', 'png', png[:len(png) // 2]),
        ('png_truncated_fake_iend', 'png', png[:len(png) // 2] + _png_chunk(b'IEND', b'')),
        ('png_cut_at_chunk_with_iend', 'png', _png_cut_at_chunk(png)),
        ('png_signature_only', 'png', png[:8]),
        ('png_idat_crc_broken', 'png', _png_crc_broken(png)),
        ('png_zero_size', 'png', _png_zero_size()),
        ('png_bomb_30000x30000', 'png', _png_bomb(30000)),
        ('png_bomb_100000x100000', 'png', _png_bomb(100000)),
        ('empty_data', 'jpeg', b''),
        ('random_bytes', 'jpeg', np.random.default_rng(2).bytes(4096)),
        ('text_bytes', 'jpeg', b'hello world, not an image'),
        ('compressed_depth_png', '16UC1; compressedDepth png', png),
    ]
    small = np.full((64, 64, 3), 99, np.uint8)
    for ext in ('.bmp', '.tiff', '.webp', '.gif', '.ppm', '.jp2'):
        try:
            cases.append((f'foreign_{ext[1:]}', 'jpeg', _encode(ext, small)))
        except (RuntimeError, cv2.error):   # this OpenCV build has no such encoder
            pass
    return cases


def _raw_cases():
    """Return ``(name, Image fields)`` of the bad raw sensor_msgs/Image messages."""
    def image(encoding, height, width, step, data, **extra):
        return dict(encoding=encoding, height=height, width=width, step=step, data=data,
                    **extra)
    nan = np.full((4, 4), np.nan, np.float32).tobytes()
    over = 4001 * 4000   # one row over the default max_image_pixels (16,000,000)
    return [
        ('raw_rgb8_step_too_small', image('rgb8', 4, 4, 11, bytes(44))),
        ('raw_rgb8_data_short', image('rgb8', 4, 4, 12, bytes(47))),
        ('raw_rgb8_data_long', image('rgb8', 4, 4, 12, bytes(49))),
        ('raw_rgb8_height_0', image('rgb8', 0, 4, 12, b'')),
        ('raw_rgb8_width_0', image('rgb8', 4, 0, 0, b'')),
        ('raw_rgb8_0x0_empty', image('rgb8', 0, 0, 0, b'')),
        ('raw_rgb8_no_data', image('rgb8', 480, 640, 1920, b'')),
        ('raw_rgb8_declares_30000x30000', image('rgb8', 30000, 30000, 90000, bytes(48))),
        ('raw_mono8_4001x4000_full_data', image('mono8', over // 4001, 4001, 4001,
                                                bytes(over))),
        ('raw_encoding_unknown', image('foo42', 4, 4, 12, bytes(48))),
        ('raw_encoding_empty', image('', 4, 4, 12, bytes(48))),
        ('raw_encoding_jpeg', image('jpeg', 4, 4, 12, bytes(48))),
        ('raw_encoding_8UC4', image('8UC4', 4, 4, 16, bytes(64))),
        ('raw_depth_16UC1', image('16UC1', 4, 4, 8, bytes(32))),
        ('raw_depth_32FC1_nan', image('32FC1', 4, 4, 16, nan)),
        ('raw_float_32FC3_nan', image('32FC3', 4, 4, 48, nan * 3)),
        ('raw_depth_64FC1', image('64FC1', 4, 4, 32, bytes(128))),
        ('raw_yuv422_odd_width', image('yuv422', 4, 3, 6, bytes(24))),
        ('raw_bayer_1x1', image('bayer_rggb8', 1, 1, 1, bytes(1))),
        ('raw_mono16_step_odd_bytes', image('mono16', 4, 4, 7, bytes(28))),
    ]


def _frame_cases():
    """Return ``(name, array)`` library frames that ``Localizer.localize`` must refuse."""
    return [
        ('frame_float32_nan', np.full((120, 160, 3), np.nan, np.float32)),
        ('frame_float64_rgb', np.zeros((120, 160, 3))),
        ('frame_uint16_rgb', np.zeros((120, 160, 3), np.uint16)),
        ('frame_rgba_uint8', np.zeros((120, 160, 4), np.uint8)),
        ('frame_0x0', np.zeros((0, 0, 3), np.uint8)),
        ('frame_1d', np.zeros(100, np.uint8)),
        ('frame_list', [[0, 0, 0]]),
    ]


def _good_cases(photo):
    """Return ``(name, kind, payload, expected RGB)`` frames that must decode."""
    big = cv2.resize(photo, (4000, 4000), interpolation=cv2.INTER_LINEAR)
    padded = np.zeros((256, 256 * 3 + 8), np.uint8)
    padded[:, :256 * 3] = photo[..., ::-1].reshape(256, -1)
    mono16 = (photo[..., 0].astype(np.uint16) << 8).astype('>u2').tobytes()
    return [
        ('good_jpeg_256', 'compressed', ('jpeg', _encode('.jpg', photo)), photo),
        ('good_jpeg_progressive_256', 'compressed',
         ('jpeg', _encode('.jpg', photo, cv2.IMWRITE_JPEG_PROGRESSIVE, 1)), photo),
        ('good_png_256', 'compressed', ('png', _encode('.png', photo)), photo),
        ('good_jpeg_4000x4000_at_limit', 'compressed',
         ('jpeg', _encode('.jpg', big, cv2.IMWRITE_JPEG_QUALITY, 80)), big),
        ('good_raw_rgb8', 'raw', dict(encoding='rgb8', height=256, width=256, step=768,
                                      data=photo.tobytes()), photo),
        ('good_raw_bgr8_padded_step', 'raw', dict(encoding='bgr8', height=256, width=256,
                                                  step=256 * 3 + 8, data=padded.tobytes()),
         photo),
        ('good_raw_mono16_bigendian', 'raw',
         dict(encoding='mono16', height=256, width=256, step=512, data=mono16,
              is_bigendian=1), np.dstack([photo[..., 0]] * 3)),
    ]


def _compressed_msg(format, data):  # noqa: A002  (the message field is called format)
    """Return a sensor_msgs/CompressedImage."""
    from sensor_msgs.msg import CompressedImage
    return CompressedImage(format=format, data=data)


def _raw_msg(fields):
    """Return a sensor_msgs/Image with ``fields``."""
    from sensor_msgs.msg import Image
    return Image(**fields)


def _outcome(outcome):
    """Classify a case's outcome (an exception or an array): ``(rejected, reason, message)``."""
    from vl_attention.data.images import ImageDecodeError
    from vl_attention.engine.preprocess import FrameError
    if isinstance(outcome, ImageDecodeError):
        return True, outcome.reason, str(outcome)
    if isinstance(outcome, FrameError):  # the node counts these under 'bad_frame'
        return True, 'bad_frame', str(outcome)
    if isinstance(outcome, Exception):   # the node would count an internal error
        return False, 'internal_error', f'{type(outcome).__name__}: {outcome}'
    return False, 'decoded', f'decoded to {outcome.dtype} {outcome.shape}'


def _run_case(meter, function):
    """Time ``function`` REPEATS times; the first call's RSS growth, the median ms."""
    outcome, first_ms, rss_mb = meter.measure(function)
    times = [first_ms] + [meter.measure(function)[1] for _ in range(REPEATS - 1)]
    return outcome, float(np.median(times)), rss_mb


def build_corpus():
    """Return the source photo and every bad case as ``(name, kind, zero-argument call)``."""
    from vl_attention.engine.preprocess import as_rgb
    from vl_attention.ros.conversions import image_to_rgb
    photo = _photo()
    cases = [(name, 'compressed', _bind(image_to_rgb, _compressed_msg(fmt, data)))
             for name, fmt, data in _compressed_cases(photo)]
    cases += [(name, 'raw', _bind(image_to_rgb, _raw_msg(fields)))
              for name, fields in _raw_cases()]
    cases += [(name, 'frame', _bind(as_rgb, frame)) for name, frame in _frame_cases()]
    return photo, cases


def _bind(function, argument):
    """Return a zero-argument call of ``function(argument)``."""
    return lambda: function(argument)


def corpus(rounds=200):
    """Run the bad-frame corpus, then the good frames, then ``rounds`` more rounds for leaks."""
    from vl_attention.ros.conversions import image_to_rgb
    meter = PeakMeter()
    photo, cases = build_corpus()
    rss_start_kb = _status_kb('VmRSS')   # after the inputs are built
    rows = []
    for name, kind, call in cases:
        outcome, ms, rss_mb = _run_case(meter, call)
        rejected, reason, message = _outcome(outcome)
        row = {'case': name, 'kind': kind, 'rejected': rejected, 'reason': reason,
               'message': message, 'ms': ms, 'peak_rss_growth_mb': rss_mb}
        if isinstance(outcome, np.ndarray) and outcome.shape == photo.shape:
            # a bad input that decoded anyway: how far is it from the photo it was made from?
            errors = np.abs(outcome.astype(np.int16) - photo).mean(axis=(1, 2))
            half = len(errors) // 2
            row['mean_abs_error_vs_source'] = {'top_half': float(errors[:half].mean()),
                                               'bottom_half': float(errors[half:].mean())}
        rows.append(row)
    rss_after_cases_kb = _status_kb('VmRSS')
    started = time.perf_counter()
    for _ in range(rounds):
        for _, _, call in cases:
            try:
                call()
            except Exception:  # each outcome was recorded above
                pass
    rounds_s = time.perf_counter() - started
    rss_after_rounds_kb = _status_kb('VmRSS')
    good = []
    for name, kind, payload, expected in _good_cases(photo):
        message = _compressed_msg(*payload) if kind == 'compressed' else _raw_msg(payload)
        outcome, ms, rss_mb = _run_case(meter, _bind(image_to_rgb, message))
        decoded = isinstance(outcome, np.ndarray) and outcome.shape == expected.shape
        good.append({'case': name, 'kind': kind, 'decoded': decoded,
                     'shape': list(outcome.shape) if isinstance(outcome, np.ndarray) else None,
                     'mean_abs_error': float(np.abs(outcome.astype(np.int16) - expected).mean())
                     if decoded else None,
                     'outcome': _outcome(outcome)[2], 'ms': ms, 'peak_rss_growth_mb': rss_mb})
    slowest = max(rows, key=lambda row: row['ms'])
    hungriest = max(rows, key=lambda row: row['peak_rss_growth_mb'])
    return {
        'decoder': 'vl_attention.ros.conversions.image_to_rgb (sensor_msgs messages); '
                   'library frames: vl_attention.engine.preprocess.as_rgb',
        'rss_peak_reset': meter.resettable,
        'repeats_per_case': REPEATS,
        'cases': rows,
        'good_frames_after_corpus': good,
        'summary': {
            'cases': len(rows),
            'all_rejected': all(row['rejected'] for row in rows),
            'not_rejected': [row['case'] for row in rows if not row['rejected']],
            'max_ms': slowest['ms'], 'max_ms_case': slowest['case'],
            'max_peak_rss_growth_mb': hungriest['peak_rss_growth_mb'],
            'max_peak_rss_growth_case': hungriest['case'],
            'rss_growth_over_corpus_mb': (rss_after_cases_kb - rss_start_kb) / 1024,
            'leak_rounds': rounds,
            'leak_rounds_s': rounds_s,
            'rss_growth_over_leak_rounds_mb': (rss_after_rounds_kb - rss_after_cases_kb) / 1024,
            'all_good_frames_decoded': all(row['decoded'] for row in good),
            'reasons': sorted({row['reason'] for row in rows if row['rejected']}),
        },
    }


# ---------------------------------------------------------------- a map and its frames

BUILD_MAP = """
import sys
from benchmarks.robustness import build_map
build_map(sys.argv[1], sys.argv[2])
"""


def build_map(work_dir, preset):
    """Render a synthetic world preset and map its day traversal (the model goes in the map)."""
    from vl_attention.data.synthetic import generate
    from vl_attention.engine.embedder import create_embedder, EmbedderConfig
    from vl_attention.mapping.builder import build_map_from_folder
    world, map_dir = Path(work_dir) / f'world_{preset}', Path(work_dir) / f'map_{preset}'
    if not (world / 'world.json').is_file():
        generate(preset, world, progress=False)
    if not (map_dir / 'manifest.json').is_file():
        embedder = create_embedder(EmbedderConfig(backend='onnxruntime'))
        build_map_from_folder(world / 'map_day' / 'images', world / 'map_day' / 'poses.csv',
                              map_dir, embedder=embedder)
    return world, map_dir


def prepared_map(work_dir, preset):
    """Build the map in a child process (torch builds it; this process' RSS stays the node's)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, '-c', BUILD_MAP, str(work_dir), preset], cwd=ROOT,
                   check=True, timeout=1800)
    return Path(work_dir) / f'world_{preset}', Path(work_dir) / f'map_{preset}', \
        time.perf_counter() - started


class Traversal:
    """The query traversal of a synthetic world: image paths and the frame period."""

    def __init__(self, world):
        from vl_attention.demo import query_traversal
        from vl_attention.mapping import read_poses_csv
        folder = query_traversal(world)
        columns = read_poses_csv(folder / 'poses.csv')
        self.name = folder.name
        self.paths = [folder / 'images' / name for name in columns['image']]
        self.period_s = float(np.median(np.diff(np.asarray(columns['stamp_ns'])))) * 1e-9

    def order(self, count):
        """Return ``count`` frame indices running forward and back along the route (no jumps)."""
        cycle = list(range(len(self.paths))) + list(range(len(self.paths) - 2, 0, -1))
        return [cycle[k % len(cycle)] for k in range(count)]

    def read(self, index, size=None):
        """Read frame ``index`` as RGB, resized to ``size`` ``(width, height)`` if given."""
        frame = cv2.cvtColor(cv2.imread(str(self.paths[index]), cv2.IMREAD_COLOR),
                             cv2.COLOR_BGR2RGB)
        if size is not None and frame.shape[1::-1] != tuple(size):
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
        return frame

    def frames(self, count, size=None, *, span=None):
        """Read ``count`` frames in route order, cycling over the first ``span`` frames."""
        span = min(span or len(self.paths), len(self.paths))
        cycle = list(range(span)) + list(range(span - 2, 0, -1))
        indices = [cycle[k % len(cycle)] for k in range(count)]
        cache = {index: self.read(index, size) for index in set(indices)}
        return [cache[index] for index in indices]


def _raw_image(frame, stamp_s):
    """Return an rgb8 sensor_msgs/Image of ``frame`` stamped ``stamp_s``."""
    from sensor_msgs.msg import Image
    msg = Image(encoding='rgb8', height=frame.shape[0], width=frame.shape[1],
                step=frame.shape[1] * 3, data=frame.tobytes())
    msg.header.stamp.sec = int(stamp_s)
    msg.header.stamp.nanosec = int(round((stamp_s % 1.0) * 1e9)) % 1_000_000_000
    return msg


# ---------------------------------------------------------------- overload

def _percentiles(values):
    """Return p50 / p95 / max / mean of ``values`` (ms)."""
    values = np.asarray(values, dtype=float)
    return {'p50_ms': float(np.median(values)), 'p95_ms': float(np.percentile(values, 95)),
            'max_ms': float(values.max()), 'mean_ms': float(values.mean())}


def frame_latency(localizer, traversal, size):
    """Time ``Localizer.localize`` per frame over the route in sequence, after a warm-up."""
    localizer.reset()
    frames = traversal.frames(WARMUP_FRAMES + LATENCY_FRAMES, size)
    times, fixes, refined = [], 0, 0
    for k, frame in enumerate(frames):
        started = time.perf_counter()
        result = localizer.localize(frame, stamp_s=k * traversal.period_s)
        if k >= WARMUP_FRAMES:
            times.append((time.perf_counter() - started) * 1e3)
            fixes += bool(result.ok)
            refined += result.pose_source == 'pnp'
    row = _percentiles(times)
    row.update(frames=len(times), fixes=fixes, refined_pnp=refined,
               sustainable_hz_mean=1e3 / row['mean_ms'], sustainable_hz_p95=1e3 / row['p95_ms'])
    return row


def camera_clock(route, period_s, rate_hz, seconds):
    """Yield ``(stamp_s, frame)`` at ``rate_hz`` for ``seconds``, on the wall clock.

    The robot drives ``route`` (frames ``period_s`` apart) at its recorded speed; each
    tick gives the route frame of its instant; a late tick follows at once.
    """
    start, ticks = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        stamp_s = ticks / rate_hz
        yield stamp_s, route[min(int(stamp_s / period_s + 1e-9), len(route) - 1)]
        ticks += 1
        delay = start + ticks / rate_hz - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def offered_load(localizer, route, period_s, rate_hz, seconds=OVERLOAD_SECONDS):
    """Offer camera frames at ``rate_hz`` to the node's LatestFrameSlot; localize as the node.

    The robot drives the recorded ``route`` (frames ``period_s`` apart) at its recorded
    speed; a camera thread at ``rate_hz`` publishes the route frame of its instant as an
    rgb8 Image stamped with that instant and stands in for the subscription callback
    (``slot.put``); a worker thread runs what ``localize_node``'s worker runs per message:
    ``image_to_rgb`` then ``Localizer.localize``. An answer's age is from ``put`` to the
    end of ``localize``.
    """
    from vl_attention.localization.pipeline import LatestFrameSlot
    from vl_attention.ros.conversions import image_to_rgb
    localizer.reset()
    slot, ages, service, offered, failures, fixes = LatestFrameSlot(), [], [], [0], [], [0]

    def camera():
        """Put the messages at ``rate_hz`` for ``seconds``, then close the slot."""
        for stamp_s, frame in camera_clock(route, period_s, rate_hz, seconds):
            slot.put((_raw_image(frame, stamp_s), time.perf_counter()))
            offered[0] += 1
        slot.close()

    def worker():
        """Take the newest message, decode and localize it, until the slot is closed."""
        while True:
            item = slot.take(timeout_s=0.5)
            if item is None:
                if slot.closed:
                    return
                continue
            msg, received_at = item
            taken_at = time.perf_counter()
            try:
                result = localizer.localize(image_to_rgb(msg), stamp_s=msg.header.stamp.sec +
                                            msg.header.stamp.nanosec * 1e-9)
            except Exception as error:   # the node counts these as internal errors
                failures.append(repr(error))
                continue
            done_at = time.perf_counter()
            ages.append((done_at - received_at) * 1e3)
            service.append((done_at - taken_at) * 1e3)
            fixes[0] += bool(result.ok)

    threads = [threading.Thread(target=camera), threading.Thread(target=worker)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    row = {'offered_hz': rate_hz, 'seconds': elapsed, 'offered': offered[0],
           'processed': len(ages), 'dropped': slot.dropped, 'failures': len(failures),
           'fixes': fixes[0], 'processed_hz': len(ages) / elapsed,
           'dropped_fraction': slot.dropped / max(1, offered[0])}
    if ages:
        row.update({f'age_{key}': value for key, value in _percentiles(ages).items()})
        row.update({f'service_{key}': value for key, value in _percentiles(service).items()})
    return row


def drop_policy():
    """Describe the node's queueing and drop policy from its code and parameters."""
    from vl_attention.localization.pipeline import LatestFrameSlot
    from vl_attention.ros import node
    from vl_attention.ros.params import PARAMS_BY_NAME
    qos = node.qos_profile_sensor_data
    dropped = PARAMS_BY_NAME['max_dropped_ratio']
    paragraphs = [' '.join(text.split()) for text in node.__doc__.split('\n\n')]
    return {
        'subscription_qos': f'qos_profile_sensor_data (the default): history '
                            f'{qos.history.name}, depth {qos.depth}, reliability '
                            f'{qos.reliability.name}',
        'worker_queue': f'LatestFrameSlot: {LatestFrameSlot.__doc__.strip()} The subscription '
                        'callback only stores the newest message; one worker thread decodes '
                        'and localizes it; a message replaced before the worker took it is '
                        'counted in frames_dropped.',
        'node': ' '.join(text for text in paragraphs if 'dropped' in text or 'QoS' in text),
        'max_dropped_ratio': f'{dropped.default} ({dropped.description})',
    }


def overload(localizer, traversal, camera_hz=0.0, camera_seconds=0.0):
    """Measure the latency per frame at two sizes, then offer frames faster than that.

    With ``camera_hz``, a last row offers a camera's rate (e.g. 60 Hz) for
    ``camera_seconds``, with VmRSS before and after.
    """
    latency = {f'{w}x{h}': frame_latency(localizer, traversal, (w, h))
               for w, h in OVERLOAD_SIZES}
    size = OVERLOAD_SIZES[-1]
    sustainable = latency[f'{size[0]}x{size[1]}']['sustainable_hz_mean']
    seconds = max(OVERLOAD_SECONDS, camera_seconds if camera_hz else 0.0)
    steps = int(np.ceil(seconds / traversal.period_s)) + 1
    route = traversal.frames(steps, size, span=OVERLOAD_SPAN)  # forward and back, no jumps
    offered = []
    for factor in OVERLOAD_FACTORS:
        offered.append(offered_load(localizer, route, traversal.period_s,
                                    round(factor * sustainable, 1)))
        offered[-1]['factor_of_sustainable'] = factor
    if camera_hz:
        rss_before = _status_kb('VmRSS') / 1024
        offered.append(offered_load(localizer, route, traversal.period_s, camera_hz,
                                    seconds=camera_seconds))
        offered[-1].update(factor_of_sustainable=round(camera_hz / sustainable, 1),
                           rss_before_mb=rss_before, rss_after_mb=_status_kb('VmRSS') / 1024)
    return {'pipeline': 'Localizer.from_map (place filter + PnP refinement), onnxruntime',
            'traversal': traversal.name, 'latency': latency,
            f'offered_load_{size[0]}x{size[1]}_raw_rgb8': offered, 'policy': drop_policy()}


def live_node(map_dir, traversal, rate_hz, seconds, work_dir, dds_profile='fastdds',
              size=(640, 480)):
    """Publish raw frames at ``rate_hz`` for ``seconds`` to a real ``localize_node`` process.

    Both sides use the ``dds_profile`` (as ``localize.launch.py dds_profile:=...`` sets it);
    the output rate counts the poses that came back, the node's diagnostics what it received.
    """
    from vl_attention.demo import dds_profile_environment
    from vl_attention.ros.conversions import rgb_to_image_msg
    from vl_attention.ros.replay import live_localize_node
    from sensor_msgs.msg import Image
    steps = int(np.ceil(seconds / traversal.period_s)) + 1
    route = traversal.frames(steps, size, span=OVERLOAD_SPAN)
    messages = {}
    for frame in route:   # one message per distinct frame, made before the clock starts
        if id(frame) not in messages:
            messages[id(frame)] = rgb_to_image_msg(frame, Image())
    log_path = Path(work_dir) / 'live_node.log'
    with dds_profile_environment(dds_profile), live_localize_node(
            {'map_dir': str(map_dir), 'backend': 'onnxruntime'}, image_topic='/camera/image_raw',
            log_path=log_path) as client:
        start, published = time.perf_counter(), 0
        for stamp_s, frame in camera_clock(route, traversal.period_s, rate_hz, seconds):
            client.publish_message(messages[id(frame)], int(round(1e9 * (1.0 + stamp_s))))
            published += 1
        elapsed = time.perf_counter() - start
        time.sleep(2.0)   # the last answers
        diagnostics = client.latest_diagnostics()
        poses = len(client.responses.poses)
        latencies = [value for value in (client.latency_ms(stamp)
                                         for stamp in list(client.responses.fixes))
                     if value is not None]
    row = {'dds_profile': dds_profile or 'default', 'size': f'{size[0]}x{size[1]}',
           'offered_hz': rate_hz, 'seconds': elapsed, 'published': published,
           'published_hz': published / elapsed, 'poses_received': poses,
           'output_hz': poses / elapsed,
           'node': {key: diagnostics.get(key) for key in (
               'frames_received', 'frames_dropped', 'frames_localized', 'rate_hz',
               'latency_ms_p50', 'latency_ms_p95', '_message')}}
    if latencies:
        row.update({f'publish_to_fix_{key}': value
                    for key, value in _percentiles(latencies).items()})
    return row


def interleaved(localizer, traversal, size=(640, 480), warmup=20):
    """Follow every bad input with the route's next good frame, and check that it localizes.

    The good frames run twice through a reset localizer, after ``warmup`` frames: alone
    (the baseline) and with one corpus case before each. A case is decoded as the node
    decodes it (``image_to_rgb``; library frames: ``preprocess.as_rgb``, which
    ``Localizer.localize`` applies first), and localized if that passes.
    """
    _, cases = build_corpus()
    frames = traversal.frames(warmup + len(cases), size)

    def run(bad_cases):
        localizer.reset()
        for k, frame in enumerate(frames[:warmup]):
            localizer.localize(frame, stamp_s=k * traversal.period_s)
        fixes, passed = [], []
        for k, frame in enumerate(frames[warmup:], start=warmup):
            if bad_cases:
                try:
                    decoded = bad_cases[k - warmup][2]()
                    passed.append(bad_cases[k - warmup][0])
                    localizer.localize(decoded, stamp_s=(k - 0.5) * traversal.period_s)
                except Exception:   # each rejection is what the corpus section records
                    pass
            result = localizer.localize(frame, stamp_s=k * traversal.period_s)
            fixes.append(bool(result.ok))
        return fixes, passed

    baseline, _ = run([])
    after_bad, passed = run(cases)
    lost = [cases[k][0] for k, (alone, after) in enumerate(zip(baseline, after_bad))
            if alone and not after]
    return {'cases': len(cases), 'bad_inputs_not_rejected': passed,
            'good_frames_with_a_fix_alone': int(sum(baseline)),
            'good_frames_with_a_fix_after_a_bad_input': int(sum(after_bad)),
            'fixes_lost_after': lost}


# ---------------------------------------------------------------- RSS over time

def _memory_sample(frame):
    """Return VmRSS and its anonymous and file-backed parts (MB) after ``frame`` frames."""
    return {'frame': frame, 'rss_mb': _status_kb('VmRSS') / 1024,
            'rss_anon_mb': _status_kb('RssAnon') / 1024,
            'rss_file_mb': _status_kb('RssFile') / 1024}


def _growth(samples, key, start):
    """Return the growth (MB) and least-squares slope (KB/frame) of ``key`` from ``start`` on."""
    tail = [s for s in samples if s['frame'] >= start]
    slope = float(np.polyfit([s['frame'] for s in tail], [s[key] * 1024 for s in tail],
                             1)[0]) if len(tail) >= 3 else None
    return tail[-1][key] - tail[0][key], slope


def rss_over_time(localizer, traversal, frames, size=(640, 480)):
    """Localize ``frames`` frames in sequence (read from disk); VmRSS every RSS_EVERY frames.

    The map's local features are memory-mapped, so RSS also grows (file-backed pages) the
    first time each place is refined; ``RssAnon`` is the heap, where a leak would show.
    """
    localizer.reset()
    order = traversal.order(frames)
    samples = [_memory_sample(0)]
    started, fixes = time.perf_counter(), 0
    for k, index in enumerate(order, start=1):
        result = localizer.localize(traversal.read(index, size), stamp_s=k * traversal.period_s)
        fixes += bool(result.ok)
        if k % RSS_EVERY == 0 or k == frames:
            samples.append(_memory_sample(k))
    seconds = time.perf_counter() - started
    start = min(100, frames)
    row = {'frames': frames, 'size': f'{size[0]}x{size[1]}', 'traversal': traversal.name,
           'route_frames': len(traversal.paths), 'seconds': seconds, 'fixes': fixes,
           'samples': samples, 'peak_rss_mb': _status_kb('VmHWM') / 1024}
    for name in ('rss', 'rss_anon', 'rss_file'):
        row[f'{name}_growth_from_frame_100_mb'], row[f'{name}_slope_kb_per_frame'] = \
            _growth(samples, f'{name}_mb', start)
    # once the whole route was seen, every place's features have been paged in
    covered = -(-len(traversal.paths) // RSS_EVERY) * RSS_EVERY
    if frames >= covered + 3 * RSS_EVERY:
        row['after_route_covered'] = {'from_frame': covered}
        for name in ('rss', 'rss_anon'):
            growth, slope = _growth(samples, f'{name}_mb', covered)
            row['after_route_covered'].update({f'{name}_growth_mb': growth,
                                               f'{name}_slope_kb_per_frame': slope})
    return row


# ---------------------------------------------------------------- output

def print_tables(result):
    """Print the human-readable summary."""
    if 'corpus' in result:
        section = result['corpus']
        print(f'{"case":38s} {"rejected":8s} {"reason":18s} {"ms":>7s}  message')
        for row in section['cases'] + section['good_frames_after_corpus']:
            rejected = row['rejected'] if 'rejected' in row else f'decoded={row["decoded"]}'
            reason = row.get('reason', '')
            message = row.get('message', row.get('outcome', ''))
            print(f'{row["case"]:38s} {str(rejected):8s} {reason:18s} {row["ms"]:7.2f}  '
                  f'{message[:60]}')
        summary = section['summary']
        print(f'all rejected: {summary["all_rejected"]} ({summary["cases"]} cases), max '
              f'{summary["max_ms"]:.2f} ms ({summary["max_ms_case"]}), peak RSS growth '
              f'{summary["max_peak_rss_growth_mb"]:.1f} MB ({summary["max_peak_rss_growth_case"]})'
              f', RSS growth over the corpus {summary["rss_growth_over_corpus_mb"]:.1f} MB, '
              f'over {summary["leak_rounds"]} more rounds '
              f'{summary["rss_growth_over_leak_rounds_mb"]:.1f} MB; good frames decoded: '
              f'{summary["all_good_frames_decoded"]}')
    if 'overload' in result:
        for size, row in result['overload']['latency'].items():
            print(f'localize {size}: p50 {row["p50_ms"]:.1f} ms, p95 {row["p95_ms"]:.1f} ms, '
                  f'sustainable {row["sustainable_hz_mean"]:.1f} Hz (mean), '
                  f'{row["sustainable_hz_p95"]:.1f} Hz (p95); fixes {row["fixes"]}/'
                  f'{row["frames"]}')
        offered = next(value for key, value in result['overload'].items()
                       if key.startswith('offered_load_'))
        for row in offered:
            print(f'offered {row["offered_hz"]:6.1f} Hz: processed {row["processed_hz"]:5.1f} '
                  f'Hz, dropped {row["dropped_fraction"]:.2f}, answer age p50 '
                  f'{row.get("age_p50_ms", float("nan")):.1f} ms p95 '
                  f'{row.get("age_p95_ms", float("nan")):.1f} ms (decode + localize p50 '
                  f'{row.get("service_p50_ms", float("nan")):.1f} ms), fixes {row["fixes"]}, '
                  f'failures {row["failures"]}, {row["seconds"]:.0f} s' + (
                      f', RSS {row["rss_before_mb"]:.0f} -> {row["rss_after_mb"]:.0f} MB'
                      if 'rss_before_mb' in row else ''))
    if 'interleaved' in result:
        row = result['interleaved']
        print(f'good frames after each of {row["cases"]} bad inputs: '
              f'{row["good_frames_with_a_fix_after_a_bad_input"]} fixes, '
              f'{row["good_frames_with_a_fix_alone"]} without the bad inputs; lost after: '
              f'{row["fixes_lost_after"] or "none"}; not rejected: '
              f'{row["bad_inputs_not_rejected"] or "none"}')
    if 'live' in result:
        row = result['live']
        print(f'live localize_node, {row["size"]} at {row["offered_hz"]:g} Hz for '
              f'{row["seconds"]:.0f} s ({row["dds_profile"]} profile): received '
              f'{row["node"]["frames_received"]} of {row["published"]}, '
              f'{row["output_hz"]:.1f} fixes/s, publish to fix p50 '
              f'{row.get("publish_to_fix_p50_ms", float("nan")):.0f} ms')
    if 'rss' in result:
        row = result['rss']
        print(f'RSS (anon) over {row["frames"]} frames: ' + ', '.join(
            f'{s["frame"]}: {s["rss_mb"]:.0f} ({s["rss_anon_mb"]:.0f})' for s in row['samples'])
            + ' MB')
        for name in ('rss', 'rss_anon', 'rss_file'):
            slope = row[f'{name}_slope_kb_per_frame']
            print(f'{name} growth from frame 100: {row[f"{name}_growth_from_frame_100_mb"]:.2f} '
                  'MB, slope ' + ('-' if slope is None else f'{slope:.2f}') + ' KB/frame')
        if 'after_route_covered' in row:
            print('after the route was covered: ' + json.dumps(row['after_route_covered']))


def main(argv=None):
    """Run the chosen sections and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sections', default='corpus,interleaved,overload,rss,live')
    parser.add_argument('--frames', type=int, default=600, help='frames of the RSS section')
    parser.add_argument('--corpus-rounds', type=int, default=200,
                        help='extra rounds of the corpus (rejection-path leak check)')
    parser.add_argument('--camera-hz', type=float, default=60.0,
                        help='a last overload row at a camera rate (0: none)')
    parser.add_argument('--camera-seconds', type=float, default=180.0,
                        help='how long that row offers frames')
    parser.add_argument('--preset', default='demo', help='synthetic world preset of the map')
    parser.add_argument('--work-dir', type=Path, default=None,
                        help='where the world and map are built (default: a temp dir)')
    parser.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results' /
                        'robustness.json')
    parser.add_argument('--merge', action='store_true',
                        help='keep the sections of an existing --out that this run skips')
    args = parser.parse_args(argv)
    sections = args.sections.split(',')
    unknown = set(sections) - {'corpus', 'overload', 'rss', 'live', 'interleaved'}
    if unknown:
        parser.error(f'unknown sections {sorted(unknown)}')
    result = {'cpu': platform.processor() or platform.machine(), 'cores': os.cpu_count(),
              'python': sys.version.split()[0], 'opencv': cv2.__version__,
              'load_average_start': list(os.getloadavg())}
    if 'corpus' in sections:
        result['corpus'] = corpus(args.corpus_rounds)
    if {'overload', 'rss', 'live', 'interleaved'} & set(sections):
        with tempfile.TemporaryDirectory() as temporary:
            world, map_dir, build_s = prepared_map(args.work_dir or temporary, args.preset)
            from vl_attention.localization import Localizer
            localizer = Localizer.from_map(map_dir, backend='onnxruntime')
            traversal = Traversal(world)
            result['map'] = {'preset': args.preset, 'images': localizer.map.manifest.count,
                             'model': localizer.embedder.card.model_name,
                             'backend': localizer.embedder.backend_description,
                             'build_s': build_s, 'queries': traversal.name,
                             'query_frames': len(traversal.paths),
                             'frame_period_s': traversal.period_s}
            if 'overload' in sections:
                result['overload'] = overload(localizer, traversal, args.camera_hz,
                                              args.camera_seconds)
            if 'rss' in sections:
                result['rss'] = rss_over_time(localizer, traversal, args.frames)
            if 'interleaved' in sections:
                result['interleaved'] = interleaved(localizer, traversal)
            if 'live' in sections:
                result['live'] = live_node(map_dir, traversal, args.camera_hz,
                                           args.camera_seconds, args.work_dir or temporary)
    result['load_average_end'] = list(os.getloadavg())
    result = write_report_sections(args.out, result, sections, merge=args.merge)
    print_tables(result)
    return result


if __name__ == '__main__':
    main()
