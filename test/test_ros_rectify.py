"""Rectification with a CameraInfo calibration (vl_attention/ros/rectify.py), no ROS graph.

A real photo is distorted by OpenCV with a known K and D and rectified back: the interior must
match the original and be far from the distorted view. Both are compared slightly blurred, so
that the two bilinear resamplings' loss of fine detail does not hide where pixels went.
"""

import math

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo

from vl_attention.ros.conversions import camera_info_to_calibration
from vl_attention.ros.rectify import (Calibration, distort, rectification_maps, rectify,
                                      Rectifier, RectifyError, RectifyState, UNRECTIFIED)

K = (250.0, 0.0, 159.5, 0.0, 252.0, 119.5, 0.0, 0.0, 1.0)   # 320 x 240
PLUMB_BOB = (-0.28, 0.09, 0.0012, -0.0008, -0.012)
RATIONAL = (-0.22, 0.06, 0.001, 0.0005, 0.0, 0.04, 0.01, 0.002)
INTERIOR = (slice(40, 200), slice(50, 270))   # away from the black border of the distorted view


def _calibration(model='plumb_bob', d=PLUMB_BOB, **fields):
    return Calibration(width=320, height=240, distortion_model=model, d=d, k=K, **fields)


def _mean_error(a, b):
    a, b = (cv2.GaussianBlur(image, (0, 0), 1.5).astype(np.float64) for image in (a, b))
    return float(np.abs(a[INTERIOR] - b[INTERIOR]).mean())


def _rotation_z(degrees):
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize('calibration', [
    _calibration(),
    _calibration('rational_polynomial', RATIONAL),
    # a rectified camera P other than K (narrower), and a rectifying rotation R
    _calibration(r=_rotation_z(2.0), p=(220.0, 0.0, 160.0, 0.0, 0.0, 220.0, 120.0, 0.0,
                                        0.0, 0.0, 1.0, 0.0)),
], ids=['plumb_bob', 'rational_polynomial', 'R_and_P'])
def test_a_distorted_photo_is_rectified_back_to_the_original(photos, calibration):
    original = photos['astronaut']
    distorted = distort(original, calibration)
    rectified = rectify(distorted, rectification_maps(calibration))
    assert rectified.shape == original.shape and rectified.dtype == np.uint8
    before, after = _mean_error(distorted, original), _mean_error(rectified, original)
    assert after < 1.0, (before, after)           # grey levels of 255
    assert before > 10 * after, (before, after)   # the distortion was far from negligible


def test_the_rectifier_caches_its_maps_and_reports_its_state(photos):
    rectifier = Rectifier(source='/cam/camera_info')
    image = photos['chelsea']
    assert rectifier(image, None) is image
    assert rectifier.state.note == 'waiting for camera_info on /cam/camera_info'
    assert rectifier.state.problem == ('rectify is on but no camera_info arrived on '
                                       f'/cam/camera_info; {UNRECTIFIED}')
    calibration = _calibration()
    first = rectifier(image, calibration)
    maps = rectifier._maps
    assert first is not image and rectifier.state.note == 'on: plumb_bob 320x240'
    assert rectifier.state.problem == ''
    again = rectifier(image, _calibration())    # an equal CameraInfo: the same maps
    assert rectifier._maps is maps and np.array_equal(first, again)
    rectifier(image, _calibration(d=(-0.1, 0.0, 0.0, 0.0, 0.0)))
    assert rectifier._maps is not maps           # a new calibration: new maps
    undistorted = _calibration(d=(0.0,) * 5)
    assert rectifier(image, undistorted) is image
    assert rectifier.state == RectifyState('not needed: camera_info has zero distortion')


@pytest.mark.parametrize('calibration, size, reason', [
    (_calibration('equidistant', (0.1, 0.01, 0.0, 0.0)), None,
     "camera_info distortion model 'equidistant' is not supported (use plumb_bob or "
     'rational_polynomial)'),
    (_calibration('', PLUMB_BOB), None,
     "camera_info distortion model '' is not supported (use plumb_bob or rational_polynomial)"),
    (_calibration(d=(-0.2, 0.05, 0.0)), None, 'camera_info D has 3 coefficients; plumb_bob has '
     '4 or 5'),
    (_calibration('rational_polynomial', PLUMB_BOB), None, 'camera_info D has 5 coefficients; '
     'rational_polynomial has 8'),
    (Calibration(320, 240, 'plumb_bob', PLUMB_BOB, (0.0,) * 9), None,
     'camera_info K has no positive focal lengths (fx 0, fy 0): the camera is not calibrated'),
    (_calibration(d=(float('nan'),) + PLUMB_BOB[1:]), None, 'camera_info D is not finite'),
    (_calibration(), (640, 480), 'frame 640x480 differs from camera_info 320x240 (binning and '
     'ROI are not applied)'),
])
def test_unusable_calibrations_are_refused_with_one_line(calibration, size, reason, photos):
    with pytest.raises(RectifyError) as caught:
        rectification_maps(calibration, size)
    assert str(caught.value) == reason
    rectifier = Rectifier()
    image = photos['coffee'] if size is None else np.zeros((size[1], size[0], 3), np.uint8)
    assert rectifier(image, calibration) is image   # the frame goes on, unrectified
    assert rectifier.state == RectifyState(f'refused: {reason}', f'{reason}; {UNRECTIFIED}')


def test_camera_info_message_becomes_a_calibration():
    msg = CameraInfo(width=320, height=240, distortion_model='plumb_bob')
    msg.d = list(PLUMB_BOB)
    msg.k = list(K)
    msg.r = list(_rotation_z(0.0))
    msg.p = [250.0, 0.0, 159.5, 0.0, 0.0, 252.0, 119.5, 0.0, 0.0, 0.0, 1.0, 0.0]
    calibration = camera_info_to_calibration(msg)
    assert calibration == Calibration(320, 240, 'plumb_bob', PLUMB_BOB, K, tuple(msg.r),
                                      tuple(msg.p))
    assert all(type(value) is float for value in calibration.k + calibration.d)
    assert not camera_info_to_calibration(CameraInfo()).distorted   # an empty CameraInfo
