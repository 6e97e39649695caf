"""The torch-free runtime: numpy, onnxruntime, soundfile, soxr (the T5 tokenizer is read in pure Python).
Never imports torch, transformers, tokenizers or ``musicgen_onnx.export``."""

from .audio import audio_write, load_audio
from .errors import InvalidInputError, ModelFolderError, MusicGenError
from .manifest import Manifest, load_manifest
from .musicgen import MusicGen
from .options import GenerationOptions
from .prompt_ids import MAX_PROMPT_CHARS, MAX_PROMPT_TOKENS

__all__ = ["MusicGen", "GenerationOptions", "Manifest", "load_manifest", "audio_write", "load_audio",
           "MusicGenError", "InvalidInputError", "ModelFolderError", "MAX_PROMPT_CHARS", "MAX_PROMPT_TOKENS"]
