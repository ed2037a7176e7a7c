"""Latest-frame slot and statistics of the live localizer (no ROS)."""

import threading
import time

import numpy as np

from vl_attention.localization.pipeline import LatestFrameSlot, LocalizationStats


def test_slot_keeps_only_the_newest_and_counts_drops():
    slot = LatestFrameSlot()
    for frame in range(5):
        slot.put(frame)
    assert slot.take(timeout_s=0.1) == 4
    assert slot.dropped == 4
    assert slot.take(timeout_s=0.05) is None
    slot.put(5)
    assert slot.take(timeout_s=0.1) == 5 and slot.dropped == 4


def test_slow_consumer_sees_fresh_frames_and_close_wakes_it():
    slot, taken = LatestFrameSlot(), []

    def consume():
        while True:
            item = slot.take(timeout_s=2.0)
            if item is None:
                return
            taken.append(item)
            time.sleep(0.02)   # slower than the producer

    worker = threading.Thread(target=consume)
    worker.start()
    for frame in range(50):
        slot.put(frame)
        time.sleep(0.002)
    time.sleep(0.1)
    slot.close()
    worker.join(timeout=3.0)
    assert not worker.is_alive()
    assert taken[-1] == 49 and taken == sorted(taken)
    assert slot.dropped == 50 - len(taken) and slot.dropped > 0


class _Result:
    def __init__(self, ok, confidence):
        self.ok, self.confidence = ok, confidence


def test_stats_snapshot():
    stats = LocalizationStats()
    for index in range(10):
        stats.on_received()
        stats.on_result(_Result(index % 5 != 0, 0.5), latency_ms=float(index + 1))
    stats.on_received()
    stats.on_rejected(ValueError('bad frame'))
    snapshot = stats.snapshot(dropped=3)
    assert (snapshot.frames_received, snapshot.frames_localized, snapshot.frames_no_fix,
            snapshot.frames_rejected, snapshot.frames_dropped) == (11, 8, 2, 1, 3)
    assert snapshot.latency_ms_p50 == np.percentile(np.arange(1, 11), 50)
    assert snapshot.last_error == 'bad frame' and snapshot.rate_hz > 0
