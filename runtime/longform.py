"""Past the model's 30 s: audiocraft's extend_stride windows (audiocraft ``MusicGen._generate_tokens``), as pure arithmetic.

Each window generates up to ``max_duration`` of frames; the frames after the stride become the next
window's prompt, so consecutive windows overlap by ``max_duration - extend_stride`` seconds and each
keeps only what it added. Window lengths are counted in frames (``min(total - offset, max_frames)``)
where audiocraft computes ``int(min(duration - t0, 30) * 50)`` in floats: identical whenever that
float is exact, and for durations like 95.3 s, where the float truncation loses a frame, audiocraft
would plan a window with nothing to generate (and fail) while this plan still adds up.
"""

from __future__ import annotations

from dataclasses import dataclass

from .options import duration_frames


@dataclass(frozen=True)
class Window:
    offset: int  # first frame of the window in the output
    prompt_frames: int  # frames carried over from the previous window (0 for the first)
    frames: int  # frames in the window, prompt included
    start_s: float  # offset in seconds: where the melody window starts

    @property
    def new_frames(self) -> int:
        return self.frames - self.prompt_frames


def plan_windows(duration: float, frame_rate: float, max_duration: float, extend_stride: float,
                 prompt_frames: int = 0) -> list[Window]:
    """The windows of one generation; a duration within ``max_duration`` is a single window."""
    total = duration_frames(duration, frame_rate)
    stride = duration_frames(extend_stride, frame_rate)
    max_frames = duration_frames(max_duration, frame_rate)
    windows = []
    offset, prompt = 0, prompt_frames
    while offset + prompt < total:
        frames = min(total - offset, max_frames)
        windows.append(Window(offset, prompt, frames, offset / frame_rate))
        prompt = frames - stride
        offset += stride
    return windows
