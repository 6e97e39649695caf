"""Uploaded audio bytes -> ``(float32 [channels, samples], sample_rate)``, decoded in memory by the
runtime's own reader (``runtime.audio.decode_audio_bytes``: header checked before decoding, truncated
WAV/AIFF refused, only the first ``max_seconds`` decoded); no name or path from a request reaches the
filesystem."""

from __future__ import annotations

import numpy as np

from ..runtime.audio import decode_audio_bytes

MAX_UPLOAD_DECODED_BYTES = 64 << 20
"""Most float32 bytes one upload may decode to. Uploads are limited in bytes, but a 344 KB FLAC of
silence can declare minutes of 8-channel audio: this bounds what a request costs once decoded
(61 s of stereo at 96 kHz is 47 MiB)."""


def decode_audio(data: bytes, what: str, max_seconds: float) -> tuple[np.ndarray, int]:
    return decode_audio_bytes(data, what, max_seconds, MAX_UPLOAD_DECODED_BYTES)
