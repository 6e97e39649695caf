"""Which kind of model folder is this? The one place that asks, by the files that mark each kind."""

from __future__ import annotations

import os
from pathlib import Path

from .manifest import MANIFEST_NAME, STEMS_MANIFEST_NAME
from .optimum_layout import CONFIG

NATIVE, STEMS, OPTIMUM = "native", "stems", "optimum"


def folder_kind(folder: str | os.PathLike) -> str:
    """NATIVE (``musicgen_onnx.json``), STEMS (``musicgen_onnx_stems.json`` alone: ``export-stems``) or
    OPTIMUM (a transformers ``config.json`` and no manifest: read as such, so that what it lacks is named
    rather than refused as "not an export"). Anything else is NATIVE, whose reader says what is missing."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / MANIFEST_NAME).exists():
        return NATIVE
    if (folder / STEMS_MANIFEST_NAME).is_file():
        return STEMS
    return OPTIMUM if (folder / CONFIG).is_file() else NATIVE
