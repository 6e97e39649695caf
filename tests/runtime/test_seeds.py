"""Per-row seeds: a row's codes depend on its prompt, melody and seed, never on its batch mates, as long
as the batch mates tokenize to the same length (text is padded to the longest prompt and the padded
positions are attended to: the melody prefix is not masked) and carry melodies of the same length."""

from __future__ import annotations

import numpy as np
import pytest

from musicgen_onnx.runtime.errors import InvalidInputError
from musicgen_onnx.runtime.sampling import Sampler

SAME_LENGTH = ["sad jazz", "lofi beat", "calm piano"]  # 8 tokens each with the bundled tokenizer
KW = dict(duration=0.4, top_k=50, return_codes=True)


def test_prompts_have_the_same_token_length(model):
    ids, _ = model.conditioner.tokenizer(SAME_LENGTH)
    assert all(len(model.conditioner.tokenizer([p])[0][0]) == ids.shape[1] for p in SAME_LENGTH)


def test_a_row_draws_what_it_draws_alone(model):
    _, batch = model.generate(SAME_LENGTH, seed=[1, 2, 3], **KW)
    for row, (prompt, seed) in enumerate(zip(SAME_LENGTH, [1, 2, 3])):
        _, alone = model.generate([prompt], seed=seed, **KW)
        np.testing.assert_array_equal(batch[row], alone[0])
    _, shuffled = model.generate(SAME_LENGTH[::-1], seed=[3, 2, 1], **KW)
    np.testing.assert_array_equal(shuffled[::-1], batch)


def test_a_row_with_a_melody_draws_what_it_draws_alone(model):
    t = np.arange(32000) / 32000
    melodies = [np.sin(2 * np.pi * f * t).astype(np.float32)[None] for f in (220, 330, 440)]
    _, batch = model.generate(SAME_LENGTH, melody=melodies, melody_sample_rate=32000, seed=[4, 5, 6], **KW)
    for row in range(3):
        _, alone = model.generate([SAME_LENGTH[row]], melody=melodies[row], melody_sample_rate=32000,
                                  seed=4 + row, **KW)
        np.testing.assert_array_equal(batch[row], alone[0])


def test_padding_to_a_longer_batch_mate_changes_the_logits(model):
    """Why a server batches by token length: the same row, batched with a longer prompt, sees other logits."""
    codes = np.random.default_rng(0).integers(0, 2048, (1, 4, 8))
    alone = model.teacher_forced_logits(["sad jazz"], codes)
    padded = model.teacher_forced_logits(["sad jazz", "happy jazz"], np.repeat(codes, 2, axis=0))
    same = model.teacher_forced_logits(["sad jazz", "lofi beat"], np.repeat(codes, 2, axis=0))
    assert np.abs(padded[0] - alone[0]).max() > 1e-3
    np.testing.assert_array_equal(same[0], alone[0])


def test_an_int_seed_keeps_a_single_prompt_as_before(model):
    """Row 0 of int seed s draws from default_rng(s): the tokens a single prompt had before per-row seeds."""
    logits = np.random.default_rng(0).standard_normal((1, 4, 2048)).astype(np.float32)
    sampler = Sampler(False, top_k=50, seed=9)
    sampler(logits)
    np.testing.assert_array_equal(sampler.generators[0].random(8), np.random.default_rng(9).random(12)[4:])
    _, a = model.generate(["techno"], seed=9, **KW)
    _, b = model.generate(["techno"], seed=[9], **KW)
    np.testing.assert_array_equal(a, b)


def test_an_int_seed_gives_rows_different_draws(model):
    _, codes = model.generate(["sad jazz", "sad jazz"], seed=7, **KW)
    assert not np.array_equal(codes[0], codes[1])


@pytest.mark.parametrize("seed, rule", [
    ([1, 2], "2 seeds for 3 prompts"),
    ([1, -2, 3], "non-negative integer"),
    ([1, 2.0, 3], "non-negative integer"),
    ([True, 2, 3], "non-negative integer"),
    ([], "1 to 64 entries"),
    (2 ** 64, "below 2**64"),
    ("7", "non-negative integer"),
])
def test_bad_seeds_are_one_line_errors(model, seed, rule):
    with pytest.raises(InvalidInputError, match=rule.replace("*", r"\*")) as err:
        model.generate(SAME_LENGTH, seed=seed, duration=0.2)
    assert "\n" not in str(err.value)


def test_none_in_a_seed_list_draws_fresh(model):
    _, a = model.generate(SAME_LENGTH, seed=[1, None, 3], **KW)
    _, b = model.generate(SAME_LENGTH, seed=[1, None, 3], **KW)
    np.testing.assert_array_equal(a[[0, 2]], b[[0, 2]])
