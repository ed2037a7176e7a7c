"""Health of a running localizer: the level, message and values that ``/diagnostics`` shows.

Pure (no ROS). :func:`assess` turns a :class:`~vl_attention.localization.pipeline.StatsSnapshot`
into one summary the way diagnostic_updater's tasks do:

* a frequency check like ``FrequencyStatus``: images counted over a sliding window of
  ``window_s`` seconds must arrive at a rate within ``[min_rate_hz, max_rate_hz]``;
* a timestamp-age check like ``TimeStampStatus``: no image for ``stale_after_s`` seconds is
  STALE (``diagnostic_msgs/DiagnosticStatus.STALE``);
* ratio checks over the same window (rejected, dropped frames), the filter state and the
  count of internal errors.

Every failing check contributes; the levels merge like diagnostic_updater's ``mergeSummary``:
the worst level wins and the messages of all non-OK checks are joined with ``'; '``.
"""

from dataclasses import dataclass
import math
from typing import NamedTuple

from vl_attention.config import ConfigError

# diagnostic_msgs/DiagnosticStatus levels (the ROS adapter converts them to the message's bytes)
OK, WARN, ERROR, STALE = 0, 1, 2, 3
LEVEL_NAMES = {OK: 'OK', WARN: 'WARN', ERROR: 'ERROR', STALE: 'STALE'}


@dataclass(frozen=True)
class HealthConfig:
    """Thresholds of the health checks (node parameters of the same names)."""

    min_rate_hz: float = 1.0          # image rate below this is WARN (0 = no lower bound)
    max_rate_hz: float = 0.0          # image rate above this is WARN (0 = no upper bound)
    stale_after_s: float = 5.0        # no image for this long is STALE
    window_s: float = 5.0             # sliding window of the rate, ratio and error checks
    max_rejected_ratio: float = 0.2   # rejected / processed frames above this is WARN
    max_dropped_ratio: float = 0.75   # dropped / received frames above this is WARN
    max_internal_errors: int = 3      # this many internal errors in the window is ERROR

    def __post_init__(self):
        """Refuse thresholds that would make a check meaningless."""
        problems = _config_problems(self)
        if problems:
            raise ConfigError('invalid diagnostics settings: ' + '; '.join(problems))


class Assessment(NamedTuple):
    """What :func:`assess` returns: a diagnostic level, its message and key/values."""

    level: int
    message: str
    key_values: dict


def health_config(values, *, window_key='health_window_s'):
    """Build a :class:`HealthConfig` from node parameter values (a name -> value mapping)."""
    return HealthConfig(min_rate_hz=float(values['min_rate_hz']),
                        max_rate_hz=float(values['max_rate_hz']),
                        stale_after_s=float(values['stale_after_s']),
                        window_s=float(values[window_key]),
                        max_rejected_ratio=float(values['max_rejected_ratio']),
                        max_dropped_ratio=float(values['max_dropped_ratio']),
                        max_internal_errors=int(values['max_internal_errors']))


def assess(snapshot, now_s, config=None):
    """Return the :class:`Assessment` of ``snapshot`` at monotonic time ``now_s``.

    ``now_s`` is on the clock of the snapshot's ``started_s`` / ``last_received_s``
    (``time.monotonic`` in the node), so simulated time does not make a live camera stale.
    ``config`` defaults to :class:`HealthConfig`'s defaults.
    """
    config = config or HealthConfig()
    image_age_s = _image_age_s(snapshot, now_s)
    rate_hz = image_rate_hz(snapshot)
    rejected_ratio, dropped_ratio = _ratios(snapshot)
    checks = (_staleness(snapshot, now_s, image_age_s, config),
              _rate(snapshot, image_age_s, rate_hz, config),
              _ratio('rejected', rejected_ratio, config.max_rejected_ratio, config),
              _ratio('dropped', dropped_ratio, config.max_dropped_ratio, config),
              _internal_errors(snapshot.window_internal_errors, config),
              _tracking(snapshot))
    level, message = merge_summaries([check for check in checks if check is not None])
    values = {'level': LEVEL_NAMES[level],
              'image_rate_hz': f'{rate_hz:.2f}',
              'image_age_s': 'never' if math.isinf(image_age_s) else f'{image_age_s:.2f}',
              'window_s': f'{snapshot.window_s:.2f}',
              'window_frames_received': snapshot.window_received,
              'window_rejected_ratio': f'{rejected_ratio:.3f}',
              'window_dropped_ratio': f'{dropped_ratio:.3f}',
              'window_internal_errors': snapshot.window_internal_errors,
              'internal_errors': snapshot.internal_errors,
              'min_rate_hz': f'{config.min_rate_hz:.2f}',
              'max_rate_hz': f'{config.max_rate_hz:.2f}' if config.max_rate_hz > 0 else 'none',
              'stale_after_s': f'{config.stale_after_s:.2f}'}
    return Assessment(level, message, values)


def merge_summaries(summaries):
    """Merge ``(level, message)`` pairs: worst level; messages of non-OK checks joined by '; '.

    With every check OK (or none) the result is ``(OK, 'localizing')``.
    """
    problems = [(level, message) for level, message in summaries if level != OK]
    if not problems:
        return OK, 'localizing'
    return max(level for level, _ in problems), '; '.join(message for _, message in problems)


def image_rate_hz(snapshot):
    """Images per second received over the snapshot's window (0 for an empty window)."""
    return snapshot.window_received / snapshot.window_s if snapshot.window_s > 0 else 0.0


def _image_age_s(snapshot, now_s):
    if math.isnan(snapshot.last_received_s):
        return math.inf
    return max(0.0, now_s - snapshot.last_received_s)


def _ratios(snapshot):
    processed = snapshot.window_processed
    rejected = snapshot.window_rejected / processed if processed else 0.0
    received = snapshot.window_received
    dropped = min(1.0, snapshot.window_dropped / received) if received else 0.0
    return rejected, dropped


def _staleness(snapshot, now_s, image_age_s, config):
    if math.isinf(image_age_s):  # no image yet: stale once the node has waited long enough
        waited_s = now_s - snapshot.started_s
        if waited_s >= config.stale_after_s:
            return STALE, f'no image received in {waited_s:.1f} s since start'
        return WARN, 'waiting for images'
    if image_age_s >= config.stale_after_s:
        return STALE, f'no image for {image_age_s:.1f} s (stale after {config.stale_after_s:g} s)'
    return None


def _rate(snapshot, image_age_s, rate_hz, config):
    if image_age_s >= config.stale_after_s:
        return None  # the staleness check already says it, louder
    if rate_hz < config.min_rate_hz:
        return WARN, (f'image rate {rate_hz:.2f} Hz below min_rate_hz {config.min_rate_hz:g}'
                      f' (over {snapshot.window_s:.1f} s)')
    if config.max_rate_hz > 0 and rate_hz > config.max_rate_hz:
        return WARN, (f'image rate {rate_hz:.2f} Hz above max_rate_hz {config.max_rate_hz:g}'
                      f' (over {snapshot.window_s:.1f} s)')
    return None


def _ratio(what, ratio, limit, config):
    if ratio > limit:
        return WARN, (f'{ratio:.0%} of frames {what} in the last {config.window_s:g} s '
                      f'(max {limit:.0%})')
    return None


def _internal_errors(count, config):
    if count >= config.max_internal_errors:
        return ERROR, (f'{count} internal errors in the last {config.window_s:g} s '
                       f'(error at {config.max_internal_errors}): see the node log')
    if count > 0:
        return WARN, (f'{count} internal error(s) in the last {config.window_s:g} s: '
                      'see the node log')
    return None


def _tracking(snapshot):
    if snapshot.last_filter_state == 'lost':
        return WARN, 'place filter lost: no consistent match to the map'
    processed = snapshot.frames_localized + snapshot.frames_no_fix
    if processed > 0 and snapshot.frames_localized == 0:
        return WARN, 'no fix yet'
    return None


def _config_problems(config):
    problems = []
    if config.min_rate_hz < 0 or config.max_rate_hz < 0:
        problems.append('min_rate_hz and max_rate_hz must be >= 0')
    if 0 < config.max_rate_hz < config.min_rate_hz:
        problems.append(f'max_rate_hz {config.max_rate_hz:g} is below min_rate_hz '
                        f'{config.min_rate_hz:g} (set max_rate_hz to 0 for no upper bound)')
    if config.stale_after_s <= 0 or config.window_s <= 0:
        problems.append('stale_after_s and health_window_s must be > 0')
    for name in ('max_rejected_ratio', 'max_dropped_ratio'):
        if not 0.0 <= getattr(config, name) <= 1.0:
            problems.append(f'{name} must be in [0, 1], got {getattr(config, name):g}')
    if config.max_internal_errors < 1:
        problems.append(f'max_internal_errors must be >= 1, got {config.max_internal_errors}')
    return problems
