"""Diagnostics levels from hand-made snapshots: every check, its boundary, and how they merge."""

import math

import pytest

from vl_attention.localization.health import (assess, ERROR, HealthConfig, merge_summaries, OK,
                                              STALE, WARN)
from vl_attention.localization.pipeline import LocalizationStats, StatsSnapshot

NOW_S = 1000.0
CONFIG = HealthConfig(min_rate_hz=1.0, max_rate_hz=20.0, stale_after_s=5.0, window_s=5.0,
                      max_rejected_ratio=0.2, max_dropped_ratio=0.75, max_internal_errors=3)


def _snapshot(**changes):
    """Return a healthy stream: 10 Hz over 5 s, last image 50 ms ago, all localized."""
    values = dict(frames_received=500, frames_localized=500, frames_no_fix=0, frames_rejected=0,
                  frames_dropped=0, rate_hz=10.0, latency_ms_p50=20.0, latency_ms_p95=30.0,
                  last_confidence=0.9, last_error='', started_s=NOW_S - 60.0,
                  last_received_s=NOW_S - 0.05, window_s=5.0, window_received=50,
                  window_processed=50)
    return StatsSnapshot(**(values | changes))


def _assess(**changes):
    return assess(_snapshot(**changes), NOW_S, CONFIG)


def test_a_healthy_stream_is_ok_with_its_rate_and_age():
    level, message, values = _assess()
    assert (level, message) == (OK, 'localizing')
    assert values['level'] == 'OK'
    assert values['image_rate_hz'] == '10.00' and values['image_age_s'] == '0.05'
    assert (values['window_rejected_ratio'], values['window_dropped_ratio']) == ('0.000', '0.000')
    assert (values['min_rate_hz'], values['max_rate_hz']) == ('1.00', '20.00')


@pytest.mark.parametrize('received, level', [(4, WARN), (5, OK), (100, OK), (101, WARN)])
def test_the_rate_bounds_are_inclusive(received, level):
    # 5 frames in 5 s is exactly min_rate_hz; 100 in 5 s exactly max_rate_hz
    assert _assess(window_received=received, window_processed=received).level == level


def test_low_and_high_rates_say_which_bound_and_the_rate():
    low = _assess(window_received=3, window_processed=3)
    assert low.message == 'image rate 0.60 Hz below min_rate_hz 1 (over 5.0 s)'
    high = _assess(window_received=150, window_processed=150)
    assert high.message == 'image rate 30.00 Hz above max_rate_hz 20 (over 5.0 s)'


def test_no_upper_bound_when_max_rate_is_zero():
    result = assess(_snapshot(window_received=5000, window_processed=5000), NOW_S,
                    HealthConfig(max_rate_hz=0.0))
    assert result.level == OK and result.key_values['max_rate_hz'] == 'none'


@pytest.mark.parametrize('age_s, level', [(4.99, OK), (5.0, STALE), (60.0, STALE)])
def test_no_image_for_stale_after_s_is_stale(age_s, level):
    # the window still holds old frames: only the age makes it stale
    assert _assess(last_received_s=NOW_S - age_s).level == level


def test_stale_reports_the_age_and_not_also_the_rate():
    result = _assess(last_received_s=NOW_S - 12.0, window_received=0, window_processed=0)
    assert result == (STALE, 'no image for 12.0 s (stale after 5 s)', result.key_values)
    assert result.key_values['image_rate_hz'] == '0.00'
    assert result.key_values['image_age_s'] == '12.00'


def test_before_the_first_image_waiting_then_stale():
    never = dict(frames_received=0, frames_localized=0, last_received_s=math.nan,
                 window_received=0, window_processed=0)
    waiting = _assess(started_s=NOW_S - 2.0, **never)
    assert (waiting.level, waiting.message) == (WARN, 'waiting for images')
    assert waiting.key_values['image_age_s'] == 'never'
    stale = _assess(started_s=NOW_S - 6.0, **never)
    assert (stale.level, stale.message) == (STALE, 'no image received in 6.0 s since start')


@pytest.mark.parametrize('rejected, level', [(0, OK), (10, OK), (11, WARN), (50, WARN)])
def test_rejection_ratio_above_the_threshold_warns(rejected, level):
    # 10 of 50 processed is exactly max_rejected_ratio 0.2: not above it
    result = _assess(window_rejected=rejected)
    assert result.level == level
    assert result.key_values['window_rejected_ratio'] == f'{rejected / 50:.3f}'


def test_rejection_message_names_the_ratio_window_and_limit():
    assert _assess(window_rejected=15).message == (
        '30% of frames rejected in the last 5 s (max 20%)')


@pytest.mark.parametrize('dropped, level', [(37, OK), (38, WARN)])
def test_drop_ratio_above_the_threshold_warns(dropped, level):
    # 37/50 = 0.74 <= 0.75 < 38/50 = 0.76
    result = _assess(window_dropped=dropped)
    assert result.level == level
    assert result.key_values['window_dropped_ratio'] == f'{dropped / 50:.3f}'


def test_old_rejections_outside_the_window_do_not_count():
    assert _assess(frames_rejected=400, window_rejected=0).level == OK


@pytest.mark.parametrize('errors, level', [(0, OK), (1, WARN), (2, WARN), (3, ERROR), (9, ERROR)])
def test_repeated_internal_errors_are_an_error(errors, level):
    result = _assess(window_internal_errors=errors, internal_errors=errors + 7)
    assert result.level == level
    assert result.key_values['internal_errors'] == errors + 7


def test_internal_error_message_points_at_the_log():
    assert _assess(window_internal_errors=3).message == (
        '3 internal errors in the last 5 s (error at 3): see the node log')


@pytest.mark.parametrize('state, level', [('', OK), ('initialising', OK), ('tracking', OK),
                                          ('lost', WARN)])
def test_a_lost_filter_warns(state, level):
    result = _assess(last_filter_state=state)
    assert result.level == level
    if level == WARN:
        assert result.message == 'place filter lost: no consistent match to the map'


def test_frames_processed_without_any_fix_warn():
    result = _assess(frames_localized=0, frames_no_fix=500)
    assert (result.level, result.message) == (WARN, 'no fix yet')


def test_the_worst_level_wins_and_problems_are_joined():
    result = _assess(last_received_s=NOW_S - 8.0, window_internal_errors=4, window_rejected=20)
    assert result.level == STALE
    assert result.message.split('; ') == [
        'no image for 8.0 s (stale after 5 s)', '40% of frames rejected in the last 5 s (max 20%)',
        '4 internal errors in the last 5 s (error at 3): see the node log']
    assert result.key_values['level'] == 'STALE'
    two_warnings = _assess(window_received=3, window_processed=3, last_filter_state='lost')
    assert two_warnings.level == WARN and two_warnings.message.count('; ') == 1


def test_merge_summaries_follows_diagnostic_updater():
    assert merge_summaries([]) == (OK, 'localizing')
    assert merge_summaries([(OK, 'fine'), (WARN, 'a'), (ERROR, 'b')]) == (ERROR, 'a; b')
    assert merge_summaries([(STALE, 'old'), (WARN, 'slow')]) == (STALE, 'old; slow')


@pytest.mark.parametrize('changes, words', [
    ({'min_rate_hz': 10.0, 'max_rate_hz': 5.0}, 'max_rate_hz 5 is below min_rate_hz 10'),
    ({'max_rejected_ratio': 1.5}, 'max_rejected_ratio must be in [0, 1]'),
    ({'max_dropped_ratio': -0.1}, 'max_dropped_ratio must be in [0, 1]'),
    ({'stale_after_s': 0.0}, 'stale_after_s and health_window_s must be > 0'),
    ({'window_s': -1.0}, 'stale_after_s and health_window_s must be > 0'),
    ({'max_internal_errors': 0}, 'max_internal_errors must be >= 1'),
    ({'min_rate_hz': -1.0}, 'must be >= 0'),
])
def test_bad_thresholds_are_refused_with_the_setting_named(changes, words):
    with pytest.raises(ValueError, match='invalid diagnostics settings') as error:
        HealthConfig(**changes)
    assert words in str(error.value)


class _Clock:
    def __init__(self):
        self.now_s = 0.0

    def __call__(self):
        return self.now_s


class _Result:
    ok, confidence = True, 0.8

    def __init__(self, filter_state):
        self.filter_state = filter_state


def test_stats_windows_follow_the_clock_from_ok_to_stale():
    clock = _Clock()
    stats = LocalizationStats(clock=clock)
    for index in range(20):                        # 10 Hz for 2 s
        clock.now_s = 0.1 * (index + 1)
        stats.on_received()
        stats.on_result(_Result('tracking'), latency_ms=5.0)
    first = stats.snapshot(dropped=4, window_s=5.0)
    assert (first.window_s, first.window_received, first.window_processed) == (2.0, 20, 20)
    assert first.window_dropped == 4 and first.last_received_s == 2.0
    assert assess(first, 2.0, CONFIG).level == OK
    clock.now_s = 6.0
    stats.snapshot(dropped=4, window_s=5.0)
    clock.now_s = 9.0                               # newest sample at least 5 s old: t = 2
    late = stats.snapshot(dropped=4, window_s=5.0)
    assert (late.window_s, late.window_received, late.window_dropped) == (7.0, 0, 0)
    assert late.frames_received == 20
    assert assess(late, 9.0, CONFIG)[:2] == (STALE, 'no image for 7.0 s (stale after 5 s)')


def test_stats_count_internal_errors_apart_from_input_rejections():
    clock = _Clock()
    stats = LocalizationStats(clock=clock)
    for _ in range(3):
        stats.on_received()
        stats.on_rejected('internal error: boom', reason='internal_error')
    stats.on_received()
    stats.on_rejected(ValueError('bad data'), reason='bad_size')
    stats.on_result(_Result('lost'), latency_ms=1.0)
    snapshot = stats.snapshot(dropped=0, window_s=5.0)
    assert (snapshot.internal_errors, snapshot.window_internal_errors) == (3, 3)
    assert (snapshot.window_rejected, snapshot.window_processed) == (1, 5)
    assert snapshot.frames_rejected == 4 and snapshot.last_filter_state == 'lost'
    assert snapshot.rejected_by_reason == {'internal_error': 3, 'bad_size': 1}
    assert assess(snapshot, clock.now_s, CONFIG).level == ERROR
    clock.now_s = 4.0                               # keep a sample inside the next window
    stats.on_received()
    stats.snapshot(dropped=0, window_s=5.0)
    clock.now_s = 8.0                               # the errors (t = 0) left the window
    later = stats.snapshot(dropped=0, window_s=5.0)
    assert (later.window_internal_errors, later.internal_errors) == (0, 3)
