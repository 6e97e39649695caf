"""Validation of each written graph against its torch module, on cases computed while the real weights
were loaded (the graphs are written from placeholders afterwards, see :mod:`.placeholders`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..runtime import roles
from ..runtime.session import SessionSettings, open_session
from . import validate
from .tracing import GraphSpec

# The runtime's session settings on CPU, with the node order that keeps an fp16 graph's fp32 weight
# copies one at a time (melody-large fp16 decoder: validation peaked at 19 GB with the default order).
VALIDATION_SESSION = SessionSettings(priority_order=True)

def reference_cases(spec: GraphSpec):
    """``(inputs, torch outputs)`` of every validation case, computed while the real weights are loaded,
    so that validation can run after they have been dropped."""
    with torch.no_grad():
        for case in [spec.example, *spec.cases]:
            want = spec.module(*case)
            yield case, (want if isinstance(want, tuple) else (want,))


def store_references(spec: GraphSpec, folder: Path) -> list[Path]:
    """Keep each validation case (inputs and torch outputs) in a file of its own, read back one at a time
    while validating: held in memory, the decoder's cases (KV caches of 48 layers at several batch sizes)
    were ~0.45 GB of melody-large's export peak, next to a 4.9 GB fp16 decoder. ``spec.cases`` is emptied."""
    files = []
    for n, (case, want) in enumerate(reference_cases(spec)):
        path = folder / f"{spec.name}.{n}.npz"
        np.savez(path, *[t.numpy() for t in case], *[t.numpy() for t in want])
        files.append(path)
    spec.cases = []
    return files


def _load_case(path: Path, inputs: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    with np.load(path) as stored:
        arrays = [stored[f"arr_{i}"] for i in range(len(stored.files))]
    return arrays[:inputs], arrays[inputs:]


def validate_graph(spec: GraphSpec, path: Path, precision: str, cases: list[Path],
                   atol: float | None = None, rtol: float | None = None) -> None:
    """``cases``: the files :func:`store_references` wrote for this graph."""
    session = open_session(path, VALIDATION_SESSION)
    if spec.name == "audio_encoder":  # codes from an argmin: judged by the fraction that differ
        tol = validate.CODE_MISMATCH[precision]
    else:
        tol = validate.TOLERANCES[precision][spec.name].overridden(atol, rtol)
    input_types = {i.name: i.type for i in session.get_inputs()}
    for n, file in enumerate(cases):
        case, want = _load_case(file, len(spec.input_names))
        feeds = {name: a.astype(np.float16) if input_types[name] == "tensor(float16)" else a
                 for name, a in zip(spec.input_names, case)}
        got = session.run(spec.output_names, feeds)
        if roles.TOTAL_LENGTH in feeds:  # static cache: only the filled part of each buffer is defined
            total = int(feeds[roles.TOTAL_LENGTH])
            got = [got[0], *[g[:, :, :total] for g in got[1:]]]
            want = [want[0], *[w[:, :, :total] for w in want[1:]]]
        shape = ", ".join(f"{k}={tuple(v.shape)}" for k, v in list(feeds.items())[:2])
        validate.compare(spec.name, spec.output_names, got, want, tol, f" (case {n}: {shape})")
        del case, want, feeds, got


def references(model, conditioning: str, specs: list[GraphSpec], step, atol: float | None, rtol: float | None,
               folder: Path) -> dict[str, list[Path]]:
    """Check the wrappers against transformers and compute every graph's torch outputs on its validation
    cases (kept in ``folder``): the only time the real weights are needed in memory."""
    by_name = {s.name: s for s in specs}
    step("checking the export wrappers against transformers")
    validate.check_wrappers_against_transformers(
        model, by_name["text_encoder"].module, by_name["decoder"].module, conditioning,
        validate.WRAPPER_TOLERANCE.overridden(atol, rtol))
    validate.check_codec_against_transformers(
        model.audio_encoder, by_name["audio_decoder"].module, by_name["audio_encoder"].module,
        validate.CODEC_WRAPPER_TOLERANCE.overridden(atol, rtol))
    step("computing the torch reference outputs")
    return {spec.name: store_references(spec, folder) for spec in specs}
