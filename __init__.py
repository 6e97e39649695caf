"""musicgen-onnx: MusicGen and MusicGen-Melody on ONNX Runtime, without PyTorch at run time.

The runtime lives in :mod:`musicgen_onnx.runtime` (numpy + onnxruntime); the exporter in
:mod:`musicgen_onnx.export` (needs the ``export`` extra). Importing this package imports neither.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy so that `import musicgen_onnx` stays cheap and never pulls onnxruntime by accident.
    if name in ("MusicGen", "audio_write"):
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(name)
