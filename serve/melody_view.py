"""``POST /v1/chroma``: what guides the music, for the page to draw: the winner-takes-all chroma the
model is conditioned on for a melody's first window, computed by the runtime's own extractor (no
second chroma implementation in the page).

Taken from the full mix: a folder exported with ``--stems`` takes it from the separated vocals + other
at generation time, which the page says rather than separating twice.
"""

from __future__ import annotations

from ..runtime.chroma import chroma_onehot
from ..runtime.melody import prepare_melodies

NOTES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
"""librosa's chroma order with ``base_c=True``, as the extractor's filter bank."""


def melody_chroma(decoded: tuple, manifest) -> dict:
    """``decoded``: an upload's ``(wav [C, T], sample_rate)`` -> the first window's winning pitch class
    per chroma frame (indices into ``notes``)."""
    p = manifest.chroma
    wav = prepare_melodies(decoded[0], decoded[1], 1, p, max_seconds=manifest.max_duration)[0]
    winners = chroma_onehot(wav, p, max_frames=p.chroma_length).argmax(axis=1)
    return {"notes": list(NOTES[:p.num_chroma]), "frame_rate": p.sample_rate / p.hop_length,
            "bins": winners.tolist(), "seconds": min(wav.shape[0] / p.sample_rate, manifest.max_duration),
            "from_stems": manifest.stems is not None}
