"""Every checkpoint source behind one ``resolve``: a transformers folder or hub id, an audiocraft release
folder, or an audiocraft solver ``checkpoint.th``.

Its own module so that neither format's reader imports the other: audiocraft conversion writes a
transformers folder, and the transformers reader never needs to know audiocraft exists.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from . import audiocraft
from .checkpoint import Checkpoint, transformers_folder


def resolve(checkpoint: str, allow_pickle: bool = False, text_encoder: str | None = None,
            codec: str | None = None) -> Checkpoint:
    """Locate the checkpoint and check, before loading anything, that we can export it. An audiocraft
    folder (or solver ``checkpoint.th``) is converted to a transformers folder first (export/audiocraft.py);
    ``text_encoder`` / ``codec`` supply what audiocraft loads by name."""
    if not audiocraft.is_audiocraft(checkpoint):
        return transformers_folder(checkpoint, allow_pickle)
    scratch = tempfile.TemporaryDirectory(prefix="musicgen-onnx-audiocraft-")
    converted = audiocraft.convert(checkpoint, scratch.name, text_encoder=text_encoder, codec=codec,
                                   allow_pickle=allow_pickle)
    ckpt = transformers_folder(str(converted))
    sources = json.loads((converted / "audiocraft_source.json").read_text())["files"]
    ckpt.name, ckpt.source_format, ckpt.scratch = checkpoint, audiocraft.FORMAT, scratch
    ckpt.source_files = [Path(f) for f in sources]
    return ckpt
