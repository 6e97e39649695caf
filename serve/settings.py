"""The service's limits in one place: what the CLI flags set and what the tests shrink."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..runtime.errors import InvalidInputError
from ..runtime.options import MAX_BATCH, MAX_DURATION_S

MAX_JSON_BYTES = 64 * 1024
"""A JSON request is a dozen short fields and a prompt of at most 4096 characters: 64 KiB is generous."""
MAX_UPLOAD_BYTES = 16 * 1024 * 1024
"""A multipart request (melody or continuation prompt + fields): 16 MiB holds ~95 s of 44.1 kHz stereo
16-bit WAV, more than any melody or prompt the model reads (30 s window + duration)."""
STREAM_CHUNK_FRAMES = 50  # codec frames per streamed chunk: 1 s of audio at 50 frames/s


def refuse_flag(name: str, value, rule: str):
    """A serve flag out of its range, in one wording for every check (the service's and the server's):
    ``name`` is the option's name with underscores, as the CLI spells it with dashes."""
    raise InvalidInputError(f"--{name.replace('_', '-')} must be {rule}, got {value!r}")


@dataclass(frozen=True)
class ServeSettings:
    max_batch: int = 8
    max_wait_ms: float = 50.0
    max_queue: int = 64
    max_duration: float = 30.0
    retry_after_s: int = 2
    # what a slow or stalled client may hold (issue 24): a body that takes longer to arrive gets 408; a
    # stream whose client accepts no bytes for stream_stall_s, or leaves stream_buffer_bytes of audio
    # unread, is dropped and its row freed like a client that left
    body_timeout_s: float = 30.0
    stream_stall_s: float = 30.0
    stream_buffer_bytes: int = 8 * 1024 * 1024
    # access: a bearer key for /v1/* and /metrics (None: open), browser origins allowed by CORS
    api_key: str | None = field(default=None, repr=False)
    cors_origins: tuple[str, ...] = ()

    def check(self) -> "ServeSettings":
        """Bounds that keep the service sane: a batch is one ``generate`` call (at most MAX_BATCH prompts), a
        wait longer than 10 s would be felt by every user, and the queue holds finished audio too."""
        bad = refuse_flag
        if not isinstance(self.max_batch, int) or not 1 <= self.max_batch <= MAX_BATCH:
            bad("max_batch", self.max_batch, f"an integer in [1, {MAX_BATCH}]")
        if not 0 <= self.max_wait_ms <= 10_000:
            bad("max_wait_ms", self.max_wait_ms, "in [0, 10000] ms")
        if not isinstance(self.max_queue, int) or not 1 <= self.max_queue <= 10_000:
            bad("max_queue", self.max_queue, "an integer in [1, 10000]")
        if not 0 < self.max_duration <= MAX_DURATION_S:
            bad("max_duration", self.max_duration, f"in (0, {MAX_DURATION_S:g}] seconds")
        if not 0 < self.body_timeout_s <= 3600:
            bad("body_timeout", self.body_timeout_s, "in (0, 3600] seconds")
        if not 0 < self.stream_stall_s <= 3600:
            bad("stream_stall_timeout", self.stream_stall_s, "in (0, 3600] seconds")
        if not isinstance(self.stream_buffer_bytes, int) or not 64 * 1024 <= self.stream_buffer_bytes <= 1 << 30:
            bad("stream_buffer_bytes", self.stream_buffer_bytes, "an integer in [65536, 2**30]")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not 16 <= len(self.api_key) <= 512
                                         or not self.api_key.isprintable() or " " in self.api_key):
            raise InvalidInputError("--api-key must be 16 to 512 printable characters without spaces")
        for origin in self.cors_origins:
            if origin != "*" and not (origin.startswith(("http://", "https://")) and "/" not in origin.split("//", 1)[1]):
                bad("cors_origin", origin, "'*' or an origin such as https://example.com (scheme and host, no path)")
        return self
