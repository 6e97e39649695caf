"""The torch-free runtime: numpy, onnxruntime, tokenizers, soundfile, soxr. Never imports torch,
transformers or ``musicgen_onnx.export``."""

from .audio import audio_write, load_audio
from .errors import InvalidInputError, ModelFolderError, MusicGenError
from .manifest import Manifest, load_manifest
from .musicgen import MusicGen
from .options import GenerationOptions

__all__ = ["MusicGen", "GenerationOptions", "Manifest", "load_manifest", "audio_write", "load_audio",
           "MusicGenError", "InvalidInputError", "ModelFolderError"]
