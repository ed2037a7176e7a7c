"""Frame hand-off and statistics for a live localizer (no ROS: the node wraps these).

The subscription callback only drops the newest frame into a
:class:`LatestFrameSlot`; a worker thread takes it out when free. A frame that
is overwritten before the worker reaches it is counted as dropped, so stale
frames are never queued behind inference.
"""

from collections import deque
from dataclasses import dataclass, field
import threading
import time

import numpy as np


class LatestFrameSlot:
    """A one-element mailbox that keeps only the newest item."""

    def __init__(self):
        self._condition = threading.Condition()
        self._item = None
        self._closed = False
        self.dropped = 0

    def put(self, item):
        """Store ``item``, replacing (and counting as dropped) any item not yet taken."""
        with self._condition:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._condition.notify()

    def take(self, timeout_s=None):
        """Wait for and remove the newest item; ``None`` on timeout or after :meth:`close`."""
        with self._condition:
            self._condition.wait_for(lambda: self._item is not None or self._closed,
                                     timeout=timeout_s)
            item, self._item = self._item, None
            return item

    def close(self):
        """Wake the worker for shutdown."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()


@dataclass(frozen=True)
class StatsSnapshot:
    """Counters and rates at one instant (what diagnostics report)."""

    frames_received: int
    frames_localized: int
    frames_no_fix: int
    frames_rejected: int
    frames_dropped: int
    rate_hz: float
    latency_ms_p50: float
    latency_ms_p95: float
    last_confidence: float
    last_error: str
    rejected_by_reason: dict = field(default_factory=dict)  # reason key -> count


class LocalizationStats:
    """Thread-safe counters of a running localizer with a sliding window for rates."""

    def __init__(self, window=100):
        self._lock = threading.Lock()
        self._latencies_ms = deque(maxlen=window)
        self._done_times = deque(maxlen=window)
        self.received = self.localized = self.no_fix = self.rejected = 0
        self.last_confidence = float('nan')
        self.last_error = ''
        self.rejected_by_reason = {}

    def on_received(self):
        """Count an incoming frame."""
        with self._lock:
            self.received += 1

    def on_result(self, result, latency_ms):
        """Count a processed frame with its end-to-end latency."""
        with self._lock:
            self.localized += int(result.ok)
            self.no_fix += int(not result.ok)
            self.last_confidence = result.confidence
            self._latencies_ms.append(latency_ms)
            self._done_times.append(time.monotonic())

    def on_rejected(self, error, *, reason=None):
        """Count a frame that could not be used (bad encoding, size, data), per reason.

        ``reason`` defaults to the error's ``reason`` attribute (see
        ``vl_attention.data.images.REJECTION_REASONS``), else ``'other'``.
        """
        reason = reason or getattr(error, 'reason', None) or 'other'
        with self._lock:
            self.rejected += 1
            self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1
            self.last_error = str(error)

    def snapshot(self, dropped):
        """Return the current values; ``dropped`` comes from the frame slot."""
        with self._lock:
            latencies = np.asarray(self._latencies_ms) if self._latencies_ms else np.zeros(1)
            times = self._done_times
            rate = (len(times) - 1) / (times[-1] - times[0]) \
                if len(times) > 1 and times[-1] > times[0] else 0.0
            return StatsSnapshot(self.received, self.localized, self.no_fix, self.rejected,
                                 dropped, rate, float(np.percentile(latencies, 50)),
                                 float(np.percentile(latencies, 95)), self.last_confidence,
                                 self.last_error, dict(self.rejected_by_reason))
