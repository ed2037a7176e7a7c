"""Parameters of ``localize_node``: one table, declared with descriptions, read into configs."""

from dataclasses import fields
from typing import NamedTuple

from rcl_interfaces.msg import ParameterDescriptor

from vl_attention.data.images import DEFAULT_MAX_IMAGE_PIXELS
from vl_attention.engine.availability import BACKEND_NAMES
from vl_attention.engine.embedder import EmbedderConfig
from vl_attention.localization import LocalizerConfig, TrackingConfig
from vl_attention.localization.place_filter import PlaceFilterConfig


class Param(NamedTuple):
    """A node parameter: name, default (its type is the parameter's type), description."""

    name: str
    default: object
    description: str


_LOCALIZER_HELP = {
    'top_k': 'neighbours averaged into the position estimate',
    'candidates': 'database images retrieved per frame (ratio test looks among them)',
    'neighbour_radius_m': 'neighbours farther than this from the best match are ignored',
    'ratio_test_exclusion_m': 'the ratio-test runner-up must lie farther than this from the best',
    'min_confidence': 'below this confidence the frame gives no fix',
    'similarity_temperature': 'softmax temperature over cosine similarities (weights)',
    'position_floor_m': 'standard deviation added to the position covariance (m)',
    'orientation_floor_deg': 'standard deviation added to the orientation covariance (deg)',
}

NODE_PARAMS = (
    Param('map_dir', '', 'map directory built by `vl-attention build-map` (required)'),
    Param('model', EmbedderConfig.model, 'model preset name or YAML path; must match the map'),
    Param('backend', EmbedderConfig.backend,
          'inference backend: ' + ', '.join(BACKEND_NAMES) + ' (auto: tensorrt -> '
          'onnxruntime-cuda -> torch-cuda -> onnxruntime-cpu -> torch-cpu)'),
    Param('device', EmbedderConfig.device, 'auto, cpu or cuda'),
    Param('precision', EmbedderConfig.precision, 'fp32, fp16 or int8 (GPU backends only)'),
    Param('export_dir', '', 'run a `vl-attention export` directory instead of the preset'),
    Param('threads', EmbedderConfig.threads, 'CPU threads for inference (0 = library default)'),
    Param('cache_dir', '', 'exported-model cache ("" = $VL_ATTENTION_CACHE or ~/.cache)'),
    Param('image_transport', 'raw', "'raw' (sensor_msgs/Image on image) or 'compressed' "
          '(sensor_msgs/CompressedImage on image/compressed)'),
    Param('frame_id', 'map', 'frame_id of the published pose (the ENU map frame)'),
    Param('navsat_frame_id', '', 'frame_id of NavSatFix ("" = the image frame_id)'),
    Param('publish_navsatfix', True, 'publish sensor_msgs/NavSatFix on fix'),
    Param('publish_pose', True, 'publish geometry_msgs/PoseWithCovarianceStamped on pose'),
    Param('publish_no_fix', True, 'publish NavSatFix with STATUS_NO_FIX for rejected matches'),
    Param('diagnostics_period_s', 1.0, 'period of /diagnostics messages (s)'),
    Param('max_image_pixels', DEFAULT_MAX_IMAGE_PIXELS,
          'images declaring more pixels (width x height) are rejected before decoding'),
    Param('use_filter', True, 'run the place filter (HMM) over the image stream'),
    Param('refine', True, 'refine the pose with local features + PnP (maps with features)'),
    Param('odom_topic', '', "nav_msgs/Odometry topic for the filter's motion model "
          '("" = bounded-speed model)'),
    Param('max_speed_mps', PlaceFilterConfig.max_speed_mps,
          'fastest plausible robot speed (m/s): bounds the motion model and odometry jumps'),
    Param('filter_temperature_scale', PlaceFilterConfig.temperature_scale,
          'scales the map-calibrated similarity temperature of the filter likelihood'),
) + tuple(Param(field.name, field.default, _LOCALIZER_HELP[field.name])
          for field in fields(LocalizerConfig))


def declare_parameters(node):
    """Declare every parameter with its description and return their current values."""
    for param in NODE_PARAMS:
        node.declare_parameter(param.name, param.default,
                               ParameterDescriptor(description=param.description))
    return {param.name: node.get_parameter(param.name).value for param in NODE_PARAMS}


def localizer_config(values):
    """Build a LocalizerConfig from parameter values."""
    return LocalizerConfig(**{field.name: values[field.name]
                              for field in fields(LocalizerConfig)})


def tracking_config(values):
    """Build the TrackingConfig (filter, refinement) from parameter values."""
    return TrackingConfig(
        use_filter=bool(values['use_filter']), refine=bool(values['refine']),
        filter=PlaceFilterConfig(max_speed_mps=float(values['max_speed_mps']),
                                 temperature_scale=float(values['filter_temperature_scale'])))


def embedder_config(values):
    """Build an EmbedderConfig from parameter values."""
    return EmbedderConfig(model=values['model'], backend=values['backend'],
                          threads=int(values['threads']), cache_dir=values['cache_dir'],
                          device=values['device'], precision=values['precision'],
                          export_dir=values['export_dir'])
