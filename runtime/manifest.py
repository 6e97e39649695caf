"""The model-folder contract: ``musicgen_onnx.json`` and the checks that a folder honours it.

The runtime owns this schema and the exporter imports it to write one, so the two stages cannot
drift. Every number the runtime allocates from is bounded here, before anything is allocated: a
crafted manifest must not be able to ask for terabytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelFolderError
from .options import GenerationOptions

FORMAT_VERSION = 1
MANIFEST_NAME = "musicgen_onnx.json"
PRECISIONS = ("fp32", "fp16", "int8", "int4")
CONDITIONINGS = ("prefix", "cross")  # melody checkpoints prepend; text-only ones cross-attend
KV_CACHES = ("static", "concat")  # in-place buffers (GroupQueryAttention) or past+new concatenation
GRAPH_NAMES = ("text_encoder", "decoder", "audio_decoder", "audio_encoder")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class GraphInfo:
    """One ONNX graph of the folder; ``files`` maps each file (graph and external data) to its sha256."""

    file: str
    precision: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    files: dict[str, str] = field(default_factory=dict)
    size_bytes: int = 0


@dataclass(frozen=True)
class ChromaParams:
    """Spec 2.2: what the numpy chroma extractor must reproduce."""

    sample_rate: int = 32000
    n_fft: int = 16384
    hop_length: int = 4096
    num_chroma: int = 12
    chroma_length: int = 235


@dataclass(frozen=True)
class Manifest:
    conditioning: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_codebooks: int
    audio_channels: int
    delays: tuple[int, ...]
    graphs: dict[str, GraphInfo]
    kv_cache: str = "concat"
    text_hidden_size: int = 768
    codebook_size: int = 2048
    special_token_id: int = 2048
    sample_rate: int = 32000
    hop_length: int = 640
    max_duration: float = 30.0
    max_positions: int | None = None
    chroma: ChromaParams | None = None
    defaults: GenerationOptions = GenerationOptions()  # audiocraft's defaults (spec 1.4)
    tokenizer: str = "tokenizer.json"
    source: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    # ---- derived facts (never stored twice) ----
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def max_frames(self) -> int:
        return int(self.max_duration * self.frame_rate)

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    @property
    def is_melody(self) -> bool:
        return self.conditioning == "prefix"

    @property
    def family(self) -> str:
        kind = "melody" if self.is_melody else "text-only"
        return f"{kind}, {'stereo' if self.audio_channels == 2 else 'mono'}"

    # ---- (de)serialisation ----
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "manifest") -> "Manifest":
        if not isinstance(data, dict):
            raise ModelFolderError(f"{where}: expected a JSON object, found {type(data).__name__}")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelFolderError(
                f"{where}: format version {version!r} is not supported by this musicgen-onnx "
                f"(it reads version {FORMAT_VERSION}); re-export the model with this version"
            )
        try:
            kwargs = dict(data)
            kwargs["delays"] = tuple(int(d) for d in data["delays"])
            kwargs["graphs"] = {
                name: GraphInfo(**{**info, "inputs": tuple(info["inputs"]), "outputs": tuple(info["outputs"])})
                for name, info in data["graphs"].items()
            }
            kwargs["chroma"] = ChromaParams(**data["chroma"]) if data.get("chroma") else None
            kwargs["defaults"] = GenerationOptions(**data.get("defaults", {}))
            manifest = cls(**kwargs)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelFolderError(f"{where}: malformed manifest ({exc})") from None
        manifest.check(where)
        return manifest

    def check(self, where: str = "manifest") -> None:
        """Bound every number before the runtime allocates anything from it."""

        def need(ok: bool, rule: str) -> None:
            if not ok:
                raise ModelFolderError(f"{where}: {rule}")

        def int_in(name: str, value: Any, lo: int, hi: int) -> None:
            need(isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi,
                 f"{name} must be an integer in [{lo}, {hi}], got {value!r}")

        need(self.conditioning in CONDITIONINGS, f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        need(self.kv_cache in KV_CACHES, f"kv_cache must be one of {KV_CACHES}, got {self.kv_cache!r}")
        int_in("hidden_size", self.hidden_size, 1, 16384)
        int_in("num_layers", self.num_layers, 1, 256)
        int_in("num_heads", self.num_heads, 1, 256)
        need(self.hidden_size % self.num_heads == 0, "hidden_size must be a multiple of num_heads")
        int_in("num_codebooks", self.num_codebooks, 1, 32)
        int_in("audio_channels", self.audio_channels, 1, 2)
        need(self.num_codebooks % self.audio_channels == 0, "num_codebooks must split evenly across audio channels")
        int_in("codebook_size", self.codebook_size, 2, 65536)
        int_in("special_token_id", self.special_token_id, 0, 65536)
        int_in("sample_rate", self.sample_rate, 1000, 384000)
        int_in("hop_length", self.hop_length, 1, 1 << 16)
        int_in("text_hidden_size", self.text_hidden_size, 1, 16384)
        need(len(self.delays) == self.num_codebooks, "delays must have one entry per codebook")
        need(all(0 <= d <= 64 for d in self.delays), "delays must be in [0, 64]")
        need(isinstance(self.max_duration, (int, float)) and 0 < self.max_duration <= 600,
             f"max_duration must be in (0, 600] seconds, got {self.max_duration!r}")
        if self.max_positions is not None:
            int_in("max_positions", self.max_positions, 1, 1 << 20)
        if self.is_melody:
            need(self.chroma is not None, "a prefix-conditioned (melody) model needs chroma parameters")
        if self.chroma is not None:
            c = self.chroma
            int_in("chroma.n_fft", c.n_fft, 16, 1 << 16)
            int_in("chroma.hop_length", c.hop_length, 1, c.n_fft)
            int_in("chroma.num_chroma", c.num_chroma, 1, 48)
            int_in("chroma.chroma_length", c.chroma_length, 1, 10000)
            int_in("chroma.sample_rate", c.sample_rate, 1000, 384000)
        for name in ("text_encoder", "decoder", "audio_decoder"):
            need(name in self.graphs, f"graph {name!r} is missing from the manifest")
        for name, info in self.graphs.items():
            need(info.precision in PRECISIONS, f"graph {name}: precision must be one of {PRECISIONS}")
            for rel in [info.file, *info.files]:
                need(_is_plain_relative(rel), f"graph {name}: file {rel!r} must be a plain name inside the folder")


def _is_plain_relative(name: str) -> bool:
    p = Path(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and len(p.parts) == 1


def load_manifest(folder: str | os.PathLike) -> Manifest:
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {str(folder)!r} does not exist or is not a directory")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ModelFolderError(f"{folder}: no {MANIFEST_NAME}; not a musicgen-onnx model folder (export one first)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{path}: unreadable manifest ({exc})") from None
    return Manifest.from_dict(data, where=str(path))


def verify_files(folder: str | os.PathLike, manifest: Manifest, hash_files: bool = True) -> None:
    """Every file the manifest names exists, has its recorded size and, unless skipped, its hash."""
    folder = Path(folder)
    tok = folder / manifest.tokenizer
    if not tok.is_file():
        raise ModelFolderError(f"{folder}: tokenizer file {manifest.tokenizer!r} is missing")
    for name, info in manifest.graphs.items():
        total = 0
        for rel, digest in info.files.items():
            path = folder / rel
            if not path.is_file():
                raise ModelFolderError(f"{folder}: graph {name} needs {rel!r}, which is missing")
            total += path.stat().st_size
            if hash_files and sha256_file(path) != digest:
                raise ModelFolderError(
                    f"{path}: sha256 does not match the manifest (file corrupt, truncated or replaced)"
                )
        if total != info.size_bytes:
            raise ModelFolderError(
                f"{folder}: graph {name} files total {total} bytes, manifest says {info.size_bytes} (truncated?)"
            )
