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
from typing import NamedTuple

import numpy as np


class LatestFrameSlot:
    """A one-element mailbox that keeps only the newest item."""

    def __init__(self):
        self._condition = threading.Condition()
        self._item = None
        self._closed = False
        self.dropped = 0

    @property
    def closed(self):
        """Whether :meth:`close` was called (the worker then stops)."""
        return self._closed

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
    """Counters and rates at one instant (what diagnostics report).

    Times (``*_s``) are on the stats' clock (``time.monotonic`` by default);
    ``window_*`` counts cover the last ``window_s`` seconds before the snapshot.
    """

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
    internal_errors: int = 0              # frames that failed on a bug, not on their input
    last_filter_state: str = ''           # '' (no filter) | initialising | tracking | lost
    started_s: float = float('nan')       # when counting began
    last_received_s: float = float('nan')  # newest image (nan: none yet)
    window_s: float = 0.0                 # span the window_* counts cover
    window_received: int = 0
    window_processed: int = 0             # localized + no fix + rejected (any reason)
    window_rejected: int = 0              # rejected for their input (internal errors excluded)
    window_dropped: int = 0
    window_internal_errors: int = 0


INTERNAL_ERROR = 'internal_error'  # the rejection reason the node gives a frame that hit a bug


class _Counts(NamedTuple):
    """Cumulative counters at one time: the samples the sliding window differences."""

    time_s: float
    received: int = 0
    processed: int = 0
    rejected: int = 0
    dropped: int = 0
    internal_errors: int = 0


class LocalizationStats:
    """Thread-safe counters of a running localizer with sliding windows for rates.

    Latency percentiles and ``rate_hz`` (processing rate) cover the last
    ``window`` processed frames. The health counts (``window_*``) cover the last
    ``window_s`` seconds: like diagnostic_updater's ``FrequencyStatus``, each
    :meth:`snapshot` stores the cumulative counters and differences them with
    the newest stored sample at least ``window_s`` old (or the start).
    """

    def __init__(self, window=100, *, clock=time.monotonic):
        self._lock = threading.Lock()
        self._clock = clock
        self._latencies_ms = deque(maxlen=window)
        self._done_times = deque(maxlen=window)
        self.received = self.localized = self.no_fix = self.rejected = 0
        self.internal_errors = 0
        self.last_confidence = float('nan')
        self.last_error = ''
        self.last_filter_state = ''
        self.rejected_by_reason = {}
        self.started_s = clock()
        self.last_received_s = float('nan')
        self._samples = deque([_Counts(self.started_s)], maxlen=10_000)

    def on_received(self):
        """Count an incoming frame."""
        with self._lock:
            self.received += 1
            self.last_received_s = self._clock()

    def on_result(self, result, latency_ms):
        """Count a processed frame with its end-to-end latency."""
        with self._lock:
            self.localized += int(result.ok)
            self.no_fix += int(not result.ok)
            self.last_confidence = result.confidence
            self.last_filter_state = getattr(result, 'filter_state', '') or ''
            self._latencies_ms.append(latency_ms)
            self._done_times.append(time.monotonic())

    def on_rejected(self, error, *, reason=None):
        """Count a frame that could not be used (bad encoding, size, data), per reason.

        ``reason`` defaults to the error's ``reason`` attribute (see
        ``vl_attention.data.images.REJECTION_REASONS``), else ``'other'``;
        ``'internal_error'`` counts a bug, which diagnostics report as ERROR
        when it repeats.
        """
        reason = reason or getattr(error, 'reason', None) or 'other'
        with self._lock:
            self.rejected += 1
            self.internal_errors += int(reason == INTERNAL_ERROR)
            self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1
            self.last_error = str(error)

    def snapshot(self, dropped, *, window_s=5.0):
        """Return the current values; ``dropped`` comes from the frame slot.

        ``window_s`` is the span of the ``window_*`` counts (the diagnostics window).
        """
        with self._lock:
            latencies = np.asarray(self._latencies_ms) if self._latencies_ms else np.zeros(1)
            times = self._done_times
            rate = (len(times) - 1) / (times[-1] - times[0]) \
                if len(times) > 1 and times[-1] > times[0] else 0.0
            now = _Counts(self._clock(), self.received,
                          self.localized + self.no_fix + self.rejected,
                          self.rejected - self.internal_errors, dropped, self.internal_errors)
            base = self._window_base(now.time_s - window_s)
            self._samples.append(now)
            return StatsSnapshot(
                self.received, self.localized, self.no_fix, self.rejected, dropped, rate,
                float(np.percentile(latencies, 50)), float(np.percentile(latencies, 95)),
                self.last_confidence, self.last_error, dict(self.rejected_by_reason),
                internal_errors=self.internal_errors, last_filter_state=self.last_filter_state,
                started_s=self.started_s, last_received_s=self.last_received_s,
                window_s=now.time_s - base.time_s, window_received=now.received - base.received,
                window_processed=now.processed - base.processed,
                window_rejected=now.rejected - base.rejected,
                window_dropped=max(0, now.dropped - base.dropped),
                window_internal_errors=now.internal_errors - base.internal_errors)

    def _window_base(self, since_s):
        """Drop samples older than needed; return the newest one at or before ``since_s``."""
        while len(self._samples) > 1 and self._samples[1].time_s <= since_s:
            self._samples.popleft()
        return self._samples[0]
