"""The sampling graphs (runtime/sampler.onnx, greedy.onnx) against the numpy sampler they replace on the
device: same tokens on the CPU EP over temperatures, top-k (1, 0 = off, above the vocabulary), top-p,
exact ties, batches of 1-8 and row drops; the committed bytes are what the build script writes."""

from __future__ import annotations

import numpy as np
import pytest

from musicgen_onnx.runtime import device_sampler
from musicgen_onnx.runtime.device_sampler import GraphSampler
from musicgen_onnx.runtime.sampling import Sampler, classifier_free_guidance

V = device_sampler.VOCAB


@pytest.mark.export  # the build script needs onnx
def test_the_committed_graphs_are_what_the_script_builds():
    from musicgen_onnx.export import sampling_graphs

    for name, data in sampling_graphs.build().items():
        assert (device_sampler.HERE / name).read_bytes() == data, f"{name}: rerun export/sampling_graphs.py"


@pytest.mark.export
def test_the_graphs_need_no_host_device_copy():
    import onnx

    from musicgen_onnx.export.capture_lint import placement

    for name in ("sampler.onnx", "greedy.onnx"):
        p = placement(onnx.load(str(device_sampler.HERE / name)))
        assert p.capturable and not p.cpu_nodes, f"{name}: {p.summary()}"


def _margin(logits, scale, sampler_kw, uniform) -> float:
    """How close the numpy draw came to a cdf boundary (relative): the decisions' safety margin."""
    s = Sampler(False, **sampler_kw)
    x = classifier_free_guidance(logits, scale)
    b, k, v = x.shape
    p = np.exp((x.reshape(b * k, v).astype(np.float64) / s.temperature)
               - (x.reshape(b * k, v).astype(np.float64) / s.temperature).max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    p = s._top_p(p) if s.top_p > 0 else (np.where(p >= -np.partition(-p, min(s.top_k, v) - 1, -1)[:, min(s.top_k, v) - 1:
                                                                                                min(s.top_k, v)], p, 0)
                                         if s.top_k > 0 else p)
    cdf = np.cumsum(p, -1)
    u = uniform.reshape(b * k, 1) * cdf[:, -1:]
    return float((np.abs(cdf - u) / cdf[:, -1:]).min())


CASES = [(dict(temperature=1.0, top_k=250), 1), (dict(temperature=0.5, top_k=1), 3), (dict(temperature=1.7, top_k=0), 8),
         (dict(temperature=1.0, top_k=V + 100), 2), (dict(temperature=1.0, top_p=0.9), 5),
         (dict(temperature=0.7, top_p=0.3, top_k=50), 4), (dict(temperature=1.0, top_k=50), 7)]


@pytest.mark.parametrize("kw, batch", CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_sampling_graph_draws_the_numpy_tokens(kw, batch, ties):
    rng = np.random.default_rng(batch)
    seeds = [int(s) for s in rng.integers(0, 10_000, batch)]
    host, graph = Sampler(False, seed=seeds, rows=batch, **kw), GraphSampler(Sampler(False, seed=seeds, rows=batch, **kw), 3.0)
    margins = []
    for step in range(6):
        logits = (rng.standard_normal((2 * batch, 4, V)) * 4).astype(np.float32)
        if ties:  # exact ties at the top and around the k-th value
            logits[:, :, 200:260] = logits[:, :, 7:8]
            logits[:, :, 300:303] = logits[:, :, 300:301].max() + 5
        if step == 3 and batch > 1:  # a row drop: each remaining row keeps its own generator
            keep = np.arange(1, batch)
            host.keep_rows(keep)
            graph.keep_rows(keep)
            batch -= 1
            logits = logits[np.concatenate([keep, keep + batch + 1])]
        state = [g.bit_generator.state for g in host.generators]
        uniform = np.concatenate([g.random((4, 1)) for g in host.generators])
        for g, st in zip(host.generators, state):
            g.bit_generator.state = st
        margins.append(_margin(logits, 3.0, kw, uniform))
        want = host(classifier_free_guidance(logits, 3.0))
        got, nonfinite = graph(logits)
        np.testing.assert_array_equal(got, want)
        assert not nonfinite.any()
    print(f"{kw} batch {batch} ties {ties}: closest draw {min(margins):.2e} of the mass from a boundary")


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_greedy_graph_is_argmax_of_the_guided_logits(batch):
    rng = np.random.default_rng(batch)
    logits = rng.standard_normal((2 * batch, 4, V)).astype(np.float32)
    logits[:, :, 900:905] = 50.0  # ties: the first index wins, as numpy's argmax
    got, nonfinite = GraphSampler(Sampler(True), 3.0)(logits)
    np.testing.assert_array_equal(got, Sampler(True)(classifier_free_guidance(logits, 3.0)))
    assert not nonfinite.any()


def test_nonfinite_flags_say_which_logits_broke():
    logits = np.zeros((2, 4, V), dtype=np.float32)
    for greedy in (True, False):
        sampler = GraphSampler(Sampler(greedy, seed=0, rows=1), 3.0)
        bad = logits.copy()
        bad[1, 2, 5] = np.nan
        assert sampler(bad)[1].tolist() == [True, True]
        huge = logits.copy()
        huge[0, 0, 0], huge[1, 0, 0] = 3e38, -3e38  # finite logits whose guided combination overflows
        assert sampler(huge)[1].tolist() == [False, True]
        assert sampler(logits)[1].tolist() == [False, False]


@pytest.mark.parametrize("kw", [dict(greedy=True), dict(top_k=50, seed=3), dict(top_k=2048, top_p=0.9, seed=[1, 2, 3]),
                                dict(top_k=50, seed=[4, 5, 6], drop=True), dict(top_k=50, seed=2, long=True)],
                         ids=["greedy", "seeded", "per-row-top-p", "row-drop", "long-form"])
def test_generate_with_the_graph_sampler_gives_the_numpy_samplers_codes(kw):
    import dataclasses

    from helpers import BUNDLED
    from musicgen_onnx.runtime.layouts import open_layout
    from musicgen_onnx.runtime.musicgen import MusicGen
    from musicgen_onnx.runtime.rows import LiveRows
    from musicgen_onnx.runtime.session import SessionSettings

    kw = dict(kw)
    drop, long = kw.pop("drop", False), kw.pop("long", False)
    settings = SessionSettings.resolve("cpu")
    codes, picks = [], []
    for device in (False, True):
        model = MusicGen(open_layout(BUNDLED, None, False), dataclasses.replace(settings, device_sampler=device))
        if long:
            model.manifest = dataclasses.replace(model.manifest, max_duration=2.0)
        rows = LiveRows(3)
        cancel = (lambda done, total: rows.cancel(1) if done == 15 else None) if drop else None
        real = GraphSampler.__call__
        calls = []
        GraphSampler.__call__ = lambda self, logits: (calls.append(1), real(self, logits))[1]
        try:
            codes.append(model.generate(["sad jazz", "lofi beat", "calm piano"], duration=3.0 if long else 1.0,
                                        extend_stride=1.5 if long else None, rows=rows, progress=cancel,
                                        return_codes=True, **kw)[1])
        finally:
            GraphSampler.__call__ = real
        picks.append(len(calls))
    np.testing.assert_array_equal(*codes)
    assert picks[0] == 0 and picks[1] > 50  # the second run really picked its tokens with the graph
