"""Shared fixtures: real photos, one embedder per session, a small map of real images."""

import csv
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'
PHOTO_NAMES = ('astronaut', 'chelsea', 'coffee', 'rocket', 'camera', 'coins', 'horse', 'page',
               'text', 'hubble_deep_field', 'immunohistochemistry', 'moon')


def _as_rgb(image):
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.dtype != np.uint8:
        image = (image * 255 if image.max() <= 1.0 else image).astype(np.uint8)
    return np.ascontiguousarray(image[..., :3])


@pytest.fixture(scope='session')
def photos():
    """Return real photographs (scikit-image samples) as uint8 RGB at 320x240."""
    from skimage import data
    return {name: cv2.resize(_as_rgb(getattr(data, name)()), (320, 240),
                             interpolation=cv2.INTER_AREA) for name in PHOTO_NAMES}


@pytest.fixture(scope='session')
def export_cache(tmp_path_factory):
    """Return one exported-model cache for the whole test session."""
    return tmp_path_factory.mktemp('exports')


# The ImageNet GeM baseline: its maps keep the embedder's fingerprint. The default model fits
# its vocabulary on each map, so its maps have their own (test_map_vocabulary.py).
BASELINE_MODEL = 'effnet_lite0_gem'


@pytest.fixture(scope='session')
def embedder(export_cache):
    """Create the GeM baseline model on ONNX Runtime."""
    from vl_attention.engine.embedder import create_embedder, EmbedderConfig
    return create_embedder(EmbedderConfig(model=BASELINE_MODEL, backend='onnxruntime',
                                          cache_dir=str(export_cache)))


def write_poses_csv(path, names, latitudes_deg, longitude_deg=11.5, altitude_m=520.0):
    """Poses file in the map builder's format, facing north, spaced along a meridian."""
    with open(path, 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(['image', 'stamp_ns', 'latitude_deg', 'longitude_deg', 'altitude_m',
                         'qx', 'qy', 'qz', 'qw'])
        for index, (name, latitude) in enumerate(zip(names, latitudes_deg)):
            writer.writerow([name, (index + 1) * 1_000_000_000, latitude, longitude_deg,
                             altitude_m, 0.0, 0.0, 0.0, 1.0])


@pytest.fixture(scope='session')
def photo_folder(photos, tmp_path_factory):
    """Write an image folder + poses.csv of the photos, 100 m apart along a meridian."""
    root = tmp_path_factory.mktemp('photo_folder')
    (root / 'images').mkdir()
    names = []
    for index, (name, rgb) in enumerate(photos.items()):
        names.append(f'{index:03d}_{name}.png')
        cv2.imwrite(str(root / 'images' / names[-1]), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    latitudes = 48.1 + np.arange(len(names)) * 100.0 / 111_195.0
    write_poses_csv(root / 'poses.csv', names, latitudes)
    return root


@pytest.fixture(scope='session')
def photo_map(photo_folder, embedder, tmp_path_factory):
    """Build a map from the photo folder with the session embedder."""
    from vl_attention.mapping.builder import build_map_from_folder
    out = tmp_path_factory.mktemp('maps') / 'photo_map'
    return build_map_from_folder(photo_folder / 'images', photo_folder / 'poses.csv', out,
                                 embedder=embedder)


@pytest.fixture(scope='session')
def tiny_world(tmp_path_factory):
    """Render the synthetic world's 'tiny' preset (two traversals with exact poses)."""
    from vl_attention.data.synthetic import generate
    return generate('tiny', tmp_path_factory.mktemp('tiny_world'), progress=False)


@pytest.fixture(scope='session')
def tiny_map(tiny_world, embedder, tmp_path_factory):
    """Build the map of the tiny world's daytime traversal."""
    from vl_attention.mapping.builder import build_map_from_folder
    traversal = tiny_world / 'map_day'
    return build_map_from_folder(traversal / 'images', traversal / 'poses.csv',
                                 tmp_path_factory.mktemp('maps') / 'tiny_map', embedder=embedder)


@pytest.fixture(scope='module')
def ros_env():
    """Put this test module's rclpy and the nodes it starts on one isolated ROS 2 domain."""
    import random

    import rclpy

    from vl_attention.ros.process import isolated_ros_environment, ROS_ENVIRONMENT_KEYS
    env = isolated_ros_environment(domain_id=random.randint(101, 230))
    saved = {key: os.environ.get(key) for key in ROS_ENVIRONMENT_KEYS}
    os.environ.update({key: env[key] for key in saved})
    rclpy.init()
    yield env
    rclpy.try_shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
