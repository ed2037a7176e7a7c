"""Topic names of ``localize_node`` (relative ones follow the node's namespace; remap them).

No ROS imports: the launch helpers (:mod:`vl_attention.ros.launch_args`) and the
robot_localization recipe read them too. :mod:`vl_attention.ros.params` re-exports them.
"""

IMAGE_TOPIC = 'image'                          # sensor_msgs/Image (image_transport: raw)
COMPRESSED_IMAGE_TOPIC = 'image/compressed'    # sensor_msgs/CompressedImage
CAMERA_INFO_TOPIC = 'camera_info'              # sensor_msgs/CameraInfo (rectify: true)
FIX_TOPIC = 'fix'                              # sensor_msgs/NavSatFix
POSE_TOPIC = 'pose'                            # geometry_msgs/PoseWithCovarianceStamped
DIAGNOSTICS_TOPIC = '/diagnostics'             # diagnostic_msgs/DiagnosticArray
TF_TOPIC = '/tf'                               # tf2_msgs/TFMessage (publish_tf: true)
TF_STATIC_TOPIC = '/tf_static'                 # tf2_msgs/TFMessage (camera_extrinsic_source: tf)


def resolved_topic(topic, namespace=''):
    """Return the absolute name of ``topic`` for a node in ``namespace`` (no remapping)."""
    if topic.startswith('/'):
        return topic
    return '/' + '/'.join(part for part in (namespace.strip('/'), topic) if part)
