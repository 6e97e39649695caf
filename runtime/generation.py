"""One generation call: conditioning -> windows -> steps -> codes.

A :class:`GenerationTask` holds everything a call changes (the sampler and its random state, the
window plan, the tail carried between windows, progress); the :class:`ModelParts` it reads from are
shared and never written, so one loaded model can serve concurrent calls. The task takes the parts, not
the model: the loop sits below ``MusicGen`` and never reaches back up to it. Each window runs a
:class:`StepLoop`: condition once, then one decoder call per step over the delay pattern.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import audio as audio_io
from . import device_sampler
from .chroma import batch_chroma
from .delay import DelayPattern
from .errors import InvalidInputError, ModelFolderError
from .longform import Window, plan_windows
from .manifest import Manifest
from .melody import prepare_melodies, single_window_cut, window_cut
from .options import MAX_BATCH, GenerationOptions
from .rows import LiveRows
from .sampling import Sampler, classifier_free_guidance
from .session import SessionSettings
from .stepper import Conditioning

ProgressFn = Callable[[int, int], None]
ChooseFn = Callable[[int, np.ndarray], np.ndarray]  # (step, CFG-combined logits [B, K, V]) -> tokens [B, K]


@dataclass(frozen=True)
class ModelParts:
    """What one call reads from a loaded model: its manifest, delay pattern, conditioner (prompts and
    chroma -> :class:`Conditioning`), a stepper factory ``(rows, conditioning, steps)`` and the melody
    separator ``(wavs, rngs) -> wavs`` (used only when the manifest has stems). ``folder`` names the
    model in messages; ``settings`` are its session settings."""

    folder: Path
    manifest: Manifest
    pattern: DelayPattern
    conditioner: Callable[[list[str | None], np.ndarray | None, bool], Conditioning]
    new_stepper: Callable[[int, Conditioning, int], object]
    separate_melodies: Callable[[list[np.ndarray], list[np.random.Generator]], list[np.ndarray]]
    settings: SessionSettings  # the providers; whether the sampling graphs run on the decoder's device


class StderrProgress:
    """``label: done/total unit, unit/s`` on one refreshed stderr line on a terminal; where stderr is a
    file or a pipe (a log), where ``\\r`` would make one endless line, a plain line every ``log_interval``
    seconds and at the end."""

    def __init__(self, label: str = "generating", unit: str = "steps", interval: float = 0.2,
                 log_interval: float = 5.0):
        self.label, self.unit = label, unit
        self.start = time.perf_counter()
        isatty = getattr(sys.stderr, "isatty", None)
        self.terminal = bool(isatty and isatty())
        self.interval = interval if self.terminal else log_interval
        self.last = time.perf_counter() if not self.terminal else -interval

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done != total and now - self.last < self.interval:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        line = f"{self.label}: {done}/{total} {self.unit}, {rate:.1f} {self.unit}/s"
        if self.terminal:
            sys.stderr.write(f"\r{line}" + ("\n" if done == total else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def check_descriptions(descriptions) -> list[str | None]:
    if isinstance(descriptions, str):
        descriptions = [descriptions]
    if not isinstance(descriptions, (list, tuple)) or len(descriptions) == 0:
        raise InvalidInputError("descriptions: give a non-empty list of prompts (a prompt may be None for no text)")
    if len(descriptions) > MAX_BATCH:
        raise InvalidInputError(f"descriptions: {len(descriptions)} prompts in one call, at most {MAX_BATCH} allowed; "
                                f"split them over several calls")
    for i, d in enumerate(descriptions):
        if d is not None and not isinstance(d, str):
            raise InvalidInputError(f"descriptions[{i}]: a prompt must be a string or None, got {type(d).__name__}")
    return list(descriptions)


def prompt_audio(item, sample_rate: int | None, m: Manifest, name: str = "prompt") -> np.ndarray:
    """One continuation prompt (a path, or an array with its ``sample_rate``) -> ``[channels, samples]``
    at the model's rate and channel count: mixed down for mono models, a mono prompt doubled for stereo
    ones. Read up to one second past the window: a longer prompt is refused by :func:`check_prompt_length`."""
    wav, sr, _ = audio_io.read_input(item, sample_rate, name, "prompt", max_seconds=m.max_duration + 1,
                                     min_seconds=audio_io.MIN_PROMPT_SECONDS)
    if m.audio_channels == 1:
        wav = wav.mean(axis=0, keepdims=True)
    else:
        wav = np.repeat(wav, 2, axis=0) if wav.shape[0] == 1 else wav[:2]
    return audio_io.resample(wav, sr, m.sample_rate)


def check_prompt_length(frames: int, m: Manifest, options: GenerationOptions, name: str = "prompt",
                        what: str = "prompt") -> None:
    """A continuation prompt of ``frames`` codec frames must fit the model's window and be shorter than
    the output, which includes it."""
    seconds = frames / m.frame_rate
    if frames >= m.max_frames:
        raise InvalidInputError(f"{name}: {seconds:.3g} s of audio, but a prompt must be shorter than the model's "
                                f"{m.max_duration:g} s window")
    if frames >= options.frames(m.frame_rate):
        raise InvalidInputError(f"duration {options.duration:g} s must be longer than the {what} ({seconds:.3g} s): "
                                f"the output includes it")


class StepLoop:
    """One window's autoregressive loop. Iterating yields the step index after each step; ``seq`` is
    the delayed sequence ``[B, K, frames + max_delay + 1]`` filled so far. Known positions (``prompt``
    frames, and the special token wherever the delay pattern has no frame) are never overwritten, as
    in audiocraft's ``LMModel.generate``. Between steps, ``keep_rows`` may shrink the batch."""

    def __init__(self, parts: ModelParts, descriptions: list[str | None], chroma: np.ndarray | None, frames: int,
                 guidance_scale: float, choose: ChooseFn, prompt: np.ndarray | None = None, pick=None):
        """``pick``: with CFG, raw logits -> (tokens, non-finite flags [decoder, guided]) in place of the
        host's CFG, ``isfinite`` checks and ``choose`` (device_sampler.GraphSampler)."""
        codes = np.full((len(descriptions), parts.manifest.num_codebooks, frames), -1, dtype=np.int64)  # -1: to generate
        self.start = 1
        if prompt is not None:
            codes[:, :, : prompt.shape[2]] = prompt
            self.start = prompt.shape[2] + 1
        self.seq = parts.pattern.delay(codes)
        self.guidance_scale = guidance_scale
        self.use_cfg = guidance_scale != 1.0  # at 1 the null rows cannot change the result
        self.choose = choose
        self.pick = pick if self.use_cfg else None
        self.conditioning = parts.conditioner(descriptions, chroma, self.use_cfg)
        rows = 2 * len(descriptions) if self.use_cfg else len(descriptions)
        self.stepper = parts.new_stepper(rows, self.conditioning, self.seq.shape[2])
        if self.pick is not None and hasattr(self.pick, "attach"):
            self.pick.attach(self.stepper)  # the sampling graph reads the decoder's device logits

    def __iter__(self) -> Iterator[int]:
        for s in range(self.start, self.seq.shape[2]):
            seq = self.seq  # read every step: keep_rows replaces it between steps
            if s == self.start:  # the first call: the start column and any prompt, after the prefix
                columns, new_positions = seq[:, :, :s], self.conditioning.prefix_length + s
            else:
                columns, new_positions = seq[:, :, s - 1:s], 1
            ids = np.concatenate([columns, columns]) if self.use_cfg else columns
            logits = self.stepper.run(ids, new_positions)
            if self.pick is not None:
                tokens, nonfinite = self.pick(logits)
                self._check(s, nonfinite[0], nonfinite[1])
            else:
                self._check(s, not np.isfinite(logits).all(), False)
                if self.use_cfg:
                    logits = classifier_free_guidance(logits, self.guidance_scale)
                    self._check(s, False, not np.isfinite(logits).all())
                tokens = self.choose(s, logits)
            seq[:, :, s] = np.where(seq[:, :, s] == -1, tokens, seq[:, :, s])
            yield s

    def _check(self, s: int, decoder_nonfinite, guided_nonfinite) -> None:
        if decoder_nonfinite:
            raise ModelFolderError(f"the decoder produced non-finite logits at step {s}: the graph's weights "
                                   f"are broken")
        if guided_nonfinite:
            raise InvalidInputError(f"guidance_scale {self.guidance_scale:g} made the logits overflow at step "
                                    f"{s}; use a smaller guidance_scale")

    def keep_rows(self, index: np.ndarray) -> None:
        """Go on with rows ``index`` only: their sequences, and their conditional and CFG null rows in
        the decoder (the null rows follow the conditional ones)."""
        rows = self.seq.shape[0]
        self.seq = self.seq[index]
        self.stepper.keep_rows(np.concatenate([index, index + rows]) if self.use_cfg else index)


@dataclass(frozen=True)
class GenerationInputs:
    """A call's checked inputs: prompts, melodies (mono, at the chroma rate, or None), options, the
    codes to continue from (or None), and whether melodies are separated into stems before the chroma."""

    descriptions: list[str | None]
    melodies: list[np.ndarray] | None
    options: GenerationOptions
    prompt_codes: np.ndarray | None = None
    stems: bool = False

    @classmethod
    def check(cls, parts: ModelParts, descriptions, melody, melody_sample_rate, options: GenerationOptions,
              prompt_codes=None, stems: bool | None = None) -> "GenerationInputs":
        m = parts.manifest
        descriptions = check_descriptions(descriptions)
        options = options.check(m.max_duration, m.frame_rate, m.codebook_size)
        if isinstance(options.seed, tuple) and len(options.seed) != len(descriptions):
            raise InvalidInputError(f"seed: {len(options.seed)} seeds for {len(descriptions)} prompts; give one int "
                                    f"for the call or one seed (or None) per prompt")
        if melody is not None and not m.is_melody:
            raise InvalidInputError("melody: this model is text-only (no chroma conditioning); "
                                    "use a MusicGen-Melody export or drop the melody")
        if stems is not None and not isinstance(stems, bool):
            raise InvalidInputError(f"stems must be True, False or None (separate when the folder can), got {stems!r}")
        has_stems = m.stems is not None
        if stems and not has_stems:
            raise InvalidInputError(f"stems=True: {parts.folder} has no stems graph; export it with --stems DEMUCS, "
                                    "or pass stems=False for the full mix")
        stems = has_stems if stems is None else stems
        # long-form windows read the melody up to one window past the duration; never more
        melodies = prepare_melodies(melody, melody_sample_rate, len(descriptions), m.chroma,
                                    max_seconds=options.duration + m.max_duration,
                                    stems=m.stems if stems else None) if m.is_melody else None
        if prompt_codes is not None:
            if not isinstance(prompt_codes, np.ndarray) or prompt_codes.ndim != 3 \
                    or prompt_codes.shape[:2] != (len(descriptions), m.num_codebooks):
                shape = list(prompt_codes.shape) if isinstance(prompt_codes, np.ndarray) else type(prompt_codes).__name__
                raise InvalidInputError(f"prompt codes must be [{len(descriptions)}, {m.num_codebooks}, frames], got {shape}")
            check_prompt_length(prompt_codes.shape[2], m, options)
            if not np.issubdtype(prompt_codes.dtype, np.integer) or prompt_codes.size and (
                    prompt_codes.min() < 0 or prompt_codes.max() >= m.codebook_size):
                raise InvalidInputError(f"prompt codes must be integers in [0, {m.codebook_size - 1}]")
            prompt_codes = prompt_codes.astype(np.int64)
        return cls(descriptions, melodies, options, prompt_codes, stems and melodies is not None)


class GenerationTask:
    """Codes for one call, yielded in output order as soon as every codebook has them: the prompt
    first, then each window's new frames. Memory is the output's: each window's cache is freed.

    With ``rows`` (a :class:`LiveRows`), rows cancelled while the call runs are dropped at the next step
    boundary and everything per row (the loop's batch, the sampler's generators, the prompts and
    melodies of later windows) goes on without them: yielded codes hold the rows in ``rows.live``, and
    the call ends early when none is left."""

    def __init__(self, parts: ModelParts, inputs: GenerationInputs, progress: bool | ProgressFn = False,
                 rows: LiveRows | None = None):
        self.parts = parts
        self.inputs = inputs
        o = inputs.options
        m = parts.manifest
        self.rows = rows if rows is not None else LiveRows(len(inputs.descriptions))
        if len(self.rows.live) != len(inputs.descriptions):
            raise InvalidInputError(f"rows: {len(self.rows.live)} live rows for {len(inputs.descriptions)} prompts")
        self.descriptions, self.melodies = inputs.descriptions, inputs.melodies  # the live rows' (see _drop)
        self.sampler = Sampler(o.greedy, o.temperature, o.top_k, o.top_p, o.seed, rows=len(inputs.descriptions))
        self.pick = None  # the sampling graphs on the decoder's device, when the settings ask for them
        if parts.settings.device_sampler and device_sampler.available(m.codebook_size, o.guidance_scale != 1.0):
            self.pick = device_sampler.GraphSampler(self.sampler, o.guidance_scale, parts.settings)
        prompt_frames = 0 if inputs.prompt_codes is None else inputs.prompt_codes.shape[2]
        self.windows = plan_windows(o.duration, m.frame_rate, m.max_duration, o.extend_stride, prompt_frames)
        self.total_steps = sum(w.new_frames + m.max_delay for w in self.windows)
        self.report = StderrProgress() if progress is True else (progress or None)
        self.done_steps = 0
        seeds = o.seed if isinstance(o.seed, tuple) else (o.seed,)
        # the shift of apply_model(shifts=1), one per window, from the seed: a seeded call is reproducible
        self.stem_rngs = [np.random.default_rng(s) for s in seeds] if inputs.stems else []

    def codes(self) -> Iterator[np.ndarray]:
        pattern, max_delay = self.parts.pattern, self.parts.manifest.max_delay
        carried = self.inputs.prompt_codes  # the user's prompt, then each window's tail
        if carried is not None:
            yield carried
        for i, window in enumerate(self.windows):
            loop = StepLoop(self.parts, self.descriptions, self.window_chroma(window), window.frames,
                            self.inputs.options.guidance_scale, lambda s, logits: self.sampler(logits), carried,
                            self.pick)
            emitted = window.prompt_frames
            for s in loop:
                self._advance()
                keep = self.rows.drop_cancelled()
                if keep is not None:
                    if not len(keep):
                        return  # every row was cancelled: the call stops here
                    self._drop(loop, keep)
                ready = min(window.frames, s - max_delay)
                if ready > emitted:
                    yield pattern.undelay(loop.seq, ready, emitted)
                    emitted = ready
            if i + 1 < len(self.windows):
                tail = self.windows[i + 1].prompt_frames
                carried = pattern.undelay(loop.seq, window.frames, window.frames - tail)

    def _drop(self, loop: StepLoop, keep: np.ndarray) -> None:
        """Everything per row goes on with rows ``keep``; rows never come back, so this is one cut."""
        loop.keep_rows(keep)
        self.sampler.keep_rows(keep)
        self.descriptions = [self.descriptions[i] for i in keep]
        if self.melodies is not None:
            self.melodies = [self.melodies[i] for i in keep]
        if len(self.stem_rngs) > 1:  # one Demucs shift generator per row (per-row seeds): theirs go with them
            self.stem_rngs = [self.stem_rngs[i] for i in keep]

    def _advance(self) -> None:
        self.done_steps += 1
        if self.report:
            self.report(self.done_steps, self.total_steps)

    def window_chroma(self, window: Window) -> np.ndarray | None:
        """The whole melody (tiled to 235 frames) for a single window; for long-form windows, the
        window's 30 s cut of the melody's periodic extension (audiocraft ``MusicGen._generate_tokens``)."""
        melodies = self.melodies
        if melodies is None:
            return None
        params = self.parts.manifest.chroma
        if len(self.windows) > 1:
            melodies = window_cut(melodies, window.start_s, self.parts.manifest.max_duration, params)
        elif self.inputs.stems:
            melodies = single_window_cut(melodies, params, self.parts.manifest.stems)
        if self.inputs.stems:
            melodies = self.parts.separate_melodies(melodies, self.stem_rngs)
        return batch_chroma(melodies, params)
