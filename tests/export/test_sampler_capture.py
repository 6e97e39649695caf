"""The sampling graph bound for capture (issue 26): attached to the capturable stepper it reads the
decoder's logits buffer and its own fixed buffers, so every address it binds is fixed from the second
step on, it gets a graph id per (buffer set, graph) and runs under the capture lock, and the tokens are
today's (the numpy sampler's). On the CPU EP, with the CUDA-graph plumbing on (pool, ids, lock)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from musicgen_onnx.runtime import device_sampler
from musicgen_onnx.runtime.device_sampler import GraphSampler
from musicgen_onnx.runtime.layouts import open_layout
from musicgen_onnx.runtime.musicgen import MusicGen
from musicgen_onnx.runtime.rows import LiveRows
from musicgen_onnx.runtime.session import SessionSettings

pytestmark = pytest.mark.export
PROMPTS = ["sad jazz", "lofi beat", "calm piano"]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    from musicgen_onnx.export.random_checkpoints import build_bundled

    return build_bundled(tmp_path_factory.mktemp("sampler_capture") / "tiny", progress=lambda m: None)


def _model(folder, **kw) -> MusicGen:
    settings = dataclasses.replace(SessionSettings.resolve("cpu"), **kw)
    return MusicGen(open_layout(folder, None, False), settings)


class Recorder:
    """Wraps GraphSampler._bound: each call's bound addresses, the stepper's logits address, and each
    run of the captured sampler session (graph id, whether the capture lock was held)."""

    def __init__(self, monkeypatch):
        self.calls, self.runs, self.sessions = [], [], set()
        real = GraphSampler._bound

        def bound(sampler, b, k):
            out = real(sampler, b, k)
            bufs = sampler.buffers
            self.calls.append((bufs.bound(), sampler.stepper().buffer_set.logits.data_ptr()))
            if id(bufs.session) not in self.sessions:
                self.sessions.add(id(bufs.session))
                run = bufs.session.run_with_iobinding
                monkeypatch.setattr(bufs.session, "run_with_iobinding", lambda binding, options=None, ids=
                                    sampler.stepper().graph_ids: (self.runs.append(
                                        (int(options.get_run_config_entry("gpu_graph_id")), ids.lock.locked())),
                                        run(binding, options))[1])
            return out
        monkeypatch.setattr(GraphSampler, "_bound", bound)


@pytest.mark.parametrize("kw", [dict(greedy=True), dict(top_k=50, seed=3), dict(top_k=2048, top_p=0.9, seed=[1, 2, 3])],
                         ids=["greedy", "seeded", "per-row-top-p"])
def test_the_bound_sampler_keeps_its_addresses_and_gives_todays_tokens(fresh, monkeypatch, kw):
    want = _model(fresh).generate(PROMPTS, duration=1.0, return_codes=True, **kw)[1]  # today: numpy sampler
    model = _model(fresh, cuda_graph=True, device_sampler=True)
    rec = Recorder(monkeypatch)
    got = model.generate(PROMPTS, duration=1.0, return_codes=True, **kw)[1]
    np.testing.assert_array_equal(got, want)
    assert len(rec.calls) > 20
    first = rec.calls[1][0]
    assert all(bound == first for bound, _ in rec.calls[1:]), "a step rebound a sampler buffer"
    assert all(bound["logits"] == logits for bound, logits in rec.calls), "not the decoder's logits buffer"
    assert len({gid for gid, _ in rec.runs}) == 1 and rec.runs[0][0] >= 0 and all(lock for _, lock in rec.runs)
    again = model.generate(PROMPTS, duration=1.0, return_codes=True, **kw)[1]  # the pooled set: same graph id
    np.testing.assert_array_equal(again, want)
    assert rec.calls[-1][0] == first and len({gid for gid, _ in rec.runs}) == 1


def test_row_drops_and_long_form_give_todays_tokens_with_the_bound_sampler(fresh, monkeypatch):
    codes = []
    for kw in (dict(), dict(cuda_graph=True, device_sampler=True)):
        model = _model(fresh, **kw)
        model.manifest = dataclasses.replace(model.manifest, max_duration=2.0)
        rows = LiveRows(3)

        def progress(done, total, rows=rows):
            if done == 15:
                rows.cancel(1)
        if kw:
            rec = Recorder(monkeypatch)
        codes.append(model.generate(PROMPTS, duration=3.0, extend_stride=1.5, top_k=50, seed=[4, 5, 6], rows=rows,
                                    progress=progress, return_codes=True)[1])
    np.testing.assert_array_equal(*codes)
    assert len({gid for gid, _ in rec.runs}) >= 2  # the drop moved to another buffer set: another graph


def test_without_a_capturable_stepper_the_sampler_runs_unbound(fresh, monkeypatch):
    """The concat graph (and older folders) give host logits only: the sampler runs them with run()."""
    from conftest import BUNDLED

    called = []
    monkeypatch.setattr(GraphSampler, "_bound", lambda *a: called.append(1))
    model = _model(BUNDLED, device_sampler=True)
    model.generate(PROMPTS[:1], duration=0.5, top_k=50, seed=1)
    assert not called and device_sampler._SESSIONS


def test_the_cpu_kernel_never_reads_the_cache_past_seqlens_k(fresh, monkeypatch):
    """Why the CPU skips zeroing the cache (stepper.StepBuffers): with NaN wherever the allocator gives
    memory, generation on the CPU EP still gives today's codes (a NaN read would raise or change them)."""
    import onnxruntime as ort

    want = _model(fresh).generate(PROMPTS, duration=1.0, top_k=50, seed=[1, 2, 3], return_codes=True)[1]
    real = ort.OrtValue.ortvalue_from_shape_and_type

    def garbage(shape, dtype, device, index):
        value = real(shape, dtype, device, index)
        if np.dtype(dtype).kind == "f":
            value.update_inplace(np.full(shape, np.nan, dtype=dtype))
        return value

    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_shape_and_type", staticmethod(garbage))
    for kw in (dict(), dict(cuda_graph=True)):
        got = _model(fresh, **kw).generate(PROMPTS, duration=1.0, top_k=50, seed=[1, 2, 3], return_codes=True)[1]
        np.testing.assert_array_equal(got, want)
