"""``MusicGen``: a model folder in, music out, with numpy + onnxruntime only.

Follow one call from top to bottom: ``generate`` validates the options (``options.py``) and the
melodies (``melody.py``); ``_frames`` plans the windows (one, or audiocraft's extend_stride windows
past 30 s, ``longform.py``) and, per window, ``_condition`` runs the text encoder once for the
conditional and the CFG null rows and ``_steps`` runs the autoregressive loop over the delay pattern;
``AudioCodec.decode`` turns the codes into audio (``StreamDecoder`` does it chunk by chunk).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import audio as audio_io
from .chroma import batch_chroma, null_chroma
from .codec import AudioCodec, StreamDecoder
from .delay import DelayPattern
from .errors import InvalidInputError
from .kv_cache import ConcatKVCache, StaticKVCache
from .longform import Window, plan_windows
from .melody import prepare_melodies, window_chroma
from .manifest import Manifest, load_manifest, verify_files
from .options import GenerationOptions
from .sampling import Sampler, classifier_free_guidance
from .session import open_session, release_freed_memory, resolve_providers
from .text import TextTokenizer

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


class _StderrProgress:
    """``steps done/total, steps/s`` on one refreshed stderr line."""

    def __init__(self, interval: float = 0.2):
        self.start = time.perf_counter()
        self.interval = interval
        self.last = -interval

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done != total and now - self.last < self.interval:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        end = "\n" if done == total else ""
        sys.stderr.write(f"\rgenerating: {done}/{total} steps, {rate:.1f} steps/s{end}")
        sys.stderr.flush()


class MusicGen:
    def __init__(self, folder: Path, manifest: Manifest, providers: list[str], threads: int | None = None,
                 low_memory: bool = False):
        self.folder = folder
        self.manifest = manifest
        self.providers = providers
        m = manifest
        self.tokenizer = TextTokenizer(folder / m.tokenizer)
        # The decoder first: a graph with inline weights (folders exported before weights went to
        # NAME.onnx.data) is held twice while it loads, and that peak is lowest with nothing else resident.
        self.decoder = open_session(folder / m.graphs["decoder"].file, providers, threads)
        self._open_text_encoder = functools.partial(open_session, folder / m.graphs["text_encoder"].file,
                                                    providers, threads)
        self.text_encoder = None if low_memory else self._open_text_encoder()
        open_encoder = None
        if "audio_encoder" in m.graphs:
            open_encoder = functools.partial(open_session, folder / m.graphs["audio_encoder"].file, providers, threads)
        self.codec = AudioCodec(open_session(folder / m.graphs["audio_decoder"].file, providers, threads),
                                open_encoder, m.num_codebooks, m.audio_channels)
        self.pattern = DelayPattern(m.delays, m.special_token_id)
        dec = m.graphs["decoder"]
        self._past_names = [n for n in dec.inputs if n.startswith("past.")]
        self._present_names = [n for n in dec.outputs if n.startswith("present.")]
        self._cross_names = [n for n in m.graphs["text_encoder"].outputs if n.startswith("cross.")]
        past_type = next(i.type for i in self.decoder.get_inputs() if i.name == self._past_names[0])
        self._cache_dtype = np.float16 if past_type == "tensor(float16)" else np.float32
        self.options = m.defaults
        release_freed_memory()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, providers=None, verify_hashes: bool = True,
                        threads: int | None = None, low_memory: bool = False) -> "MusicGen":
        """Load an exported folder. ``providers``: "auto" (default), "cpu", "cuda" or an onnxruntime list.
        Files are checked against the manifest (sizes always, sha256 unless ``verify_hashes=False``).

        ``low_memory=True`` keeps the text encoder (T5, fp32 in every tier: 0.44 GB for melody) out of
        memory between calls: it is loaded for each generation (or long-form window) and released
        before the decoder's KV cache is allocated, at about a second per call."""
        folder = Path(folder)
        manifest = load_manifest(folder)
        verify_files(folder, manifest, hash_files=verify_hashes)
        return cls(folder, manifest, resolve_providers(providers), threads, low_memory)

    get_pretrained = from_pretrained  # the audiocraft name

    # ------------------------------------------------------------------ facts
    @property
    def sample_rate(self) -> int:
        return self.manifest.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.manifest.frame_rate

    @property
    def audio_channels(self) -> int:
        return self.manifest.audio_channels

    @property
    def max_duration(self) -> float:
        return self.manifest.max_duration

    # ------------------------------------------------------------------ audiocraft API
    def set_generation_params(self, use_sampling: bool = True, top_k: int = 250, top_p: float = 0.0,
                              temperature: float = 1.0, duration: float = 30.0, cfg_coef: float = 3.0,
                              two_step_cfg: bool = False, extend_stride: float = 18) -> None:
        """audiocraft's ``set_generation_params``; its defaults are audiocraft's too."""
        if two_step_cfg:
            raise InvalidInputError("two_step_cfg=True is not supported (only batched CFG, audiocraft's default)")
        self.options = self._checked(GenerationOptions(
            duration=duration, top_k=top_k, top_p=top_p, temperature=temperature, guidance_scale=cfg_coef,
            greedy=not use_sampling, extend_stride=extend_stride))

    def generate_with_chroma(self, descriptions, melody_wavs, melody_sample_rate, progress: bool = False,
                             return_tokens: bool = False):
        return self.generate(descriptions, melody=melody_wavs, melody_sample_rate=melody_sample_rate,
                             progress=progress, return_codes=return_tokens)

    def generate_unconditional(self, num_samples: int, progress: bool = False, return_tokens: bool = False):
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise InvalidInputError(f"num_samples must be a positive integer, got {num_samples!r}")
        return self.generate([None] * num_samples, progress=progress, return_codes=return_tokens)

    def generate_continuation(self, prompt, prompt_sample_rate: int | None = None, descriptions=None,
                              progress: bool | ProgressFn = False, return_tokens: bool = False, **options):
        """Continue ``prompt`` audio (a path, ``[C, T]`` or ``[B, C, T]`` array with its sample rate).
        The output *includes* the prompt and ``duration`` is the total length (audiocraft semantics);
        melody models continue with the null melody, as audiocraft does."""
        codes = self.encode_prompt(prompt, prompt_sample_rate)
        if descriptions is None:
            descriptions = [None] * codes.shape[0]
        descriptions = self._descriptions(descriptions)
        if codes.shape[0] == 1 and len(descriptions) > 1:
            codes = np.repeat(codes, len(descriptions), axis=0)
        if codes.shape[0] != len(descriptions):
            raise InvalidInputError(f"prompt: got {codes.shape[0]} prompts for {len(descriptions)} descriptions")
        return self.generate(descriptions, prompt_codes=codes, progress=progress, return_codes=return_tokens,
                             **options)

    def encode_prompt(self, prompt, prompt_sample_rate: int | None = None) -> np.ndarray:
        """Audio -> EnCodec codes ``[B, K, ceil(samples / hop)]`` through ``audio_encoder.onnx``."""
        if "audio_encoder" not in self.manifest.graphs:
            raise InvalidInputError(f"{self.folder}: this export has no audio_encoder.onnx, needed for continuation")
        items = list(prompt) if isinstance(prompt, np.ndarray) and prompt.ndim == 3 else [prompt]
        converted = []
        for item in items:
            wav, sr, _ = audio_io.read_input(item, prompt_sample_rate, "prompt", "prompt")
            if self.audio_channels == 1:
                wav = wav.mean(axis=0, keepdims=True)
            else:
                wav = np.repeat(wav, 2, axis=0) if wav.shape[0] == 1 else wav[:2]
            converted.append(audio_io.resample(wav, sr, self.sample_rate))
        return self.codec.encode(np.stack(converted))

    # ------------------------------------------------------------------ main entry
    def generate(self, descriptions, melody=None, melody_sample_rate: int | None = None, *,
                 duration: float | None = None, seed: int | None = None, top_k: int | None = None,
                 top_p: float | None = None, temperature: float | None = None,
                 guidance_scale: float | None = None, greedy: bool | None = None,
                 extend_stride: float | None = None, prompt_codes: np.ndarray | None = None,
                 progress: bool | ProgressFn = False, return_codes: bool = False):
        """Text prompts (and optionally melodies) -> float32 audio ``[B, channels, samples]``.

        ``melody``: one melody for all prompts or one per prompt, each a file path or an array
        (``[samples]`` or ``[channels, samples]``, with ``melody_sample_rate``), or a ``[B, C, T]`` array.
        Durations past the model's 30 s are generated in audiocraft's ``extend_stride`` windows.
        ``prompt_codes [B, K, T]`` continues from known codes (see ``generate_continuation``).
        Unset options take the values of ``set_generation_params`` (audiocraft's defaults).
        With ``return_codes`` the EnCodec codes ``[B, K, T]`` are returned too.
        """
        descriptions, options, melodies = self._inputs(descriptions, melody, melody_sample_rate, dict(
            duration=duration, seed=seed, top_k=top_k, top_p=top_p, temperature=temperature,
            guidance_scale=guidance_scale, greedy=greedy, extend_stride=extend_stride), prompt_codes)
        codes = np.concatenate(list(self._frames(descriptions, melodies, options, prompt_codes, progress)), axis=2)
        audio = self.codec.decode(codes)
        return (audio, codes) if return_codes else audio

    def generate_stream(self, descriptions, melody=None, melody_sample_rate: int | None = None, *,
                        chunk_frames: int = 50, progress: bool | ProgressFn = False, **options):
        """Like ``generate``, but yields audio chunks ``[B, channels, samples]`` while the loop runs,
        every ``chunk_frames`` frames (50 = 1 s). Each span is decoded with codec context on both sides
        (``StreamDecoder``); the concatenation equals the one-shot decode within the tolerance the
        README states."""
        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
            raise InvalidInputError(f"chunk_frames must be a positive integer, got {chunk_frames!r}")
        prompt_codes = options.pop("prompt_codes", None)
        descriptions, opts, melodies = self._inputs(descriptions, melody, melody_sample_rate, options, prompt_codes)
        decoder = StreamDecoder(self.codec)
        pending = 0
        for new in self._frames(descriptions, melodies, opts, prompt_codes, progress):
            decoder.push(new)
            pending += new.shape[2]
            if pending >= chunk_frames:
                pending = 0
                chunk = decoder.ready()
                if chunk.shape[2]:
                    yield chunk
        yield decoder.flush()

    def _inputs(self, descriptions, melody, melody_sample_rate, options: dict, prompt_codes):
        descriptions = self._descriptions(descriptions)
        opts = self._checked(self.options.updated(**options))
        if melody is not None and not self.manifest.is_melody:
            raise InvalidInputError("melody: this model is text-only (no chroma conditioning); "
                                    "use a MusicGen-Melody export or drop the melody")
        melodies = None
        if self.manifest.is_melody:
            melodies = prepare_melodies(melody, melody_sample_rate, len(descriptions), self.manifest.chroma)
        if prompt_codes is not None:
            m = self.manifest
            if prompt_codes.ndim != 3 or prompt_codes.shape[:2] != (len(descriptions), m.num_codebooks):
                raise InvalidInputError(f"prompt codes must be [{len(descriptions)}, {m.num_codebooks}, frames], "
                                        f"got {list(prompt_codes.shape)}")
            if prompt_codes.shape[2] >= opts.frames(m.frame_rate):
                raise InvalidInputError(f"duration {opts.duration:g} s must be longer than the prompt "
                                        f"({prompt_codes.shape[2] / m.frame_rate:g} s): the output includes it")
        return descriptions, opts, melodies

    def _checked(self, options: GenerationOptions) -> GenerationOptions:
        m = self.manifest
        return options.check(m.max_duration, m.frame_rate, m.codebook_size)

    @staticmethod
    def _descriptions(descriptions) -> list[str | None]:
        if isinstance(descriptions, str):
            descriptions = [descriptions]
        if not isinstance(descriptions, (list, tuple)) or len(descriptions) == 0:
            raise InvalidInputError("descriptions: give a non-empty list of prompts (a prompt may be None "
                                    "for no text)")
        for i, d in enumerate(descriptions):
            if d is not None and not isinstance(d, str):
                raise InvalidInputError(f"descriptions[{i}]: a prompt must be a string or None, got {type(d).__name__}")
        return list(descriptions)

    # ------------------------------------------------------------------ conditioning
    def _window_chroma(self, melodies: list[np.ndarray] | None, window: Window, windowed: bool):
        """Chroma for one window: the whole melody (tiled to 235 frames) for a single window, its 30 s
        cut of the melody's periodic extension for long-form windows (spec 7.1)."""
        if melodies is None:
            return None
        params = self.manifest.chroma
        if windowed:
            return window_chroma(melodies, window.start_s, self.max_duration, params)
        return batch_chroma(melodies, params)

    def _condition(self, descriptions: list, chroma: np.ndarray | None, use_cfg: bool):
        """Run the text encoder once for all rows. Returns ``(first_call_feeds, step_feeds)``.

        CFG rows follow the conditional rows: same token ids with an all-zero mask (the encoder
        then yields exactly zero text states, spec 3.1) and, for melody models, the bin-0 chroma.
        """
        ids, mask = self.tokenizer(descriptions)
        b = ids.shape[0]
        if use_cfg:
            ids = np.concatenate([ids, ids])
            mask = np.concatenate([mask, np.zeros_like(mask)])
        if not self.manifest.is_melody:
            kv = self._run_text_encoder(self._cross_names, {"input_ids": ids, "attention_mask": mask})
            feeds = {"encoder_attention_mask": mask, **dict(zip(self._cross_names, kv))}
            return feeds, feeds
        params = self.manifest.chroma
        if chroma is None:
            chroma = np.repeat(null_chroma(1, params.num_chroma)[None], b, axis=0)
        if use_cfg:
            chroma = np.concatenate([chroma, np.repeat(null_chroma(chroma.shape[1], params.num_chroma)[None], b, axis=0)])
        prefix = self._run_text_encoder(["encoder_hidden_states"],
                                        {"input_ids": ids, "attention_mask": mask, "chroma": chroma})[0]
        empty = np.zeros((prefix.shape[0], 0, prefix.shape[2]), dtype=prefix.dtype)
        return {"prefix_embeds": prefix}, {"prefix_embeds": empty}

    def _run_text_encoder(self, outputs: list[str], feeds: dict) -> list[np.ndarray]:
        if self.text_encoder is not None:
            return self.text_encoder.run(outputs, feeds)
        session = self._open_text_encoder()  # low_memory: loaded for this call only
        result = session.run(outputs, feeds)
        del session
        release_freed_memory()
        return result

    # ------------------------------------------------------------------ the loop
    def _frames(self, descriptions, melodies, options: GenerationOptions, prompt: np.ndarray | None = None,
                progress: bool | ProgressFn = False):
        """Yield codes ``[B, K, n]`` in output order as soon as every codebook has them: the prompt
        first, then each window's new frames. Memory is the output's: each window's cache is freed."""
        m = self.manifest
        sampler = Sampler(options.greedy, options.temperature, options.top_k, options.top_p, options.seed)
        windows = plan_windows(options.duration, m.frame_rate, m.max_duration, options.extend_stride,
                               0 if prompt is None else prompt.shape[2])
        report = _StderrProgress() if progress is True else (progress or None)
        total_steps = sum(w.new_frames + m.max_delay for w in windows)
        done = 0
        if prompt is not None:
            yield prompt
        for i, window in enumerate(windows):
            chroma = self._window_chroma(melodies, window, len(windows) > 1)
            emitted = window.prompt_frames
            seq = None
            for s, seq in self._steps(descriptions, chroma, window.frames, options.guidance_scale,
                                      lambda s, logits: sampler(logits), prompt):
                done += 1
                if report:
                    report(done, total_steps)
                ready = min(window.frames, s - m.max_delay)
                if ready > emitted:
                    yield self.pattern.undelay(seq, ready, emitted)
                    emitted = ready
            if i + 1 < len(windows):
                carry = windows[i + 1].prompt_frames
                prompt = self.pattern.undelay(seq, window.frames, window.frames - carry)

    def teacher_forced_logits(self, descriptions: Sequence[str | None], codes: np.ndarray,
                              chroma: np.ndarray | None = None, guidance_scale: float = 3.0) -> np.ndarray:
        """Feed ``codes [B, K, T]`` through the loop instead of sampling; return the CFG-combined logits
        the model gave at each step, ``[B, T + max_delay, K, V]``. This is how precision tiers are
        compared on one token stream (``verify``, benchmarks)."""
        forced = self.pattern.delay(np.asarray(codes, dtype=np.int64))
        seen = []

        def choose(s, logits):
            seen.append(logits)
            return forced[:, :, s]

        for _ in self._steps(descriptions, chroma, codes.shape[2], guidance_scale, choose):
            pass
        return np.stack(seen, axis=1)

    def _steps(self, descriptions, chroma, frames: int, guidance_scale: float,
               choose: Callable[[int, np.ndarray], np.ndarray], prompt: np.ndarray | None = None):
        """Condition once, then one decoder call per step; ``choose(step, logits)`` picks the tokens.

        Yields ``(step, seq)`` after each step, ``seq`` being the delayed sequence ``[B, K, frames +
        max_delay + 1]`` filled so far. Known positions (``prompt`` frames, and the special token
        wherever the delay pattern has no frame) are never overwritten, as in audiocraft.
        """
        m = self.manifest
        batch = len(descriptions)
        codes = np.full((batch, m.num_codebooks, frames), -1, dtype=np.int64)  # -1: to be generated
        start = 1
        if prompt is not None:
            codes[:, :, : prompt.shape[2]] = prompt
            start = prompt.shape[2] + 1
        seq = self.pattern.delay(codes)
        use_cfg = guidance_scale != 1.0  # at 1 the null rows cannot change the result
        first_feeds, step_feeds = self._condition(list(descriptions), chroma, use_cfg)
        cache = self._new_cache(2 * batch if use_cfg else batch, first_feeds, seq.shape[2])

        columns = seq[:, :, :start]  # the first call: the start column and any prompt
        cond = first_feeds
        for s in range(start, seq.shape[2]):
            ids = np.concatenate([columns, columns]) if use_cfg else columns
            logits = cache.run(self.decoder, {"input_ids": ids, **cond})
            cond = step_feeds
            if use_cfg:
                logits = classifier_free_guidance(logits, guidance_scale)
            seq[:, :, s] = np.where(seq[:, :, s] == -1, choose(s, logits), seq[:, :, s])
            columns = seq[:, :, s:s + 1]
            yield s, seq

    def _new_cache(self, rows: int, first_feeds: dict, steps: int):
        m = self.manifest
        if m.kv_cache == "concat":
            return ConcatKVCache(self._past_names, self._present_names, rows, m.num_heads, m.head_dim,
                                 self._cache_dtype)
        prefix = first_feeds["prefix_embeds"].shape[1] if "prefix_embeds" in first_feeds else 0
        device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"  # the buffers live there
        return StaticKVCache(self._past_names, self._present_names, rows, m.num_heads, m.head_dim,
                             max_length=prefix + steps, device=device, dtype=self._cache_dtype)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """EnCodec codes ``[B, K, T]`` -> float32 audio ``[B, channels, T * hop]``."""
        return self.codec.decode(np.asarray(codes, dtype=np.int64))
