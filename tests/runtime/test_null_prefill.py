"""The CFG null rows' first call, reused (null_prefill.py): the same codes and the same logits as running
every row, on the first call that stores the entry (a miss) and on the calls that use it (hits), for
each stepper (bundled: the old static graph; exported static: step inputs; exported concat). The
decoder's first call is observed through the cache's plans: how many rows it ran, and whether the entry
was found."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import BUNDLED
from musicgen_onnx.runtime import null_prefill
from musicgen_onnx.runtime.musicgen import MusicGen
from musicgen_onnx.runtime.null_prefill import NullPrefill, NullPrefillCache

PROMPTS = ["sad jazz", "lofi beat", "calm piano"]  # 8 tokens each with the bundled tokenizer
RATE = 32000
MELODY = np.sin(2 * np.pi * 330 * np.arange(RATE) / RATE).astype(np.float32)
CHROMA = np.eye(12, dtype=np.float32)[np.arange(235) % 12][None].repeat(3, axis=0)  # one-hot [B, frames, 12]


def folder(name, request):
    if name == "bundled":
        return BUNDLED
    exported = request.getfixturevalue("exported")
    return exported("tiny-melody", name)


@pytest.fixture
def plans(monkeypatch):
    """Each first call's plan as (rows the decoder ran, whether the entry was found), in order."""
    seen = []
    plan = NullPrefillCache.plan

    def recording(self, *args):
        reuse = plan(self, *args)
        seen.append(None if reuse is None else (reuse.rows, reuse.entry is not None))
        return reuse

    monkeypatch.setattr(NullPrefillCache, "plan", recording)
    return seen


def generate(model, monkeypatch, reuse: bool, prompts, **kw):
    monkeypatch.setenv(null_prefill.SWITCH, "on" if reuse else "off")
    _, codes = model.generate(prompts, melody=MELODY, melody_sample_rate=RATE, duration=0.4, return_codes=True, **kw)
    return codes


@pytest.mark.parametrize("name", ["bundled", pytest.param("static", marks=pytest.mark.export),
                                  pytest.param("concat", marks=pytest.mark.export)])
@pytest.mark.parametrize("greedy", [True, False])
def test_codes_are_identical_with_reuse_on_and_off(name, greedy, request, monkeypatch, plans):
    model = MusicGen.from_pretrained(folder(name, request), providers="cpu")
    for batch in (1, 3):
        kw = dict(greedy=greedy, top_k=50, seed=[7, 8, 9][:batch])
        off = generate(model, monkeypatch, False, PROMPTS[:batch], **kw)
        assert plans == []  # off: every row runs, the cache is never asked
        miss = generate(model, monkeypatch, True, PROMPTS[:batch], **kw)
        hit = generate(model, monkeypatch, True, PROMPTS[:batch], **kw)
        np.testing.assert_array_equal(miss, off)
        np.testing.assert_array_equal(hit, off)
        # batch 1 stores the entry (2 rows run); batch 3 finds it (3 rows), as does every later call
        assert plans == ([(2, False), (1, True)] if batch == 1 else [(3, True), (3, True)])
        plans.clear()


@pytest.mark.parametrize("name", ["bundled", pytest.param("static", marks=pytest.mark.export),
                                  pytest.param("concat", marks=pytest.mark.export)])
def test_every_steps_logits_are_identical_on_a_miss_and_a_hit(name, request, monkeypatch, plans):
    """Teacher-forced logits of every step: the first call's (the null rows' copied logits) and the later
    steps' (which attend to the copied cache), compared bitwise."""
    model = MusicGen.from_pretrained(folder(name, request), providers="cpu")
    codes = np.random.default_rng(0).integers(0, 2048, size=(3, 4, 8))

    def logits(reuse):
        monkeypatch.setenv(null_prefill.SWITCH, "on" if reuse else "off")
        return model.teacher_forced_logits(PROMPTS, codes, CHROMA)

    off, miss, hit = logits(False), logits(True), logits(True)
    assert plans == [(4, False), (3, True)]
    np.testing.assert_array_equal(miss, off)
    np.testing.assert_array_equal(hit, off)


@pytest.mark.export
def test_the_sampling_graph_reads_the_copied_null_logits(exported, monkeypatch, plans):
    """The capturable stepper's device sampler reads the logits buffer, not the host copy: the null
    rows' logits must be in it."""
    import dataclasses

    from musicgen_onnx.runtime.layouts import open_layout
    from musicgen_onnx.runtime.session import SessionSettings

    settings = dataclasses.replace(SessionSettings.resolve("cpu"), device_sampler=True)
    model = MusicGen(open_layout(exported("tiny-melody"), None, False), settings)
    kw = dict(top_k=50, seed=[4, 5, 6])
    off, miss, hit = (generate(model, monkeypatch, reuse, PROMPTS, **kw) for reuse in (False, True, True))
    assert plans == [(4, False), (3, True)] and model.parts().settings.device_sampler
    np.testing.assert_array_equal(miss, off)
    np.testing.assert_array_equal(hit, off)


def test_the_raw_first_logits_of_every_row_are_identical(model, monkeypatch, plans):
    """The decoder's own first-call logits, null rows included (CFG folds them into the others)."""
    conditioning = model.conditioner(PROMPTS, CHROMA, True)
    ids = np.full((6, 4, 1), model.manifest.special_token_id, dtype=np.int64)

    def first_logits(reuse):
        monkeypatch.setenv(null_prefill.SWITCH, "on" if reuse else "off")
        return model.new_stepper(6, conditioning, 20).run(ids, conditioning.prefix_length + 1)

    off = first_logits(False)
    for _ in range(2):  # the miss stores the entry, then a hit (the entry may be there from an earlier test)
        np.testing.assert_array_equal(first_logits(True), off)
    assert plans[-1] == (3, True)
    np.testing.assert_array_equal(off[3:], np.broadcast_to(off[3], off[3:].shape))  # the null rows are one row


def test_continuation_prompts_and_row_drops_run_as_before(model, monkeypatch, plans):
    """A first call with prompt columns (they differ per row) runs every row; a drop after a reused first
    call keeps the codes of the rows that stay."""
    prompt = np.random.default_rng(1).integers(0, 2048, size=(3, 4, 5))
    kw = dict(prompt_codes=prompt, top_k=50, seed=[1, 2, 3])
    np.testing.assert_array_equal(generate(model, monkeypatch, True, PROMPTS, **kw),
                                  generate(model, monkeypatch, False, PROMPTS, **kw))
    assert plans == [None]

    from musicgen_onnx.runtime.rows import LiveRows

    full = generate(model, monkeypatch, False, PROMPTS, top_k=50, seed=[1, 2, 3])
    rows = LiveRows(3)

    def cancel(done, total):
        if done == 3:
            rows.cancel(1)

    kept = generate(model, monkeypatch, True, PROMPTS, top_k=50, seed=[1, 2, 3], rows=rows, progress=cancel)
    assert plans[-1] is not None and rows.live == [0, 2]
    np.testing.assert_array_equal(kept, full[[0, 2]])


@pytest.mark.export
def test_text_only_models_run_every_row(exported, monkeypatch, plans):
    """Their null rows' first call is one column (cross-attention, no prefix): nothing to reuse."""
    model = MusicGen.from_pretrained(exported("tiny-text"), providers="cpu")
    codes = []
    for reuse in (False, True):
        monkeypatch.setenv(null_prefill.SWITCH, "on" if reuse else "off")
        codes.append(model.generate(PROMPTS, duration=0.4, top_k=50, seed=[1, 2, 3], return_codes=True)[1])
    assert plans == [None]
    np.testing.assert_array_equal(*codes)


def entry(inputs, nbytes=8):
    return NullPrefill(inputs, (np.zeros(nbytes // 4, dtype=np.float32),), np.zeros(0, dtype=np.float32))


def test_the_cache_finds_entries_by_their_exact_inputs_and_stays_bounded():
    cache = NullPrefillCache(max_entries=2, max_bytes=100)
    ids = np.full((4, 2, 1), 9)
    prefix = np.zeros((4, 3, 5), dtype=np.float32)
    first = {"prefix": prefix}
    reuse = cache.plan(ids, first, 2)
    assert (reuse.rows, reuse.entry) == (3, None)  # a miss: the conditional rows and one null row
    e = entry(reuse.inputs)
    cache.store(e)
    assert cache.plan(ids, first, 2).entry is e and cache.plan(ids, first, 2).rows == 2
    other = prefix.copy()
    other[3, 0, 0] = -0.0  # a null row's masked text states: zeros of either sign are one input
    assert cache.plan(ids, {"prefix": other}, 2).entry is e
    other[3, 0, 0] = 1e-30
    assert cache.plan(ids, {"prefix": other}, 2) is None  # the null rows differ from each other
    other[2, 0, 0] = 1e-30
    assert cache.plan(ids, {"prefix": other}, 2).entry is None  # another input: another entry
    assert cache.plan(np.full((4, 2, 3), 9), first, 2) is None  # prompt columns
    assert cache.plan(ids, first, 0) is None and cache.plan(ids[:2], first, 2) is None  # no CFG, no conditional row
    cache.store(entry({"n": np.array(0)}))
    assert cache.plan(ids, first, 2).entry is e  # a hit makes its entry the newest: n=0 goes next
    cache.store(entry({"n": np.array(1)}))
    assert len(cache) == 2 and cache.plan(ids, first, 2).entry is e
    cache.store(entry({"n": np.array(2)}))
    cache.store(entry({"n": np.array(3)}))
    assert len(cache) == 2 and cache.plan(ids, first, 2).entry is None  # the least recently used went
    cache.store(entry({"big": np.array(0)}, nbytes=104))
    assert len(cache) == 2  # larger than the cap: never stored
    cache.store(entry({"most": np.array(0)}, nbytes=96))
    assert len(cache) == 1  # within the cap: the older entries went


def test_a_cpu_ortvalues_numpy_is_a_view_of_its_buffer():
    """Reuse writes the null rows through ``OrtValue.numpy()`` of the bound buffers: a view since
    onnxruntime 1.19 (1.18 returned a copy, and the null rows kept an empty cache: pyproject's floor)."""
    import onnxruntime as ort

    value = ort.OrtValue.ortvalue_from_shape_and_type([2, 3], np.float32, "cpu", 0)
    value.numpy()[:] = 3.0
    np.testing.assert_array_equal(value.numpy(), np.full((2, 3), 3.0, np.float32))
