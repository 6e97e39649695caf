"""Finished streamed results, kept a short while so the page can offer the normalised file.

Why: a stream sends 16-bit PCM before the clip is complete, so it cannot be loudness-normalised (the
gain needs the whole clip) and sounds ~10 dB quieter than the CLI's file or a non-streamed response.
Generating again would cost the whole request twice, and a second loudness implementation in the
page would drift from the runtime's. Instead the float chunks a stream sends are kept, and when the
stream ends they are normalised and encoded exactly as a non-streamed response
(:func:`app._encode`), stored under the id the stream's ``X-Result-Id`` header announced, and served
by ``GET /v1/results/{id}``. The store is bounded in count, bytes and age; ids are unguessable.

The chunks are the stream decoder's, which equal the one-shot decode within float rounding, so the
kept file matches a non-streamed response for the same request and seed in loudness and in all but
~0.1% of its 16-bit samples, those one step apart (measured on the bundled model). Byte equality
would need the whole clip decoded again in one call after the stream (EnCodec on the full-size model:
~15 s per 10 s of audio on CPU, README "Streaming"), a cost not worth one inaudible step.
"""

from __future__ import annotations

import collections
import secrets
import threading
import time
from typing import Callable

import numpy as np
from starlette.concurrency import run_in_threadpool

from .streaming import StreamBuffer

MAX_RESULTS = 32
"""Results kept at once: one page visit's list is a handful; older ones are dropped first."""
MAX_RESULT_BYTES = 256 * 1024 * 1024
"""All kept results together (30 s of 32 kHz mono 16-bit WAV is ~1.9 MB; stereo 48 kHz ~5.8 MB)."""
RESULT_TTL_S = 15 * 60
"""How long a result can be fetched after its stream ended: the page fetches it at once."""


class ResultStore:
    """Encoded files by id, oldest dropped first when over count or bytes; expired ones on access."""

    def __init__(self, max_count: int = MAX_RESULTS, max_bytes: int = MAX_RESULT_BYTES, ttl_s: float = RESULT_TTL_S):
        self.max_count, self.max_bytes, self.ttl_s = max_count, max_bytes, ttl_s
        self._items: collections.OrderedDict[str, tuple[float, bytes, str]] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(16)

    def put(self, result_id: str, body: bytes, media_type: str) -> None:
        if len(body) > self.max_bytes:
            return  # could never fit: not kept (the stream itself was still complete)
        with self._lock:
            self._items[result_id] = (time.monotonic(), body, media_type)
            self._bytes += len(body)
            while len(self._items) > self.max_count or self._bytes > self.max_bytes:
                self._drop_oldest()

    def get(self, result_id: str) -> tuple[bytes, str] | None:
        with self._lock:
            now = time.monotonic()
            while self._items and now - next(iter(self._items.values()))[0] > self.ttl_s:
                self._drop_oldest()
            item = self._items.get(result_id)
        return None if item is None else item[1:]

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def _drop_oldest(self) -> None:
        _, (_, body, _) = self._items.popitem(last=False)
        self._bytes -= len(body)


class KeptStream(StreamBuffer):
    """A streamed job's chunk queue (bounded while unread, as every stream's) that also keeps the float
    chunks it hands out; when the stream's end marker is taken, the whole clip is encoded (in a worker
    thread) and stored before the marker is returned, so the result exists by the time the client sees
    the stream close. A stream that ends by an error, overflows or is abandoned keeps nothing."""

    def __init__(self, limit: int, on_overflow, store: ResultStore, result_id: str, end,
                 encode: Callable[[np.ndarray], tuple[bytes, str]]):
        super().__init__(limit, on_overflow)
        self.store, self.result_id, self.end, self.encode = store, result_id, end, encode
        self._chunks: list[np.ndarray] = []

    async def get(self):
        item = await super().get()
        if isinstance(item, np.ndarray):
            self._chunks.append(item)
        elif item is self.end and self._chunks:
            wav = np.concatenate(self._chunks, axis=-1)
            self._chunks = []
            body, media_type = await run_in_threadpool(self.encode, wav)
            self.store.put(self.result_id, body, media_type)
        elif isinstance(item, BaseException):
            self._chunks = []
        return item
