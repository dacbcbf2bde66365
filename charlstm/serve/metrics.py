"""What ``GET /metrics`` shows: counts kept by the scheduler's worker, written out in
Prometheus's text format (a handful of series: no client library needed)."""

from __future__ import annotations

import collections
import time


class Metrics:
    """What ``/metrics`` shows; written by the worker, read by the server (plain numbers)."""

    #: Upper bounds of the time-to-first-character histogram, in seconds.
    BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0)

    def __init__(self) -> None:
        self.chars = 0
        self.finished: collections.Counter[str] = collections.Counter()
        self.first_char_counts = [0] * len(self.BUCKETS)
        self.first_char_sum = 0.0
        self.first_char_total = 0
        self.recent: collections.deque[tuple[float, int]] = collections.deque()  # (time, chars)

    def first_char(self, seconds: float) -> None:
        self.first_char_sum += seconds
        self.first_char_total += 1
        for i, bound in enumerate(self.BUCKETS):
            if seconds <= bound:
                self.first_char_counts[i] += 1

    def wrote(self, chars: int, now: float) -> None:
        self.chars += chars
        self.recent.append((now, chars))
        while self.recent and self.recent[0][0] < now - 10.0:
            self.recent.popleft()

    def chars_per_second(self, now: float) -> float:
        """Characters written in the last 10 seconds, per second."""
        recent = list(self.recent)  # one copy: the worker appends meanwhile
        return sum(c for t, c in recent if t >= now - 10.0) / 10.0


def prometheus(metrics: Metrics, counts: tuple[int, int, int]) -> str:
    """Prometheus's text format, written out (seven series: no client library needed)."""
    running, rows, waiting = counts
    now = time.monotonic()
    lines = []

    def series(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

    series("charlstm_requests_running", "gauge", "Requests in the batch.", [("", running)])
    series("charlstm_rows_running", "gauge", "Rows in the batch.", [("", rows)])
    series("charlstm_requests_waiting", "gauge", "Requests waiting for rows.", [("", waiting)])
    series(
        "charlstm_chars_generated_total",
        "counter",
        "Characters written.",
        [("", metrics.chars)],
    )
    series(
        "charlstm_requests_finished_total",
        "counter",
        "Requests ended, by reason.",
        [(f'{{reason="{r}"}}', c) for r, c in sorted(metrics.finished.copy().items())],
    )
    buckets = [
        (f'_bucket{{le="{bound:g}"}}', count)
        for bound, count in zip(metrics.BUCKETS, metrics.first_char_counts, strict=True)
    ]
    lines.append("# HELP charlstm_time_to_first_char_seconds From arrival to the first character.")
    lines.append("# TYPE charlstm_time_to_first_char_seconds histogram")
    for suffix, value in [
        *buckets,
        ('_bucket{le="+Inf"}', metrics.first_char_total),
        ("_sum", metrics.first_char_sum),
        ("_count", metrics.first_char_total),
    ]:
        lines.append(f"charlstm_time_to_first_char_seconds{suffix} {value:g}")
    series(
        "charlstm_chars_per_second",
        "gauge",
        "Characters written per second over the last 10 seconds.",
        [("", metrics.chars_per_second(now))],
    )
    return "\n".join(lines) + "\n"
