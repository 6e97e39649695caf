"""PyInstaller support for apps that freeze ``musicgen_onnx`` (the ``pyinstaller40`` entry point).

PyInstaller only follows imports; it cannot know that the runtime opens ``models/tiny-melody`` and
``models/tiny-stems`` (the bundled models) from disk, so a frozen host app would import fine and then fail on
``MusicGen.from_pretrained`` of the bundled model. Libraries solve this by shipping a hook that
PyInstaller discovers through the ``pyinstaller40`` / ``hook-dirs`` entry point; this package is that
hook directory. It never imports PyInstaller (only the hook file does, and only PyInstaller runs it),
so ``import musicgen_onnx`` costs nothing extra.
"""

from __future__ import annotations

import os
from pathlib import Path

# The package data that pyproject.toml installs, relative to the package directory: the bundled MusicGen
# model (cli.BUNDLED_MODEL) and the bundled Demucs model (cli.BUNDLED_STEMS, the `stems` command's default).
BUNDLED_MODEL_SUBDIRS = ("models/tiny-melody", "models/tiny-stems")


def get_hook_dirs() -> list[str]:
    """The ``pyinstaller40`` ``hook-dirs`` entry point: where ``hook-musicgen_onnx.py`` lives."""
    return [os.path.dirname(os.path.abspath(__file__))]


def bundled_model_datas() -> list[tuple[str, str]]:
    """The bundled models as PyInstaller ``(source file, destination folder)`` pairs.

    Why not ``collect_data_files('musicgen_onnx')``: it takes every non-Python file under the package
    directory (and, because this package maps its directory with ``package-dir``, a source checkout's
    package directory is the repository root, exported multi-GB models included). Listing the one
    folder that is package data is exact, and needs no PyInstaller, so ``desktop/collect.py`` and the
    tests use this same list.
    """
    root = Path(__file__).resolve().parent.parent
    out = []
    for sub in BUNDLED_MODEL_SUBDIRS:
        folder, dest = root / sub, str(Path("musicgen_onnx") / sub)
        out += [(str(p), dest) for p in sorted(folder.iterdir()) if p.is_file()] if folder.is_dir() else []
    return out
