"""Greedy fp32 generation is token-identical to transformers, for every family.

The reference is transformers >= 5 (4.57 drops the conditioning in MusicgenMelody.generate). Every
case also checks that the reference's own outputs differ across its prompts/melodies, so a model that
ignored its conditioning could not pass.
"""

from __future__ import annotations

import numpy as np
import pytest
from musicgen_onnx.export import reference

from musicgen_onnx.runtime import MusicGen

from helpers import FAMILIES

PROMPTS_3 = ["A happy rock track with guitar", "sad jazz with piano at a slow tempo and soft vocals", "techno"]
FRAMES = 12
DURATION = FRAMES / 50
AUDIO_TOL = 1e-5  # max |ours - transformers| on decoded audio (peak ~0.3); measured ~1.5e-7


def _melodies(lengths_s, sr=32000, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i, seconds in enumerate(lengths_s):
        t = np.arange(int(seconds * sr)) / sr
        notes = rng.choice([220.0, 261.63, 329.63, 392.0, 440.0, 493.88], size=8)
        f = notes[np.minimum((t / seconds * 8).astype(int), 7)]
        out.append((0.5 * np.sin(2 * np.pi * f * t) + 0.01 * rng.standard_normal(t.shape)).astype(np.float32))
    return out


def _assert_distinct(codes):
    """The reference conditioned on its inputs: no two rows of the batch generated the same codes."""
    flat = codes.reshape(codes.shape[0], -1)
    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            assert not np.array_equal(flat[i], flat[j]), f"reference rows {i} and {j} are identical"


@pytest.mark.parametrize("kv_cache", ["static", "concat"])
@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("prompts", [PROMPTS_3[:1], PROMPTS_3], ids=["batch1", "batch3"])
def test_greedy_text_only_prompts(arch, prompts, kv_cache, exported, reference_model):
    model, tok = reference_model(arch)
    ref_codes, ref_audio = reference.generate(model, tok, prompts, FRAMES)
    if len(prompts) > 1:
        _assert_distinct(ref_codes)
    ours = MusicGen.from_pretrained(exported(arch, kv_cache), providers="cpu")
    assert ours.manifest.kv_cache == kv_cache
    audio, codes = ours.generate(prompts, duration=DURATION, greedy=True, guidance_scale=3.0, return_codes=True)
    np.testing.assert_array_equal(codes, ref_codes)
    assert audio.shape == ref_audio.shape
    assert np.max(np.abs(audio - ref_audio)) < AUDIO_TOL


@pytest.mark.parametrize("kv_cache", ["static", "concat"])
@pytest.mark.parametrize("arch", ["tiny-melody", "tiny-melody-stereo"])
@pytest.mark.parametrize("case", ["one-per-prompt", "shared", "single"])
def test_greedy_with_melody(arch, case, kv_cache, exported, reference_model):
    model, tok = reference_model(arch)
    if case == "one-per-prompt":
        prompts, melodies = PROMPTS_3, _melodies([3.0, 5.5, 1.2])
    elif case == "shared":
        prompts, melodies = PROMPTS_3, _melodies([4.0]) * 3
    else:
        prompts, melodies = PROMPTS_3[:1], _melodies([2.0])
    features = reference.chroma_features(melodies)
    ref_codes, ref_audio = reference.generate(model, tok, prompts, FRAMES, input_features=features)
    if len(prompts) > 1:
        _assert_distinct(ref_codes)
    ours = MusicGen.from_pretrained(exported(arch, kv_cache), providers="cpu")
    melody_arg = melodies[0] if case == "shared" else melodies
    audio, codes = ours.generate(prompts, melody=melody_arg, melody_sample_rate=32000, duration=DURATION,
                                 greedy=True, return_codes=True)
    np.testing.assert_array_equal(codes, ref_codes)
    assert np.max(np.abs(audio - ref_audio)) < AUDIO_TOL


def test_melody_changes_the_reference_and_us(exported, reference_model):
    """Same prompt, two melodies: the reference's tokens differ, and ours follow them."""
    model, tok = reference_model("tiny-melody")
    prompts = ["A calm folk track"]
    ours = MusicGen.from_pretrained(exported("tiny-melody"), providers="cpu")
    results = []
    for seed in (1, 2):
        melody = _melodies([3.0], seed=seed)
        ref_codes, _ = reference.generate(model, tok, prompts, FRAMES, input_features=reference.chroma_features(melody))
        _, codes = ours.generate(prompts, melody=melody, melody_sample_rate=32000, duration=DURATION, greedy=True,
                                 return_codes=True)
        np.testing.assert_array_equal(codes, ref_codes)
        results.append(ref_codes)
    assert not np.array_equal(results[0], results[1])


def test_guidance_scale_one_skips_null_rows_and_still_matches(exported, reference_model):
    model, tok = reference_model("tiny-text")
    ref_codes, _ = reference.generate(model, tok, PROMPTS_3, FRAMES, guidance_scale=1.0)
    ours = MusicGen.from_pretrained(exported("tiny-text"), providers="cpu")
    _, codes = ours.generate(PROMPTS_3, duration=DURATION, greedy=True, guidance_scale=1.0, return_codes=True)
    np.testing.assert_array_equal(codes, ref_codes)
