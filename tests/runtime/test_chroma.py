"""Numpy chroma == the transformers feature extraction; tones land in their bins; any rate/channels."""

from __future__ import annotations

import numpy as np
import pytest

from musicgen_onnx.runtime.audio import resample, to_mono
from musicgen_onnx.runtime.chroma import batch_chroma, chroma_filter_bank, chroma_onehot
from musicgen_onnx.runtime.manifest import ChromaParams

P = ChromaParams()
NOTES = {"C": 261.63, "C#": 277.18, "D": 293.66, "E": 329.63, "F": 349.23, "G": 392.0, "A": 440.0, "B": 493.88}
BIN = {"C": 0, "C#": 1, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def tone(freq, seconds, sr=32000, amp=0.5):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.export  # needs the onnx / transformers packages of the export extra
def test_filter_bank_equals_transformers():
    from transformers.audio_utils import chroma_filter_bank as hf

    want = hf(sampling_rate=32000, num_frequency_bins=16384, tuning=0, num_chroma=12)
    np.testing.assert_allclose(chroma_filter_bank(32000, 16384), want, atol=1e-6)


@pytest.mark.export
@pytest.mark.parametrize("kind", ["tones", "noise", "chords", "short", "silence-inside", "batch-unequal"])
def test_onehot_equals_transformers_extractor(kind):
    from musicgen_onnx.export import reference

    rng = np.random.default_rng(3)
    if kind == "tones":
        wavs = [np.concatenate([tone(f, 0.7) for f in NOTES.values()])]
    elif kind == "noise":
        wavs = [(0.2 * rng.standard_normal(32000 * 4)).astype(np.float32)]
    elif kind == "chords":
        wavs = [tone(261.63, 3) + tone(329.63, 3, amp=0.3) + tone(392.0, 3, amp=0.2)]
    elif kind == "short":
        wavs = [tone(440.0, 0.2)]  # shorter than n_fft: centrally padded
    elif kind == "silence-inside":
        wavs = [np.concatenate([tone(392.0, 1), np.zeros(32000, np.float32), tone(293.66, 1)])]
    else:
        wavs = [tone(440.0, 2.5), (0.1 * rng.standard_normal(32000 * 6)).astype(np.float32), tone(261.63, 0.4)]
    ours = batch_chroma(wavs, P)
    want = reference.chroma_features(wavs)
    assert ours.shape == want.shape
    np.testing.assert_array_equal(ours, want)


@pytest.mark.parametrize("note", list(NOTES))
def test_pure_tones_land_in_their_bin(note):
    onehot = chroma_onehot(tone(NOTES[note], 2.0), P)
    assert (onehot.argmax(-1) == BIN[note]).all()
    assert onehot.sum(-1).tolist() == [1.0] * len(onehot)


@pytest.mark.parametrize("sr", [44100, 48000, 22050, 16000])
def test_other_rates_and_stereo_inputs(sr):
    left = tone(440.0, 2.0, sr)
    stereo = np.stack([left, left])
    wav32 = resample(to_mono(stereo), sr, 32000)
    assert abs(len(wav32) - 64000) <= 1
    assert (chroma_onehot(wav32, P).argmax(-1) == BIN["A"]).all()


def test_long_melodies_keep_the_first_235_frames_exactly():
    rng = np.random.default_rng(0)
    wav = (0.1 * rng.standard_normal(32000 * 40)).astype(np.float32)
    cut = chroma_onehot(wav, P, max_frames=235)
    full = chroma_onehot(wav, P)[:235]
    assert cut.shape == (235, 12)
    np.testing.assert_array_equal(cut, full)
