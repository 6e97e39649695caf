"""``POST /v1/stems``: an uploaded song -> its four Demucs stems, as JSON with one base64 WAV per source.

Why JSON and not a zip: the page plays each stem in its own <audio> element, and a browser decodes
base64 without a zip reader (no external script may be loaded). The separation is the ``stems``
command's (:meth:`StemSeparator.track_blocks`), one request at a time, as 16-bit WAV (clipped to
full scale; the CLI writes float WAV, four times the bytes to send as base64): a track's segments already
use every thread onnxruntime has, and two at once would only double the memory.
"""

from __future__ import annotations

import base64
import threading

import numpy as np

from ..runtime import audio as audio_io
from ..runtime.errors import InvalidInputError
from .uploads import decode_audio


MAX_PENDING = 4
"""Separations running or waiting at once; more get 503. A waiting request holds one of the server's
worker threads (shared with every route's decoding and encoding) and its decoded audio: without a bound,
forty stems uploads left nothing for /v1/generate."""


class StemsBusy(Exception):
    """MAX_PENDING separations are already running or waiting."""


class StemsService:
    def __init__(self, separator, max_seconds: float, max_pending: int = MAX_PENDING):
        self.separator = separator
        self.max_seconds = max_seconds
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._pending = 0
        self._count = threading.Lock()

    def facts(self) -> dict:
        p = self.separator.params
        return {"sources": list(p.sources), "sample_rate": p.sample_rate, "channels": p.audio_channels,
                "max_duration_s": self.max_seconds}

    def separate(self, data: bytes, seed: int | None) -> dict:
        """Blocking (run it in a worker thread). ``seed`` picks Demucs's random shift, as ``stems --seed``.
        Raises StemsBusy, before decoding, when ``max_pending`` separations are running or waiting."""
        with self._count:
            if self._pending >= self.max_pending:
                raise StemsBusy(f"{self._pending} separations are running or waiting")
            self._pending += 1
        try:
            return self._separate(data, seed)
        finally:
            with self._count:
                self._pending -= 1

    def _separate(self, data: bytes, seed: int | None) -> dict:
        wav, sr = decode_audio(data, "audio", self.max_seconds + 1.0)
        if wav.shape[1] > self.max_seconds * sr:
            raise InvalidInputError(f"audio: {wav.shape[1] / sr:.3g} s or more, but this server separates at most "
                                    f"{self.max_seconds:g} s (--max-duration)")
        p = self.separator.params
        with self._lock:
            blocks = list(self.separator.track_blocks(wav, sr, "audio", seed))
        stems = np.concatenate(blocks, axis=-1) if blocks else np.zeros((len(p.sources), p.audio_channels, 0))
        wavs = {name: audio_io.encode_audio(np.clip(stem, -1, 1), p.sample_rate, "wav")
                for name, stem in zip(p.sources, stems)}
        return {**self.facts(), "seconds": stems.shape[-1] / p.sample_rate,
                "stems": {name: base64.b64encode(wav).decode("ascii") for name, wav in wavs.items()}}
