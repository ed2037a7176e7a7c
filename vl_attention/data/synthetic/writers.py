"""Image folder + poses.csv writer (the map builder's input format) and world.json.

Layout of one traversal folder::

    <dir>/images/000000.png ...
    <dir>/poses.csv          image,stamp_ns,latitude_deg,...,qx,qy,qz,qw
    <dir>/camera_info.yaml   width, height, fx, fy, cx, cy, distortion (zeros), frame_id

``x_m, y_m, z_m`` are ENU metres at the world's GeodeticOrigin and the
quaternion is the orientation of the camera body frame (x forward, y left,
z up) in ENU.
"""

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import yaml

from vl_attention.geo import enu_to_geodetic
from vl_attention.io import atomic_path, atomic_write_text, make_directory, PathError

POSES_HEADER = ('image', 'stamp_ns', 'latitude_deg', 'longitude_deg', 'altitude_m',
                'x_m', 'y_m', 'z_m', 'qx', 'qy', 'qz', 'qw')


def write_camera_info(path, camera):
    """Write camera_info.yaml for a PinholeCamera."""
    atomic_write_text(path, yaml.safe_dump(camera.to_dict(), sort_keys=False))


def write_world_json(path, world):
    """Write the world description (seed, preset, origin, camera, traversals) as JSON."""
    atomic_write_text(path, json.dumps(world, indent=2, sort_keys=False) + '\n')


def pose_rows(image_names, stamps_ns, positions_enu_m, quaternions_xyzw, origin):
    """Rows of poses.csv (lists of strings) for frames with ENU poses."""
    latitude, longitude, altitude = enu_to_geodetic(np.asarray(positions_enu_m), origin)
    rows = []
    for k, name in enumerate(image_names):
        x, y, z = positions_enu_m[k]
        qx, qy, qz, qw = quaternions_xyzw[k]
        rows.append([name, str(int(stamps_ns[k])), f'{latitude[k]:.10f}',
                     f'{longitude[k]:.10f}', f'{altitude[k]:.4f}', f'{x:.6f}', f'{y:.6f}',
                     f'{z:.6f}', f'{qx:.9f}', f'{qy:.9f}', f'{qz:.9f}', f'{qw:.9f}'])
    return rows


class ImageFolderWriter:
    """Streams PNG frames into ``<dir>/images`` and writes poses.csv when closed."""

    def __init__(self, out_dir, camera, origin):
        """Create ``out_dir/images`` and write camera_info.yaml."""
        self.out_dir = Path(out_dir)
        make_directory(self.out_dir / 'images', 'image directory')
        self.origin = origin
        self._frames = []
        write_camera_info(self.out_dir / 'camera_info.yaml', camera)

    def write(self, image_rgb, stamp_ns, position_enu_m, quaternion_xyzw):
        """Save one RGB uint8 frame and remember its pose."""
        name = f'{len(self._frames):06d}.png'
        bgr = np.ascontiguousarray(image_rgb[..., ::-1])
        if not cv2.imwrite(str(self.out_dir / 'images' / name), bgr,
                           [cv2.IMWRITE_PNG_COMPRESSION, 1]):
            raise PathError(f'could not write {self.out_dir / "images" / name}; give a '
                            'directory you can write to, with free space')
        self._frames.append((name, int(stamp_ns), np.asarray(position_enu_m, np.float64),
                             np.asarray(quaternion_xyzw, np.float64)))

    def close(self):
        """Write poses.csv atomically."""
        names = [f[0] for f in self._frames]
        stamps = [f[1] for f in self._frames]
        positions = np.array([f[2] for f in self._frames]).reshape(-1, 3)
        quaternions = np.array([f[3] for f in self._frames]).reshape(-1, 4)
        rows = pose_rows(names, stamps, positions, quaternions, self.origin)
        with atomic_path(self.out_dir / 'poses.csv') as temporary, \
                open(temporary, 'w', newline='') as stream:
            writer = csv.writer(stream)
            writer.writerow(POSES_HEADER)
            writer.writerows(rows)
        return self.out_dir

    def __enter__(self):
        """Use as a context manager; poses.csv is written on exit."""
        return self

    def __exit__(self, exc_type, exc, tb):
        """Write poses.csv (also after an error, for the frames written so far)."""
        self.close()


def read_poses_csv(path):
    """Read poses.csv into a dict of numpy arrays keyed by column name."""
    with open(path, newline='') as stream:
        rows = list(csv.DictReader(stream))
    columns = {'image': np.array([r['image'] for r in rows])}
    columns['stamp_ns'] = np.array([int(r['stamp_ns']) for r in rows], dtype=np.int64)
    for key in POSES_HEADER[2:]:
        columns[key] = np.array([float(r[key]) for r in rows])
    return columns
