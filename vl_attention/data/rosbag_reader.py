"""Read camera images and a position track from rosbag2 files (mcap or sqlite3).

Position sources and what their values mean:

* ``sensor_msgs/msg/NavSatFix``: WGS84 latitude/longitude/altitude (fixes with
  ``status < 0``, i.e. no fix, are dropped); no orientation;
* ``geometry_msgs/msg/PoseStamped``, ``geometry_msgs/msg/PoseWithCovarianceStamped``,
  ``nav_msgs/msg/Odometry``: position and orientation in the bag's local ENU map
  frame; the map builder needs the frame's geodetic origin from the user.

Frames are stamped with their header stamp (read straight from the CDR bytes,
so frames that are skipped are never deserialized).
"""

import contextlib
from dataclasses import dataclass
from pathlib import Path
import struct

from rosbags.highlevel import AnyReader
from rosbags.typesys import get_typestore, Stores

from vl_attention.data.images import decode_compressed, decode_raw
from vl_attention.data.association import sorted_track
from vl_attention.errors import VLAttentionError

IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
GEODETIC_TYPES = ('sensor_msgs/msg/NavSatFix',)
POSE_TYPES = ('geometry_msgs/msg/PoseStamped', 'geometry_msgs/msg/PoseWithCovarianceStamped',
              'nav_msgs/msg/Odometry')
POSITION_TYPES = GEODETIC_TYPES + POSE_TYPES


class BagError(VLAttentionError, ValueError):
    """A bag lacks a topic, has the wrong message type or cannot be read."""


@dataclass(frozen=True)
class BagPositions:
    """A position track read from a bag; ``geodetic`` says lat/lon/alt vs local ENU."""

    track: object
    geodetic: bool
    msgtype: str
    dropped_no_fix: int = 0


@contextlib.contextmanager
def open_bags(paths):
    """Open one or more rosbag2 directories (or files) as one time-ordered reader."""
    paths = [Path(path) for path in paths]
    if not paths:
        raise BagError('no bag given; pass at least one rosbag2 directory')
    try:
        reader = AnyReader(paths, default_typestore=get_typestore(Stores.ROS2_JAZZY))
        reader.open()
    except Exception as error:  # rosbags raises several unrelated types for unreadable bags
        raise BagError(f'cannot open bag(s) {[str(p) for p in paths]}: {error}') from error
    try:
        yield reader
    finally:
        reader.close()


def topic_connections(reader, topic, allowed_types, role):
    """Return the connections of ``topic``; errors list the topics or supported types."""
    connections = [c for c in reader.connections if c.topic == topic]
    if not connections:
        available = sorted({f'{c.topic} ({c.msgtype})' for c in reader.connections})
        raise BagError(f'{role} topic {topic!r} is not in the bag; its topics are: '
                       f'{", ".join(available)}')
    wrong = sorted({c.msgtype for c in connections} - set(allowed_types))
    if wrong:
        raise BagError(f'{role} topic {topic!r} carries {wrong[0]}; supported {role} types '
                       f'are {", ".join(allowed_types)}')
    return connections


def read_positions(reader, topic):
    """Read the whole position track of ``topic`` (small next to the images)."""
    connections = topic_connections(reader, topic, POSITION_TYPES, 'position')
    msgtype = connections[0].msgtype
    stamps, values, orientations, dropped = [], [], [], 0
    for connection, _, raw in reader.messages(connections=connections):
        message = reader.deserialize(raw, connection.msgtype)
        if msgtype in GEODETIC_TYPES:
            if message.status.status < 0:
                dropped += 1
                continue
            values.append((message.latitude, message.longitude, message.altitude))
        else:
            pose = message.pose.pose if hasattr(message.pose, 'pose') else message.pose
            values.append((pose.position.x, pose.position.y, pose.position.z))
            orientations.append((pose.orientation.x, pose.orientation.y, pose.orientation.z,
                                 pose.orientation.w))
        stamps.append(_stamp_ns(message.header.stamp))
    if not stamps:
        raise BagError(f'position topic {topic!r} holds no usable messages'
                       + (f' ({dropped} NavSatFix without a fix)' if dropped else ''))
    track = sorted_track(stamps, values, orientations if orientations else None)
    return BagPositions(track, msgtype in GEODETIC_TYPES, msgtype, dropped)


def image_messages(reader, topic):
    """Yield ``(stamp_ns, decode)`` per image message; ``decode()`` returns uint8 RGB."""
    connections = topic_connections(reader, topic, IMAGE_TYPES, 'image')
    for connection, _, raw in reader.messages(connections=connections):
        yield header_stamp_ns(raw), _decoder(reader, raw, connection.msgtype)


def header_stamp_ns(raw):
    """Header stamp of a CDR-serialized message that starts with ``std_msgs/Header``."""
    little_endian = raw[1] == 1
    sec, nanosec = struct.unpack_from('<iI' if little_endian else '>iI', raw, 4)
    return sec * 1_000_000_000 + nanosec


def _decoder(reader, raw, msgtype):
    def decode():
        message = reader.deserialize(raw, msgtype)
        if msgtype.endswith('CompressedImage'):
            return decode_compressed(format=message.format, data=message.data)
        return decode_raw(encoding=message.encoding, height=message.height,
                          width=message.width, step=message.step, data=message.data,
                          is_bigendian=bool(message.is_bigendian))
    return decode


def _stamp_ns(stamp):
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def topic_table(reader):
    """Topic -> (message type, count) of an open reader."""
    table = {}
    for connection in reader.connections:
        _, count = table.get(connection.topic, (connection.msgtype, 0))
        table[connection.topic] = (connection.msgtype, count + connection.msgcount)
    return table


__all__ = ['BagError', 'BagPositions', 'IMAGE_TYPES', 'POSITION_TYPES', 'header_stamp_ns',
           'image_messages', 'open_bags', 'read_positions', 'topic_table']
