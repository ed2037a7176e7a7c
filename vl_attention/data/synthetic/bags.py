"""Write synthetic traversals as rosbag2 (mcap or sqlite3) with the ``rosbags`` library.

Topics (names configurable through :class:`BagTopics`):

* image: ``sensor_msgs/msg/Image`` (``rgb8``) or ``sensor_msgs/msg/CompressedImage``
  (``jpeg``), frame ``camera_optical`` (z forward, x right, y down);
* ``sensor_msgs/msg/CameraInfo``, frame ``camera_optical``;
* ``sensor_msgs/msg/NavSatFix`` of the camera position, frame ``camera``;
* ``geometry_msgs/msg/PoseStamped`` of the camera body frame (REP 103, x forward)
  in frame ``map`` (ENU at the world's GeodeticOrigin).

Every header stamp equals the frame stamp, which is also the bag log time.
Bags use rosbag2 metadata version 8 and message definitions of the chosen
typestore (ROS 2 Jazzy by default; Humble gives the same definitions).
"""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from vl_attention.config import ConfigError
from vl_attention.geo import enu_to_geodetic

STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}


@dataclass(frozen=True)
class BagTopics:
    """Topic names of a synthetic bag; ``None`` leaves a topic out."""

    image: str = '/camera/image_raw'
    compressed_image: str = '/camera/image_raw/compressed'
    camera_info: str = '/camera/camera_info'
    navsat_fix: str = '/gps/fix'
    ground_truth_pose: str = '/ground_truth/pose'


def _stamp(types, stamp_ns):
    return types['builtin_interfaces/msg/Time'](sec=int(stamp_ns // 1_000_000_000),
                                                nanosec=int(stamp_ns % 1_000_000_000))


class RosbagWriter:
    """Streams frames and their ground truth into a new rosbag2 directory."""

    def __init__(self, path, camera, origin, *, storage='mcap', compressed=False,
                 topics=BagTopics(), typestore=Stores.ROS2_JAZZY, gps_sigma_m=0.0):
        """Open a bag at ``path`` (which must not exist yet)."""
        if storage not in STORAGES:
            raise ConfigError(f'unknown bag storage {storage!r}; known: {", ".join(STORAGES)}')
        self.path = Path(path)
        self.camera, self.origin, self.compressed = camera, origin, compressed
        self.gps_sigma_m = gps_sigma_m
        self.store = get_typestore(typestore)
        self.types = self.store.types
        self.writer = Writer(self.path, version=8, storage_plugin=STORAGES[storage])
        self.writer.open()
        image_topic = topics.compressed_image if compressed else topics.image
        image_type = 'sensor_msgs/msg/' + ('CompressedImage' if compressed else 'Image')
        wanted = {'image': (image_topic, image_type),
                  'camera_info': (topics.camera_info, 'sensor_msgs/msg/CameraInfo'),
                  'navsat_fix': (topics.navsat_fix, 'sensor_msgs/msg/NavSatFix'),
                  'pose': (topics.ground_truth_pose, 'geometry_msgs/msg/PoseStamped')}
        self.connections = {key: (self.writer.add_connection(topic, msgtype,
                                                             typestore=self.store), msgtype)
                            for key, (topic, msgtype) in wanted.items() if topic}

    def _header(self, stamp_ns, frame_id):
        return self.types['std_msgs/msg/Header'](stamp=_stamp(self.types, stamp_ns),
                                                 frame_id=frame_id)

    def _image(self, header, image_rgb):
        if self.compressed:
            ok, jpeg = cv2.imencode('.jpg', np.ascontiguousarray(image_rgb[..., ::-1]),
                                    [cv2.IMWRITE_JPEG_QUALITY, 90])
            if not ok:
                raise OSError('JPEG encoding failed')
            return self.types['sensor_msgs/msg/CompressedImage'](
                header=header, format='jpeg', data=jpeg.reshape(-1))
        height, width = image_rgb.shape[:2]
        return self.types['sensor_msgs/msg/Image'](
            header=header, height=height, width=width, encoding='rgb8', is_bigendian=0,
            step=width * 3, data=np.ascontiguousarray(image_rgb).reshape(-1))

    def _camera_info(self, header):
        cam = self.camera
        projection = np.array([cam.fx, 0, cam.cx, 0, 0, cam.fy, cam.cy, 0, 0, 0, 1, 0], float)
        return self.types['sensor_msgs/msg/CameraInfo'](
            header=header, height=cam.height, width=cam.width, distortion_model='plumb_bob',
            d=np.zeros(5), k=cam.matrix.reshape(-1), r=np.eye(3).reshape(-1), p=projection,
            binning_x=0, binning_y=0,
            roi=self.types['sensor_msgs/msg/RegionOfInterest'](
                x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))

    def _navsat_fix(self, stamp_ns, position_enu_m):
        latitude, longitude, altitude = enu_to_geodetic(position_enu_m, self.origin)
        status_type = self.types['sensor_msgs/msg/NavSatStatus']
        variance = max(self.gps_sigma_m, 1e-3) ** 2
        return self.types['sensor_msgs/msg/NavSatFix'](
            header=self._header(stamp_ns, 'camera'),
            status=status_type(status=status_type.STATUS_FIX, service=status_type.SERVICE_GPS),
            latitude=float(latitude), longitude=float(longitude), altitude=float(altitude),
            position_covariance=np.diag([variance] * 3).reshape(-1),
            position_covariance_type=2)

    def _pose(self, stamp_ns, position_enu_m, quaternion_xyzw):
        types = self.types
        x, y, z = (float(v) for v in position_enu_m)
        qx, qy, qz, qw = (float(v) for v in quaternion_xyzw)
        pose = types['geometry_msgs/msg/Pose'](
            position=types['geometry_msgs/msg/Point'](x=x, y=y, z=z),
            orientation=types['geometry_msgs/msg/Quaternion'](x=qx, y=qy, z=qz, w=qw))
        return types['geometry_msgs/msg/PoseStamped'](header=self._header(stamp_ns, 'map'),
                                                      pose=pose)

    def write(self, image_rgb, stamp_ns, position_enu_m, quaternion_xyzw):
        """Write one frame's image, camera info, GNSS fix and ground-truth pose."""
        stamp_ns = int(stamp_ns)
        optical = self._header(stamp_ns, self.camera.frame_id)
        messages = {'image': lambda: self._image(optical, image_rgb),
                    'camera_info': lambda: self._camera_info(optical),
                    'navsat_fix': lambda: self._navsat_fix(stamp_ns, position_enu_m),
                    'pose': lambda: self._pose(stamp_ns, position_enu_m, quaternion_xyzw)}
        for key, (connection, msgtype) in self.connections.items():
            data = self.store.serialize_cdr(messages[key](), msgtype)
            self.writer.write(connection, stamp_ns, data)

    def close(self):
        """Finish the bag (writes metadata.yaml)."""
        self.writer.close()
        return self.path

    def __enter__(self):
        """Use as a context manager."""
        return self

    def __exit__(self, exc_type, exc, tb):
        """Close the bag."""
        self.close()
