"""The melody path's two segment plans (runtime/stems.py ``segment_plan``): ``exact`` is apply_model's
and stays what it was (its parity with demucs is tests/export/test_stems_parity.py); ``fast`` covers the
input with the fewest segments. Torch-free, on the bundled tiny stems folder (0.25 s segments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from musicgen_onnx.runtime.errors import InvalidInputError
from musicgen_onnx.runtime.manifest import ChromaParams, StemsParams
from musicgen_onnx.runtime.melody import single_window_cut
from musicgen_onnx.runtime.stems import EXACT, FAST, StemSeparator, segment_plan

from helpers import ROOT

STEMS = ROOT / "models" / "tiny-stems"
# the released htdemucs: 7.8 s segments at 44.1 kHz, a stride of 0.75 segment
HTDEMUCS = StemsParams(sources=("drums", "bass", "other", "vocals"), sample_rate=44100, audio_channels=2,
                       segment_length=343980, n_fft=4096, hop_length=1024)


@pytest.fixture(scope="module")
def exact():
    return StemSeparator.from_folder(STEMS, providers="cpu")


@pytest.fixture(scope="module")
def fast(exact):
    return StemSeparator(exact.graph, exact.params, _info(), plan=FAST)


def _info():
    from musicgen_onnx.runtime.manifest import load_stems_manifest

    return load_stems_manifest(STEMS).graphs["stems"]


def music(seconds: float, sr: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    notes = rng.choice([220.0, 261.63, 329.63, 440.0], size=(channels, 1))
    return (0.3 * np.sin(2 * np.pi * notes * t) + 0.05 * rng.standard_normal((channels, t.shape[0]))).astype(np.float32)


def melody_blocks(separator, mix, shift, progress=None):
    return np.concatenate([b[:, 0, 0] for b in separator.blocks(mix, shift, progress, melody=True)], axis=-1)


# ---------------------------------------------------------------- the plans themselves
def test_a_30_s_melody_takes_6_segments_exact_and_4_fast():
    """The numbers the fast plan is for: 30 s at 44.1 kHz (shift max: no lead), 7.8 s segments."""
    length, seg, stride = 30 * 44100, HTDEMUCS.segment_length, HTDEMUCS.stride
    exact = segment_plan(EXACT, length, seg, stride)
    assert [o for o, _ in exact] == [i * stride for i in range(6)] and stride == 257985  # 5.85 s
    assert exact[-1] == (5 * stride, int(0.75 * 44100))  # the last covers 0.75 s of audio
    assert segment_plan(FAST, length, seg, stride) == [(0, seg), (326340, seg), (652680, seg), (length - seg, seg)]


@pytest.mark.parametrize("length", [1, 100, 8268, 11024, 11025, 11026, 22050, 22051, 33074, 50000, 123457])
def test_fast_plan_covers_every_sample_with_the_fewest_segments(length):
    seg, stride = 11025, 8268
    plan = segment_plan(FAST, length, seg, stride)
    assert len(plan) == math.ceil(length / seg)
    assert plan[0][0] == 0 and plan[-1][0] + plan[-1][1] == length
    assert all(size == min(seg, length) for _, size in plan)
    assert all(a[0] < b[0] for a, b in zip(plan, plan[1:]))
    covered = np.zeros(length, int)
    for offset, size in plan:
        covered[offset:offset + size] += 1
    assert covered.min() >= 1 and covered.max() <= 2


def test_exact_plan_is_apply_model_split():
    """demucs ``apply_model(split=True)``: ``range(0, length, stride)``, chunks of ``min(segment, rest)``."""
    for length in (1, 11025, 11026, 50000):
        assert segment_plan(EXACT, length, 11025, 8268) == [(o, min(11025, length - o)) for o in range(0, length, 8268)]


def test_unknown_plan_is_one_line(exact):
    with pytest.raises(InvalidInputError, match="stems plan must be one of exact, fast, got 'quick'"):
        StemSeparator(exact.graph, exact.params, _info(), plan="quick")


# ---------------------------------------------------------------- the blend, through blocks
class Passthrough(StemSeparator):
    """The graph replaced by the identity (every source = the segment it was given): whatever the plan,
    the blend of a sample's segments must give the sample back, so a gap, a weight that does not
    normalise to 1 or a misplaced segment shows."""

    def _model(self, x, melody=False):
        if melody:
            return x.mean(axis=1)[:, None, None]
        return np.repeat(x[:, None], len(self.params.sources), axis=1)


@pytest.mark.parametrize("plan", [EXACT, FAST])
@pytest.mark.parametrize("samples", [900, 11025, 30000, 44101])
def test_blend_normalises_to_one_and_counts_segments(exact, plan, samples):
    separator = Passthrough(exact.graph, exact.params, _info(), plan=plan)
    p = separator.params
    mix = music(samples / 44100, 44100, 2, seed=samples)[None]
    shift = 1234
    totals = []
    got = melody_blocks(separator, mix, shift, progress=lambda done, total: totals.append(total))
    np.testing.assert_allclose(got, mix.mean(axis=1), rtol=1e-5, atol=1e-7)
    length = samples + p.max_shift - shift  # both plans keep the shift lead
    assert totals[-1] == len(segment_plan(plan, length, p.segment_length, p.stride))
    if plan == FAST:
        assert totals[-1] == math.ceil(length / p.segment_length)


# ---------------------------------------------------------------- the real (tiny) graph
def test_stems_command_keeps_the_exact_plan(exact, fast):
    """The plan is the melody path's only: the full stems of a fast separator are the exact ones."""
    mix = music(0.7, 44100, 2)[None]
    np.testing.assert_array_equal(fast.separate(mix, 777), exact.separate(mix, 777))


@pytest.mark.parametrize("shift", [14000, 18000, 22050])  # the tiny model's 0.5 s lead is 2 segments: short ones
def test_fast_plan_on_one_segment_equals_the_exact_plan(exact, fast, shift):
    """Up to a stride long with its shift lead: both plans make the same one centred segment, so the
    same stems bit for bit, whatever the shift."""
    p = exact.params
    samples = p.stride - (p.max_shift - shift)
    mix = music(samples / 44100, 44100, 2, seed=4)[None, :, :samples]
    assert 0 < mix.shape[-1] + p.max_shift - shift <= p.stride
    np.testing.assert_array_equal(melody_blocks(fast, mix, shift), melody_blocks(exact, mix, shift))


def test_fast_plan_on_a_whole_segment_is_one_model_call(exact, fast):
    p = exact.params
    mix = music(p.segment_length / 44100, 44100, 2, seed=5)[None, :, :p.segment_length]
    want = exact._model(mix, melody=True)[:, 0, 0]
    got = melody_blocks(fast, mix, p.max_shift)  # no lead: the segment is the mix
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_fast_plan_follows_the_shift(fast):
    """The shift (drawn from the seed) moves the fast plan's segments as it moves apply_model's."""
    mix = music(0.9, 44100, 2, seed=6)[None]
    assert not np.array_equal(melody_blocks(fast, mix, 0), melody_blocks(fast, mix, fast.params.max_shift))


@pytest.mark.parametrize("seconds", [0.1, 0.25, 0.9, 2.0])
def test_melody_output_shape_and_rate_are_the_exact_ones(exact, fast, seconds):
    wavs = music(seconds, 32000, 2, seed=7)  # two rows: a batch of melodies, mono at the chroma rate
    want, got = exact.melody(wavs, 32000, 500), fast.melody(wavs, 32000, 500)
    assert got.shape == want.shape == wavs.shape and got.dtype == want.dtype == np.float32
    assert np.all(np.isfinite(got)) and np.abs(got).max() > 1e-3


# ---------------------------------------------------------------- how much of a melody a single window separates
def test_fast_cut_is_the_chroma_span_in_whole_segments():
    """htdemucs, 235 frames at 32 kHz: the exact cut reads 39.5 s (one segment and shift past the 30.2 s
    span, 6 segments of the fast plan); the fast one 30.7 s, the 4 segments the span and the largest
    shift lead need anyway."""
    params, long_melody = ChromaParams(), [np.zeros(60 * 32000, np.float32)]
    span = (params.chroma_length - 1) * params.hop_length + params.n_fft // 2 + 1
    exact_keep = single_window_cut(long_melody, params, HTDEMUCS, EXACT)[0].shape[0]
    fast_keep = single_window_cut(long_melody, params, HTDEMUCS, FAST)[0].shape[0]
    assert exact_keep == math.ceil((span + 32000 + (HTDEMUCS.segment_length + HTDEMUCS.max_shift) * 32000 / 44100))
    assert fast_keep == 982400 and fast_keep > span + 15000  # 30.7 s: ~0.5 s past the span for context
    at_model_rate = fast_keep * 44100 // 32000  # resample_frac's output length
    assert at_model_rate + HTDEMUCS.max_shift == 4 * HTDEMUCS.segment_length
    for lead in (0, HTDEMUCS.max_shift):
        assert len(segment_plan(FAST, at_model_rate + lead, HTDEMUCS.segment_length, HTDEMUCS.stride)) == 4
    short = [np.ones(20 * 32000, np.float32)]  # shorter than either cut: whole
    assert single_window_cut(short, params, HTDEMUCS, FAST)[0].shape[0] == 20 * 32000


@pytest.mark.parametrize("rate", [16000, 32000, 48000])
def test_fast_cut_never_adds_a_segment(exact, rate):
    """Whatever the rates, the cut resampled to the model's rate fills whole segments and no more, and
    still covers the chroma span."""
    params, p = ChromaParams(sample_rate=rate, hop_length=rate // 100, n_fft=rate // 25, chroma_length=50), exact.params
    keep = single_window_cut([np.zeros(10 * rate, np.float32)], params, p, FAST)[0].shape[0]
    span = (params.chroma_length - 1) * params.hop_length + params.n_fft // 2 + 1
    longest = keep * p.sample_rate // rate + p.max_shift  # resampled, with the largest lead
    segments = len(segment_plan(FAST, longest, p.segment_length, p.stride))
    assert keep > span and longest <= segments * p.segment_length
    assert (segments - 1) * p.segment_length * rate < (span + 64) * p.sample_rate + p.max_shift * rate
