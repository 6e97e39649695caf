"""The model-folder contract: ``musicgen_onnx.json`` and the checks that a folder honours it.

The runtime owns this schema and the exporter imports it to write one, so the two stages cannot
drift. Every number the runtime allocates from is bounded here, before anything is allocated: a
crafted manifest must not be able to ask for terabytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import roles
from .errors import InvalidInputError, ModelFolderError
from .json_file import read_json_file
from .options import GenerationOptions, duration_frames

FORMAT_VERSION = 2  # 2: graphs carry a role -> tensor name map (version 1 folders: names were the roles)
READABLE_VERSIONS = (1, 2)
MANIFEST_NAME = "musicgen_onnx.json"
STEMS_MANIFEST_NAME = "musicgen_onnx_stems.json"  # a stems-only folder (export-stems)
PRECISIONS = ("fp32", "fp16", "int8", "int4")
# melody checkpoints prepend; text-only ones cross-attend to keys/values the text encoder computes ("cross") or,
# in optimum / transformers.js folders (optimum_layout.py), to the raw T5 states the decoder projects itself ("states")
CONDITIONINGS = ("prefix", "cross", "states")
SOURCE_FORMATS = ("transformers", "audiocraft")  # what `export` read (optimum folders are read, never written)
# Whose behaviour generation reproduces where the two references differ (spec section 11): text-only models'
# cross-attention over padded text positions (batched prompts of unequal length) is masked by transformers
# and attended (as exact zero vectors) by audiocraft. Everything else the runtime does is the same for both.
REFERENCES = ("transformers", "audiocraft")
KV_CACHES = ("static", "concat")  # in-place buffers (GroupQueryAttention) or past+new concatenation
KV_DTYPES = ("fp32", "fp16")
# what a static decoder's step takes: the past length, from which the graph derives positions and lengths
# (older folders), or the positions and lengths themselves (capturable as a CUDA graph; roles.STEP_INPUTS)
STEP_INPUT_KINDS = ("past_length", "positions")
REQUIRED_GRAPHS = ("text_encoder", "decoder", "audio_decoder")
# opened on first use: continuation, stem separation (exact; fast: the melody path's int8 graph, made from the
# exact one and only with it); optimum's split decoder (its steps after the first)
OPTIONAL_GRAPHS = ("audio_encoder", "stems", "stems_fast", "decoder_with_past")
FAST_STEMS_PRECISION = "int8"
GRAPH_NAMES = REQUIRED_GRAPHS + OPTIONAL_GRAPHS
MAX_FRAME_RATE = 200
# Frames StreamDecoder holds a span back (lookahead.py measures a graph's; export records it as
# codec_lookahead). Folders without the field keep the value every earlier release used.
DEFAULT_CODEC_LOOKAHEAD = 8
MAX_CODEC_LOOKAHEAD = 64
MAX_MANIFEST_BYTES = 1 << 20  # a real manifest is a few kB


def codebook_delays(num_codebooks: int, audio_channels: int) -> tuple[int, ...]:
    """audiocraft's delay pattern per codebook: a stereo checkpoint interleaves its two channels' codebooks
    (left, right, left, right...), each pair sharing one delay. Written here once for every folder kind
    (the exporter and the optimum layout both derive a manifest's ``delays`` from it)."""
    if audio_channels == 2:
        return tuple(k // 2 for k in range(num_codebooks))
    return tuple(range(num_codebooks))


def hop_length(upsampling_ratios) -> int:
    """EnCodec's samples per code frame: the product of its upsampling ratios."""
    return math.prod(upsampling_ratios)


def checkpoint_defaults(codebook_size: int, guidance_scale: float | None = None) -> GenerationOptions:
    """A folder's default options: audiocraft's, with the checkpoint's own guidance when it names one and
    ``top_k`` within the codebook (see :func:`top_k_within`)."""
    base = GenerationOptions()
    if guidance_scale is not None:
        base = dataclasses.replace(base, guidance_scale=guidance_scale)
    return top_k_within(base, codebook_size)


def top_k_within(options: GenerationOptions, codebook_size: int) -> GenerationOptions:
    """Top-k over fewer codes than k takes them all, which is what audiocraft's 250 means for a model with
    64 or 128 codes; clamped so that such a model's default is a valid option (and folders exported with
    250 before this rule still load)."""
    if codebook_size >= 1 and options.top_k > codebook_size:
        return dataclasses.replace(options, top_k=codebook_size)
    return options


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class GraphInfo:
    """One ONNX graph of the folder; ``files`` maps each file (graph and external data) to its sha256.

    ``roles`` maps what a tensor is for (see :mod:`.roles`) to the tensor's name in this graph. The
    runtime only ever asks for roles, so a folder whose graphs name their tensors differently (another
    exporter's) needs a different map, not a different loop."""

    file: str
    precision: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    files: dict[str, str] = field(default_factory=dict)
    size_bytes: int = 0
    roles: dict[str, str] = field(default_factory=dict)

    def name(self, role: str) -> str:
        try:
            return self.roles[role]
        except KeyError:
            raise ModelFolderError(f"graph {self.file}: the manifest names no tensor for role {role!r}") from None

    def names(self, roles) -> list[str]:
        return [self.name(r) for r in roles]

    def has(self, role: str) -> bool:
        return role in self.roles


@dataclass(frozen=True)
class ChromaParams:
    """Spec 2.2: what the numpy chroma extractor must reproduce."""

    sample_rate: int = 32000
    n_fft: int = 16384
    hop_length: int = 4096
    num_chroma: int = 12
    chroma_length: int = 235


@dataclass(frozen=True)
class StemsParams:
    """What the numpy side of stem separation (``runtime/stems.py``) needs around ``stems.onnx``: the
    Demucs model's facts (sources, rate, channels, its fixed segment in samples, the STFT that HTDemucs
    runs inside ``forward``) and ``apply_model``'s defaults as audiocraft calls it (overlap 0.25,
    transition power 1, one random shift of up to half a second). ``melody_stems`` are summed for the
    chroma, in this order (audiocraft ``stems[:, [vocals, other]].sum(1)``)."""

    sources: tuple[str, ...]
    sample_rate: int
    audio_channels: int
    segment_length: int  # samples per model call: int(segment * sample_rate), the graph's fixed length
    n_fft: int
    hop_length: int
    overlap: float = 0.25
    transition_power: float = 1.0
    melody_stems: tuple[str, ...] = ("vocals", "other")

    # ---- derived facts ----
    @property
    def max_shift(self) -> int:
        return int(0.5 * self.sample_rate)  # demucs apply_model: max_shift = int(0.5 * samplerate)

    @property
    def stride(self) -> int:
        return int((1 - self.overlap) * self.segment_length)

    @property
    def frames(self) -> int:
        return -(-self.segment_length // self.hop_length)

    @property
    def freqs(self) -> int:
        return self.n_fft // 2

    @property
    def melody_indices(self) -> tuple[int, ...]:
        return tuple(self.sources.index(s) for s in self.melody_stems)

    @classmethod
    def read(cls, r: "FieldReader", value) -> "StemsParams":
        d = r.obj(value, "stems")
        r.known(d, {f.name for f in dataclasses.fields(cls)}, "stems")
        names = {k: tuple(r.names(r.req(d, k, "stems"), f"stems.{k}")) for k in ("sources", "melody_stems") if k in d}
        ints = {k: r.integer(r.req(d, k, "stems"), f"stems.{k}")
                for k in ("sample_rate", "audio_channels", "segment_length", "n_fft", "hop_length")}
        floats = {k: r.number(d[k], f"stems.{k}") for k in ("overlap", "transition_power") if k in d}
        if "sources" not in names:
            r.req(d, "sources", "stems")
        return cls(**names, **ints, **floats)

    def check(self, need) -> None:
        """Bound every number before anything is allocated from it (``need(ok, rule)`` raises)."""
        need(1 <= len(self.sources) <= 16 and len(set(self.sources)) == len(self.sources)
             and all(0 < len(s) <= 64 and s.isidentifier() for s in self.sources),
             f"stems.sources must be 1 to 16 distinct plain names, got {list(self.sources)!r}")
        need(len(self.melody_stems) >= 1 and all(s in self.sources for s in self.melody_stems),
             f"stems.melody_stems must name sources, got {list(self.melody_stems)!r}")
        need(8000 <= self.sample_rate <= 192000, f"stems.sample_rate must be in [8000, 192000], got {self.sample_rate}")
        need(self.audio_channels in (1, 2), f"stems.audio_channels must be 1 or 2, got {self.audio_channels}")
        need(16 <= self.n_fft <= 65536 and self.n_fft & (self.n_fft - 1) == 0,
             f"stems.n_fft must be a power of two in [16, 65536], got {self.n_fft}")
        need(self.hop_length == self.n_fft // 4, "stems.hop_length must be n_fft // 4 (HTDemucs asserts it)")
        need(self.n_fft <= self.segment_length <= 60 * self.sample_rate,
             f"stems.segment_length must be between n_fft and 60 s of samples, got {self.segment_length}")
        need(0 <= self.overlap < 1 and self.stride >= 1, f"stems.overlap must be in [0, 1), got {self.overlap}")
        need(1 <= self.transition_power <= 16, f"stems.transition_power must be in [1, 16], got {self.transition_power}")


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
    kv_dtype: str | None = None  # the cache's precision at the graph boundary (None: version 1 folders)
    step_inputs: str = "past_length"  # STEP_INPUT_KINDS; "positions" only with the static cache
    text_hidden_size: int = 768
    codebook_size: int = 2048
    special_token_id: int = 2048
    sample_rate: int = 32000
    hop_length: int = 640
    max_duration: float = 30.0
    max_positions: int | None = None
    chroma: ChromaParams | None = None
    stems: StemsParams | None = None  # with graph "stems": Demucs separation before the chroma
    codec_lookahead: int | None = None  # the audio decoder's measured look-ahead in frames (None: not recorded)
    defaults: GenerationOptions = GenerationOptions()  # audiocraft's MusicGen defaults (musicgen.py, set_generation_params)
    tokenizer: str = "tokenizer.json"
    tokenizer_sha256: str | None = None  # None only in version 1 folders
    text_vocab_size: int | None = None  # rows of the text encoder's embedding: the largest token id + 1
    source: dict[str, Any] = field(default_factory=dict)
    source_format: str = "transformers"  # the checkpoint format exported from (older folders: transformers)
    reference: str = "transformers"  # REFERENCES; export sets "audiocraft" for audiocraft checkpoints
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
        return duration_frames(self.max_duration, self.frame_rate)

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    @property
    def named_files(self) -> list[str]:
        """The files the folder holds besides its manifest: the tokenizer and every graph's files (what a
        download of the folder must fetch)."""
        return [self.tokenizer, *(rel for info in self.graphs.values() for rel in info.files)]

    @property
    def stream_lookahead(self) -> int:
        """Frames past a span that a stream waits for before decoding it."""
        return DEFAULT_CODEC_LOOKAHEAD if self.codec_lookahead is None else self.codec_lookahead

    @property
    def is_melody(self) -> bool:
        return self.conditioning == "prefix"

    @property
    def family(self) -> str:
        kind = "melody" if self.is_melody else "text-only"
        return f"{kind}, {'stereo' if self.audio_channels == 2 else 'mono'}"

    # ---- (de)serialisation ----
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in ("stems", "codec_lookahead"):  # unset: readable by releases that predate the field
            if data[name] is None:
                del data[name]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "manifest") -> "Manifest":
        """Read a manifest as untrusted input: every field's type is checked exactly (no bool as int,
        no float as int, no string as number), unknown fields are refused, then :meth:`check` bounds
        the numbers. Version 1 folders (before graph roles and the tokenizer hash) still load."""
        r = FieldReader(where)
        data = r.obj(data, "manifest")
        version = data.get("format_version")
        if isinstance(version, bool) or version not in READABLE_VERSIONS:
            raise ModelFolderError(
                f"{where}: format version {version!r} is not supported by this musicgen-onnx "
                f"(it reads versions {', '.join(map(str, READABLE_VERSIONS))}); re-export the model with this version"
            )
        r.known(data, {f.name for f in dataclasses.fields(cls)}, "manifest")
        graphs = {name: r.graph(name, info, version)
                  for name, info in r.obj(r.req(data, "graphs"), "graphs").items()}
        chroma = None
        if data.get("chroma") is not None:
            c = r.obj(data["chroma"], "chroma")
            r.known(c, {f.name for f in dataclasses.fields(ChromaParams)}, "chroma")
            chroma = ChromaParams(**{k: r.integer(v, f"chroma.{k}") for k, v in c.items()})
        stems = None if data.get("stems") is None else StemsParams.read(r, data["stems"])
        d = r.obj(data.get("defaults", {}), "defaults")
        r.known(d, {f.name for f in dataclasses.fields(GenerationOptions)}, "defaults")
        types = {"top_k": r.integer, "greedy": r.boolean, "seed": r.optional_integer}
        defaults = GenerationOptions(**{k: types.get(k, r.number)(v, f"defaults.{k}") for k, v in d.items()})
        source = r.obj(data.get("source", {}), "source")
        for k, v in source.items():
            r.text(k, "source")
            if isinstance(v, dict):
                for kk, vv in v.items():
                    r.text(kk, f"source.{k}"), r.text(vv, f"source.{k}.{kk}")
            elif v is not None:
                r.text(v, f"source.{k}")
        ints = {k: r.integer(r.req(data, k), k) for k in ("hidden_size", "num_layers", "num_heads", "num_codebooks",
                                                          "audio_channels")}
        ints.update({k: r.integer(data[k], k) for k in ("text_hidden_size", "codebook_size", "special_token_id",
                                                      "sample_rate", "hop_length") if k in data})
        manifest = cls(
            conditioning=r.text(r.req(data, "conditioning"), "conditioning"),
            delays=tuple(r.integer(x, "delays[]") for x in r.array(r.req(data, "delays"), "delays", 64)),
            graphs=graphs,
            kv_cache=r.text(data.get("kv_cache", "concat"), "kv_cache"),
            kv_dtype=None if data.get("kv_dtype") is None else r.text(data["kv_dtype"], "kv_dtype"),
            step_inputs=r.text(data.get("step_inputs", "past_length"), "step_inputs"),
            max_duration=r.number(data.get("max_duration", 30.0), "max_duration"),
            max_positions=r.optional_integer(data.get("max_positions"), "max_positions"),
            text_vocab_size=r.optional_integer(data.get("text_vocab_size"), "text_vocab_size"),
            codec_lookahead=r.optional_integer(data.get("codec_lookahead"), "codec_lookahead"),
            chroma=chroma, stems=stems,
            defaults=top_k_within(defaults, ints.get("codebook_size", cls.codebook_size)),
            tokenizer=r.file(data.get("tokenizer", "tokenizer.json"), "tokenizer"),
            tokenizer_sha256=None if data.get("tokenizer_sha256") is None else r.sha256(data["tokenizer_sha256"], "tokenizer_sha256"),
            source=source, source_format=r.text(data.get("source_format", "transformers"), "source_format"),
            reference=r.text(data.get("reference", "transformers"), "reference"),
            **ints)
        if version >= 2 and manifest.tokenizer_sha256 is None:
            raise ModelFolderError(f"{where}: tokenizer_sha256 is missing (format version 2 hashes the tokenizer)")
        manifest.check(where)
        return manifest

    def check(self, where: str = "manifest") -> None:
        """Bound every number before the runtime allocates anything from it."""
        need = _need(where)

        def int_in(name: str, value: Any, lo: int, hi: int) -> None:
            need(isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi,
                 f"{name} must be an integer in [{lo}, {hi}], got {value!r}")

        need(self.conditioning in CONDITIONINGS, f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        need(self.kv_cache in KV_CACHES, f"kv_cache must be one of {KV_CACHES}, got {self.kv_cache!r}")
        need(self.conditioning != "states" or self.kv_cache == "concat", "a states-conditioned folder has a concat KV cache")
        need(self.step_inputs in STEP_INPUT_KINDS, f"step_inputs must be one of {STEP_INPUT_KINDS}, got {self.step_inputs!r}")
        need(self.step_inputs == "past_length" or self.kv_cache == "static", "step_inputs 'positions' needs the static KV cache")
        need(self.source_format in SOURCE_FORMATS,
             f"source_format must be one of {SOURCE_FORMATS}, got {self.source_format!r}")
        need(self.reference in REFERENCES, f"reference must be one of {REFERENCES}, got {self.reference!r}")
        need(self.kv_dtype is None or self.kv_dtype in KV_DTYPES, f"kv_dtype must be one of {KV_DTYPES}, got {self.kv_dtype!r}")
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
        # Steps per second of audio: 50 for every released codec. Bounded so that a crafted rate cannot
        # turn seconds of audio into millions of decoder steps (hop 1 at 32 kHz: 480,003 for 15 s).
        need(1 <= self.frame_rate <= MAX_FRAME_RATE,
             f"sample_rate / hop_length must be between 1 and {MAX_FRAME_RATE} frames per second, got {self.frame_rate:g}")
        need(self.special_token_id == self.codebook_size,
             f"special_token_id must equal codebook_size ({self.codebook_size}): MusicGen's special token is the "
             f"embedding row after the codebook, got {self.special_token_id!r}")
        if self.text_vocab_size is not None:
            int_in("text_vocab_size", self.text_vocab_size, 1, 1 << 20)
        int_in("text_hidden_size", self.text_hidden_size, 1, 16384)
        need(len(self.delays) == self.num_codebooks, "delays must have one entry per codebook")
        need(all(0 <= d <= 64 for d in self.delays), "delays must be in [0, 64]")
        need(isinstance(self.max_duration, (int, float)) and 0 < self.max_duration <= 600,
             f"max_duration must be in (0, 600] seconds, got {self.max_duration!r}")
        if self.max_positions is not None:
            int_in("max_positions", self.max_positions, 1, 1 << 20)
        if self.codec_lookahead is not None:
            int_in("codec_lookahead", self.codec_lookahead, 0, MAX_CODEC_LOOKAHEAD)
        if self.is_melody:
            need(self.chroma is not None, "a prefix-conditioned (melody) model needs chroma parameters")
        if self.chroma is not None:
            c = self.chroma
            int_in("chroma.n_fft", c.n_fft, 16, 1 << 16)
            int_in("chroma.hop_length", c.hop_length, 1, c.n_fft)
            int_in("chroma.num_chroma", c.num_chroma, 1, 48)
            int_in("chroma.chroma_length", c.chroma_length, 1, 10000)
            int_in("chroma.sample_rate", c.sample_rate, 1000, 384000)
        need((self.stems is None) == ("stems" not in self.graphs), "graph 'stems' and the stems parameters come together")
        if self.stems is not None:
            self.stems.check(need)
        _check_fast_stems(need, self.graphs)
        try:  # a folder's defaults are the options of every call that sets nothing: refused on load, not later
            self.defaults.check(self.max_duration, self.frame_rate, self.codebook_size)
        except InvalidInputError as exc:
            raise ModelFolderError(f"{where}: defaults: {exc}") from None
        for name in REQUIRED_GRAPHS:
            need(name in self.graphs, f"graph {name!r} is missing from the manifest")
        for name, info in self.graphs.items():
            _check_graph(need, name, info, *roles.required(name, self.conditioning, self.kv_cache, self.num_layers,
                                                            self.step_inputs))


def _check_graph(need, name: str, info: GraphInfo, inputs: list[str], outputs: list[str]) -> None:
    need(info.precision in PRECISIONS, f"graph {name}: precision must be one of {PRECISIONS}")
    for role in inputs:
        need(info.roles.get(role) in info.inputs, f"graph {name}: role {role!r} must name one of its inputs")
    for role in outputs:
        need(info.roles.get(role) in info.outputs, f"graph {name}: role {role!r} must name one of its outputs")
    for rel in [info.file, *info.files]:
        need(_is_plain_relative(rel), f"graph {name}: file {rel!r} must be a plain name inside the folder")


def _check_fast_stems(need, graphs: dict[str, GraphInfo]) -> None:
    """The fast graph is derived from the exact one: never alone, and only in the precision it is made in."""
    if "stems_fast" in graphs:
        need("stems" in graphs, "graph 'stems_fast' needs graph 'stems' (the exact graph it is made from)")
        need(graphs["stems_fast"].precision == FAST_STEMS_PRECISION,
             f"graph stems_fast: precision must be {FAST_STEMS_PRECISION!r}, got {graphs['stems_fast'].precision!r}")


def _need(where: str):
    def need(ok: bool, rule: str) -> None:
        if not ok:
            raise ModelFolderError(f"{where}: {rule}")
    return need


@dataclass(frozen=True)
class StemsManifest:
    """A stems-only folder (``musicgen-onnx export-stems``): ``stems.onnx`` and this manifest, in
    :data:`STEMS_MANIFEST_NAME`. A MusicGen folder carries the same facts inside its own manifest
    (``Manifest.stems`` and graph "stems"); both present ``graphs`` and ``stems`` alike."""

    stems: StemsParams
    graphs: dict[str, GraphInfo]
    source: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "stems manifest") -> "StemsManifest":
        r = FieldReader(where)
        data = r.obj(data, "manifest")
        version = data.get("format_version")
        if isinstance(version, bool) or version != FORMAT_VERSION:
            raise ModelFolderError(f"{where}: format version {version!r} is not supported (stems folders are "
                                   f"version {FORMAT_VERSION}); re-export it with this version")
        r.known(data, {f.name for f in dataclasses.fields(cls)}, "manifest")
        graphs = {name: r.graph(name, info, version) for name, info in r.obj(r.req(data, "graphs"), "graphs").items()}
        source = r.obj(data.get("source", {}), "source")
        for k, v in source.items():
            r.text(k, "source"), None if v is None else r.text(v, f"source.{k}")
        manifest = cls(StemsParams.read(r, r.req(data, "stems")), graphs, source)
        need = _need(where)
        need("stems" in graphs and set(graphs) <= set(roles.STEMS_GRAPHS),
             f"a stems folder has graph 'stems' (and optionally 'stems_fast'), got {sorted(graphs)}")
        manifest.stems.check(need)
        _check_fast_stems(need, graphs)
        for name, info in graphs.items():
            _check_graph(need, name, info, *roles.required(name, "prefix", "concat", 1))
        return manifest


class FieldReader:
    """Exact-type readers for untrusted JSON values; every refusal is one line naming the field."""

    MAX_TEXT = 4096

    def __init__(self, where: str):
        self.where = where

    def fail(self, name: str, rule: str, value) -> None:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ModelFolderError(f"{self.where}: {name} must be {rule}, got {shown}")

    def obj(self, value, name: str) -> dict:
        if not isinstance(value, dict):
            self.fail(name, "a JSON object", value)
        return value

    def array(self, value, name: str, max_len: int) -> list:
        if not isinstance(value, (list, tuple)) or len(value) > max_len:
            self.fail(name, f"a list of at most {max_len} items", value)
        return value

    def req(self, data: dict, key: str, where: str = "manifest"):
        if key not in data:
            raise ModelFolderError(f"{self.where}: {where} has no {key!r}")
        return data[key]

    def known(self, data: dict, allowed: set, name: str) -> None:
        unknown = sorted(str(k) for k in data if k not in allowed)
        if unknown:
            shown = ", ".join(repr(k[:40]) for k in unknown[:3])
            raise ModelFolderError(f"{self.where}: {name} has unknown field(s) {shown}; this musicgen-onnx reads "
                                   f"format version {FORMAT_VERSION}")

    def integer(self, value, name: str, lo: int = -(1 << 62), hi: int = 1 << 62) -> int:
        if type(value) is not int or not lo <= value <= hi:
            self.fail(name, f"an integer in [{lo}, {hi}]" if hi < (1 << 62) else "an integer", value)
        return value

    def optional_integer(self, value, name: str):
        return None if value is None else self.integer(value, name)

    def number(self, value, name: str) -> float:
        if type(value) not in (int, float) or not math.isfinite(value):
            self.fail(name, "a finite number", value)
        return value

    def boolean(self, value, name: str) -> bool:
        if type(value) is not bool:
            self.fail(name, "true or false", value)
        return value

    def text(self, value, name: str) -> str:
        if not isinstance(value, str) or len(value) > self.MAX_TEXT:
            self.fail(name, f"a string of at most {self.MAX_TEXT} characters", value)
        return value

    def names(self, value, name: str) -> list[str]:
        return [self.text(v, f"{name}[]") for v in self.array(value, name, 4096)]

    def file(self, value, name: str) -> str:
        if not isinstance(value, str) or not _is_plain_relative(value):
            self.fail(name, "a plain name of a file inside the model folder", value)
        return value

    def graph(self, name: str, info, version: int) -> GraphInfo:
        if name not in GRAPH_NAMES:
            raise ModelFolderError(f"{self.where}: graph {name!r} is unknown (known: {', '.join(GRAPH_NAMES)})")
        info = self.obj(info, f"graphs.{name}")
        self.known(info, {f.name for f in dataclasses.fields(GraphInfo)}, f"graphs.{name}")
        inputs = tuple(self.names(self.req(info, "inputs", f"graphs.{name}"), f"graphs.{name}.inputs"))
        outputs = tuple(self.names(self.req(info, "outputs", f"graphs.{name}"), f"graphs.{name}.outputs"))
        if version >= 2:
            roles_map = {self.text(k, f"graphs.{name}.roles"): self.text(v, f"graphs.{name}.roles[{k!r}]")
                         for k, v in self.obj(self.req(info, "roles", f"graphs.{name}"), f"graphs.{name}.roles").items()}
        else:  # version 1: the tensors were named for their roles
            roles_map = {n: n for n in [*inputs, *outputs]}
        return GraphInfo(
            file=self.file(self.req(info, "file", f"graphs.{name}"), f"graphs.{name}.file"),
            precision=self.text(self.req(info, "precision", f"graphs.{name}"), f"graphs.{name}.precision"),
            inputs=inputs, outputs=outputs,
            files={self.file(k, f"graphs.{name}.files"): self.sha256(v, f"graphs.{name}.files.{k}")
                   for k, v in self.obj(self.req(info, "files", f"graphs.{name}"), f"graphs.{name}.files").items()},
            size_bytes=self.integer(self.req(info, "size_bytes", f"graphs.{name}"), f"graphs.{name}.size_bytes", 0,
                                    1 << 42),
            roles=roles_map)

    def sha256(self, value, name: str) -> str:
        if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            self.fail(name, "a sha256 hex digest", value)
        return value


def _is_plain_relative(name: str) -> bool:
    """A name, not a path: no folders, no parent, no NUL, nothing a filesystem treats specially."""
    return (0 < len(name) <= 255 and name not in (".", "..") and not any(c in name for c in "/\\\0")
            and not Path(name).is_absolute())


def load_manifest(folder: str | os.PathLike) -> Manifest:
    folder = Path(folder)
    return Manifest.from_dict(_read_json(folder, MANIFEST_NAME), where=str(folder / MANIFEST_NAME))


def _read_json(folder: Path, name: str) -> Any:
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {str(folder)!r} does not exist or is not a directory")
    if not (folder / name).is_file():
        raise ModelFolderError(f"{folder}: no {name}; not a musicgen-onnx model folder (export one first)")
    path = folder_file(folder, name)  # confined like the graphs: a link out of the folder is refused
    return read_json_file(path, MAX_MANIFEST_BYTES, "manifest")


def folder_file(folder: str | os.PathLike, name: str) -> Path:
    """The one way to reach a file of a model folder: a plain name that resolves, after symlinks, to a
    regular file directly inside the folder. Anything else is a one-line :class:`ModelFolderError`."""
    folder = Path(folder)
    if not _is_plain_relative(name):
        raise ModelFolderError(f"{folder}: {name!r} is not a plain file name inside the model folder")
    try:
        root = folder.resolve(strict=True)
        real = (folder / name).resolve(strict=True)
    except (OSError, RuntimeError):
        raise ModelFolderError(f"{folder}: {name!r} is missing") from None
    if real.parent != root and real.parent not in _hub_blobs(root):
        raise ModelFolderError(f"{folder}: {name!r} resolves to {str(real)!r}, outside the model folder")
    if not real.is_file():
        raise ModelFolderError(f"{folder}: {name!r} is not a regular file")
    return real


def _hub_blobs(root: Path) -> list[Path]:
    """A Hugging Face cache snapshot (``models--org--name/snapshots/REV[/sub]``) holds symlinks into its
    repo's ``blobs`` folder: that folder, and only that one, is part of the model folder too."""
    parts = root.parts
    if "snapshots" not in parts:
        return []
    i = len(parts) - 1 - parts[::-1].index("snapshots")
    repo = Path(*parts[:i])
    return [repo / "blobs"] if repo.name.startswith("models--") and 0 < len(parts) - i - 1 <= 2 else []


def _file_digest(path: Path) -> str:
    try:
        return sha256_file(path)
    except OSError as exc:
        raise ModelFolderError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None


def verify_files(folder: str | os.PathLike, manifest: Manifest, hash_files: bool = True) -> None:
    """Every file the folder uses exists inside it, has its recorded size and, unless skipped, its hash;
    no graph reads a file the manifest does not list."""
    folder = Path(folder)
    tok = folder_file(folder, manifest.tokenizer)
    if hash_files and manifest.tokenizer_sha256 is not None and _file_digest(tok) != manifest.tokenizer_sha256:
        raise ModelFolderError(f"{tok}: sha256 does not match the manifest (file corrupt, truncated or replaced)")
    verify_graph_files(folder, manifest.graphs, hash_files)


def verify_graph_files(folder: str | os.PathLike, graphs: dict[str, GraphInfo], hash_files: bool = True) -> None:
    """Each graph's files: inside the folder, of the recorded size and hash, and no unlisted external data."""
    from .onnx_files import MalformedGraph, external_data_locations

    folder = Path(folder)
    for name, info in graphs.items():
        if info.file not in info.files:
            raise ModelFolderError(f"{folder}: graph {name}: its file {info.file!r} is not among its hashed files")
        paths = {rel: folder_file(folder, rel) for rel in info.files}
        total = sum(path.stat().st_size for path in paths.values())
        if total != info.size_bytes:  # before hashing: a grown (sparse, 20 GB) file is refused at once
            raise ModelFolderError(
                f"{folder}: graph {name} files ({', '.join(info.files)}) total {total} bytes, manifest says "
                f"{info.size_bytes} (truncated or replaced?)"
            )
        for rel, digest in info.files.items():
            if hash_files and _file_digest(paths[rel]) != digest:
                raise ModelFolderError(
                    f"{paths[rel]}: sha256 does not match the manifest (file corrupt, truncated or replaced)"
                )
        graph = folder_file(folder, info.file)
        try:
            locations = external_data_locations(graph)
        except (MalformedGraph, OSError, ValueError) as exc:
            raise ModelFolderError(f"{graph}: not a readable ONNX graph ({exc})") from None
        unlisted = sorted(loc for loc in locations if loc not in info.files)
        if unlisted:
            raise ModelFolderError(f"{graph}: reads external data {unlisted[0]!r}, which the manifest does not list "
                                   f"for graph {name}")


def load_stems_manifest(folder: str | os.PathLike) -> StemsManifest:
    """A stems-only folder's manifest (``export-stems``), read like :func:`load_manifest`."""
    return StemsManifest.from_dict(_read_json(Path(folder), STEMS_MANIFEST_NAME), where=str(Path(folder) / STEMS_MANIFEST_NAME))
