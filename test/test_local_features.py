"""Local features: SIFT on CLAHE-equalised images matches a dark view of a scene to its day one."""

import cv2
import numpy as np

from vl_attention.geometry.local_features import (create_extractor, LOCAL_FEATURES,
                                                  LocalFeatureConfig, match_features)


def _scene(seed=0, size=(240, 320)):
    """Return a textured gray scene (blurred noise at two scales), uint8."""
    rng = np.random.default_rng(seed)
    coarse = cv2.resize(rng.random((size[0] // 16, size[1] // 16)), size[::-1])
    fine = cv2.GaussianBlur(rng.random(size), (0, 0), 1.5)
    scene = 0.6 * coarse + 0.4 * (fine - fine.min()) / np.ptp(fine)
    return np.clip(scene * 255, 0, 255).astype(np.uint8)


def _matches(kind, reference, query):
    extractor = create_extractor(LocalFeatureConfig(kind=kind))
    a, b = extractor(query), extractor(reference)
    pairs = match_features(a.descriptors, b.descriptors, norm=extractor.norm, ratio_test=0.9)
    # the two views share their pixels: a correct match lands within 2 px of its keypoint
    return int(np.sum(np.linalg.norm(a.keypoints_px[pairs[:, 0]] - b.keypoints_px[pairs[:, 1]],
                                     axis=1) < 2.0))


def test_clahe_sift_is_registered_and_matches_more_of_a_dark_view():
    assert {'sift', 'sift_clahe', 'orb'} <= set(LOCAL_FEATURES.names())
    day = _scene()
    # night: a tenth of the light, crushed towards black (gamma 1.8), with sensor noise
    noise = np.random.default_rng(1).normal(0.0, 1.0, day.shape)
    night = np.clip(255 * (day / 255.0 * 0.35) ** 1.8 + noise, 0, 255).astype(np.uint8)
    plain, equalised = _matches('sift', day, night), _matches('sift_clahe', day, night)
    assert equalised > 1.5 * plain, (plain, equalised)
    assert _matches('sift_clahe', day, day) > 200   # and the same view still matches itself
