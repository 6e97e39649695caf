"""Uploaded audio bytes -> ``(float32 [channels, samples], sample_rate)``, decoded in memory.

Why not ``runtime.audio.load_audio``: it takes a path, and no name or path from a request may reach
the filesystem. soundfile reads from a BytesIO; only the first ``max_seconds`` are decoded, and a WAV
whose data ends before its header says (a cut-off upload) is refused like the runtime refuses the file.
"""

from __future__ import annotations

import io
import math
import struct

import numpy as np

from ..runtime.audio import check_samples
from ..runtime.errors import InvalidInputError

_BLOCK = 1 << 16


def decode_audio(data: bytes, what: str, max_seconds: float) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if not data:
        raise InvalidInputError(f"{what}: the uploaded file is empty")
    _check_wav_complete(data, what)
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            sr = f.samplerate
            limit = math.ceil(max_seconds * sr)
            blocks, got = [], 0
            while got < limit:
                block = f.read(min(_BLOCK, limit - got), dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                blocks.append(block)
                got += block.shape[0]
    except InvalidInputError:
        raise
    except Exception as exc:  # LibsndfileError, RuntimeError, TypeError...: corrupt or unknown bytes
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        reason = reason.replace("Error opening <_io.BytesIO object", "").split(": ", 1)[-1]
        raise InvalidInputError(f"{what}: the upload cannot be decoded as audio ({reason})") from None
    wav = np.concatenate(blocks) if blocks else np.empty((0, 1), np.float32)
    return check_samples(wav.T, sr, what), int(sr)


def _check_wav_complete(data: bytes, what: str) -> None:
    """RIFF/WAVE only: the ``data`` chunk's declared size against the bytes present."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if cid == b"data":
            have = len(data) - pos - 8
            if size != 0xFFFFFFFF and size > have:
                raise InvalidInputError(f"{what}: the WAV upload is truncated: its header declares {size} bytes of "
                                        f"samples, {have} arrived")
            return
        pos += 8 + size + (size & 1)
