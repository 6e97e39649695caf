"""Request fields -> a checked :class:`Job` spec and its batch key, or a one-line InvalidInputError.

Nothing here touches the model's sessions: the handler thread checks every request before it is
queued, so a bad request is refused alone instead of failing the batch it would have joined.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass, replace

import numpy as np

from ..runtime import audio as audio_io
from ..runtime.errors import InvalidInputError
from ..runtime.generation import GenerationInputs, check_prompt_length, prompt_audio as read_prompt_audio
from ..runtime.options import MIN_FRAMES, GenerationOptions, finite_number, shown
from .settings import ServeSettings

FORMATS = ("wav", "flac", "ogg")
MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg"}
NUMBER_FIELDS = ("duration", "top_p", "temperature", "guidance")
INT_FIELDS = ("seed", "top_k")
BOOL_FIELDS = ("greedy", "stream")
DEFAULT_NORMALIZE = "loudness"
"""A complete clip's normalisation when the request names none: the CLI's default (and the file the page
offers for a streamed request: serve/results.py)."""
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
    except (ValueError, RecursionError):  # RecursionError: thousands of nested "[" (the JSON body path catches it too)
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
            raise InvalidInputError(f"{name} must be true or false, got {shown(value)}")
        if name in INT_FIELDS and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidInputError(f"{name} must be an integer, got {shown(value)}")
        if name in NUMBER_FIELDS and not finite_number(value):
            raise InvalidInputError(f"{name} must be a finite number, got {shown(value)}")
    return fields


class RequestChecker:
    """Model facts needed to check a request, and the runtime's own input checks run on it: its
    manifest, defaults and tokenizer (read-only once loaded, so the handler threads share the worker's)."""

    def __init__(self, model, settings: ServeSettings):
        m = model.manifest
        self.manifest = m
        self.defaults = model.options
        self.settings = settings
        self.parts = model.parts()
        self.tokenizer = model.conditioner.tokenizer

    def spec(self, kind: str, fields: dict, melody=None, prompt_audio=None) -> Spec:
        """``melody`` / ``prompt_audio``: decoded uploads ``(wav [C, T], sample_rate)`` or None."""
        f = check_fields(fields)
        stream = bool(f.get("stream") or False)
        fmt = f.get("format") or "wav"
        if fmt not in FORMATS:
            raise InvalidInputError(f"format must be one of {', '.join(FORMATS)}, got {shown(fmt)}")
        normalize = f.get("normalize") or ("none" if stream else DEFAULT_NORMALIZE)
        if normalize not in audio_io.STRATEGIES:
            raise InvalidInputError(f"normalize must be one of {', '.join(audio_io.STRATEGIES)}, "
                                    f"got {shown(normalize)}")
        if stream and (fmt != "wav" or normalize != "none"):
            raise InvalidInputError("stream=true sends 16-bit WAV before the clip is complete: format must be wav "
                                    "and normalize none (normalising needs the whole clip)")
        duration = f.get("duration")
        duration = min(self.defaults.duration, self.settings.max_duration) if duration is None else duration
        shortest = MIN_FRAMES / self.manifest.frame_rate  # the runtime's floor, with this server's ceiling
        if not shortest <= duration <= self.settings.max_duration:
            raise InvalidInputError(f"duration must be between {shortest:g} and {self.settings.max_duration:g} s on "
                                    f"this server, got {duration!r}")
        seed = f.get("seed")
        if seed is None:
            seed = secrets.randbelow(2 ** 32)  # reported back (X-Seed) so the result can be reproduced
        prompt = f.get("prompt")
        # generate()'s own checks (options, seed, the text-only rule) and its melody preparation (too short,
        # silent, resampled; for a folder with stems, prepared for separation), here rather than in the batch
        wav, sr = melody if melody is not None else (None, None)
        inputs = GenerationInputs.check(self.parts, [prompt], wav, sr, self.defaults.updated(
            duration=duration, top_k=f.get("top_k"), top_p=f.get("top_p"), temperature=f.get("temperature"),
            guidance_scale=f.get("guidance"), greedy=f.get("greedy"), seed=seed))
        options = replace(inputs.options, seed=None)  # the seed is per row, not part of the batch key
        ids, _ = self.tokenizer([prompt])  # refuses prompts over the character and token caps
        spec = Spec(None, prompt, seed, fmt, normalize)
        melody_samples = prompt_samples = None
        if inputs.melodies is not None and melody is not None:
            spec.melody = inputs.melodies[0]
            melody_samples = spec.melody.shape[0]
        if prompt_audio is not None:
            spec.prompt_audio = self._prompt(prompt_audio, options)
            prompt_samples = spec.prompt_audio.shape[1]
        spec.key = BatchKey(kind, stream, options, int(ids.shape[1]), melody_samples, prompt_samples)
        return spec

    def _prompt(self, prompt_audio, options: GenerationOptions) -> np.ndarray:
        m = self.manifest
        wav = read_prompt_audio(prompt_audio[0], prompt_audio[1], m, "audio")
        check_prompt_length(math.ceil(wav.shape[1] / (m.sample_rate / m.frame_rate)), m, options, "audio",
                            "audio prompt")
        return np.ascontiguousarray(wav)
