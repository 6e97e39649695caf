"""EnCodec through ONNX: codes -> waveform (and waveform -> codes for continuation)."""

from __future__ import annotations

import numpy as np


class AudioCodec:
    def __init__(self, decoder_session, encoder_session, num_codebooks: int, audio_channels: int):
        self.decoder = decoder_session
        self.encoder = encoder_session
        self.num_codebooks = num_codebooks
        self.channels = audio_channels

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """``codes [B, K, T]`` -> float32 ``[B, channels, T * hop]``. Stereo codebooks are interleaved
        ``[L0, R0, L1, R1, ...]`` (spec 4.4): each side is decoded by the mono codec, in one batch."""
        b = codes.shape[0]
        if self.channels == 2:
            codes = np.concatenate([codes[:, 0::2], codes[:, 1::2]], axis=0)  # [2B, K/2, T]
        audio = self.decoder.run(["audio_values"], {"audio_codes": np.ascontiguousarray(codes, dtype=np.int64)})[0]
        if self.channels == 2:
            audio = np.concatenate([audio[:b], audio[b:]], axis=1)
        return audio.astype(np.float32, copy=False)

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """float32 ``[B, channels, samples]`` -> codes ``[B, K, ceil(samples / hop)]`` (stereo interleaved)."""
        b, c, _ = audio.shape
        if self.channels == 2 and c == 1:
            audio = np.concatenate([audio, audio], axis=1)
        flat = audio.reshape(b * self.channels, 1, -1) if self.channels == 2 else audio[:, :1]
        codes = self.encoder.run(["audio_codes"], {"audio_values": np.ascontiguousarray(flat, dtype=np.float32)})[0]
        if self.channels == 2:
            codes = codes.reshape(b, 2, codes.shape[1], codes.shape[2]).transpose(0, 2, 1, 3).reshape(b, -1, codes.shape[2])
        return codes
