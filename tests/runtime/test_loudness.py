"""Loudness: our meter is audiocraft's (torchaudio's); normalised output hits -14 LUFS by pyloudnorm."""

from __future__ import annotations

import numpy as np
import pyloudnorm
import pytest

from musicgen_onnx.runtime.audio import normalize
from musicgen_onnx.runtime.loudness import integrated_loudness


def _music_like(sr, seconds=6.0, seed=0, channels=1):
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    out = []
    for c in range(channels):
        x = sum(0.2 / (i + 1) * np.sin(2 * np.pi * f * t + c) for i, f in enumerate([110, 220, 330, 660, 1320]))
        env = 0.5 + 0.5 * np.sin(2 * np.pi * 0.5 * t) ** 2
        out.append((x * env + 0.02 * rng.standard_normal(t.shape)).astype(np.float32))
    return np.stack(out)


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", [32000, 48000])
def test_meter_agrees_with_pyloudnorm_within_k_filter_approximation(sr, channels):
    wav = _music_like(sr, channels=channels) * 0.5
    ours = integrated_loudness(wav, sr)
    theirs = pyloudnorm.Meter(sr).integrated_loudness(wav.T.astype(np.float64))
    assert abs(ours - theirs) < 0.1  # RBJ biquads at the signal's rate vs BS.1770 table (torchaudio's approximation)


def test_997hz_sine_reads_the_spec_value():
    t = np.arange(32000 * 5) / 32000
    wav = (0.5 * np.sin(2 * np.pi * 997 * t))[None]
    assert integrated_loudness(wav, 32000) == pytest.approx(-9.08, abs=0.01)  # a numpy port of torchaudio's meter reads -9.08


def test_gates_silence_and_short_audio():
    assert integrated_loudness(np.zeros((1, 32000)), 32000) == float("-inf")
    assert np.isnan(integrated_loudness(np.ones((1, 1000)) * 0.1, 32000))


@pytest.mark.parametrize("channels", [1, 2])
def test_loudness_normalisation_hits_minus_14_lufs(channels):
    wav = _music_like(32000, seconds=8, channels=channels) * 0.05
    out = normalize(wav, 32000, "loudness")
    measured = pyloudnorm.Meter(32000).integrated_loudness(out.T.astype(np.float64))
    assert measured == pytest.approx(-14.0, abs=0.1)


def test_peak_and_none_strategies():
    wav = _music_like(32000) * 0.1
    peak = normalize(wav, 32000, "peak")
    assert np.max(np.abs(peak)) == pytest.approx(10 ** (-1 / 20), rel=1e-5)
    np.testing.assert_array_equal(normalize(wav * 10, 32000, "none"), np.clip(wav * 10, -1, 1))
    quiet = wav * 1e-4  # below audiocraft's rms floor: left untouched
    np.testing.assert_array_equal(normalize(quiet, 32000, "loudness"), quiet)
