"""Request fields -> a checked :class:`Job` spec and its batch key, or a one-line InvalidInputError.

Nothing here touches the model's sessions: the handler thread checks every request before it is
queued, so a bad request is refused alone instead of failing the batch it would have joined.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass

import numpy as np

from ..runtime import audio as audio_io
from ..runtime.errors import InvalidInputError
from ..runtime.melody import prepare_melodies
from ..runtime.options import GenerationOptions
from .settings import ServeSettings

FORMATS = ("wav", "flac", "ogg")
MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg"}
NUMBER_FIELDS = ("duration", "top_p", "temperature", "guidance")
INT_FIELDS = ("seed", "top_k")
BOOL_FIELDS = ("greedy", "stream")
FIELDS = ("prompt", "format", "normalize", *NUMBER_FIELDS, *INT_FIELDS, *BOOL_FIELDS)


@dataclass(frozen=True)
class BatchKey:
    """Requests with equal keys can share one generate() call and still get, row for row, the codes
    they would get alone: same kind (generate / continue), streaming or not, same options (duration
    -> window plan, sampling, guidance; the seed is per row), and the same text token count, melody
    length and continuation prompt length (text and melodies are padded to the batch's longest, and
    padded positions change the logits: tests/runtime/test_seeds.py)."""

    kind: str
    stream: bool
    options: GenerationOptions
    text_tokens: int
    melody_samples: int | None
    prompt_samples: int | None


@dataclass
class Spec:
    """One checked request."""

    key: BatchKey
    prompt: str | None
    seed: int
    format: str
    normalize: str
    melody: np.ndarray | None = None  # mono float32 at the chroma rate
    prompt_audio: np.ndarray | None = None  # [channels, samples] at the model's rate


def form_value(name: str, text: str):
    """Multipart fields arrive as text: numbers and booleans are read as JSON literals, the rest kept."""
    if name in ("prompt", "format", "normalize"):
        return text
    try:
        return json.loads(text)
    except ValueError:
        kind = "boolean" if name in BOOL_FIELDS else "number"
        raise InvalidInputError(f"{name}: {text[:40]!r} is not a {kind}") from None


def check_fields(fields: dict) -> dict:
    """Types of every field, unknown fields refused (a typo must not silently fall back to a default)."""
    if not isinstance(fields, dict):
        raise InvalidInputError(f"the body must be a JSON object, got {type(fields).__name__}")
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise InvalidInputError(f"unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(FIELDS)}")
    for name, value in fields.items():
        if value is None:
            continue
        if name == "prompt" and not isinstance(value, str):
            raise InvalidInputError(f"prompt must be a string or null, got {type(value).__name__}")
        if name in ("format", "normalize") and not isinstance(value, str):
            raise InvalidInputError(f"{name} must be a string, got {type(value).__name__}")
        if name in BOOL_FIELDS and not isinstance(value, bool):
            raise InvalidInputError(f"{name} must be true or false, got {value!r}")
        if name in INT_FIELDS and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidInputError(f"{name} must be an integer, got {value!r}")
        if name in NUMBER_FIELDS and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
            raise InvalidInputError(f"{name} must be a finite number, got {value!r}")
    return fields


class RequestChecker:
    """Model facts needed to check a request: its manifest, defaults and a tokenizer of its own (the
    worker's is never shared across threads)."""

    def __init__(self, model, settings: ServeSettings):
        from ..runtime.manifest import folder_file
        from ..runtime.text import TextTokenizer

        m = model.manifest
        self.manifest = m
        self.defaults = model.options
        self.settings = settings
        self.tokenizer = TextTokenizer(folder_file(model.folder, m.tokenizer), max_id=m.text_vocab_size)

    def spec(self, kind: str, fields: dict, melody=None, prompt_audio=None) -> Spec:
        """``melody`` / ``prompt_audio``: decoded uploads ``(wav [C, T], sample_rate)`` or None."""
        f = check_fields(fields)
        m = self.manifest
        stream = bool(f.get("stream") or False)
        fmt = f.get("format") or "wav"
        if fmt not in FORMATS:
            raise InvalidInputError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        normalize = f.get("normalize") or ("none" if stream else "loudness")
        if normalize not in audio_io.STRATEGIES:
            raise InvalidInputError(f"normalize must be one of {', '.join(audio_io.STRATEGIES)}, got {normalize!r}")
        if stream and (fmt != "wav" or normalize != "none"):
            raise InvalidInputError("stream=true sends 16-bit WAV before the clip is complete: format must be wav "
                                    "and normalize none (normalising needs the whole clip)")
        duration = f.get("duration")
        duration = min(self.defaults.duration, self.settings.max_duration) if duration is None else duration
        if duration > self.settings.max_duration:
            raise InvalidInputError(f"duration must be at most {self.settings.max_duration:g} s on this server, "
                                    f"got {duration!r}")
        options = self.defaults.updated(duration=duration, top_k=f.get("top_k"), top_p=f.get("top_p"),
                                        temperature=f.get("temperature"), guidance_scale=f.get("guidance"),
                                        greedy=f.get("greedy"), seed=None)
        options = options.check(m.max_duration, m.frame_rate, m.codebook_size)
        seed = f.get("seed")
        if seed is None:
            seed = secrets.randbelow(2 ** 32)  # reported back (X-Seed) so the result can be reproduced
        GenerationOptions(seed=seed).check(m.max_duration, m.frame_rate, m.codebook_size)
        prompt = f.get("prompt")
        ids, _ = self.tokenizer([prompt])  # refuses prompts over the character and token caps
        spec = Spec(None, prompt, seed, fmt, normalize)
        melody_samples = prompt_samples = None
        if melody is not None:
            spec.melody = self._melody(melody, options)
            melody_samples = spec.melody.shape[0]
        if prompt_audio is not None:
            spec.prompt_audio = self._prompt(prompt_audio, options)
            prompt_samples = spec.prompt_audio.shape[1]
        spec.key = BatchKey(kind, stream, options, int(ids.shape[1]), melody_samples, prompt_samples)
        return spec

    def _melody(self, melody, options: GenerationOptions) -> np.ndarray:
        m = self.manifest
        if not m.is_melody:
            raise InvalidInputError("melody: this model is text-only (no chroma conditioning)")
        wav, sr = melody
        # the runtime's own checks (too short, silent) and resampling, here rather than in the batch;
        # a folder with stems separates melodies in generate, so they are prepared for that (julius, margin)
        return prepare_melodies(wav, sr, 1, m.chroma, max_seconds=options.duration + m.max_duration,
                                stems=m.stems)[0]

    def _prompt(self, prompt_audio, options: GenerationOptions) -> np.ndarray:
        m = self.manifest
        wav, sr, _ = audio_io.read_input(prompt_audio[0], prompt_audio[1], "audio", "prompt",
                                         max_seconds=m.max_duration + 1, min_seconds=audio_io.MIN_PROMPT_SECONDS)
        wav = wav.mean(axis=0, keepdims=True) if m.audio_channels == 1 else (
            np.repeat(wav, 2, axis=0) if wav.shape[0] == 1 else wav[:2])
        wav = audio_io.resample(wav, sr, m.sample_rate)
        hop = m.sample_rate / m.frame_rate
        frames = math.ceil(wav.shape[1] / hop)
        if frames >= m.max_frames:
            raise InvalidInputError(f"audio: {wav.shape[1] / m.sample_rate:.3g} s, but a prompt must be shorter than "
                                    f"the model's {m.max_duration:g} s window")
        if frames >= options.frames(m.frame_rate):
            raise InvalidInputError(f"duration {options.duration:g} s must be longer than the audio prompt "
                                    f"({wav.shape[1] / m.sample_rate:.3g} s): the output includes it")
        return np.ascontiguousarray(wav)
