"""PyInstaller hook for ``musicgen_onnx``, found through the ``pyinstaller40`` entry point.

Collects the bundled tiny model (read from disk, so invisible to import analysis) and the package's
metadata (``musicgen-onnx --version`` reads it with importlib.metadata). onnxruntime's shared
libraries and soundfile's libsndfile are collected by pyinstaller-hooks-contrib's own hooks.
"""

from PyInstaller.utils.hooks import copy_metadata, logger

from musicgen_onnx._pyinstaller import bundled_model_datas

datas = bundled_model_datas()
if not datas:
    logger.warning("musicgen_onnx: the bundled model is missing; MusicGen.from_pretrained of it will fail when frozen")
try:
    datas += copy_metadata("musicgen-onnx")
except Exception:  # importlib.metadata.PackageNotFoundError: imported from a source tree, not installed
    logger.warning("musicgen_onnx: no installed metadata to collect; `--version` will fail in the app")
