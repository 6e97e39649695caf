"""``MusicGen``: a model folder in, music out, with numpy + onnxruntime only.

Follow one call from top to bottom: ``generate`` validates the options, ``_melody_chroma`` turns
melodies into one-hot chroma, ``_condition`` runs the text encoder once for the conditional and the
CFG null rows, ``generate_codes`` runs the autoregressive loop over the delay pattern, and
``AudioCodec.decode`` turns codes into audio.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import audio as audio_io
from .chroma import batch_chroma, null_chroma
from .codec import AudioCodec
from .delay import DelayPattern
from .errors import InvalidInputError
from .kv_cache import ConcatKVCache, StaticKVCache
from .manifest import Manifest, load_manifest, verify_files
from .options import GenerationOptions
from .sampling import Sampler, classifier_free_guidance
from .session import open_session, resolve_providers
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
    def __init__(self, folder: Path, manifest: Manifest, providers: list[str], threads: int | None = None):
        self.folder = folder
        self.manifest = manifest
        self.providers = providers
        m = manifest
        self.tokenizer = TextTokenizer(folder / m.tokenizer)
        self.text_encoder = open_session(folder / m.graphs["text_encoder"].file, providers, threads)
        self.decoder = open_session(folder / m.graphs["decoder"].file, providers, threads)
        encoder = None
        if "audio_encoder" in m.graphs:
            encoder = open_session(folder / m.graphs["audio_encoder"].file, providers, threads)
        self.codec = AudioCodec(open_session(folder / m.graphs["audio_decoder"].file, providers, threads),
                                encoder, m.num_codebooks, m.audio_channels)
        self.pattern = DelayPattern(m.delays, m.special_token_id)
        dec = m.graphs["decoder"]
        self._past_names = [n for n in dec.inputs if n.startswith("past.")]
        self._present_names = [n for n in dec.outputs if n.startswith("present.")]
        self._cross_names = [n for n in m.graphs["text_encoder"].outputs if n.startswith("cross.")]
        past_type = next(i.type for i in self.decoder.get_inputs() if i.name == self._past_names[0])
        self._cache_dtype = np.float16 if past_type == "tensor(float16)" else np.float32
        self.options = m.defaults

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, providers=None, verify_hashes: bool = True,
                        threads: int | None = None) -> "MusicGen":
        """Load an exported folder. ``providers``: "auto" (default), "cpu", "cuda" or an onnxruntime list.
        Files are checked against the manifest (sizes always, sha256 unless ``verify_hashes=False``)."""
        folder = Path(folder)
        manifest = load_manifest(folder)
        verify_files(folder, manifest, hash_files=verify_hashes)
        return cls(folder, manifest, resolve_providers(providers), threads)

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
            greedy=not use_sampling))

    def generate_with_chroma(self, descriptions, melody_wavs, melody_sample_rate, progress: bool = False,
                             return_tokens: bool = False):
        return self.generate(descriptions, melody=melody_wavs, melody_sample_rate=melody_sample_rate,
                             progress=progress, return_codes=return_tokens)

    def generate_unconditional(self, num_samples: int, progress: bool = False, return_tokens: bool = False):
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise InvalidInputError(f"num_samples must be a positive integer, got {num_samples!r}")
        return self.generate([None] * num_samples, progress=progress, return_codes=return_tokens)

    # ------------------------------------------------------------------ main entry
    def generate(self, descriptions, melody=None, melody_sample_rate: int | None = None, *,
                 duration: float | None = None, seed: int | None = None, top_k: int | None = None,
                 top_p: float | None = None, temperature: float | None = None,
                 guidance_scale: float | None = None, greedy: bool | None = None,
                 progress: bool | ProgressFn = False, return_codes: bool = False):
        """Text prompts (and optionally melodies) -> float32 audio ``[B, channels, samples]``.

        ``melody``: one melody for all prompts or one per prompt, each a file path or an array
        (``[samples]`` or ``[channels, samples]``, with ``melody_sample_rate``), or a ``[B, C, T]`` array.
        Unset options take the values of ``set_generation_params`` (audiocraft's defaults).
        With ``return_codes`` the EnCodec codes ``[B, K, T]`` are returned too.
        """
        descriptions = self._descriptions(descriptions)
        options = self._checked(self.options.updated(
            duration=duration, seed=seed, top_k=top_k, top_p=top_p, temperature=temperature,
            guidance_scale=guidance_scale, greedy=greedy))
        chroma = self._melody_chroma(melody, melody_sample_rate, len(descriptions))
        codes = self.generate_codes(descriptions, chroma, options, progress)
        audio = self.codec.decode(codes)
        return (audio, codes) if return_codes else audio

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
    def _melody_chroma(self, melody, melody_sample_rate, batch: int) -> np.ndarray | None:
        """Melodies -> one-hot chroma ``[B, frames, 12]``, or None when no melody is given."""
        if melody is None:
            return None
        if not self.manifest.is_melody:
            raise InvalidInputError("melody: this model is text-only (no chroma conditioning); "
                                    "use a MusicGen-Melody export or drop the melody")
        if isinstance(melody, (str, os.PathLike)) or (isinstance(melody, np.ndarray) and melody.ndim <= 2):
            items = [melody]
        elif isinstance(melody, np.ndarray) and melody.ndim == 3:
            items = list(melody)
        elif isinstance(melody, (list, tuple)):
            items = list(melody)
        else:
            raise InvalidInputError(f"melody: expected a file path, an array or a list of them, got {type(melody).__name__}")
        if len(items) not in (1, batch):
            raise InvalidInputError(f"melody: got {len(items)} melodies for {batch} prompts; "
                                    "give one melody for all prompts or one per prompt")
        if all(item is None for item in items):
            return None
        params = self.manifest.chroma
        wavs = []
        for i, item in enumerate(items):
            what = f"melody[{i}]" if len(items) > 1 else "melody"
            if item is None:
                wavs.append(np.zeros(1, dtype=np.float32))  # audiocraft's null wav
                continue
            if isinstance(item, (str, os.PathLike)):
                wav, sr = audio_io.load_audio(item, what)
                what = f"{what} file {str(item)!r}"
            else:
                if melody_sample_rate is None:
                    raise InvalidInputError(f"{what}: an array melody needs melody_sample_rate")
                wav, sr = audio_io.check_samples(item, melody_sample_rate, what), int(melody_sample_rate)
            mono = audio_io.to_mono(wav)
            if float(np.max(np.abs(mono))) < 1e-4:
                raise InvalidInputError(f"{what} is silent (peak below -80 dBFS) and carries no melody; "
                                        "pass melody=None to generate from text alone")
            wavs.append(audio_io.resample(mono, sr, params.sample_rate))
        if len(wavs) == 1 and batch > 1:
            wavs = wavs * batch
        return batch_chroma(wavs, params)

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
            kv = self.text_encoder.run(self._cross_names, {"input_ids": ids, "attention_mask": mask})
            feeds = {"encoder_attention_mask": mask, **dict(zip(self._cross_names, kv))}
            return feeds, feeds
        params = self.manifest.chroma
        if chroma is None:
            chroma = np.repeat(null_chroma(1, params.num_chroma)[None], b, axis=0)
        if use_cfg:
            chroma = np.concatenate([chroma, np.repeat(null_chroma(chroma.shape[1], params.num_chroma)[None], b, axis=0)])
        prefix = self.text_encoder.run(["encoder_hidden_states"],
                                       {"input_ids": ids, "attention_mask": mask, "chroma": chroma})[0]
        empty = np.zeros((prefix.shape[0], 0, prefix.shape[2]), dtype=prefix.dtype)
        return {"prefix_embeds": prefix}, {"prefix_embeds": empty}

    # ------------------------------------------------------------------ the loop
    def generate_codes(self, descriptions: Sequence[str | None], chroma: np.ndarray | None,
                       options: GenerationOptions, progress: bool | ProgressFn = False) -> np.ndarray:
        """The autoregressive loop over the delay pattern (spec 4.1/10) -> codes ``[B, K, T]``."""
        sampler = Sampler(options.greedy, options.temperature, options.top_k, options.top_p, options.seed)
        frames = options.frames(self.manifest.frame_rate)
        seq = self._loop(descriptions, chroma, frames, options.guidance_scale, lambda s, logits: sampler(logits),
                         progress)
        return self.pattern.undelay(seq, frames)

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

        self._loop(descriptions, chroma, codes.shape[2], guidance_scale, choose)
        return np.stack(seen, axis=1)

    def _loop(self, descriptions, chroma, frames: int, guidance_scale: float,
              choose: Callable[[int, np.ndarray], np.ndarray], progress: bool | ProgressFn = False) -> np.ndarray:
        """Condition once, then one decoder call per step; ``choose(step, logits)`` picks the tokens.
        Returns the delayed sequence ``[B, K, frames + max_delay + 1]``."""
        m = self.manifest
        steps = self.pattern.num_steps(frames)
        valid = self.pattern.valid(frames)
        use_cfg = guidance_scale != 1.0  # at 1 the null rows cannot change the result
        first_feeds, step_feeds = self._condition(list(descriptions), chroma, use_cfg)
        batch = len(descriptions)
        cache = self._new_cache(2 * batch if use_cfg else batch, first_feeds, steps)
        report = _StderrProgress() if progress is True else (progress or None)

        seq = np.full((batch, m.num_codebooks, steps), m.special_token_id, dtype=np.int64)
        column = seq[:, :, :1]
        cond = first_feeds
        for s in range(1, steps):
            ids = np.concatenate([column, column]) if use_cfg else column
            logits = cache.run(self.decoder, {"input_ids": ids, **cond})
            cond = step_feeds
            if use_cfg:
                logits = classifier_free_guidance(logits, guidance_scale)
            tokens = np.where(valid[None, :, s], choose(s, logits), m.special_token_id)
            seq[:, :, s] = tokens
            column = tokens[:, :, None]
            if report:
                report(s, steps - 1)
        return seq

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
