"""EnCodec through ONNX: codes -> waveform (and waveform -> codes for continuation)."""

from __future__ import annotations

import numpy as np

from . import roles


class AudioCodec:
    """The encoder graph is optional and opened on first use: only continuation needs it, and loading
    it up front would cost every generation its memory (~160 MB for the 32 kHz codec)."""

    def __init__(self, graphs, manifest):
        self.graphs = graphs
        self.num_codebooks = manifest.num_codebooks
        self.channels = manifest.audio_channels
        self.lookahead = manifest.stream_lookahead
        dec = manifest.graphs["audio_decoder"]
        self._decode_io = dec.name(roles.AUDIO_CODES), dec.name(roles.AUDIO_VALUES)
        enc = manifest.graphs.get("audio_encoder")
        self._encode_io = (enc.name(roles.AUDIO_VALUES), enc.name(roles.AUDIO_CODES)) if enc else None
        self.decoder = graphs["audio_decoder"]

    @property
    def can_encode(self) -> bool:
        return self._encode_io is not None

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """``codes [B, K, T]`` -> float32 ``[B, channels, T * hop]``. Stereo codebooks are interleaved
        ``[L0, R0, L1, R1, ...]`` (audiocraft ``InterleaveStereoCompressionModel``): each side is decoded by the mono codec, in one batch."""
        b = codes.shape[0]
        if self.channels == 2:
            codes = np.concatenate([codes[:, 0::2], codes[:, 1::2]], axis=0)  # [2B, K/2, T]
        codes_name, audio_name = self._decode_io
        audio = self.decoder.run([audio_name], {codes_name: np.ascontiguousarray(codes, dtype=np.int64)})[0]
        if self.channels == 2:
            audio = np.concatenate([audio[:b], audio[b:]], axis=1)
        return audio.astype(np.float32, copy=False)

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """float32 ``[B, channels, samples]`` with the model's channel count (``MusicGen.encode_prompt``
        converts) -> codes ``[B, K, ceil(samples / hop)]`` (stereo interleaved)."""
        b = audio.shape[0]
        flat = audio.reshape(b * self.channels, 1, -1) if self.channels == 2 else audio[:, :1]
        audio_name, codes_name = self._encode_io
        codes = self.graphs["audio_encoder"].run([codes_name], {audio_name: np.ascontiguousarray(flat, dtype=np.float32)})[0]
        if self.channels == 2:
            codes = codes.reshape(b, 2, codes.shape[1], codes.shape[2]).transpose(0, 2, 1, 3).reshape(b, -1, codes.shape[2])
        return codes


FIRST_CHUNK_FRAMES = 10
"""Frames (0.2 s at 50 frames/s) in a stream's first chunk: it waits for these plus the decoder's
lookahead, where a full chunk would wait for 50 (README "Streaming", time to first audio)."""


class StreamDecoder:
    """Decodes codes as they arrive, span by span, for streaming.

    EnCodec's decoder LSTMs run forward only, but carry state from the very first frame, and its
    convolutions look a few frames ahead. Each span is therefore decoded with ``left_context`` frames of
    history (to warm the LSTMs and the convolutions up) and held back until ``lookahead`` frames past it
    are known: by default the folder's measured look-ahead (``Manifest.stream_lookahead``). Only those
    frames are kept in memory, so memory does not grow with the output.
    """

    def __init__(self, codec: AudioCodec, left_context: int = 50, lookahead: int | None = None):
        self.codec = codec
        self.left_context = left_context
        self.lookahead = codec.lookahead if lookahead is None else lookahead
        self._codes: np.ndarray | None = None  # frames [self._first, available)
        self._first = 0
        self._emitted = 0

    def push(self, codes: np.ndarray) -> None:
        self._codes = codes if self._codes is None else np.concatenate([self._codes, codes], axis=2)

    def keep_rows(self, index: np.ndarray) -> None:
        """Decode rows ``index`` only from now on (the others were dropped from the batch)."""
        if self._codes is not None:
            self._codes = self._codes[index]

    @property
    def available(self) -> int:
        return self._first + (0 if self._codes is None else self._codes.shape[2])

    def ready(self) -> np.ndarray:
        """Audio for every frame that has ``lookahead`` frames after it; possibly empty."""
        return self._emit(self.available - self.lookahead)

    def flush(self) -> np.ndarray:
        """Audio for all remaining frames (the end of the stream)."""
        return self._emit(self.available)

    def _emit(self, stop: int) -> np.ndarray:
        if self._codes is None or stop <= self._emitted:
            b = 0 if self._codes is None else self._codes.shape[0]
            return np.zeros((b, self.codec.channels, 0), dtype=np.float32)
        begin = max(self._first, self._emitted - self.left_context)
        audio = self.codec.decode(self._codes[:, :, begin - self._first:])
        hop = audio.shape[2] // (self.available - begin)
        out = audio[:, :, (self._emitted - begin) * hop:(stop - begin) * hop]
        self._emitted = stop
        keep_from = max(self._first, stop - self.left_context)  # drop what no later span needs
        self._codes = self._codes[:, :, keep_from - self._first:]
        self._first = keep_from
        return out
