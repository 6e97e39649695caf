"""The capturable decoder step (issue 26), proven on the CPU: the static decoder with step inputs
(``position_ids``, ``seqlens_k``, ``total_sequence_length``) computes what the past-length decoder
computes, to the bit; onnxruntime's CPU-placement rule finds no host/device copy in it; and the
stepper that drives it gives the codes of today's stepper with every bound buffer at a fixed address.

The bundled models/tiny-melody is today's graph (``past_length``); the same checkpoint exported again
is the new one (the bundled folder is a fresh export of that seed: same weights)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest

from helpers import BUNDLED
from musicgen_onnx.export.capture_lint import placement
from musicgen_onnx.runtime import capture
from musicgen_onnx.runtime.layouts import open_layout
from musicgen_onnx.runtime.manifest import load_manifest
from musicgen_onnx.runtime.musicgen import MusicGen
from musicgen_onnx.runtime.rows import LiveRows
from musicgen_onnx.runtime.session import SessionSettings
from musicgen_onnx.runtime.stepper import CapturableStepper, StaticStepper

pytestmark = pytest.mark.export
PROMPTS = ["sad jazz", "lofi beat", "calm piano"]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    from musicgen_onnx.export.random_checkpoints import build_bundled

    return build_bundled(tmp_path_factory.mktemp("capture") / "tiny", progress=lambda m: None)


@pytest.fixture(scope="module")
def pair(fresh):
    return (MusicGen.from_pretrained(BUNDLED, providers="cpu"), MusicGen.from_pretrained(fresh, providers="cpu"))


def test_the_new_folder_declares_step_inputs_and_the_bundled_one_does_not(fresh):
    assert load_manifest(fresh).step_inputs == "positions"
    assert load_manifest(BUNDLED).step_inputs == "past_length"
    inputs = [i.name for i in onnx.load(str(fresh / "decoder.onnx"), load_external_data=False).graph.input]
    assert "past_length" not in inputs
    assert {"position_ids", "seqlens_k", "total_sequence_length"} <= set(inputs)


def test_capture_lint_flags_todays_graph_and_passes_the_new_ones(fresh, exported):
    today = placement(onnx.load(str(BUNDLED / "decoder.onnx")))
    assert today.crossings and not today.capturable, today.summary()  # positions and seqlens_k from past_length
    for folder in (fresh, exported("tiny-text")):
        new = placement(onnx.load(str(folder / "decoder.onnx")))
        # shape computations may stay on the CPU (their values are baked at capture); none feeds the device
        assert new.capturable, f"{folder.name}: {new.summary()}"
    assert not placement(onnx.load(str(fresh / "decoder.onnx"))).cpu_nodes


def _drive(model, steps: int, rows_kept=None):
    """20 decoder calls on one token stream: (logits of each call, each cache's filled part at the end)."""
    conditioning = model.conditioner(PROMPTS[:2], None, True)
    stepper = model.new_stepper(4, conditioning, steps + 1)
    rng = np.random.default_rng(0)
    K = model.manifest.num_codebooks
    ids = np.full((4, K, 1), model.manifest.special_token_id, dtype=np.int64)
    seen = [stepper.run(ids, conditioning.prefix_length + 1)]
    for s in range(1, steps):
        if s == 10 and rows_kept is not None:
            stepper.keep_rows(rows_kept)
        rows = seen[-1].shape[0] if s != 10 or rows_kept is None else len(rows_kept)
        seen.append(stepper.run(rng.integers(0, 2048, (rows, K, 1)), 1))
    buffers = stepper._buffers if isinstance(stepper, StaticStepper) else stepper._set.caches
    caches = [b.numpy()[:, :, :stepper.length] for b in buffers]
    return stepper, seen, caches


@pytest.mark.parametrize("drop", [None, np.array([0, 2])])
def test_step_inputs_give_bit_identical_logits_and_cache_over_20_steps(pair, drop):
    (old_stepper, old_logits, old_cache), (new_stepper, new_logits, new_cache) = (_drive(m, 20, drop) for m in pair)
    assert isinstance(old_stepper, StaticStepper) and isinstance(new_stepper, CapturableStepper)
    for a, b in zip(old_logits, new_logits):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(old_cache, new_cache):
        np.testing.assert_array_equal(a, b)


def test_every_bound_buffer_keeps_its_address_from_the_second_step_on(pair):
    model = pair[1]
    conditioning = model.conditioner(PROMPTS[:1], None, True)
    stepper = model.new_stepper(2, conditioning, 12)
    K = model.manifest.num_codebooks
    stepper.run(np.full((2, K, 1), 2048, dtype=np.int64), conditioning.prefix_length + 1)
    addresses = []
    for s in range(10):
        stepper.run(np.full((2, K, 1), s, dtype=np.int64), 1)
        addresses.append(stepper.bound())
    assert all(a == addresses[0] for a in addresses), "a step rebound a buffer"
    assert len(addresses[0]) == 2 + 3 + 2 * model.manifest.num_layers + len(conditioning.steps)  # + the prefix


@pytest.mark.parametrize("kw", [dict(greedy=True), dict(top_k=50, seed=3),
                                dict(top_k=2048, top_p=0.9, seed=[1, 2, 3])],
                         ids=["greedy", "seeded", "per-row-top-p"])
def test_generate_gives_todays_codes(pair, kw):
    old, new = pair
    a = old.generate(PROMPTS, duration=1.0, return_codes=True, **kw)[1]
    b = new.generate(PROMPTS, duration=1.0, return_codes=True, **kw)[1]
    np.testing.assert_array_equal(a, b)


def test_long_form_and_row_drops_give_todays_codes(pair):
    t = np.arange(32000 * 2) / 32000
    melodies = [np.sin(2 * np.pi * f * t).astype(np.float32)[None] for f in (220, 330, 440)]
    codes = []
    for model in pair:
        saved = model.manifest
        model.manifest = dataclasses.replace(saved, max_duration=2.0)  # two windows in a short call
        try:
            rows = LiveRows(3)

            def progress(done, total, rows=rows):
                if done == 30:
                    rows.cancel(1)
                if done == 120:
                    rows.cancel(2)
            codes.append(model.generate(PROMPTS, duration=3.0, extend_stride=1.5, top_k=50, seed=[7, 8, 9],
                                        melody=melodies, melody_sample_rate=32000, rows=rows, progress=progress,
                                        return_codes=True)[1])
        finally:
            model.manifest = saved
    np.testing.assert_array_equal(*codes)


def _captured(folder) -> MusicGen:
    """The model as a CUDA-graph run drives it (pooled buffer sets, graph ids, the lock), on the CPU EP."""
    settings = dataclasses.replace(SessionSettings.resolve("cpu"), cuda_graph=True)
    return MusicGen(open_layout(folder, None, False), settings)


def test_pooled_buffer_sets_are_reused_by_the_next_call_with_the_same_codes(pair, fresh, monkeypatch):
    old, model = pair[0], _captured(fresh)
    runs = []
    decoder = model.graphs["decoder"]
    real = decoder.run_with_iobinding
    monkeypatch.setattr(decoder, "run_with_iobinding", lambda binding, options=None: (
        runs.append(int(options.get_run_config_entry("gpu_graph_id"))), real(binding, options))[1])
    addresses = []
    new_stepper = model.new_stepper

    def recording(*a, **k):
        stepper = new_stepper(*a, **k)
        addresses.append(stepper)
        return stepper

    monkeypatch.setattr(model, "new_stepper", recording)
    kw = dict(duration=1.0, top_k=50, seed=[1, 2, 3], return_codes=True)
    first = model.generate(PROMPTS, **kw)[1]
    bound = addresses.pop().bound()
    second = model.generate(PROMPTS, **kw)[1]
    assert addresses.pop().bound() == bound  # the same buffers: a captured graph replays for the next call
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, old.generate(PROMPTS, **kw)[1])
    steps = len(runs) // 2
    assert runs[0] == runs[steps] == capture.PREFILL and set(runs[1:steps]) == {0} == set(runs[steps + 1:])
    model.generate(PROMPTS[:1], **dict(kw, seed=[1]))  # other rows: another buffer set, another graph
    assert set(runs[2 * steps + 1:]) == {1}


def test_row_drops_in_a_pooled_window_give_todays_codes(pair, fresh):
    old, model = pair[0], _captured(fresh)
    codes = []
    for m in (old, model):
        rows = LiveRows(3)

        def progress(done, total, rows=rows):
            if done == 12:
                rows.cancel(1)
        codes.append(m.generate(PROMPTS, duration=1.0, top_k=50, seed=[4, 5, 6], rows=rows, progress=progress,
                                return_codes=True)[1])
    np.testing.assert_array_equal(*codes)


class RecordingSession:
    """Stands in for an onnxruntime session: records each run's graph id and whether the lock was held."""

    def __init__(self, graph_ids):
        self.graph_ids, self.runs = graph_ids, []

    def io_binding(self):
        class Binding:
            def __getattr__(self, name):
                return lambda *a: None
        return Binding()

    def run_with_iobinding(self, binding, run_options=None):
        self.runs.append((int(run_options.get_run_config_entry("gpu_graph_id")), self.graph_ids.lock.locked()))


def test_graph_ids_per_buffer_set_from_a_capped_counter_prefill_uncaptured():
    from musicgen_onnx.runtime.stepper import BufferPool, Conditioning, DecoderIO

    import onnxruntime as ort

    ids = capture.GraphIds(cap=2)
    pool = BufferPool(ort, "cpu", 8, ids)
    io = DecoderIO("input_ids", "logits", ["past.0.key"], ["present.0.key"], None,
                   ["position_ids", "seqlens_k", "total_sequence_length"])
    session = RecordingSession(ids)
    empty = Conditioning({}, {}, 0)
    for rows in (2, 4, 2, 6):
        stepper = CapturableStepper(session, io, empty, rows, 1, 4, 0, (rows, 4, 8), pool=pool, graph_ids=ids)
        stepper.run(np.zeros((rows, 4, 1), dtype=np.int64), 1)
        stepper.run(np.zeros((rows, 4, 1), dtype=np.int64), 1)
        del stepper  # its buffer set goes back to the pool
    assert session.runs == [(-1, True), (0, True), (-1, True), (1, True), (-1, True), (0, True),
                            (-1, True), (-1, True)]  # rows 6: past the cap, uncaptured


def test_only_the_decoder_and_the_sampler_get_cuda_graphs():
    settings = SessionSettings(("CUDAExecutionProvider", "CPUExecutionProvider"),
                               {"CUDAExecutionProvider": {"use_tf32": "0"}}, cuda_graph=True)
    for graph in ("decoder", "sampler"):
        assert capture.provider_options(settings, graph) == [
            ("CUDAExecutionProvider", {"use_tf32": "0", "enable_cuda_graph": "1"}), ("CPUExecutionProvider", {})]
    for graph in ("text_encoder", "audio_decoder", "audio_encoder", None):
        assert capture.provider_options(settings, graph)[0] == ("CUDAExecutionProvider", {"use_tf32": "0"})
    plain = dataclasses.replace(settings, cuda_graph=False)
    assert capture.provider_options(plain, "decoder")[0] == ("CUDAExecutionProvider", {"use_tf32": "0"})


def test_fp16_melody_folder_runs_captured_and_plain_alike(checkpoint_dir, tmp_path):
    """fp16 (the GPU tier): the prefix makes position_ids longer than input_ids' columns on the first
    call; the graph must not tie their sizes (it did: onnxruntime reused one buffer for both)."""
    from musicgen_onnx.export.exporter import export

    folder = export(str(checkpoint_dir("tiny-melody")), tmp_path / "fp16", precision="fp16")
    kw = dict(duration=0.5, top_k=50, seed=[1, 2], return_codes=True)
    plain = MusicGen.from_pretrained(folder, providers="cpu").generate(PROMPTS[:2], **kw)[1]
    np.testing.assert_array_equal(plain, _captured(folder).generate(PROMPTS[:2], **kw)[1])


def test_an_older_folder_opens_its_decoder_without_capture(fresh, monkeypatch):
    from musicgen_onnx.runtime import session as session_mod

    seen = {}
    real = session_mod.open_session
    monkeypatch.setattr(session_mod, "open_session", lambda path, settings, graph=None, **kw: (
        seen.__setitem__((path.parent.name, path.stem), graph), real(path, settings, graph, **kw))[1])
    for folder in (BUNDLED, fresh):
        _captured(folder).graphs["decoder"]
    assert seen[(BUNDLED.name, "decoder")] is None  # past_length: enable_cuda_graph would be refused
    assert seen[(fresh.name, "decoder")] == "decoder"
