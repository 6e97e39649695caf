"""Generation options: one frozen dataclass, validated in one place, errors that state the rule."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .errors import InvalidInputError

MIN_FRAMES = 4  # the codec's first reflect-padded convolution needs more frames than its half-kernel
MAX_DURATION_S = 3600.0  # long-form generation works in windows; an hour bounds what one call may ask
# Bounds that keep every logit finite: CFG multiplies logit differences (tens in fp32) by the scale, and
# sampling divides by the temperature (in float64). Musical values are 1-10 and 0.1-2; audiocraft checks neither.
MAX_GUIDANCE = 100.0
TEMPERATURE_RANGE = (1e-3, 100.0)
MAX_BATCH = 64  # prompts per call, so seeds per call: memory and time grow with it; a server batches within it


def finite_number(value) -> bool:
    """A real number that a float can hold: a bool is not one, and an int too large for a float (a JSON field
    of 400 digits) is not finite here, so that no later ``float()`` or ``math.isfinite`` overflows."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def shown(value, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error line names a hostile value without echoing it whole."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def duration_frames(duration: float, frame_rate: float) -> int:
    """Frames for ``duration`` seconds: audiocraft's ``int(duration * frame_rate)`` (truncation, as in
    ``MusicGen._generate_tokens``); the one place this rule lives."""
    return int(duration * frame_rate)


@dataclass(frozen=True)
class GenerationOptions:
    duration: float = 15.0
    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0
    guidance_scale: float = 3.0
    greedy: bool = False
    seed: int | None | tuple[int | None, ...] = None  # one int for the call, or one (or None) per prompt
    extend_stride: float = 18.0

    def updated(self, **changes) -> "GenerationOptions":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def frames(self, frame_rate: float) -> int:
        return duration_frames(self.duration, frame_rate)

    def check(self, max_duration: float, frame_rate: float, codebook_size: int) -> "GenerationOptions":
        """``max_duration`` is the model's window (30 s); longer durations are generated in windows."""
        def number(name, value):
            if not finite_number(value):
                raise InvalidInputError(f"{name} must be a finite number, got {shown(value)}")

        number("duration", self.duration)
        min_duration = MIN_FRAMES / frame_rate
        if not (min_duration <= self.duration <= MAX_DURATION_S):
            raise InvalidInputError(f"duration must be between {min_duration:g} and {MAX_DURATION_S:g} seconds, "
                                    f"got {self.duration!r}")
        number("extend_stride", self.extend_stride)
        if self.duration > max_duration and not (MIN_FRAMES / frame_rate <= self.extend_stride < max_duration):
            raise InvalidInputError(f"extend_stride must be at least {MIN_FRAMES / frame_rate:g} s and below the "
                                    f"model's {max_duration:g} s window, got {self.extend_stride!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or not 1 <= self.top_k <= codebook_size:
            raise InvalidInputError(f"top_k must be an integer in [1, {codebook_size}], got {shown(self.top_k)}")
        number("top_p", self.top_p)
        if not 0.0 <= self.top_p <= 1.0:
            raise InvalidInputError(f"top_p must be in [0, 1] (0 disables it), got {self.top_p!r}")
        number("temperature", self.temperature)
        lo, hi = TEMPERATURE_RANGE
        if not self.greedy and not lo <= self.temperature <= hi:
            raise InvalidInputError(f"temperature must be > 0 when sampling (between {lo:g} and {hi:g}; use greedy "
                                    f"decoding for argmax), got {self.temperature!r}")
        number("guidance_scale", self.guidance_scale)
        if not 0 <= self.guidance_scale <= MAX_GUIDANCE:
            raise InvalidInputError(f"guidance_scale must be >= 0 and at most {MAX_GUIDANCE:g}, got {self.guidance_scale!r}")
        if isinstance(self.seed, (list, tuple)):
            if not 1 <= len(self.seed) <= MAX_BATCH or not all(s is None or _seed_ok(s) for s in self.seed):
                raise InvalidInputError(f"seed: a list of seeds must hold 1 to {MAX_BATCH} entries, each a "
                                        f"non-negative integer below 2**64 or None (one per prompt), got {shown(self.seed)}")
            return replace(self, seed=tuple(self.seed))
        if self.seed is not None and not _seed_ok(self.seed):
            raise InvalidInputError(f"seed must be a non-negative integer below 2**64 or a list of one per "
                                    f"prompt, got {shown(self.seed)}")
        return self


def _seed_ok(seed) -> bool:
    return not isinstance(seed, bool) and isinstance(seed, int) and 0 <= seed < 2 ** 64


def check_seed(seed, what: str = "seed") -> None:
    """One seed outside GenerationOptions (stems' random shift, CLI and service): the same rule as a
    generation seed, so ``--seed -5`` is one line and not numpy's traceback."""
    if seed is not None and not _seed_ok(seed):
        raise InvalidInputError(f"{what} must be a non-negative integer below 2**64, got {shown(seed)}")
