"""Per-reason rejection counts: from the decoder's errors to the /diagnostics key/values."""

import pickle

from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image

from vl_attention.data.images import ImageDecodeError, REJECTION_REASONS
from vl_attention.localization.pipeline import LocalizationStats
from vl_attention.ros.conversions import image_to_rgb, stats_to_diagnostics
from vl_attention.ros.params import NODE_PARAMS


def _rejection(msg, **limits):
    try:
        image_to_rgb(msg, **limits)
    except ImageDecodeError as error:
        return error
    raise AssertionError('the message was decoded')


def test_rejections_are_counted_per_reason_and_published():
    stats = LocalizationStats()
    depth = Image(encoding='32FC1', height=2, width=2, step=8, data=bytes(16))
    big = Image(encoding='rgb8', height=4, width=4, step=12, data=bytes(48))
    bmp = CompressedImage(format='bmp', data=b'BM' + bytes(60))
    for error in (_rejection(depth), _rejection(depth), _rejection(big, max_image_pixels=15),
                  _rejection(bmp)):
        stats.on_received()
        stats.on_rejected(error)
    stats.on_rejected('internal error: boom', reason='internal_error')
    stats.on_rejected(ValueError('no reason attribute'))
    snapshot = stats.snapshot(dropped=0)
    assert snapshot.frames_rejected == 6
    assert snapshot.rejected_by_reason == {'depth_image': 2, 'too_large': 1,
                                           'unsupported_format': 1, 'internal_error': 1,
                                           'other': 1}
    assert snapshot.last_error == 'no reason attribute'
    status = stats_to_diagnostics(snapshot, name='vl', hardware_id='cam', stamp=Time(),
                                  static_values={}).status[0]
    values = {kv.key: kv.value for kv in status.values}
    assert values['frames_rejected'] == '6'
    assert (values['rejected_depth_image'], values['rejected_too_large'],
            values['rejected_unsupported_format']) == ('2', '1', '1')
    assert 'rejected_truncated' not in values


def test_reasons_are_documented_and_survive_pickling():
    error = ImageDecodeError('cut short', reason='truncated')
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.reason) == ('cut short', 'truncated')
    assert set(REJECTION_REASONS) == {'too_large', 'unsupported_format', 'truncated', 'corrupt',
                                      'bad_encoding', 'bad_size', 'depth_image'}


def test_max_image_pixels_is_a_node_parameter():
    params = {param.name: param.default for param in NODE_PARAMS}
    assert params['max_image_pixels'] == 16_000_000
