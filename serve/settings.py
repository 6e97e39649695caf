"""The service's limits in one place: what the CLI flags set and what the tests shrink."""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.errors import InvalidInputError
from ..runtime.options import MAX_BATCH, MAX_DURATION_S

MAX_JSON_BYTES = 64 * 1024
"""A JSON request is a dozen short fields and a prompt of at most 4096 characters: 64 KiB is generous."""
MAX_UPLOAD_BYTES = 16 * 1024 * 1024
"""A multipart request (melody or continuation prompt + fields): 16 MiB holds ~95 s of 44.1 kHz stereo
16-bit WAV, more than any melody or prompt the model reads (30 s window + duration)."""
STREAM_CHUNK_FRAMES = 50  # codec frames per streamed chunk: 1 s of audio at 50 frames/s


@dataclass(frozen=True)
class ServeSettings:
    max_batch: int = 8
    max_wait_ms: float = 50.0
    max_queue: int = 64
    max_duration: float = 30.0
    retry_after_s: int = 2

    def check(self) -> "ServeSettings":
        """Bounds that keep the service sane: a batch is one ``generate`` call (at most MAX_BATCH prompts), a
        wait longer than 10 s would be felt by every user, and the queue holds finished audio too."""
        def bad(name, value, rule):
            raise InvalidInputError(f"--{name.replace('_', '-')} must be {rule}, got {value!r}")

        if not isinstance(self.max_batch, int) or not 1 <= self.max_batch <= MAX_BATCH:
            bad("max_batch", self.max_batch, f"an integer in [1, {MAX_BATCH}]")
        if not 0 <= self.max_wait_ms <= 10_000:
            bad("max_wait_ms", self.max_wait_ms, "in [0, 10000] ms")
        if not isinstance(self.max_queue, int) or not 1 <= self.max_queue <= 10_000:
            bad("max_queue", self.max_queue, "an integer in [1, 10000]")
        if not 0 < self.max_duration <= MAX_DURATION_S:
            bad("max_duration", self.max_duration, f"in (0, {MAX_DURATION_S:g}] seconds")
        return self
