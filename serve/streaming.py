"""``stream=true`` responses: a WAV of unknown length sent as it is generated, with what a client that
stops reading may hold bounded.

Why bounded: the worker makes chunks at its own pace and a socket whose client stopped reading accepts
none, so an unread stream kept every chunk until its client left (issue 24: four unread 250 s streams
took the RSS from 83 to 340 MB). A stream whose unread audio passes ``stream_buffer_bytes``, or whose
client accepts no bytes for ``stream_stall_s``, is dropped: its row is freed like a client that left and
its connection closed.
"""

from __future__ import annotations

import asyncio
import logging
import struct

import numpy as np
from starlette.responses import StreamingResponse

from .batcher import END

logger = logging.getLogger(__name__)

DROPPED = object()  # the buffer overflowed: the stream ends here


class StreamBuffer(asyncio.Queue):
    """The job's chunk queue, counting the 16-bit bytes it holds; past ``limit`` it empties itself, keeps
    only DROPPED and calls ``on_overflow`` (on the event loop: the worker's puts arrive through
    ``call_soon_threadsafe``)."""

    def __init__(self, limit: int, on_overflow):
        super().__init__()
        self.limit, self.on_overflow = limit, on_overflow
        self.held = 0
        self.dropped = False

    def put_nowait(self, item) -> None:
        if self.dropped:
            return
        if isinstance(item, np.ndarray):
            size = item.size * 2
            if self.held + size > self.limit:
                self.dropped = True
                while not self.empty():
                    super().get_nowait()
                self.held = 0
                super().put_nowait(DROPPED)
                self.on_overflow()
                return
            self.held += size
        super().put_nowait(item)

    def get_nowait(self):
        item = super().get_nowait()
        if isinstance(item, np.ndarray):
            self.held -= item.size * 2
        return item


class AudioStream(StreamingResponse):
    """Sends the job's chunks as 16-bit PCM after a streaming WAV header; each send must complete within
    ``stall_s`` (the client reads) or the stream is dropped. Whatever ends the stream early cancels the
    job (``cancel``): a queued job leaves the queue, a running row leaves its batch."""

    def __init__(self, job, cancel, sample_rate: int, channels: int, stall_s: float, headers: dict):
        super().__init__(iter(()), media_type="audio/wav", headers=headers)
        self.job, self.cancel, self.stall_s = job, cancel, stall_s
        self.header = wav_stream_header(sample_rate, channels)

    async def stream_response(self, send) -> None:
        finished = False
        try:
            await self._send(send, {"type": "http.response.start", "status": self.status_code,
                                    "headers": self.raw_headers})
            await self._send(send, {"type": "http.response.body", "body": self.header, "more_body": True})
            while True:
                item = await self.job.chunks.get()
                if item is END:
                    finished = True
                    await self._send(send, {"type": "http.response.body", "body": b"", "more_body": False})
                    return
                if item is DROPPED:
                    logger.warning("stream dropped: its client left over %d bytes of audio unread",
                                   self.job.chunks.limit)
                    return  # the response stays incomplete: the server closes the connection
                if isinstance(item, BaseException):  # too late for a status code: the stream ends short
                    logger.warning("stream ended by an error: %s", item)
                    finished = True
                    return
                await self._send(send, {"type": "http.response.body", "body": pcm16(item), "more_body": True})
        except _Stalled:
            logger.warning("stream dropped: its client accepted no bytes for %g s", self.stall_s)
        finally:
            if not finished:
                self.cancel(self.job)

    async def _send(self, send, message) -> None:
        try:
            await asyncio.wait_for(send(message), self.stall_s)
        except TimeoutError:
            raise _Stalled() from None


class _Stalled(Exception):
    pass


def wav_stream_header(sample_rate: int, channels: int) -> bytes:
    """44-byte PCM16 WAV header whose sizes are 0xFFFFFFFF: 'length unknown' for players and soundfile."""
    block = 2 * channels
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, channels,
            sample_rate, sample_rate * block, block, 16) + b"data" + struct.pack("<I", 0xFFFFFFFF))


def pcm16(wav: np.ndarray) -> bytes:
    """``[channels, samples]`` float -> interleaved little-endian 16-bit PCM (clipped, as the WAV writer)."""
    return (np.clip(wav.T, -1.0, 1.0) * 32767).round().astype("<i2").tobytes()
