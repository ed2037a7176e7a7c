"""Parameters of ``localize_node``: one table, declared with descriptors, checked, applied.

Each :class:`Param` carries its type (the default's), its range or choices,
and whether it can change while the node runs. :func:`check_values` is the one
validator: the node runs it on its start-up values and on every SetParameters
request, so a bad value gives the same one-line reason in both places.
Parameters that cannot be applied live are declared ``read_only``; setting
them is refused by rclpy.
"""

from dataclasses import fields
from typing import NamedTuple, Optional

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterException

from vl_attention.data.images import DEFAULT_MAX_IMAGE_PIXELS
from vl_attention.engine.availability import BACKEND_NAMES
from vl_attention.engine.embedder import EmbedderConfig
from vl_attention.localization.frames import CAMERA_FRAME_CONVENTIONS, Extrinsic
from vl_attention.mapping.map_format import carried_model_config
from vl_attention.errors import VLAttentionError
from vl_attention.localization import LocalizerConfig, TrackingConfig
from vl_attention.localization.localizer import POSE_SOURCES
from vl_attention.localization.health import health_config
from vl_attention.localization.place_filter import PlaceFilterConfig
from vl_attention.localization.refinement import RefinementConfig
from vl_attention.ros.topics import (CAMERA_INFO_TOPIC, COMPRESSED_IMAGE_TOPIC,  # noqa: F401
                                     DIAGNOSTICS_TOPIC, FIX_TOPIC, IMAGE_TOPIC, POSE_TOPIC,
                                     resolved_topic, TF_STATIC_TOPIC, TF_TOPIC)


class ParameterError(VLAttentionError, ValueError):
    """A node parameter has a bad type or value (the message names it and the allowed values)."""


class Param(NamedTuple):
    """A node parameter: name, default (its type is the parameter's type), description, limits.

    ``low``/``high`` bound numbers (inclusive), ``choices`` lists the allowed
    strings, ``read_only`` marks a parameter that cannot change while the node
    runs.
    """

    name: str
    default: object
    description: str
    low: Optional[float] = None
    high: Optional[float] = None
    choices: tuple = ()
    read_only: bool = False


_LOCALIZER_PARAMS = {  # name: (help, low, high)
    'top_k': ('neighbours averaged into the position estimate (<= candidates)', 1, 1000),
    'candidates': ('database images retrieved per frame (ratio test looks among them)', 1,
                   10000),
    'neighbour_radius_m': ('neighbours farther than this from the best match are ignored',
                           0.0, 100000.0),
    'ratio_test_exclusion_m': ('the ratio-test runner-up must lie farther than this from the '
                               'best', 0.0, 100000.0),
    'min_confidence': ('below this confidence the frame gives no fix', 0.0, 0.999),
    'similarity_temperature': ('softmax temperature over cosine similarities (weights)',
                               0.0001, 10.0),
    'position_floor_m': ('standard deviation added to the position covariance (m)', 0.0,
                         1000.0),
    'orientation_floor_deg': ('standard deviation added to the orientation covariance (deg)',
                              0.0, 180.0),
}

NODE_PARAMS = (
    Param('map_dir', '', 'map directory built by `vl-attention build-map` (required; '
          'the ~/reload_map service re-reads it)', read_only=True),
    Param('model', EmbedderConfig.model, 'model preset name or YAML path; must match the map',
          read_only=True),
    Param('backend', EmbedderConfig.backend,
          'inference backend (auto: tensorrt -> onnxruntime-cuda -> torch-cuda -> '
          'onnxruntime-cpu -> torch-cpu)', choices=BACKEND_NAMES, read_only=True),
    Param('device', EmbedderConfig.device, 'inference device', choices=('auto', 'cpu', 'cuda'),
          read_only=True),
    Param('precision', EmbedderConfig.precision, 'inference precision (GPU backends only)',
          choices=('fp32', 'fp16', 'int8'), read_only=True),
    Param('export_dir', '', 'run a `vl-attention export` directory instead of the preset',
          read_only=True),
    Param('threads', EmbedderConfig.threads, 'CPU threads for inference (0 = library default)',
          low=0, high=1024, read_only=True),
    Param('cache_dir', '', 'exported-model cache ("" = $VL_ATTENTION_CACHE or ~/.cache)',
          read_only=True),
    Param('image_transport', 'raw', "'raw' (sensor_msgs/Image on image) or 'compressed' "
          '(sensor_msgs/CompressedImage on image/compressed)', choices=('raw', 'compressed'),
          read_only=True),
    Param('rectify', False, 'undistort each frame with camera_info (plumb_bob, '
          'rational_polynomial) before embedding; off: the image is already rectified '
          '(image_rect)', read_only=True),
    Param('map_frame', 'map', "frame of the published pose (REP 105): the visual map's ENU "
          'frame, placed by map_origin_*'),
    Param('map_origin_x_m', 0.0, "the visual map's ENU frame in map_frame: x (m; all zero: "
          'map_frame is that frame)', low=-1e7, high=1e7),
    Param('map_origin_y_m', 0.0, "the visual map's ENU frame in map_frame: y (m)", low=-1e7,
          high=1e7),
    Param('map_origin_z_m', 0.0, "the visual map's ENU frame in map_frame: z (m)", low=-1e5,
          high=1e5),
    Param('map_origin_yaw_deg', 0.0, "the visual map's ENU frame in map_frame: yaw (deg, "
          'counter-clockwise)', low=-180.0, high=180.0),
    Param('base_frame', 'base_link', 'robot frame whose pose is published (REP 105)'),
    Param('odom_frame', 'odom', 'odometry frame; map->odom is published with publish_tf'),
    Param('publish_tf', False, 'publish map->odom on /tf like AMCL (needs odom_topic and '
          'tf2_msgs)', read_only=True),
    Param('camera_extrinsic_source', 'parameters', "where the camera's mounting on base_frame "
          "comes from: 'parameters' (camera_x_m .. camera_yaw_deg) or 'tf' (/tf_static, "
          'base_frame -> camera_frame; needs tf2_msgs)', choices=('parameters', 'tf'),
          read_only=True),
    Param('camera_frame', '', 'camera frame looked up in /tf_static ("" = the image frame_id)'),
    Param('camera_frame_convention', 'auto', "'optical' (z forward, x right) or 'body' (x "
          "forward) camera_frame; 'auto': optical when its name ends in _optical or "
          '_optical_frame (REP 103)', choices=CAMERA_FRAME_CONVENTIONS),
    Param('camera_x_m', 0.0, 'camera position in base_frame: x (m, forward)', low=-100.0,
          high=100.0),
    Param('camera_y_m', 0.0, 'camera position in base_frame: y (m, left)', low=-100.0,
          high=100.0),
    Param('camera_z_m', 0.0, 'camera position in base_frame: z (m, up)', low=-100.0,
          high=100.0),
    Param('camera_roll_deg', 0.0, 'camera body frame (x forward) in base_frame: roll (deg)',
          low=-180.0, high=180.0),
    Param('camera_pitch_deg', 0.0, 'camera body frame in base_frame: pitch (deg)', low=-90.0,
          high=90.0),
    Param('camera_yaw_deg', 0.0, 'camera body frame in base_frame: yaw (deg)', low=-180.0,
          high=180.0),
    Param('navsat_frame_id', '', 'frame_id of NavSatFix ("" = the image frame_id)'),
    Param('publish_navsatfix', True, 'publish sensor_msgs/NavSatFix on fix'),
    Param('publish_pose', True, 'publish geometry_msgs/PoseWithCovarianceStamped on pose'),
    Param('publish_no_fix', True, 'publish NavSatFix with STATUS_NO_FIX for rejected matches'),
    Param('diagnostics_period_s', 1.0, 'period of /diagnostics messages (s)',
          low=0.01, high=3600.0),
    Param('min_rate_hz', 1.0, 'diagnostics WARN when images arrive slower than this (Hz, '
          'over health_window_s; 0 = no lower bound)', low=0.0, high=10000.0),
    Param('max_rate_hz', 0.0, 'diagnostics WARN when images arrive faster than this (Hz; '
          '0 = no upper bound)', low=0.0, high=10000.0),
    Param('stale_after_s', 5.0, 'diagnostics STALE after this long without an image (s)',
          low=0.1, high=3600.0),
    Param('health_window_s', 5.0, 'sliding window of the diagnostics rate, ratio and '
          'internal-error checks (s)', low=0.1, high=3600.0),
    Param('max_rejected_ratio', 0.2, 'diagnostics WARN above this fraction of processed '
          'frames rejected (bad encoding, size, data) in the window', low=0.0, high=1.0),
    Param('max_dropped_ratio', 0.75, 'diagnostics WARN above this fraction of received '
          'frames dropped (the localizer is slower than the camera) in the window',
          low=0.0, high=1.0),
    Param('max_internal_errors', 3, 'diagnostics ERROR at this many internal errors in the '
          'window (fewer: WARN)', low=1, high=1_000_000),
    Param('max_image_pixels', DEFAULT_MAX_IMAGE_PIXELS,
          'images declaring more pixels (width x height) are rejected before decoding',
          low=1, high=1_000_000_000),
    Param('use_filter', True, 'run the place filter (HMM) over the image stream',
          read_only=True),
    Param('refine', True, 'refine the pose with local features + PnP (maps with features)',
          read_only=True),
    Param('refine_time_budget_ms', RefinementConfig.time_budget_ms,
          'PnP tries no further candidate place once a frame has spent this long in '
          'refinement (ms; the first is always tried; 0 = no limit; not applied while the '
          'filter is not tracking)', low=0.0, high=10000.0, read_only=True),
    Param('verification_frames', TrackingConfig.verification_frames,
          'with refine, a filter estimate is a fix only if PnP verified a place near it in '
          'this many frames (0 = never required; lower it for a weak descriptor)',
          low=0, high=100000, read_only=True),
    Param('pose_source', TrackingConfig.pose_source,
          'the published pose: pnp (PnP where it verifies, else the filter / retrieval '
          'estimate), retrieval (PnP only verifies), regression (the pose head of a '
          'pose_attention model, gated by the retrieval estimate)', choices=POSE_SOURCES,
          read_only=True),
    Param('odom_topic', '', "nav_msgs/Odometry topic for the filter's motion model "
          '("" = bounded-speed model)', read_only=True),
    Param('max_speed_mps', PlaceFilterConfig.max_speed_mps,
          'fastest plausible robot speed (m/s): bounds the motion model and odometry jumps '
          '(a change restarts the filter)', low=0.1, high=100.0),
    Param('filter_temperature_scale', PlaceFilterConfig.temperature_scale,
          'temperature tau of the filter likelihood exp(z / tau), z the z-score of a '
          'similarity within the frame (a change restarts the filter)', low=0.01, high=100.0),
) + tuple(Param(field.name, field.default, _LOCALIZER_PARAMS[field.name][0],
                low=_LOCALIZER_PARAMS[field.name][1], high=_LOCALIZER_PARAMS[field.name][2])
          for field in fields(LocalizerConfig))

PARAMS_BY_NAME = {param.name: param for param in NODE_PARAMS}
TRACKING_PARAMS = ('max_speed_mps', 'filter_temperature_scale')
_TYPE_NAMES = {bool: 'a boolean', int: 'an integer', float: 'a number', str: 'a string'}


def descriptor(param):
    """Return the ParameterDescriptor of ``param``: description, range or choices, read-only.

    Numbers accept any numeric type at the ROS level (``dynamic_typing``) so
    that ``-p neighbour_radius_m:=25`` works; :func:`check_value` enforces types.
    """
    text = param.description
    if param.choices:
        text += ' (one of: ' + ', '.join(param.choices) + ')'
    if param.read_only:
        text += ' [read-only: restart the node to change it]'
    result = ParameterDescriptor(description=text, read_only=param.read_only,
                                 additional_constraints=_constraint_text(param))
    if isinstance(param.default, float):
        result.dynamic_typing = True
        result.floating_point_range = [FloatingPointRange(
            from_value=float(param.low), to_value=float(param.high), step=0.0)]
    elif isinstance(param.default, int) and not isinstance(param.default, bool):
        result.integer_range = [IntegerRange(from_value=int(param.low), to_value=int(param.high),
                                             step=1)]
    return result


def _constraint_text(param):
    if param.choices:
        return 'one of: ' + ', '.join(param.choices)
    if param.low is not None:
        return f'{param.low:g} <= value <= {param.high:g}'
    return ''


def check_value(name, value):
    """Return ``value`` in its parameter's type (int -> float) or raise ParameterError."""
    param = PARAMS_BY_NAME[name]
    kind = type(param.default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not kind:
        raise ParameterError(f'parameter {name} must be {_TYPE_NAMES[kind]}, got '
                             f'{type(value).__name__} {value!r} (e.g. -p {name}:='
                             f'{_literal(param.default)})')
    if param.choices and value not in param.choices:
        raise ParameterError(f'parameter {name} is {value!r}; use one of: '
                             + ', '.join(param.choices))
    if param.low is not None and not param.low <= value <= param.high:
        raise ParameterError(f'parameter {name} is {value!r}, outside {param.low:g} .. '
                             f'{param.high:g}: {param.description}')
    return value


def check_values(values):
    """Check each value and the rules between them; return them typed (or ParameterError)."""
    checked = {name: check_value(name, value) for name, value in values.items()}
    if checked['top_k'] > checked['candidates']:
        raise ParameterError(f"parameter top_k ({checked['top_k']}) must not exceed candidates "
                             f"({checked['candidates']}): the neighbours are taken among them")
    if 'min_rate_hz' in checked:  # the diagnostics thresholds' own rules (max >= min, ...)
        try:
            health_config(checked)
        except ValueError as error:
            raise ParameterError(str(error)) from error
    return checked


def _literal(value):
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if value != '' else "''"


def declare_parameters(node):
    """Declare every parameter with its descriptor; return the checked start-up values.

    The values given at start (``-p``, params files) are checked before they
    are declared, so a bad one is refused with :func:`check_value`'s one line.
    """
    overrides = getattr(node, '_parameter_overrides', {})  # rclpy keeps no public accessor
    values = {param.name: overrides[param.name].value if param.name in overrides
              else param.default for param in NODE_PARAMS}
    values = check_values(values)
    for param in NODE_PARAMS:
        try:
            node.declare_parameter(param.name, param.default, descriptor(param))
        except ParameterException as error:  # e.g. no _parameter_overrides: still one line
            raise ParameterError(f'parameter {param.name}: {error}') from error
    return check_values({param.name: node.get_parameter(param.name).value
                         for param in NODE_PARAMS})


def map_origin(values):
    """Return map_T_visual, the visual map's ENU frame in ``map_frame``, from map_origin_*."""
    return Extrinsic(xyz_m=tuple(values[f'map_origin_{axis}_m'] for axis in 'xyz'),
                     rpy_deg=(0.0, 0.0, values['map_origin_yaw_deg'])).pose()


CAMERA_MOUNTING_PARAMS = ('camera_x_m', 'camera_y_m', 'camera_z_m', 'camera_roll_deg',
                          'camera_pitch_deg', 'camera_yaw_deg')


def camera_extrinsic(values):
    """Return the camera's mounting on the robot (base_T_camera) from the camera_* values."""
    return Extrinsic(xyz_m=tuple(values[name] for name in CAMERA_MOUNTING_PARAMS[:3]),
                     rpy_deg=tuple(values[name] for name in CAMERA_MOUNTING_PARAMS[3:]))


def localizer_config(values):
    """Build a LocalizerConfig from parameter values."""
    return LocalizerConfig(**{field.name: values[field.name]
                              for field in fields(LocalizerConfig)})


def tracking_config(values):
    """Build the TrackingConfig (filter, refinement) from parameter values."""
    return TrackingConfig(
        use_filter=bool(values['use_filter']), refine=bool(values['refine']),
        pose_source=str(values['pose_source']),
        verification_frames=int(values['verification_frames']),
        refinement=RefinementConfig(time_budget_ms=float(values['refine_time_budget_ms'])),
        filter=PlaceFilterConfig(max_speed_mps=float(values['max_speed_mps']),
                                 temperature_scale=float(values['filter_temperature_scale'])))


def embedder_config(values, map_dir=''):
    """Build an EmbedderConfig from parameter values.

    With neither ``export_dir`` nor a ``model`` other than the default, the
    node runs the model the map carries (``<map>/model``), so ``map_dir`` is
    all it needs; ``model`` then only checks that the map's model is that one.
    """
    config = EmbedderConfig(model=values['model'], backend=values['backend'],
                            threads=int(values['threads']), cache_dir=values['cache_dir'],
                            device=values['device'], precision=values['precision'],
                            export_dir=values['export_dir'])
    return carried_model_config(config, map_dir) if map_dir else config
