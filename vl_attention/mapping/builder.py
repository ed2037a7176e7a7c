"""Build a map from an image folder and a poses CSV: ``main(cfg, inputs, out_dir) -> Path``."""

from dataclasses import dataclass, field
import logging
from pathlib import Path
import time

import cv2
import numpy as np

from vl_attention.engine.embedder import create_embedder, EmbedderConfig
from vl_attention.geo import GeodeticOrigin
from vl_attention.mapping.index import MapIndex
from vl_attention.mapping.map_format import MapManifest, save_map
from vl_attention.mapping.records import read_poses_csv, records_from_columns

LOG = logging.getLogger(__name__)


class ImageReadError(ValueError):
    """An image listed in the poses file cannot be read."""


@dataclass(frozen=True)
class MapBuildConfig:
    """How to build a map."""

    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    index_type: str = 'flat_ip'
    origin: GeodeticOrigin = None  # None: the first pose of the input


def read_rgb(path):
    """Read an image file as uint8 RGB ``(H, W, 3)``, with a clear error if unreadable."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageReadError(f'cannot read image {path}: missing or not an image file')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def build_map_from_folder(images_dir, poses_csv, out_dir, *, embedder, index_type='flat_ip',
                          origin=None):
    """Embed every image listed in ``poses_csv`` and save the map to ``out_dir``."""
    images_dir = Path(images_dir)
    columns = read_poses_csv(poses_csv)
    if origin is None:
        origin = GeodeticOrigin(columns['latitude_deg'][0], columns['longitude_deg'][0],
                                columns['altitude_m'][0])
    records = records_from_columns(
        columns['image'], columns['stamp_ns'], columns['latitude_deg'],
        columns['longitude_deg'], columns['altitude_m'],
        np.stack([columns[name] for name in ('qx', 'qy', 'qz', 'qw')], axis=-1), origin)
    started = time.perf_counter()
    frames = (read_rgb(images_dir / name) for name in columns['image'])
    descriptors = embedder.embed_batches(frames)
    LOG.info('embedded %d images in %.1f s', len(descriptors), time.perf_counter() - started)
    index = MapIndex.create(index_type, embedder.descriptor_dim)
    index.add(descriptors)
    manifest = MapManifest(model_name=embedder.card.model_name,
                           model_fingerprint=embedder.fingerprint,
                           descriptor_dim=embedder.descriptor_dim, count=len(records),
                           geodetic_origin=origin, index_type=index_type)
    return save_map(out_dir, manifest, index, records)


def main(cfg, inputs, out_dir):
    """Build a map from ``inputs = (images_dir, poses_csv)`` into ``out_dir``."""
    images_dir, poses_csv = inputs
    embedder = create_embedder(cfg.embedder)
    return build_map_from_folder(images_dir, poses_csv, out_dir, embedder=embedder,
                                 index_type=cfg.index_type, origin=cfg.origin)
