"""One worker thread owns the model and runs queued requests in batches.

Why batching: one decoder step over B rows costs far less than B steps over one row (see
``musicgen-onnx bench --batch``). Requests with the same :class:`~.params.BatchKey` are taken together,
oldest first, up to ``max_batch``, waiting at most ``max_wait_ms`` after the oldest arrived; per-row
seeds make each row's audio what it would be alone. Results go back to the asyncio loop of the
request that asked (``call_soon_threadsafe``); the worker never touches sockets. A client that leaves
gives up its place in the queue, or its row in the running batch (the runtime's ``LiveRows``: the
batch goes on without it at the next step, its mates' audio unchanged).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np

from ..runtime.errors import MusicGenError
from ..runtime.rows import LiveRows
from ..runtime.session import release_freed_memory
from .metrics import Metrics
from .params import Spec
from .settings import STREAM_CHUNK_FRAMES, ServeSettings

logger = logging.getLogger(__name__)

END = object()  # the end of a streamed job's chunks


class QueueFull(Exception):
    """More requests waiting than ``max_queue``: the client should retry later (HTTP 503)."""


class Draining(Exception):
    """The server is shutting down and takes no new work (HTTP 503)."""


class Job:
    """One request's row: its spec, where its result goes, and whether its client is still there."""

    def __init__(self, spec: Spec, loop: asyncio.AbstractEventLoop):
        self.spec = spec
        self.loop = loop
        self.future = loop.create_future()
        self.chunks: asyncio.Queue | None = asyncio.Queue() if spec.key.stream else None
        self.enqueued = time.monotonic()
        self.cancelled = False
        self.batch_size = 0
        self.rows: LiveRows | None = None  # set when the job joins a batch: its row is rows' row ``row``
        self.row = 0

    def _call(self, fn, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def resolve(self, value) -> None:
        self._call(_set_result, self.future, value)

    def fail(self, exc: BaseException) -> None:
        self._call(_set_exception, self.future, exc)
        if self.chunks is not None:
            self._call(self.chunks.put_nowait, exc)

    def push(self, item) -> None:
        self._call(self.chunks.put_nowait, item)


def _set_result(fut, value):
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut, exc):
    if not fut.done():
        fut.set_exception(exc)
        fut.exception()  # marked retrieved: a client that left leaves no "never retrieved" warning


class Batcher:
    def __init__(self, model, settings: ServeSettings, metrics: Metrics):
        self.model = model
        self.settings = settings
        self.metrics = metrics
        self._pending: list[Job] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._paused = False
        self._running: list[Job] = []
        self._free_since = 0.0
        self._thread = threading.Thread(target=self._run, name="musicgen-worker", daemon=True)

    # ------------------------------------------------------------ the request side
    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise Draining("the server is shutting down")
            if len(self._pending) >= self.settings.max_queue:
                raise QueueFull(f"{len(self._pending)} requests are queued (--max-queue {self.settings.max_queue})")
            self._pending.append(job)
            self._cond.notify_all()

    def cancel(self, job: Job) -> None:
        """The client left: drop the job if still queued; if running, its row leaves the batch at the
        next step (the others go on; once every row has left, the batch stops)."""
        with self._cond:
            job.cancelled = True
            if job in self._pending:
                self._pending.remove(job)
                self.metrics.cancelled(1)
            elif job.rows is not None:
                job.rows.cancel(job.row)

    def queue_length(self) -> int:
        with self._cond:
            return len(self._pending)

    def in_flight(self) -> int:
        """Rows the running batch still generates (a row whose client left is not counted once dropped)."""
        running = self._running
        return len(running[0].rows.live) if running else 0

    def pause(self) -> None:
        """Hold the worker before its next batch (tests and maintenance: fill the queue on purpose)."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new work, finish every queued job (drain), then end the worker."""
        with self._cond:
            self._stopping = True
            self._paused = False
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def working(self) -> bool:
        """The worker thread runs, or has ended only because stop() drained it (a health check: a worker
        that died otherwise leaves every request waiting)."""
        return self._thread.is_alive() or self._stopping

    @property
    def draining(self) -> bool:
        """stop() was called: new work is refused (HTTP 503; /health/ready reports it)."""
        return self._stopping

    def drained(self) -> bool:
        """Stopping, and every queued job has run (the worker has ended)."""
        return self._stopping and not self._thread.is_alive()

    # ------------------------------------------------------------ the worker
    def _run(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            self._running = jobs
            try:
                self._execute(jobs)
            except MusicGenError as exc:
                for job in jobs:
                    job.fail(exc)
            except Exception:  # a bug: keep serving, log the traceback, tell the clients one line
                logger.exception("batch of %d failed", len(jobs))
                for job in jobs:
                    job.fail(RuntimeError("internal error while generating; see the server log"))
            finally:
                self._running = []
                release_freed_memory()  # the batch's freed buffers go back to the OS: RSS stays flat between batches
                self._free_since = time.monotonic()

    def _take(self) -> list[Job] | None:
        s = self.settings
        with self._cond:
            while True:
                while not self._stopping and (self._paused or not self._pending):
                    self._cond.wait()
                if not self._pending:
                    return None  # stopping and drained
                first = self._pending[0]
                # counted from when the worker could start: a request that queued behind a running batch
                # still gives the clients of that batch the same window to send their next request
                deadline = max(first.enqueued, self._free_since) + s.max_wait_ms / 1000
                while first in self._pending:
                    mates = [j for j in self._pending if j.spec.key == first.spec.key][: s.max_batch]
                    left = deadline - time.monotonic()
                    if len(mates) >= s.max_batch or left <= 0 or self._stopping:
                        rows, now = LiveRows(len(mates)), time.monotonic()
                        for i, job in enumerate(mates):
                            self._pending.remove(job)
                            self.metrics.waited(now - job.enqueued)
                            job.batch_size, job.rows, job.row = len(mates), rows, i
                        return mates
                    self._cond.wait(left)
                # the oldest job's client left while it waited: start over with the next one

    def _execute(self, jobs: list[Job]) -> None:
        model, key = self.model, jobs[0].spec.key
        rows = jobs[0].rows
        kw = dict(options=key.options, seed=[j.spec.seed for j in jobs], rows=rows)
        steps = [0]
        kw["progress"] = lambda done, total: steps.__setitem__(0, done)
        descriptions = [j.spec.prompt for j in jobs]
        if key.melody_samples is not None:
            kw.update(melody=[j.spec.melody for j in jobs], melody_sample_rate=model.manifest.chroma.sample_rate)
        if key.kind == "continue":
            kw["prompt_codes"] = np.concatenate([model.encode_prompt(j.spec.prompt_audio, model.sample_rate)
                                                 for j in jobs])
        t0 = time.perf_counter()
        logger.info("batch of %d: %s", len(jobs), key)
        if key.stream:
            samples = self._stream(jobs, descriptions, kw)
        else:
            audio = model.generate(descriptions, **kw)
            samples = audio.shape[-1]
            for row, wav in zip(rows.live, audio):
                self.metrics.first_audio_after(time.monotonic() - jobs[row].enqueued)
                jobs[row].resolve(wav)
        freed = len(jobs) - len(rows.live)
        left_late = sum(jobs[row].cancelled for row in rows.live)  # left after their row's last step
        if freed or left_late:
            logger.info("%d of %d rows freed when their clients left%s", freed, len(jobs),
                        "" if rows.live else ": the batch stopped")
            self.metrics.cancelled(freed + left_late, freed=freed, stopped=not rows.live)
        self.metrics.batch(len(jobs), steps[0], time.perf_counter() - t0, len(rows.live) * samples / model.sample_rate)

    def _stream(self, jobs: list[Job], descriptions, kw) -> int:
        """Each chunk holds the rows still live when it was made (``rows.live``, in batch order)."""
        samples, rows = 0, kw["rows"]
        stream = self.model.generate_stream(descriptions, chunk_frames=STREAM_CHUNK_FRAMES, **kw)
        try:
            for chunk in stream:
                if not samples:
                    for row in rows.live:
                        self.metrics.first_audio_after(time.monotonic() - jobs[row].enqueued)
                samples += chunk.shape[-1]
                for row, wav in zip(rows.live, chunk):
                    if not jobs[row].cancelled:
                        jobs[row].push(wav)
        finally:
            stream.close()
        for row in rows.live:
            jobs[row].push(END)
            jobs[row].resolve(None)
        return samples
