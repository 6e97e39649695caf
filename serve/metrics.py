"""Counters for ``GET /metrics`` in Prometheus' text format (no client library: a dozen lines do it)."""

from __future__ import annotations

import threading
import time
from collections import Counter


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: Counter = Counter()  # (route, status) -> count
        self.batch_sizes: Counter = Counter()  # rows per generate() call -> count
        self.steps = 0
        self.busy_s = 0.0
        self.audio_s = 0.0
        self.last_steps_per_s = 0.0
        self.cancelled_rows = 0
        self.freed_rows = 0
        self.stopped_batches = 0
        self.started = time.time()

    def request(self, route: str, status: int) -> None:
        with self._lock:
            self.requests[(route, status)] += 1

    def batch(self, size: int, steps: int, seconds: float, audio_s: float) -> None:
        with self._lock:
            self.batch_sizes[size] += 1
            self.steps += steps
            self.busy_s += seconds
            self.audio_s += audio_s
            self.last_steps_per_s = steps / seconds if seconds > 0 else 0.0

    def cancelled(self, rows: int, freed: int = 0, stopped: bool = False) -> None:
        """``rows`` clients left before their audio was complete; ``freed`` of them were dropped from a
        running batch (their decoder work stopped); ``stopped``: that left the batch empty."""
        with self._lock:
            self.cancelled_rows += rows
            self.freed_rows += freed
            self.stopped_batches += int(stopped)

    def render(self, queue_length: int, in_flight: int) -> str:
        with self._lock:
            lines = [
                "# HELP musicgen_requests_total HTTP requests by route and status.",
                "# TYPE musicgen_requests_total counter",
                *(f'musicgen_requests_total{{route="{r}",status="{s}"}} {n}'
                  for (r, s), n in sorted(self.requests.items())),
                "# HELP musicgen_queue_length Requests waiting for the model.",
                "# TYPE musicgen_queue_length gauge",
                f"musicgen_queue_length {queue_length}",
                "# HELP musicgen_rows_in_flight Rows in the generate() call now running.",
                "# TYPE musicgen_rows_in_flight gauge",
                f"musicgen_rows_in_flight {in_flight}",
                "# HELP musicgen_batches_total generate() calls by batch size (rows).",
                "# TYPE musicgen_batches_total counter",
                *(f'musicgen_batches_total{{size="{s}"}} {n}' for s, n in sorted(self.batch_sizes.items())),
                "# HELP musicgen_steps_total Decoder steps run (one step serves every row of its batch).",
                "# TYPE musicgen_steps_total counter",
                f"musicgen_steps_total {self.steps}",
                "# HELP musicgen_busy_seconds_total Seconds the worker spent generating.",
                "# TYPE musicgen_busy_seconds_total counter",
                f"musicgen_busy_seconds_total {self.busy_s:.3f}",
                "# HELP musicgen_steps_per_second Decoder steps per second of the last batch.",
                "# TYPE musicgen_steps_per_second gauge",
                f"musicgen_steps_per_second {self.last_steps_per_s:.2f}",
                "# HELP musicgen_audio_seconds_total Seconds of audio generated (all rows).",
                "# TYPE musicgen_audio_seconds_total counter",
                f"musicgen_audio_seconds_total {self.audio_s:.3f}",
                "# HELP musicgen_cancelled_rows_total Rows whose client left before their audio was complete.",
                "# TYPE musicgen_cancelled_rows_total counter",
                f"musicgen_cancelled_rows_total {self.cancelled_rows}",
                "# HELP musicgen_freed_rows_total Rows dropped from a running batch when their client left (the "
                "batch went on without them).",
                "# TYPE musicgen_freed_rows_total counter",
                f"musicgen_freed_rows_total {self.freed_rows}",
                "# HELP musicgen_stopped_batches_total Batches stopped early because every client had left.",
                "# TYPE musicgen_stopped_batches_total counter",
                f"musicgen_stopped_batches_total {self.stopped_batches}",
            ]
        return "\n".join(lines) + "\n"
