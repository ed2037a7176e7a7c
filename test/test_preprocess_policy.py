"""Preprocessing policy: grayscale replication, stretch / fit_pad / center_crop, size warning."""

import dataclasses
import logging

import cv2
import numpy as np
import pytest

from vl_attention.engine.card_builder import make_model_card
from vl_attention.engine.preprocess import center_crop_box, fit_pad_box, input_size_mismatch, \
    preprocess_frames, Preprocessing, reset_input_size_warning
from vl_attention.models import build_model, load_model_config

HALF = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def prep(resize='stretch', height=48, width=64, **values):
    return Preprocessing(input_height=height, input_width=width, resize=resize,
                         **{**HALF, **values})


@pytest.fixture(autouse=True)
def fresh_warning():
    reset_input_size_warning()
    yield
    reset_input_size_warning()


def test_grayscale_frames_are_replicated_to_three_channels():
    gray = np.arange(48 * 64, dtype=np.uint32).reshape(48, 64).astype(np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    expected = preprocess_frames([rgb], prep())
    np.testing.assert_array_equal(preprocess_frames([gray], prep()), expected)
    np.testing.assert_array_equal(preprocess_frames([gray[:, :, None]], prep()), expected)
    assert expected[0, 0, 0, 1] == pytest.approx((1 / 255 - 0.5) / 0.5)


def test_stretch_is_the_default_and_is_a_plain_resize():
    assert Preprocessing(input_height=48, input_width=64, **HALF).resize == 'stretch'
    frame = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    expected = cv2.resize(frame, (64, 48), interpolation=cv2.INTER_LINEAR) / 127.5 - 1.0
    np.testing.assert_allclose(preprocess_frames([frame], prep())[0].transpose(1, 2, 0),
                               expected, atol=1e-6)


def test_fit_pad_keeps_the_aspect_and_pads_with_the_mean():
    # a 2:1 Nordland-like frame (64x32) into 64x48: scale 1, rows 8..39 hold it
    assert fit_pad_box(32, 64, 48, 64) == (0, 8, 64, 40)
    assert fit_pad_box(1920, 1080, 240, 320) == (92, 0, 227, 240)      # portrait: side bars
    frame = np.full((32, 64, 3), 255, np.uint8)
    batch = preprocess_frames([frame], prep('fit_pad'))[0]
    pad = (128 / 255 - 0.5) / 0.5          # the mean pixel, 0.5 * 255 rounded, normalised
    np.testing.assert_allclose(batch[:, :8], pad, atol=1e-6)
    np.testing.assert_allclose(batch[:, 40:], pad, atol=1e-6)
    np.testing.assert_allclose(batch[:, 8:40], 1.0, atol=1e-6)
    assert abs(pad) < 0.005


def test_fit_pad_region_is_zero_with_imagenet_statistics_too():
    imagenet = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    batch = preprocess_frames([np.zeros((20, 64, 3), np.uint8)],
                              prep('fit_pad', **imagenet))[0]
    np.testing.assert_allclose(batch[:, :14], 0.0, atol=0.5 / 255 / 0.224)


def test_center_crop_cuts_the_centred_box_of_the_input_aspect():
    assert center_crop_box(100, 40, 48, 64) == (0, 35, 40, 65)          # tall: rows 35..64
    assert center_crop_box(32, 64, 48, 64) == (10, 0, 53, 32)           # wide: 43 columns, 10..
    assert center_crop_box(1920, 1080, 240, 320) == (0, 555, 1080, 1365)
    frame = np.zeros((100, 40, 3), np.uint8)
    frame[35:65] = 200                      # only the crop box is bright
    batch = preprocess_frames([frame], prep('center_crop'))[0]
    np.testing.assert_allclose(batch, 200 / 127.5 - 1.0, atol=1e-6)


def test_unknown_policy_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"resize 'pad'.*stretch.*fit_pad.*center_crop"):
        prep('pad')


def test_far_from_trained_size_is_named_by_scale_and_aspect():
    trained = prep(height=240, width=320)
    assert input_size_mismatch(240, 320, trained) == ''
    assert input_size_mismatch(120, 160, trained) == ''                 # 0.5x: at the limit
    assert input_size_mismatch(480, 640, trained) == ''
    nordland = input_size_mismatch(32, 64, trained)
    assert '0.16x the trained pixel scale' in nordland and 'aspect ratio 2.00' in nordland
    assert input_size_mismatch(320, 240, trained) == 'aspect ratio 0.75 against 1.33'   # portrait
    assert input_size_mismatch(1920, 1080, trained).startswith('5.20x')


def test_the_size_warning_fires_once_per_process(caplog):
    trained = prep(height=240, width=320)
    nordland = np.zeros((32, 64), np.uint8)
    with caplog.at_level(logging.WARNING, logger='vl_attention.engine.preprocess'):
        preprocess_frames([np.zeros((240, 320, 3), np.uint8)], trained)
        assert not caplog.records
        preprocess_frames([nordland, nordland], trained)
        preprocess_frames([np.zeros((1920, 1080, 3), np.uint8)], trained)
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert '64x32' in message and '320x240' in message and 'resize: stretch' in message


def test_default_policy_keeps_card_and_fingerprint_as_before():
    config = load_model_config('resnet18_gap')
    model = build_model(config)
    card = make_model_card(config, model)
    assert 'resize' not in card.model_config          # as cards were before the policy
    cropped = dataclasses.replace(config, resize='center_crop')
    other = make_model_card(cropped, build_model(cropped))
    assert other.preprocessing.resize == 'center_crop'
    assert other.model_config['resize'] == 'center_crop'
    assert other.fingerprint != card.fingerprint
    assert other.weights_sha256 == card.weights_sha256
