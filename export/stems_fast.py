"""``stems.onnx`` -> ``stems_fast.onnx``: the int8 graph the melody path separates with (the fast tier).

The melody path reads only the chroma of vocals + other (12 bins, an argmax per frame), so it can take a
graph whose stems are a few percent off where the ``stems`` command, whose output people listen to,
keeps the exact fp32 graph. The recipe is what measured fastest on a 2-thread AVX512-VNNI CPU for the
released htdemucs architecture (random weights, one 7.8 s segment; numbers in the README):

* every ``Conv`` quantised statically (QOperator ``QLinearConv``, per-channel int8 weights, uint8
  activations calibrated on synthetic music): int8 convs run ~3x faster than fp32, and the decoders'
  ``rewrite`` convs (a quarter of the fp32 graph's time) up to ~7x; except the outermost layers of
  both U-Nets (the first encoder and the last decoder layer of each branch), where int8 moved the
  chroma of vocals + other on 1-25% of frames and fp32 costs ~3% of the graph's CPU time;
* every ``MatMul`` (the cross-transformer's projections and feed-forward) quantised dynamically
  (``DynamicQuantizeMatMul``: the activation scale per call, no calibration, no DequantizeLinear after
  it); QDQ or static QLinearMatMul paid their gain back in DequantizeLinear / Transpose nodes;
* the attention itself (``MultiHeadAttention``, flash attention), the norms, GELU/GLU and the
  transposed convs stay fp32.

Calibration is deterministic: seeded music-like segments (mixes of chords, a drum pattern, a voice-like
line with vibrato, noise), normalised exactly as the runtime normalises what it feeds the graph (the separator's own
``_model`` around a recording graph), so the calibrated ranges are those the graph will see.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from ..runtime import roles
from ..runtime.chroma import chroma_onehot
from ..runtime.errors import ExportError
from ..runtime.manifest import FAST_STEMS_PRECISION, ChromaParams, GraphInfo, StemsParams
from ..runtime.session import open_session, stems_dims
from ..runtime.stems import StemSeparator
from .folder_manifest import graph_info

log = logging.getLogger(__name__)

NAME = "stems_fast"
PRECISION = FAST_STEMS_PRECISION
CALIBRATION_SEGMENTS = 6
CALIBRATION_SEED = 0
HELD_SEED = 1000  # the agreement check's melodies: never the calibration's
HELD_MELODIES = 3
# Frames whose chroma bin (vocals + other, the melody path's input) may differ from the exact graph's on the
# held melodies before the export refuses the fast graph (issue 27: >= 99% identical frames).
MIN_CHROMA_AGREEMENT = 0.99
KINDS = ("chords", "drums", "voice", "noise")


def describe(segments: int = CALIBRATION_SEGMENTS, seed: int = CALIBRATION_SEED) -> str:
    """What the manifest's ``source.stems_fast`` records: the recipe and its calibration data."""
    return (f"int8: Conv static per-channel (QOperator, uint8 activations; the outermost U-Net layers fp32), "
            f"MatMul dynamic; calibrated on {segments} synthetic segments, each a mix of {', '.join(KINDS)}, "
            f"numpy seed {seed}")


# ---------------------------------------------------------------- synthetic music
def synthetic_music(kind: str, samples: int, sample_rate: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """``[channels, samples]`` float32 of one kind of music-like signal, at a random level."""
    t = np.arange(samples) / sample_rate
    notes = 110.0 * 2 ** (rng.integers(0, 36, size=8) / 12)  # three octaves of semitones from A2
    step = np.minimum((t * len(notes) / max(t[-1], 1e-9)).astype(int), len(notes) - 1)
    if kind == "chords":
        root = notes[step]
        sig = sum(np.sin(2 * np.pi * root * r * t + rng.uniform(0, 6.3)) for r in (1.0, 1.26, 1.5, 2.0))
    elif kind == "drums":
        beat = rng.choice([0.25, 0.5])
        kick = np.exp(-30 * (t % beat)) * np.sin(2 * np.pi * 55 * t)
        snare = np.exp(-60 * ((t + beat / 2) % (2 * beat))) * rng.standard_normal(samples)
        sig = 1.5 * kick + 0.6 * snare + 0.3 * np.sin(2 * np.pi * notes[step] / 2 * t)
    elif kind == "voice":
        f0 = notes[step] * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))  # vibrato
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        sig = sum(np.sin(h * phase) / h ** 1.5 for h in range(1, 9)) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.7 * t) ** 2)
        sig = sig + 0.3 * np.sin(2 * np.pi * notes[0] / 2 * t)  # an accompaniment
    elif kind == "noise":
        sig = rng.standard_normal(samples).cumsum() / 60  # brown-ish noise
        sig = sig - np.convolve(sig, np.ones(256) / 256, mode="same") + 0.2 * np.sin(2 * np.pi * notes[step] * t)
    else:
        raise ValueError(kind)
    sig = sig / max(float(np.max(np.abs(sig))), 1e-6) * rng.uniform(0.1, 0.9)
    spread = 1 + 0.1 * rng.standard_normal((channels, 1))  # a little stereo
    return (sig[None] * spread + 0.005 * rng.standard_normal((channels, samples))).astype(np.float32)


def calibration_mixes(p: StemsParams, count: int = CALIBRATION_SEGMENTS, seed: int = CALIBRATION_SEED) -> list[np.ndarray]:
    """``count`` segments ``[1, channels, segment_length]``, each a mix of every one of :data:`KINDS` at
    random levels. Mixes, because what the graph separates is a mix: calibrated on the kinds one by one,
    the fast graph's chroma agreed on 98.8% of frames (6 melodies), on mixes on all of them."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        mix = sum(rng.uniform(0.2, 1.0) * synthetic_music(kind, p.segment_length, p.sample_rate, p.audio_channels, rng)
                  for kind in KINDS)
        out.append((mix / max(float(np.max(np.abs(mix))), 1e-6) * rng.uniform(0.2, 0.9))[None].astype(np.float32))
    return out


class _Recorder:
    """A stand-in for the stems graph that keeps the feeds it is given (zeros out): the runtime's own
    normalisation makes the calibration inputs."""

    def __init__(self, p: StemsParams):
        self.dims = stems_dims(p)
        self.feeds: list[dict] = []

    def run(self, outputs, feeds):
        self.feeds.append({k: v.copy() for k, v in feeds.items()})
        n = next(iter(feeds.values())).shape[0]
        shapes = [self.dims[roles.STEMS_TIME], self.dims[roles.STEMS_FREQ]]
        return [np.zeros((n, *(d[i] for i in sorted(d))), dtype=np.float32) for d in shapes]


def calibration_feeds(p: StemsParams, info: GraphInfo, count: int = CALIBRATION_SEGMENTS,
                      seed: int = CALIBRATION_SEED) -> list[dict]:
    recorder = _Recorder(p)
    separator = StemSeparator(recorder, p, info)
    for mix in calibration_mixes(p, count, seed):
        separator._model(mix)
    return recorder.feeds


# ---------------------------------------------------------------- quantisation
def quantize(exact: Path, out: Path, p: StemsParams, info: GraphInfo, segments: int = CALIBRATION_SEGMENTS,
             seed: int = CALIBRATION_SEED) -> None:
    """``exact`` (fp32 stems graph) -> ``out`` (+ ``out.data``), intermediate files in a temporary folder
    beside ``out`` (inside the export's partial folder)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_dynamic, quantize_static)

    feeds = iter(calibration_feeds(p, info, segments, seed))

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(feeds, None)

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".stems-fast-") as work:
        pre, convs = Path(work) / "pre.onnx", Path(work) / "convs.onnx"
        # onnxruntime's basic fusions first, so calibration sees the graph that will run (symbolic shape
        # inference cannot follow com.microsoft.MultiHeadAttention; onnx's own shape inference suffices).
        # No external data name: onnx refuses one that exists relative to the working directory, and
        # makes a unique one itself beside the output.
        quant_pre_process(str(exact), str(pre), skip_symbolic_shape=True, save_as_external_data=True,
                          all_tensors_to_one_file=True)
        quantize_static(str(pre), str(convs), Reader(), quant_format=QuantFormat.QOperator, op_types_to_quantize=["Conv"],
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=outer_layer_convs(pre), use_external_data_format=True)
        quantize_dynamic(str(convs), str(out), op_types_to_quantize=["MatMul"], per_channel=False,
                         weight_type=QuantType.QInt8, use_external_data_format=True)
    data = out.with_name(out.name + ".data")
    if not data.exists():
        raise ExportError(f"stems fast graph: the quantiser did not write {data.name}")


def outer_layer_convs(path: Path) -> list[str]:
    """The convolutions of the first encoder layer and the last decoder layer of each branch (frequency:
    ``encoder``/``decoder``, time: ``tencoder``/``tdecoder``), by the node names the torch export gives
    them (``/encoder.0/rewrite/Conv``): those stay fp32."""
    import re

    import onnx

    convs = [(n.name, re.match(r"/(t?)(encoder|decoder)\.(\d+)/", n.name))
             for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "Conv"]
    layers: dict[tuple[str, str], set[int]] = {}
    for _, m in convs:
        if m:
            layers.setdefault(m.group(1, 2), set()).add(int(m.group(3)))
    outer = {key: min(found) if key[1] == "encoder" else max(found) for key, found in layers.items()}
    return [name for name, m in convs if m and outer[m.group(1, 2)] == int(m.group(3))]


def chroma_agreement(exact: StemSeparator, fast: StemSeparator, melodies: list[np.ndarray],
                     chroma: ChromaParams = ChromaParams(), shift: int = 0) -> float:
    """Fraction of chroma frames (of the melody stems, as the melody path computes them) on which ``fast``
    picks the same bin as ``exact``; ``melodies``: mono at ``chroma.sample_rate``."""
    same = total = 0
    for wav in melodies:
        a, b = (chroma_onehot(s.melody(wav[None], chroma.sample_rate, shift)[0], chroma).argmax(1) for s in (exact, fast))
        same += int(np.sum(a == b))
        total += a.shape[0]
    return same / max(total, 1)


def held_melodies(p: StemsParams, chroma: ChromaParams = ChromaParams(), count: int = HELD_MELODIES,
                  seed: int = HELD_SEED) -> list[np.ndarray]:
    """Mono melodies at the chroma rate, each one and a half segments long, one kind each."""
    rng = np.random.default_rng(seed)
    samples = int(1.5 * p.segment_length / p.sample_rate * chroma.sample_rate)
    return [synthetic_music(KINDS[i % len(KINDS)], samples, chroma.sample_rate, 1, rng)[0] for i in range(count)]


def validate_fast(folder: Path, exact_info: GraphInfo, fast_info: GraphInfo, p: StemsParams,
                  minimum: float = MIN_CHROMA_AGREEMENT) -> float:
    """The fast graph's chroma against the exact graph's on held melodies; an ExportError below ``minimum``."""
    from ..runtime.session import Graph

    def separator(info: GraphInfo) -> StemSeparator:
        return StemSeparator(Graph(open_session(folder / info.file), info.file), p, info)

    agree = chroma_agreement(separator(exact_info), separator(fast_info), held_melodies(p))
    if agree < minimum:
        raise ExportError(f"stems fast graph: its chroma agrees with the exact graph's on {agree:.1%} of frames "
                          f"(at least {minimum:.0%} needed); export without it (--no-stems-fast)")
    return agree


def export_stems_fast(folder: Path, exact_info: GraphInfo, p: StemsParams, validate: bool = True,
                      step: Callable[[str], None] = log.info,
                      minimum: float = MIN_CHROMA_AGREEMENT) -> GraphInfo | None:
    """Write ``stems_fast.onnx`` (+ data) beside ``folder``'s exact ``stems.onnx``; its manifest entry, or
    None when its chroma disagrees with the exact graph's: the graph is an optional accelerator, so the
    export goes on without it (the melody path then separates with the exact graph) rather than failing."""
    if not validate:  # unchecked, it would still become the melody path's default: leave it out
        step("fast stems left out (--no-validate: its chroma would go unchecked)")
        return None
    step("quantising stems for the melody path (stems_fast, int8)")
    path = folder / f"{NAME}.onnx"
    quantize(folder / exact_info.file, path, p, exact_info)
    info = graph_info(folder, NAME, exact_info.inputs, exact_info.outputs, PRECISION)
    step("checking the fast stems' chroma against the exact graph")
    try:
        agree = validate_fast(folder, exact_info, info, p, minimum)
    except ExportError as exc:
        log.warning("%s: left out, the melody path will use the exact stems graph", exc)
        step(f"fast stems left out ({exc})")
        for name in info.files:
            (folder / name).unlink(missing_ok=True)
        return None
    step(f"fast stems: chroma agrees on {agree:.1%} of frames")
    return info
