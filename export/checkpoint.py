"""Find and load a transformers MusicGen checkpoint: a local folder or a hub id in the local cache.

The one entry for every source format is :func:`.sources.resolve`."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..runtime.errors import ExportError
from ..runtime.manifest import sha256_file

log = logging.getLogger(__name__)

MODEL_TYPES = {"musicgen": "cross", "musicgen_melody": "prefix"}
# transformers releases whose greedy generate this runtime reproduces, per family: export validates its
# graphs against transformers and verify compares with it, so a release outside these would be a wrong
# reference. Bisected on the random-weight tiny checkpoints (greedy codes of 2 prompts x 30 frames vs
# 5.24; 5.0.0, 5.8.1, 5.12.1, 5.13.0-5.16.1, 5.17.0-5.24.0 checked; README, "What matches what"):
# melody agrees 100% on 5.0.0-5.16.0 and from 5.18.0, 0% on 5.16.1 and 5.17.0; text-only 100% on all.
# (4.57 drops the melody model's text and melody.)
MIN_TRANSFORMERS = {"prefix": "5.0.0", "cross": "5.0.0"}
BAD_TRANSFORMERS = {"prefix": [("5.16.1", "5.18.0")], "cross": []}  # [first bad, first good again)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def _installed_transformers() -> str:
    import transformers

    return transformers.__version__


def check_transformers(conditioning: str, installed: str | None = None) -> None:
    """Refuse a transformers release known to be a wrong reference for the family, naming what is needed."""
    installed = installed or _installed_transformers()
    family = "MusicGen-Melody" if conditioning == "prefix" else "text-only MusicGen"
    have = _version(installed)
    if have < _version(MIN_TRANSFORMERS[conditioning]):
        raise ExportError(f"transformers {installed} is too old as the reference for {family} checkpoints; "
                          f"install transformers>={MIN_TRANSFORMERS[conditioning]}")
    for first_bad, fixed in BAD_TRANSFORMERS[conditioning]:
        if _version(first_bad) <= have < _version(fixed):
            raise ExportError(f"transformers {installed} gives other greedy tokens than the released model for "
                              f"{family} checkpoints ({first_bad} up to {fixed} do); install transformers>={fixed}")


def read_config(folder: Path, what: str, missing: str) -> dict:
    """``folder/config.json`` as a dict, or a one-line ExportError (``missing`` says what its absence means)."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{what}: no config.json; {missing}")
    try:
        return json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{what}: unreadable config.json ({exc})") from None


@dataclass
class Checkpoint:
    folder: Path
    name: str
    revision: str | None
    config: dict
    conditioning: str
    weight_files: list[Path]
    source_format: str = "transformers"  # or "audiocraft": converted into ``folder`` (a scratch copy) first
    source_files: list[Path] | None = None  # what was read, when it is not ``weight_files``
    scratch: object = None  # keeps the converted folder alive (a TemporaryDirectory) while the export runs

    def weights_sha256(self) -> dict[str, str]:
        return {path.name: sha256_file(path) for path in (self.source_files or self.weight_files)}


def transformers_folder(checkpoint: str, allow_pickle: bool = False) -> Checkpoint:
    """A transformers checkpoint (local folder or hub id in the local cache), checked before anything is
    loaded. Every source reaches the exporter through :func:`.sources.resolve`, which converts the other
    formats into such a folder first."""
    folder = Path(checkpoint)
    revision = None
    if not folder.exists():
        if checkpoint.count("/") != 1 or checkpoint.startswith((".", "/")):
            raise ExportError(f"checkpoint {checkpoint!r}: no such folder, and not a hub id of the form 'owner/name'")
        try:
            from huggingface_hub import snapshot_download

            try:
                folder = Path(snapshot_download(checkpoint, local_files_only=True))
            except Exception:  # not cached: try the network (the user's machine may be online)
                folder = Path(snapshot_download(checkpoint, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
        except Exception as exc:
            raise ExportError(f"checkpoint {checkpoint!r}: not a local folder and not in the Hugging Face cache "
                              f"(download failed: {type(exc).__name__})") from None
        revision = folder.name
    if not folder.is_dir():
        raise ExportError(f"checkpoint {checkpoint!r}: not a folder")
    config = read_config(folder, f"checkpoint {checkpoint!r}", "not a transformers checkpoint")
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ExportError(f"checkpoint {checkpoint!r}: model_type {model_type!r} is not a MusicGen checkpoint "
                          f"(expected one of {sorted(MODEL_TYPES)})")
    audio_type = (config.get("audio_encoder") or {}).get("model_type")
    if audio_type != "encodec":
        raise ExportError(f"checkpoint {checkpoint!r}: unsupported audio encoder {audio_type!r} (only 'encodec')")
    text_type = (config.get("text_encoder") or {}).get("model_type")
    if text_type != "t5":
        raise ExportError(f"checkpoint {checkpoint!r}: unsupported text encoder {text_type!r} (only 't5')")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickles = sorted(folder.glob("*.bin"))
        if not pickles:
            raise ExportError(f"checkpoint {checkpoint!r}: missing weight files (no *.safetensors in {folder})")
        if not allow_pickle:
            raise ExportError(f"checkpoint {checkpoint!r}: weights are pickle files ({pickles[0].name}), which can run "
                              "code when loaded; pass --allow-pickle if you trust them")
        weights = pickles
    check_transformers(MODEL_TYPES[model_type])
    return Checkpoint(folder=folder, name=checkpoint, revision=revision, config=config,
                      conditioning=MODEL_TYPES[model_type], weight_files=weights)


def load_model(ckpt: Checkpoint):
    """The transformers model in eval mode, fp32, eager attention (what validation compares against)."""
    from transformers import MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration

    cls = MusicgenMelodyForConditionalGeneration if ckpt.conditioning == "prefix" else MusicgenForConditionalGeneration
    use_safetensors = ckpt.weight_files[0].suffix == ".safetensors"
    try:
        model = cls.from_pretrained(ckpt.folder, use_safetensors=use_safetensors)
    except Exception as exc:  # corrupt or mismatched weights
        raise ExportError(f"checkpoint {ckpt.name!r}: cannot load weights ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]})") from None
    return model.float().eval()


def load_tokenizer_json(ckpt: Checkpoint) -> str:
    """The fast tokenizer as JSON text, converted from ``spiece.model`` when that is all there is."""
    path = ckpt.folder / "tokenizer.json"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(ckpt.folder, use_fast=True)
        return tok.backend_tokenizer.to_str()
    except Exception as exc:
        raise ExportError(f"checkpoint {ckpt.name!r}: no tokenizer.json and the slow tokenizer could not be "
                          f"converted ({type(exc).__name__})") from None
