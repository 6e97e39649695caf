"""Can a short segment's frequency decoder be cropped, exactly, to the frames apply_model keeps?

apply_model runs a short chunk (a melody's only or last segment) centred in a full 7.8 s segment of zero
padding and keeps the centre (``center_trim``). The frequency branch never strides along time, so if its
decoder were local in time, computing it on the kept frames plus a margin would give the kept samples
exactly. This measures whether it is, on the model itself (torch, no export): the cross-transformer's
output and every skip are cropped along time right before the decoder (``index_select`` on entry to the
first decoder layer and on every skip), the returned frames are put back into a zero spectrogram, and the
separated segment is compared with the uncropped one on the kept samples. The margin is the decoder's
time reach (every conv's ``dilation * (kernel - 1) // 2`` along time, summed: an upper bound for a chain)
plus the inverse STFT's ``n_fft // hop``.

Two models: the one given (htdemucs), and the same weights with the GroupNorms inside its frequency
decoder replaced by Identity ("decoder norms removed", not a usable model: a control that shows the
crop, the margin and the placement are right, so what differs in the first row is the norms alone).

    python -m benchmarks.decoder_crop [--arch htdemucs] [--seconds 3 4.15] [--layer-scales 0.01 0.1] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

import numpy as np
import torch
from torch import nn


class _CropOnEntry(nn.Module):
    """A frequency decoder layer that first keeps ``frames`` of its skip (and, for the first layer, of
    the transformer's output): the one crop before the decoder loop, without copying its body."""

    def __init__(self, layer: nn.Module, frames: torch.Tensor, first: bool):
        super().__init__()
        self.layer, self.frames, self.first = layer, frames, first

    def forward(self, x, skip, length):
        if self.first:
            x = x.index_select(-1, self.frames)
        if skip is not None:
            skip = skip.index_select(-1, self.frames)
        return self.layer(x, skip, length)


@contextlib.contextmanager
def cropped_decoder(model, frames: torch.Tensor):
    layers = list(model.decoder)
    for i, layer in enumerate(layers):
        model.decoder[i] = _CropOnEntry(layer, frames, i == 0)
    try:
        yield
    finally:
        for i, layer in enumerate(layers):
            model.decoder[i] = layer


def time_reach(model) -> int:
    """Frames either side that one output frame of the frequency decoder reads, if it is local: every
    Conv1d/Conv2d's ``dilation * (kernel - 1) // 2`` along time (the last axis), summed."""
    if not all(layer.freq for layer in model.decoder):
        raise ValueError("a decoder layer strides time (the frequency axis collapsed to one bin): no crop")
    reach = 0
    for module in model.decoder.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            reach += module.dilation[-1] * (module.kernel_size[-1] - 1) // 2
    return reach


def time_global(model) -> list[str]:
    """The frequency decoder's modules whose output at one frame depends on every frame."""
    return [name for name, m in model.decoder.named_modules()
            if isinstance(m, (nn.GroupNorm, nn.LSTM, nn.MultiheadAttention)) or type(m).__name__ == "LocalState"]


def with_decoder_layer_scale(model, value: float):
    """The same weights with the frequency decoder's DConv LayerScales (demucs initialises them to
    ``dconv_init``, 1e-3 for htdemucs; training moves them) set to ``value``: how the crop's error grows
    with the weight of the residual branches that hold the norms."""
    other = copy.deepcopy(model)
    for m in other.decoder.modules():
        if type(m).__name__ == "LayerScale":
            m.scale.data.fill_(value)
    return other.eval()


def without_decoder_norms(model):
    """The control: the same weights, the frequency decoder's GroupNorms replaced by Identity."""
    other = copy.deepcopy(model)
    for parent in list(other.decoder.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.GroupNorm):
                setattr(parent, name, nn.Identity())
    return other.eval()


class TorchGraph:
    """The runtime's graph interface around StemsCore, with the frequency decoder cropped to ``frames``
    (None: all) and the returned frames placed into a zero spectrogram of the full frame count."""

    def __init__(self, model, frames: np.ndarray | None):
        from musicgen_onnx.export.stems import INPUTS, StemsCore

        self.model, self.core, self.inputs = model, StemsCore(model).eval(), INPUTS
        self.frames = None if frames is None else torch.from_numpy(frames)
        self.seconds = 0.0

    @torch.no_grad()
    def run(self, outputs, feeds):
        wave, spec = (torch.from_numpy(feeds[n]) for n in self.inputs)
        start = time.perf_counter()
        if self.frames is None:
            t, f = self.core(wave, spec)
        else:
            with cropped_decoder(self.model, self.frames):
                t, f = self.core(wave, spec)
            full = torch.zeros(*f.shape[:-1], spec.shape[-1])
            full[..., self.frames] = f
            f = full
        self.seconds = time.perf_counter() - start
        return [t.numpy(), f.numpy()]


def measure(model, seconds: float, seed: int = 0, lead: int | None = None) -> dict:
    """One short segment (``seconds`` of music plus ``lead`` samples of the shift's silence, by default
    half the largest shift, centred as apply_model pads it):
    the melody stems with the decoder cropped vs whole, on the kept samples."""
    from benchmarks.bench_stems import music
    from musicgen_onnx.export.stems import stems_params
    from musicgen_onnx.runtime import roles
    from musicgen_onnx.runtime.manifest import GraphInfo
    from musicgen_onnx.runtime.stems import StemSeparator

    p = stems_params(model)
    seg, hop = p.segment_length, p.hop_length
    size = min(int(seconds * p.sample_rate) + (p.max_shift // 2 if lead is None else lead), seg)
    trim = (seg - size) // 2
    x = np.zeros((1, p.audio_channels, seg), np.float32)
    x[..., trim:trim + size] = music(size / p.sample_rate, p.sample_rate, 1, seed)[..., :size]
    reach = time_reach(model)
    margin = reach + p.n_fft // hop
    frames = np.arange(max(0, trim // hop - margin), min(p.frames, (trim + size - 1) // hop + margin + 1))
    names = [roles.STEMS_WAVE, roles.STEMS_SPEC, roles.STEMS_TIME, roles.STEMS_FREQ]
    info = GraphInfo(file="stems.onnx", precision="fp32", inputs=tuple(names[:2]), outputs=tuple(names[2:]),
                     roles={n: n for n in names})
    got = {}
    times = {}
    for label, keep in (("whole", None), ("cropped", frames)):
        graph = TorchGraph(model, keep)
        out = StemSeparator(graph, p, info)._model(x, melody=True)[..., trim:trim + size]
        got[label], times[label] = out, graph.seconds
    diff = float(np.abs(got["cropped"] - got["whole"]).max())
    return {"seconds": seconds, "kept_samples": size, "frames": int(len(frames)), "of_frames": p.frames,
            "reach": reach, "margin": margin, "diff_over_input_peak": diff / float(np.abs(x).max()),
            "diff_over_output_peak": diff / float(np.abs(got["whole"]).max()),
            "torch_whole_s": times["whole"], "torch_cropped_s": times["cropped"]}


def main(argv=None) -> None:
    from musicgen_onnx.export import random_demucs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="htdemucs", choices=sorted(random_demucs.ARCHITECTURES))
    ap.add_argument("--seconds", type=float, nargs="+", default=[3.0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layer-scales", type=float, nargs="*", default=[0.01, 0.1],
                    help="also rows with the decoder's DConv LayerScales set to these")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = random_demucs.random_htdemucs(args.arch, seed=0)
    print(f"time-global modules in the frequency decoder: {len(time_global(model))} "
          f"({', '.join(time_global(model)[:4])}, ...)")
    print("| model | melody s | frames computed | margin | max diff / input peak | / output peak "
          "| torch whole s | cropped s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    models = [(f"{args.arch} (random, LayerScale 1e-3 as initialised)", model),
              *((f"{args.arch}, decoder LayerScale {v:g}", with_decoder_layer_scale(model, v))
                for v in args.layer_scales),
              ("decoder norms removed (control)", without_decoder_norms(model))]
    for label, m in models:
        for seconds in args.seconds:
            r = measure(m, seconds)
            print(f"| {label} | {seconds:g} | {r['frames']} of {r['of_frames']} | {r['margin']} | "
                  f"{r['diff_over_input_peak']:.2e} | {r['diff_over_output_peak']:.2e} | {r['torch_whole_s']:.2f} | "
                  f"{r['torch_cropped_s']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
