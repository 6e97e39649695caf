"""The loop's small pieces: delay pattern (vs transformers' build_delay_pattern_mask) and the sampler."""

from __future__ import annotations

import numpy as np
import pytest

from musicgen_onnx.runtime.delay import DelayPattern
from musicgen_onnx.runtime.sampling import Sampler, classifier_free_guidance

S = 2048


def test_spec_example_mono_t7():
    codes = np.arange(4 * 7).reshape(1, 4, 7)
    seq = DelayPattern([0, 1, 2, 3], S).delay(codes)
    assert seq.shape == (1, 4, 11)
    assert seq[0, 0].tolist() == [S, 0, 1, 2, 3, 4, 5, 6, S, S, S]
    assert seq[0, 3].tolist() == [S, S, S, S, 21, 22, 23, 24, 25, 26, 27]
    np.testing.assert_array_equal(DelayPattern([0, 1, 2, 3], S).undelay(seq, 7), codes)


@pytest.mark.parametrize("stereo", [False, True])
def test_valid_mask_equals_transformers_build_delay_pattern_mask(stereo, reference_model):
    import torch

    model, _ = reference_model("tiny-text-stereo" if stereo else "tiny-text")
    K = model.decoder.num_codebooks
    frames = 9
    max_length = frames + 4  # BOS column + frames + 3 delays
    ids = torch.full((K, 1), S)
    _, pattern = model.decoder.build_delay_pattern_mask(ids, pad_token_id=S, max_length=max_length)
    hf_valid = (pattern.reshape(K, -1) == -1).numpy()
    delays = [k // 2 for k in range(K)] if stereo else list(range(K))
    ours = DelayPattern(delays, S).valid(frames)
    np.testing.assert_array_equal(ours, hf_valid)


def test_cfg_combine():
    cond = np.full((1, 4, 8), 2.0, np.float32)
    uncond = np.full((1, 4, 8), 1.0, np.float32)
    out = classifier_free_guidance(np.concatenate([cond, uncond]), 3.0)
    np.testing.assert_allclose(out, 4.0)


def test_greedy_is_argmax():
    logits = np.random.default_rng(0).standard_normal((2, 4, 2048)).astype(np.float32)
    np.testing.assert_array_equal(Sampler(True)(logits), logits.argmax(-1))


def test_top_k_only_draws_from_the_k_best():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((1, 4, 2048)).astype(np.float32)
    best = np.argsort(-logits, axis=-1)[..., :3]
    sampler = Sampler(False, top_k=3, seed=0)
    for _ in range(200):
        tok = sampler(logits)
        assert all(tok[0, k] in best[0, k] for k in range(4))


def test_top_p_replaces_top_k_and_keeps_the_nucleus():
    logits = np.log(np.array([[[0.5, 0.3, 0.15, 0.05]]], dtype=np.float64)).astype(np.float32)
    sampler = Sampler(False, top_k=1, top_p=0.6, seed=0)
    draws = {int(sampler(logits)[0, 0]) for _ in range(300)}
    assert draws == {0, 1}  # audiocraft: keep while cumsum - p <= top_p; top_k=1 ignored


def test_sampling_follows_the_distribution():
    probs = np.array([0.6, 0.3, 0.1])
    logits = np.log(probs)[None, None].astype(np.float32)
    sampler = Sampler(False, top_k=3, seed=0)
    counts = np.bincount([int(sampler(logits)[0, 0]) for _ in range(4000)], minlength=3) / 4000
    np.testing.assert_allclose(counts, probs, atol=0.03)
