"""``GET /metrics`` in Prometheus' text format (no client library: the format is a few lines).

Why samples and not text: under Ray Serve each replica counts its own requests, and a scrape reaches
one replica at random (a counter read 200, 184, 200: false resets). Each replica's :meth:`Metrics.samples`
carries a ``replica`` label, and :func:`render` merges the samples of every replica into one family
each (serve/ray_app.py gathers them), so every scrape shows every replica's monotone series.
"""

from __future__ import annotations

import os
import platform
import resource
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Seconds: from a tiny model's 50 ms to a full-size model's minutes on a CPU."""
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    """Cumulative buckets, sum and count, as Prometheus reads them."""

    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def samples(self, name: str, labels: dict) -> list[tuple[str, dict, float]]:
        out = [(f"{name}_bucket", {**labels, "le": _number(b)}, n) for b, n in zip(self.buckets, self.counts)]
        out.append((f"{name}_bucket", {**labels, "le": "+Inf"}, self.count))
        out += [(f"{name}_sum", labels, round(self.sum, 6)), (f"{name}_count", labels, self.count)]
        return out


@dataclass
class Family:
    """One metric: its samples are (sample name, labels, value); a histogram's have the suffixes."""
    name: str
    kind: str
    help: str
    samples: list = field(default_factory=list)


class Metrics:
    def __init__(self, info: dict | None = None, labels: dict | None = None):
        """``info``: the model's facts for ``musicgen_model_info``; ``labels``: added to every series
        (``replica`` under Ray Serve)."""
        self._lock = threading.Lock()
        self.info = {k: str(v) for k, v in (info or {}).items()}
        self.labels = dict(labels or {})
        self.requests: Counter = Counter()  # (route, status) -> count
        self.batch_sizes: Counter = Counter()  # rows per generate() call -> count
        self.latency = {}  # route -> Histogram of request seconds (arrival to the response's last byte)
        self.queue_wait = Histogram(LATENCY_BUCKETS)
        self.first_audio = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
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

    def request_done(self, route: str, seconds: float) -> None:
        with self._lock:
            self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def waited(self, seconds: float) -> None:
        """A job left the queue for a batch ``seconds`` after it arrived."""
        with self._lock:
            self.queue_wait.observe(seconds)

    def first_audio_after(self, seconds: float) -> None:
        """A job's first audio (a stream's first chunk, or the whole clip) was ready ``seconds`` after it
        arrived."""
        with self._lock:
            self.first_audio.observe(seconds)

    def batch(self, size: int, steps: int, seconds: float, audio_s: float) -> None:
        with self._lock:
            self.batch_sizes[size] += 1
            self.batch_size.observe(size)
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

    def families(self, queue_length: int, in_flight: int) -> list[Family]:
        """This process's metrics, every series labelled with ``labels``."""
        L = self.labels

        def one(name, kind, help_, value, **extra):
            return Family(name, kind, help_, [(name, {**L, **extra}, value)])

        with self._lock:
            out = [
                Family("musicgen_requests_total", "counter", "HTTP requests by route and status.",
                       [("musicgen_requests_total", {**L, "route": r, "status": str(s)}, n)
                        for (r, s), n in sorted(self.requests.items())]),
                Family("musicgen_request_seconds", "histogram", "Seconds from a request's arrival to its "
                       "response's last byte, by route (/v1/* only).",
                       [s for r, h in sorted(self.latency.items()) for s in h.samples(
                           "musicgen_request_seconds", {**L, "route": r})]),
                Family("musicgen_queue_wait_seconds", "histogram", "Seconds a request waited before its batch "
                       "started.", self.queue_wait.samples("musicgen_queue_wait_seconds", L)),
                Family("musicgen_time_to_first_audio_seconds", "histogram", "Seconds from a request's arrival "
                       "to its first audio: a stream's first chunk, or the whole clip when not streaming.",
                       self.first_audio.samples("musicgen_time_to_first_audio_seconds", L)),
                Family("musicgen_batch_size", "histogram", "Rows per generate() call.",
                       self.batch_size.samples("musicgen_batch_size", L)),
                one("musicgen_queue_length", "gauge", "Requests waiting for the model.", queue_length),
                one("musicgen_rows_in_flight", "gauge", "Rows in the generate() call now running.", in_flight),
                Family("musicgen_batches_total", "counter", "generate() calls by batch size (rows).",
                       [("musicgen_batches_total", {**L, "size": str(s)}, n)
                        for s, n in sorted(self.batch_sizes.items())]),
                one("musicgen_steps_total", "counter", "Decoder steps run (one step serves every row of its "
                    "batch).", self.steps),
                one("musicgen_busy_seconds_total", "counter", "Seconds the worker spent generating.",
                    round(self.busy_s, 3)),
                one("musicgen_steps_per_second", "gauge", "Decoder steps per second of the last batch.",
                    round(self.last_steps_per_s, 2)),
                one("musicgen_audio_seconds_total", "counter", "Seconds of audio generated (all rows).",
                    round(self.audio_s, 3)),
                one("musicgen_cancelled_rows_total", "counter", "Rows whose client left before their audio "
                    "was complete.", self.cancelled_rows),
                one("musicgen_freed_rows_total", "counter", "Rows dropped from a running batch when their "
                    "client left (the batch went on without them).", self.freed_rows),
                one("musicgen_stopped_batches_total", "counter", "Batches stopped early because every client "
                    "had left.", self.stopped_batches),
            ]
        out += [
            one("musicgen_build_info", "gauge", "This build: package, Python and onnxruntime versions.", 1,
                **build_info()),
            one("musicgen_model_info", "gauge", "The model served (manifest facts).", 1, **self.info),
            *process_families(L, self.started),
        ]
        return out

    def render(self, queue_length: int, in_flight: int) -> str:
        return render([self.families(queue_length, in_flight)])


def build_info() -> dict:
    from .. import __version__

    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:  # pragma: no cover - the runtime needs it; metrics must not
        ort = "none"
    return {"version": __version__, "python": platform.python_version(), "onnxruntime": ort}


def process_families(labels: dict, started: float) -> list[Family]:
    """The standard ``process_*`` metrics of Prometheus' client libraries, from /proc and getrusage."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = [Family("process_cpu_seconds_total", "counter", "User and system CPU seconds.",
                  [("process_cpu_seconds_total", labels, round(usage.ru_utime + usage.ru_stime, 3))]),
           Family("process_start_time_seconds", "gauge", "Start time of the process, Unix seconds.",
                  [("process_start_time_seconds", labels, round(started, 3))])]
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        out.append(Family("process_resident_memory_bytes", "gauge", "Resident memory in bytes.",
                          [("process_resident_memory_bytes", labels, rss)]))
        out.append(Family("process_open_fds", "gauge", "Open file descriptors.",
                          [("process_open_fds", labels, len(os.listdir("/proc/self/fd")))]))
    except (OSError, ValueError, IndexError):  # not Linux: the two that need /proc are left out
        pass
    return out


def render(replicas: list[list[Family]]) -> str:
    """The text format for the families of one or more processes: each family's HELP and TYPE once,
    then every process's samples (they differ by their ``replica`` label)."""
    merged: dict[str, Family] = {}
    for families in replicas:
        for fam in families:
            merged.setdefault(fam.name, Family(fam.name, fam.kind, fam.help)).samples.extend(fam.samples)
    lines = []
    for fam in merged.values():
        lines += [f"# HELP {fam.name} {fam.help}", f"# TYPE {fam.name} {fam.kind}"]
        lines += [f"{name}{_labels(labels)} {_number(value)}" for name, labels, value in fam.samples]
    return "\n".join(lines) + "\n"


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    escaped = (str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for v in labels.values())
    return "{" + ",".join(f'{k}="{v}"' for k, v in zip(labels, escaped)) + "}"


def _number(value) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))
