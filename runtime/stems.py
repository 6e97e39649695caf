"""Stem separation with HTDemucs in numpy + onnxruntime: Demucs's ``apply_model``, without torch.

``stems.onnx`` holds HTDemucs's two U-Nets and their cross-transformer. What ``HTDemucs.forward`` does
around them, and what ``demucs.apply.apply_model`` does around the model, is here, step for step, so
the stems equal ``apply_model(model, mix, shifts=1, split=True, overlap=0.25)`` for the same shift:

* the shift trick: the mix is delayed by ``max_shift - shift`` samples of silence, separated, and the
  delay removed (``shift`` is the random ``randint(0, max_shift)`` of ``apply_model``; here the caller
  gives it or a seeded generator draws it, so a seeded call is reproducible);
* split: segments of the model's fixed length every ``(1 - overlap) * segment`` samples, each short
  last segment centred in context (``TensorChunk.padded``), blended with triangular weights;
* per segment, the model's own normalisation (mean/std of the waveform and of its spectrogram), the
  STFT (HTDemucs ``_spec``: reflect padding by 3/4 hop, ``torch.stft(normalized=True)``, frames 2..),
  the complex-as-channels mask and the inverse STFT (``_ispec``), then time + frequency branch.

Segments go through onnxruntime ``segments_per_run`` at a time (the rows of a batch together), and
finished output leaves as soon as no later segment overlaps it (:meth:`StemSeparator.blocks`):
memory holds a few segments, never the spectrogram of a whole track. Demucs's own CLI also
normalises the whole track by its mono mix's mean/std around the model (``demucs.api.Separator``);
audiocraft's chroma path does not. The ``stems`` command does (``blocks(center=, scale=)``), melodies
do not.

Two segment plans (:func:`segment_plan`). ``exact`` is ``apply_model``'s above, and the only one the
``stems`` command uses (its output is audio people listen to). ``fast`` is for the melody path only,
whose output is read through a 12-bin argmax per chroma frame: the fewest segments that cover the
shifted input (``ceil(length / segment)``, spread evenly from 0 to the end, the small overlaps blended
with the same triangles), 4 model calls for a 30 s melody where ``apply_model`` makes 6. It keeps the
shift lead. Dropping it was measured (benchmarks/bench_melody_stems.py, full-size htdemucs with random
weights): the exact tier's own chroma moves on 12% of the held set's frames (up to 54% of one melody's)
from one random shift to another, and no lead is one such shift (``max_shift``): a 3 s melody kept 33%
of the exact tier's frames without the lead, all of them with it. With the lead, a melody shorter than the stride less the lead is separated exactly as
``apply_model`` does it, and every melody's first segment is the exact plan's. The lead adds a segment
only to an input within 0.5 s below a multiple of the segment.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import audio as audio_io
from . import roles
from .errors import InvalidInputError, ModelFolderError
from .folder_kind import STEMS, folder_kind
from .manifest import GraphInfo, StemsParams, load_manifest, load_stems_manifest, verify_graph_files
from .options import check_seed
from .resample_frac import resample_frac
from .session import SessionSettings, open_graph
from .stft import centered_frames, hann

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]  # (segments done, segments in all)
EPS = 1e-5  # HTDemucs: (x - mean) / (1e-5 + std)
# Segments per onnxruntime call (rows of a batch of melodies always share a call). Measured on the full-size
# htdemucs, 30 s stereo, 2 CPU threads (benchmarks/bench_stems.py): 4 per call was 1.29x slower than 1 and
# doubled the peak RSS (3.9 vs 2.0 GB); on a GPU more per call may pay.
MAX_SEGMENTS_PER_RUN = 1
EXACT, FAST = "exact", "fast"
PLANS = (EXACT, FAST)


# ---------------------------------------------------------------- STFT as torch.stft / torch.istft
def stft(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """``torch.stft(x, n_fft, hop, window=hann(n_fft), normalized=True, center=True, pad_mode='reflect',
    return_complex=True)`` over the last axis: ``[..., n_fft // 2 + 1, frames]`` complex64."""
    spec = np.fft.rfft(centered_frames(x, n_fft, hop) * hann(n_fft), axis=-1, norm="ortho")
    return np.swapaxes(spec, -1, -2).astype(np.complex64, copy=False)


def istft(z: np.ndarray, hop: int, length: int) -> np.ndarray:
    """``torch.istft(z, n_fft, hop, window=hann(n_fft), normalized=True, center=True, length=length)``
    for ``z [..., n_fft // 2 + 1, frames]``: windowed overlap-add divided by the summed squared window."""
    n_fft = 2 * z.shape[-2] - 2
    window = hann(n_fft)
    frames = np.fft.irfft(np.swapaxes(z, -1, -2), n=n_fft, axis=-1, norm="ortho").astype(np.float32) * window
    count = frames.shape[-2]
    total = n_fft + hop * (count - 1)
    out = np.zeros(frames.shape[:-2] + (total,), dtype=np.float32)
    envelope = np.zeros(total, dtype=np.float32)
    per = n_fft // hop
    for k in range(per):  # overlap-add, one hop-sized quarter of every frame at a time
        piece = frames[..., k * hop:(k + 1) * hop]
        out[..., k * hop:k * hop + count * hop] += piece.reshape(*piece.shape[:-2], count * hop)
        envelope[k * hop:k * hop + count * hop] += np.tile(window[k * hop:(k + 1) * hop] ** 2, count)
    start = n_fft // 2
    out = out[..., start:start + length]
    env = envelope[start:start + length]
    if np.any(np.abs(env) < 1e-11):
        raise ModelFolderError("stems: the inverse STFT's window envelope vanishes (NOLA), the STFT parameters are broken")
    out = out / env
    if out.shape[-1] < length:
        out = np.pad(out, [(0, 0)] * (out.ndim - 1) + [(0, length - out.shape[-1])])
    return out


def _pad1d_reflect(x: np.ndarray, left: int, right: int) -> np.ndarray:
    """demucs ``pad1d(mode='reflect')``: reflect, after zero padding an input too short to reflect."""
    length = x.shape[-1]
    if length <= max(left, right):
        extra = max(left, right) - length + 1
        extra_right = min(right, extra)
        extra_left = extra - extra_right
        left, right = left - extra_left, right - extra_right
        x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(extra_left, extra_right)])
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(left, right)], mode="reflect")


def model_spectrogram(x: np.ndarray, p: StemsParams) -> np.ndarray:
    """HTDemucs ``_spec``: ``[..., samples]`` -> ``[..., n_fft // 2, ceil(samples / hop)]`` complex64."""
    hop = p.hop_length
    frames = -(-x.shape[-1] // hop)
    pad = hop // 2 * 3
    x = _pad1d_reflect(x, pad, pad + frames * hop - x.shape[-1])
    return stft(x, p.n_fft, hop)[..., :-1, 2:2 + frames]


def model_inverse(z: np.ndarray, p: StemsParams, length: int) -> np.ndarray:
    """HTDemucs ``_ispec``: ``[..., n_fft // 2, frames]`` -> ``[..., length]`` float32."""
    hop = p.hop_length
    z = np.pad(z, [(0, 0)] * (z.ndim - 2) + [(0, 1), (2, 2)])
    pad = hop // 2 * 3
    total = hop * -(-length // hop) + 2 * pad
    return istft(z, hop, total)[..., pad:pad + length]


def _mono_stats(mix: np.ndarray, block: int = 1 << 20) -> tuple[np.float32, np.float32]:
    """demucs ``Separator``'s ``ref = wav.mean(0)``; ``ref.mean()``, ``ref.std() + 1e-8``, block by block
    (two passes in float64) so an hour of audio is not copied to find them."""
    n = mix.shape[-1]
    total = sum(float(mix[:, i:i + block].mean(axis=0, dtype=np.float64).sum()) for i in range(0, n, block))
    mean = total / n
    squares = sum(float(((mix[:, i:i + block].mean(axis=0, dtype=np.float64) - mean) ** 2).sum())
                  for i in range(0, n, block))
    return np.float32(mean), np.float32(np.sqrt(squares / max(n - 1, 1)) + 1e-8)


def _stats(x: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased std (torch's ``std`` default) over ``axes``, kept for broadcasting."""
    x64 = x.astype(np.float64)
    return (x64.mean(axis=axes, keepdims=True).astype(np.float32),
            x64.std(axis=axes, keepdims=True, ddof=1).astype(np.float32))


# ---------------------------------------------------------------- segment plans: (offset, size) per model call
def segment_plan(plan: str, length: int, segment: int, stride: int) -> list[tuple[int, int]]:
    """Where the model runs over ``length`` samples: ``(offset, size)`` per segment, offsets increasing,
    every sample covered; a segment with ``size < segment`` is centred in context (``TensorChunk.padded``).
    ``exact``: ``apply_model``'s split, one segment every ``stride`` samples, the last one short.
    ``fast``: ``ceil(length / segment)`` full segments, the first at 0, the last ending at ``length``,
    the rest evenly between (the overlaps shrink to what covering needs); an input up to one stride
    long is the one segment ``exact`` makes."""
    if plan == EXACT:
        return [(offset, min(segment, length - offset)) for offset in range(0, length, stride)]
    count = -(-length // segment)
    if count <= 1:
        return [(0, length)] if length else []
    return [(i * (length - segment) // (count - 1), segment) for i in range(count)]


@functools.lru_cache(maxsize=4)
def _segment_weight(seg: int, transition_power: float) -> np.ndarray:
    """apply_model's triangle, maximal mid-segment, normalised and raised to ``transition_power``; cached by
    the numbers, not per separator (the melody path makes a separator per call)."""
    ramp = np.concatenate([np.arange(1, seg // 2 + 1), np.arange(seg - seg // 2, 0, -1)]).astype(np.float32)
    return (ramp / ramp.max()) ** np.float32(transition_power)


# ---------------------------------------------------------------- the separator
class StemSeparator:
    """``stems.onnx`` and its parameters; :meth:`separate` is ``apply_model`` for one shift. ``plan``:
    the melody path's segment plan (:func:`segment_plan`); the full stems always take ``exact``."""

    def __init__(self, graph, params: StemsParams, info: GraphInfo, segments_per_run: int = MAX_SEGMENTS_PER_RUN,
                 plan: str = EXACT):
        if plan not in PLANS:
            raise InvalidInputError(f"stems plan must be one of {', '.join(PLANS)}, got {plan!r}")
        self.graph = graph
        self.params = params
        self.inputs = info.names([roles.STEMS_WAVE, roles.STEMS_SPEC])
        self.outputs = info.names([roles.STEMS_TIME, roles.STEMS_FREQ])
        self.segments_per_run = segments_per_run
        self.plan = plan

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, providers=None, threads: int | None = None,
                    verify_hashes: bool = True, graph: str = "stems", plan: str = EXACT) -> "StemSeparator":
        """A MusicGen folder exported with ``--stems`` or a stems-only folder (``export-stems``); ``graph``
        "stems_fast": its int8 graph (the melody path's fast tier), where it has one."""
        folder = Path(folder)
        if folder_kind(folder) == STEMS:
            manifest = load_stems_manifest(folder)
        else:
            manifest = load_manifest(folder)
            if manifest.stems is None:
                raise ModelFolderError(f"{folder}: this export has no stems graph (export it with --stems DEMUCS, "
                                       f"or make a stems folder with export-stems)")
        if graph not in manifest.graphs:
            raise ModelFolderError(f"{folder}: this export has no {graph} graph")
        verify_graph_files(folder, {graph: manifest.graphs[graph]}, verify_hashes)
        return cls.open(folder, manifest, SessionSettings.resolve(providers, threads), graph, plan)

    @classmethod
    def open(cls, folder: Path, manifest, settings: SessionSettings, graph: str = "stems",
             plan: str = EXACT) -> "StemSeparator":
        from .manifest import folder_file

        info = manifest.graphs[graph]
        return cls(open_graph(folder, graph, folder_file(folder, info.file), manifest, settings), manifest.stems, info,
                   plan=plan)

    @property
    def sources(self) -> tuple[str, ...]:
        return self.params.sources

    # ---- one model call on a batch of segments (HTDemucs.forward with the graph in the middle)
    def _model(self, x: np.ndarray, melody: bool = False) -> np.ndarray:
        """``x [n, channels, segment_length]`` -> stems ``[n, sources, channels, segment_length]``; with
        ``melody``, ``[n, 1, 1, segment_length]``: the melody sources summed and the channels averaged.
        Everything after the graph (de-normalisation, inverse STFT, blending) is linear, so the melody
        path sums first and runs one inverse STFT per segment instead of sources x channels."""
        p = self.params
        n, c, length = x.shape
        z = model_spectrogram(x, p)  # [n, c, F, T]
        mag = np.stack([z.real, z.imag], axis=2).reshape(n, 2 * c, p.freqs, p.frames)  # complex as channels
        mean, std = _stats(mag, (1, 2, 3))
        meant, stdt = _stats(x, (1, 2))
        feeds = dict(zip(self.inputs, ((x - meant) / (EPS + stdt), (mag - mean) / (EPS + std))))
        wave, spec = self.graph.run(self.outputs, feeds)
        s = len(p.sources)
        wave = wave.reshape(n, s, c, length)
        spec = spec.reshape(n, s, c, 2, p.freqs, p.frames)
        std, mean, stdt, meant = std.reshape(n, 1, 1, 1, 1, 1), mean.reshape(n, 1, 1, 1, 1, 1), stdt[:, None], meant[:, None]
        if melody:
            picked = list(p.melody_indices)
            k = np.float32(len(picked))
            spec = spec[:, picked].sum(axis=1).mean(axis=1)[:, None, None] * std + k * mean
            wave = wave[:, picked].sum(axis=1).mean(axis=1)[:, None, None] * stdt + k * meant
        else:
            spec = spec * std + mean
            wave = wave * stdt + meant
        return wave + model_inverse(spec[..., 0, :, :] + 1j * spec[..., 1, :, :], p, length)

    # ---- apply_model(shifts=1, split=True)
    def blocks(self, mix: np.ndarray, shift: int, progress: ProgressFn | None = None,
               center: float = 0.0, scale: float = 1.0, melody: bool = False) -> Iterator[np.ndarray]:
        """Stems of ``(mix - center) / scale`` for ``mix [batch, channels, samples]`` (at the model's rate
        and channels) as consecutive blocks ``[batch, sources, channels, n]``, each final when yielded;
        all rows share ``shift`` (as one ``apply_model`` call on a batch does). The normalisation is
        applied per segment, so a long track is never copied whole. ``melody``: blocks
        ``[batch, 1, 1, n]``, the melody sources summed and channels averaged (:meth:`_model`), over
        the separator's ``plan``."""
        p = self.params
        batch, channels, samples = mix.shape
        if not 0 <= shift <= p.max_shift:
            raise InvalidInputError(f"stems shift must be in [0, {p.max_shift}] samples, got {shift}")
        plan = self.plan if melody else EXACT
        lead = p.max_shift - shift  # the shifted signal is `lead` samples of silence, then the mix
        length = samples + lead
        seg = p.segment_length
        weight = self._weight()
        segments = segment_plan(plan, length, seg, p.stride)
        offsets = [offset for offset, _ in segments]

        def window(start: int, size: int) -> np.ndarray:  # shifted coordinates, zeros outside the mix
            out = np.zeros((batch, channels, size), dtype=np.float32)
            lo, hi = max(start, lead), min(start + size, lead + samples)
            if hi > lo:
                out[:, :, lo - start:hi - start] = mix[:, :, lo - lead:hi - lead]
                if center or scale != 1.0:
                    out[:, :, lo - start:hi - start] -= np.float32(center)
                    out[:, :, lo - start:hi - start] /= np.float32(scale)
            return out

        sources, out_channels = (1, 1) if melody else (len(p.sources), channels)
        pending = np.zeros((batch, sources, out_channels, 0), dtype=np.float32)
        weights = np.zeros(0, dtype=np.float32)
        base = 0  # shifted index of pending[..., 0]
        per_run = max(1, self.segments_per_run // batch)
        done = 0
        for first in range(0, len(offsets), per_run):
            group = segments[first:first + per_run]
            # TensorChunk(offset, seg).padded(seg): a short chunk is centred in context
            chunks = [window(offset - (seg - size) // 2, seg) for offset, size in group]
            out = self._model(np.concatenate(chunks), melody).reshape(len(group), batch, sources, out_channels, seg)
            for (offset, size), stems in zip(group, out):
                trim = (seg - size) // 2  # center_trim
                stems = stems[..., trim:trim + size]
                end = offset + size - base
                if end > pending.shape[-1]:
                    grow = end - pending.shape[-1]
                    pending = np.concatenate([pending, np.zeros(pending.shape[:-1] + (grow,), np.float32)], axis=-1)
                    weights = np.concatenate([weights, np.zeros(grow, np.float32)])
                pending[..., offset - base:end] += weight[:size] * stems
                weights[offset - base:end] += weight[:size]
                done += 1
                if progress:
                    progress(done, len(offsets))
            final = offsets[first + len(group)] if first + len(group) < len(offsets) else length
            ready = final - base
            block = pending[..., :ready] / weights[:ready]
            pending, weights, base = pending[..., ready:], weights[ready:], final
            keep = max(0, lead - (final - ready))  # drop the leading silence of the shift
            if block.shape[-1] > keep:
                yield block[..., keep:]

    def _weight(self) -> np.ndarray:
        return _segment_weight(self.params.segment_length, self.params.transition_power)

    def separate(self, mix: np.ndarray, shift: int, progress: ProgressFn | None = None) -> np.ndarray:
        """``mix [batch, channels, samples]`` -> ``[batch, sources, channels, samples]``."""
        return np.concatenate(list(self.blocks(mix, shift, progress)), axis=-1)

    def draw_shift(self, rng: np.random.Generator) -> int:
        """``apply_model``'s ``random.randint(0, max_shift)``, drawn from ``rng`` instead of Python's ``random``."""
        return int(rng.integers(0, self.params.max_shift + 1))

    # ---- audiocraft's ChromaStemConditioner._get_stemmed_wav
    def melody(self, wavs: np.ndarray, sample_rate: int, shift: int, progress: ProgressFn | None = None) -> np.ndarray:
        """``wavs [batch, samples]`` (mono, audiocraft's collated melodies) -> the melody stems summed,
        mono, at ``sample_rate``: ``convert_audio`` to the model's rate and channels (channels, then
        julius), ``apply_model`` (or the fast plan), ``stems[:, melody_indices].sum(1)``, channel mean,
        julius back."""
        p = self.params
        mix = resample_frac(np.repeat(wavs[:, None], p.audio_channels, axis=1), sample_rate, p.sample_rate)
        parts = [block[:, 0, 0] for block in self.blocks(mix, shift, progress, melody=True)]
        picked = np.concatenate(parts, axis=-1) if parts else np.zeros((mix.shape[0], 0), dtype=np.float32)
        return resample_frac(picked, p.sample_rate, sample_rate)

    # ---- the stems command: a file in, one float WAV per source out
    def prepare_mix(self, wav: np.ndarray, sample_rate: int, what: str) -> np.ndarray:
        """``wav [channels, samples]`` -> ``[channels, samples]`` at the model's rate and channels
        (demucs ``convert_audio``: mono is duplicated; more channels than the model's are refused rather
        than silently dropped), or a one-line error for what has nothing to separate."""
        p = self.params
        channels = wav.shape[0]
        if channels not in (1, p.audio_channels):
            raise InvalidInputError(f"{what} has {channels} channels; stems takes mono or {p.audio_channels}-channel "
                                    f"audio (downmix it first, e.g. ffmpeg -ac {p.audio_channels})")
        audio_io.check_min_samples(wav, sample_rate, p.n_fft, p.sample_rate, what, "stem separation (one STFT window)")
        if float(np.max(np.abs(wav))) < 1e-4:
            raise InvalidInputError(f"{what} is silent (peak below -80 dBFS): there are no stems to separate")
        if channels != p.audio_channels:
            wav = np.repeat(wav, p.audio_channels, axis=0)
        return resample_frac(wav, sample_rate, p.sample_rate)

    def track_blocks(self, wav: np.ndarray, sample_rate: int, what: str, seed: int | None = None,
                     progress: ProgressFn | None = None) -> Iterator[np.ndarray]:
        """demucs's ``separate`` on a decoded track ``wav [channels, samples]``: consecutive final blocks
        ``[sources, channels, n]`` at the model's rate (the track normalised by its mono mix's mean/std
        around the model). Shared by :meth:`separate_file` and the service's ``POST /v1/stems``. The
        input is checked before the first block is asked for."""
        check_seed(seed)
        mix = self.prepare_mix(wav, sample_rate, what)
        mean, std = _mono_stats(mix)
        shift = self.draw_shift(np.random.default_rng(seed))
        return (block[0] * std + mean for block in self.blocks(mix[None], shift, progress, center=mean, scale=std))

    def separate_file(self, path: str | os.PathLike, out_dir: str | os.PathLike, seed: int | None = None,
                      progress: ProgressFn | None = None) -> list[Path]:
        """Separate an audio file into ``out_dir/SOURCE.wav`` (float WAV at the model's rate), as demucs's
        own ``separate`` does (the track normalised by its mono mix's mean/std around the model).
        Stems are written while segments finish and renamed into place together at the end: nothing
        half-written is left on error or interrupt."""
        from .audio import StreamingWriter

        targets = [Path(out_dir) / f"{name}.wav" for name in self.sources]
        audio_io.check_outputs_spare_input(targets, path, "input")
        wav, sr = audio_io.load_audio(path, "input")
        track = self.track_blocks(wav, sr, f"input file {str(path)!r}", seed, progress)
        del wav  # an hour of audio: hold the model-rate copy only
        writers: list[StreamingWriter] = []
        written: list[Path] = []
        try:
            for target in targets:  # one by one, so a refusal aborts the writers already made
                writers.append(StreamingWriter(target, self.params.sample_rate, self.params.audio_channels))
            for block in track:
                for writer, stem in zip(writers, block):
                    writer.write(stem)
            for writer in writers:
                written.append(writer.commit_as_written())
        except BaseException:
            for writer in writers:
                writer.abort()
            for done in written:
                done.unlink(missing_ok=True)
            raise
        return written
