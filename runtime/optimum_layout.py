"""Folders written by optimum (``optimum-cli export onnx --task text-to-audio``) and transformers.js
(``Xenova/musicgen-small``): text-only MusicGen, mono and stereo, read as they are.

Why an adapter and not a second loop: the step loop, sampling, CFG, long-form windows, streaming and
the codec's stereo split are the same for every folder; what differs is only how the graphs are
called. This module turns such a folder into a :class:`Manifest` (roles mapping optimum's tensor names
to this project's, numbers from ``config.json`` checked by ``Manifest.check``) plus three small pieces
that ``MusicGen`` asks it for:

* :class:`OptimumConditioner` - optimum's text encoder returns the raw T5 states; the decoder graph
  projects them (``enc_to_dec_proj``) and zeroes masked positions itself, so the conditioner only
  tokenises, runs T5 once and hands the states and the mask on.
* :class:`OptimumStepper` - optimum's decoder takes ids as ``[rows * codebooks, seq]``, returns logits
  for every position ``[rows * codebooks, seq, vocab]``, computes the cross-attention keys/values on
  the first call (the merged graph's ``use_cache_branch=False`` branch, or ``decoder_model.onnx``) and
  takes them back as a past on every later call (``decoder_with_past_model.onnx`` or the merged graph
  with ``use_cache_branch=True``). Its cache is concatenated every step (past + new), like this
  project's ``concat`` graphs.
* the codec: ``encodec_decode.onnx`` takes codes with a leading chunk axis ``[1, batch, K, T]``.

Layouts: the graphs at the top of the folder (optimum) or in ``onnx/`` (transformers.js), with
``config.json``, ``generation_config.json`` and ``tokenizer.json`` at the top; variants by file suffix
(``_fp16``, ``_quantized``, ``_q4``) chosen with ``precision=``. There is no audio encoder in these
exports, so continuation is refused (``info`` says so). There are no recorded hashes either: files are
checked to exist inside the folder, to be readable ONNX and to read no external data outside it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import roles
from .codec import AudioCodec
from .errors import InvalidInputError, ModelFolderError
from .json_file import read_json_file
from .manifest import FieldReader, GraphInfo, Manifest, checkpoint_defaults, codebook_delays, folder_file, hop_length
from .stepper import Conditioning

log = logging.getLogger(__name__)

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER = "tokenizer.json"
MAX_CONFIG_BYTES = 1 << 20  # a real config.json is a few kB
# precision -> file suffix, in the order the default is chosen (transformers.js' names for the quantised ones)
VARIANTS = {"fp32": "", "fp16": "_fp16", "int8": "_quantized", "int4": "_q4"}
PRECISION_ALIASES = {"quantized": "int8", "q4": "int4"}
STEMS = {"text_encoder": "text_encoder", "merged": "decoder_model_merged", "decoder": "decoder_model",
         "decoder_with_past": "decoder_with_past_model", "audio_decoder": "encodec_decode"}


@dataclass(frozen=True)
class OptimumFolder:
    """An opened optimum / transformers.js folder: its manifest (what the runtime drives it by) and
    where its files are."""

    folder: Path
    graph_dir: Path  # the folder itself, or its onnx/ subfolder
    manifest: Manifest
    precision: str
    available: tuple[str, ...]  # complete variants in this folder
    merged: bool  # decoder_model_merged (use_cache_branch) rather than decoder_model + decoder_with_past_model

    has_variants = True  # ``precision=`` picks among the folder's variants

    @property
    def layout(self) -> str:
        where = "graphs in onnx/ (transformers.js layout)" if self.graph_dir != self.folder else "graphs at the top"
        decoder = "merged decoder (use_cache_branch)" if self.merged else "split decoder (decoder_model + decoder_with_past_model)"
        return f"optimum / transformers.js export, {where}, {decoder}"

    @property
    def variant(self) -> str:
        return f"{self.precision} (available: {', '.join(self.available)})"

    source_format = None  # config.json does not say which checkpoint format the graphs came from

    def files_checked(self, hashed: bool) -> str:
        return "present inside the folder, readable ONNX, no outside external data"

    @property
    def lacks(self) -> list[str]:
        """What this runtime can do with its own exports but not with this folder."""
        return ["audio encoder: no continuation (generate_continuation, --continue)",
                "recorded sha256: files are checked for presence, size and ONNX structure only",
                "static KV cache: optimum's decoder concatenates its cache every step"]

    @property
    def tokenizer_path(self) -> Path:
        return folder_file(self.folder, TOKENIZER)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, folder: str | Path, precision: str | None = None, verify_hashes: bool = True) -> "OptimumFolder":
        """``verify_hashes`` has nothing to check: these folders record no hashes (see ``lacks``)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelFolderError(f"model folder {str(folder)!r} does not exist or is not a directory")
        graph_dir = _graph_dir(folder)
        if not any(graph_dir.glob("*.onnx")) and any(folder.glob("*.safetensors")):
            raise ModelFolderError(f"{folder}: a transformers checkpoint, not an ONNX export; export it first "
                                   f"(musicgen-onnx export {folder} OUT_DIR)")
        config = _read_json(folder, CONFIG, required=True)
        gen = _read_json(folder, GENERATION_CONFIG, required=False) or {}
        folder_file(folder, TOKENIZER)  # one line naming it if it is missing
        available = tuple(p for p, suffix in VARIANTS.items() if _variant_files(graph_dir, suffix) is not None)
        chosen = _choose(folder, graph_dir, precision, available)
        files = _variant_files(graph_dir, VARIANTS[chosen])
        merged = "merged" in files
        manifest = _manifest(folder, graph_dir, config, gen, files, chosen)
        log.info("%s: optimum layout, %s, %s decoder", folder, chosen, "merged" if merged else "split")
        return cls(folder, graph_dir, manifest, chosen, available, merged)

    # ------------------------------------------------------------------ what MusicGen asks for
    def conditioner(self, tokenizer, graphs) -> "OptimumConditioner":
        return OptimumConditioner(tokenizer, graphs, self.manifest, self.merged)

    def codec(self, graphs) -> AudioCodec:
        codec = AudioCodec(graphs, self.manifest)
        _check_codec_io(self.folder, codec.decoder, self.manifest)
        codec.decoder = _ChunkAxis(codec.decoder, self.manifest.graphs["audio_decoder"].name(roles.AUDIO_CODES))
        return codec

    def new_stepper(self, graphs, rows: int, conditioning: Conditioning, steps: int) -> "OptimumStepper":
        first = graphs["decoder"]
        later = first if self.merged else graphs["decoder_with_past"]
        return OptimumStepper(first, later, self.manifest, conditioning, rows, self.merged)

    def stems(self, graphs, melody: bool = False, exact: bool = False) -> None:
        """No stems graph in these folders (text-only MusicGen)."""
        return None


# ---------------------------------------------------------------------- the adapter's runtime pieces
class OptimumConditioner:
    """Prompts -> the decoder's text inputs. The CFG null rows get the same ids with an all-zero mask
    and all-zero states: transformers' ``generate`` feeds ``zeros_like`` states and mask, and the
    decoder graph multiplies the projected states by the mask, so the null rows see exactly zero."""

    def __init__(self, tokenizer, graphs, manifest: Manifest, merged: bool):
        self.tokenizer = tokenizer
        self.graphs = graphs
        enc, dec = manifest.graphs["text_encoder"], manifest.graphs["decoder"]
        self._inputs = (enc.name(roles.TEXT_IDS), enc.name(roles.TEXT_MASK))
        self._output = enc.name(roles.TEXT_STATES)
        self._states = dec.name(roles.TEXT_STATES)
        self._mask = dec.name(roles.ENCODER_MASK)
        self._merged = merged

    def __call__(self, descriptions: list[str | None], chroma, use_cfg: bool) -> Conditioning:
        ids, mask = self.tokenizer(descriptions)
        b = ids.shape[0]
        if use_cfg:
            ids = np.concatenate([ids, ids])
            mask = np.concatenate([mask, np.zeros_like(mask)])
        states = self.graphs.run_transient("text_encoder", [self._output], dict(zip(self._inputs, (ids, mask))))[0]
        states = states.astype(_float_type(self.graphs["decoder"], self._states), copy=True)
        if use_cfg:
            states[b:] = 0
        first = {self._states: states, self._mask: mask}
        # the split decoder's later graph has no states input (its cross keys/values come back as a past)
        return Conditioning(first, first if self._merged else {self._mask: mask}, 0)


class OptimumStepper:
    """``run(ids [rows, K, new], new_positions) -> logits [rows, K, V]`` over optimum's decoder (module
    docstring). The first call computes the cross-attention keys/values; they are kept and fed back as
    the cross past on every later call, with the self-attention past the previous call returned."""

    def __init__(self, first, later, manifest: Manifest, conditioning: Conditioning, rows: int, merged: bool):
        m = manifest
        self._first, self._later = first, later
        dec = m.graphs["decoder"]
        self._ids = dec.name(roles.TOKEN_IDS)
        self._logits = dec.name(roles.LOGITS)
        self._present = dec.names(roles.layers("present", m.num_layers))
        self._present_cross = dec.names(roles.layers("present_cross", m.num_layers))
        later_info = dec if merged else m.graphs["decoder_with_past"]
        self._later_ids = later_info.name(roles.TOKEN_IDS)
        self._later_logits = later_info.name(roles.LOGITS)
        self._later_present = later_info.names(roles.layers("present", m.num_layers))
        self._past = later_info.names(roles.layers("past", m.num_layers))
        self._past_cross = later_info.names(roles.layers("past_cross", m.num_layers))
        self._first_feeds = dict(conditioning.first)
        self._later_feeds = dict(conditioning.steps)
        self._merged = merged
        if merged:  # the first call's branch ignores the past, but the graph still declares it
            empty = np.zeros((rows, m.num_heads, 0, m.head_dim), dtype=_float_type(first, self._past[0]))
            self._first_feeds.update({name: empty for name in [*self._past, *self._past_cross]})
            self._first_feeds[dec.name(roles.USE_CACHE_BRANCH)] = np.array([False])
            self._later_feeds[dec.name(roles.USE_CACHE_BRANCH)] = np.array([True])
        self._cache: dict[str, np.ndarray] | None = None  # self-attention past, replaced every call
        self._cross: dict[str, np.ndarray] = {}  # cross-attention keys/values, from the first call
        self._branch = dec.name(roles.USE_CACHE_BRANCH) if merged else None  # one flag, not per row

    def keep_rows(self, index: np.ndarray) -> None:
        """Go on with rows ``index`` only (every feed and past is per row on axis 0, but the branch flag)."""
        def cut(feeds):
            return {name: value if name == self._branch else value[index] for name, value in feeds.items()}

        self._first_feeds, self._later_feeds, self._cross = (cut(self._first_feeds), cut(self._later_feeds),
                                                             cut(self._cross))
        if self._cache is not None:
            self._cache = cut(self._cache)

    def run(self, ids: np.ndarray, new_positions: int) -> np.ndarray:
        """``new_positions`` is implied here: the graph grows its cache by the columns it is given
        (there is no prefix in text-only MusicGen). The first call returns logits for every column
        (``[rows * K, columns, V]``: a long-form window's 600-frame prompt at batch 64 with CFG is
        about 1.3 GB), of which the last is used."""
        rows, k, new = ids.shape
        flat = np.ascontiguousarray(ids.reshape(rows * k, new))
        n = len(self._past)
        if self._cache is None:
            logits, *kv = self._first.run([self._logits, *self._present, *self._present_cross],
                                          {self._ids: flat, **self._first_feeds})
            self._cross = dict(zip(self._past_cross, kv[n:]))
        else:
            logits, *kv = self._later.run([self._later_logits, *self._later_present],
                                          {self._later_ids: flat, **self._later_feeds, **self._cache, **self._cross})
        self._cache = dict(zip(self._past, kv[:n]))
        if logits.ndim != 3 or logits.shape[0] != rows * k:
            raise ModelFolderError(f"the decoder returned logits of shape {list(logits.shape)}, expected "
                                   f"[{rows * k}, {new}, vocab]")
        return logits[:, -1, :].reshape(rows, k, logits.shape[2]).astype(np.float32, copy=False)


class _ChunkAxis:
    """optimum's ``encodec_decode.onnx`` takes ``audio_codes [1, batch, K, T]`` (EnCodec's chunk axis,
    always 1 without chunking); the codec hands it ``[batch, K, T]``."""

    def __init__(self, graph, codes_name: str):
        self._graph = graph
        self._codes = codes_name

    def run(self, outputs, feeds):
        return self._graph.run(outputs, {**feeds, self._codes: feeds[self._codes][None]})


def _check_codec_io(folder: Path, graph, m: Manifest) -> None:
    """``config.json``'s codebooks and channels against what the codec graph declares (``audio_codes
    [1, batch, K per channel, T]``, ``audio_values [batch, 1, samples]``), at load: the generic check
    expects codes without optimum's chunk axis, and a disagreement would otherwise surface mid-generation
    as onnxruntime's own error log."""
    info = m.graphs["audio_decoder"]
    per_side = m.num_codebooks // m.audio_channels
    shapes = {t.name: t.shape for t in [*graph.get_inputs(), *graph.get_outputs()]}
    codes = shapes.get(info.name(roles.AUDIO_CODES), [])
    values = shapes.get(info.name(roles.AUDIO_VALUES), [])
    got = codes[2] if len(codes) == 4 else None
    if isinstance(got, int) and got != per_side:
        raise ModelFolderError(f"{folder}/{CONFIG}: decoder.num_codebooks {m.num_codebooks} over audio_channels "
                               f"{m.audio_channels} is {per_side} codebooks per channel, but {info.file} decodes {got}")
    got = values[1] if len(values) == 3 else None
    if isinstance(got, int) and got != 1:
        raise ModelFolderError(f"{folder}/{CONFIG}: {info.file} returns {got} channels per decode, expected 1 "
                               f"(each channel's codebooks are decoded alone)")


def _float_type(graph, name: str):
    """The numpy dtype a graph declares for a float input: fp16 variants (transformers.js ``_fp16``)
    take their states and caches in float16, the others in float32."""
    declared = next((i.type for i in graph.get_inputs() if i.name == name), "tensor(float)")
    return np.float16 if declared == "tensor(float16)" else np.float32


# ---------------------------------------------------------------------- reading the folder
def _graph_dir(folder: Path) -> Path:
    """The folder, or its ``onnx/`` subfolder when the graphs live there (transformers.js) - a real
    directory directly inside the folder, not a link out of it."""
    sub = folder / "onnx"
    if sub.is_dir():
        if sub.resolve().parent != folder.resolve():
            raise ModelFolderError(f"{folder}: 'onnx' resolves to {str(sub.resolve())!r}, outside the model folder")
        if any(sub.glob("text_encoder*.onnx")):
            return sub
    return folder


def _read_json(folder: Path, name: str, required: bool) -> dict | None:
    if not required and not (folder / name).exists():
        return None
    path = folder_file(folder, name)
    data = read_json_file(path, MAX_CONFIG_BYTES, "JSON")
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path}: must be a JSON object")
    return data


def _variant_files(graph_dir: Path, suffix: str) -> dict[str, str] | None:
    """The graph files of one variant, or None when the variant is incomplete."""
    have = {key: f"{stem}{suffix}.onnx" for key, stem in STEMS.items() if (graph_dir / f"{stem}{suffix}.onnx").exists()}
    if "text_encoder" not in have or "audio_decoder" not in have:
        return None
    if "merged" in have:
        return {k: have[k] for k in ("text_encoder", "merged", "audio_decoder")}
    if "decoder" in have and "decoder_with_past" in have:
        return {k: have[k] for k in ("text_encoder", "decoder", "decoder_with_past", "audio_decoder")}
    return None


def _choose(folder: Path, graph_dir: Path, precision, available: tuple[str, ...]) -> str:
    if precision is not None:
        if not isinstance(precision, str) or PRECISION_ALIASES.get(precision, precision) not in VARIANTS:
            raise InvalidInputError(f"precision must be one of {', '.join([*VARIANTS, *PRECISION_ALIASES])}, "
                                    f"got {precision!r}")
        precision = PRECISION_ALIASES.get(precision, precision)
    if not available:
        want = VARIANTS[precision or "fp32"]
        lacks = [f"{STEMS[k]}{want}.onnx" for k in ("text_encoder", "audio_decoder") if not (graph_dir / f"{STEMS[k]}{want}.onnx").exists()]
        if not (graph_dir / f"decoder_model_merged{want}.onnx").exists():
            lacks.append(f"decoder_model_merged{want}.onnx (or decoder_model{want}.onnx + decoder_with_past_model{want}.onnx)")
        raise ModelFolderError(f"{folder}: not a complete optimum / transformers.js MusicGen export: it lacks "
                               f"{', '.join(lacks)}")
    if precision is None:
        return available[0]
    if precision not in available:
        raise ModelFolderError(f"{folder}: has no complete {precision} variant (files ending "
                               f"'{VARIANTS[precision]}.onnx'); it has {', '.join(available)}")
    return precision


def _manifest(folder: Path, graph_dir: Path, config: dict, gen: dict, files: dict[str, str], precision: str) -> Manifest:
    """config.json + generation_config.json + the graph files -> a checked :class:`Manifest`. Every field
    is read with its exact type (no bool as int, no string as number); ``Manifest.check`` bounds them."""
    r = FieldReader(f"{folder}/{CONFIG}")
    model_type = r.text(r.req(config, "model_type", "config.json"), "model_type")
    if model_type != "musicgen":
        what = "MusicGen-Melody" if model_type == "musicgen_melody" else repr(model_type)
        raise ModelFolderError(f"{folder}: {what} folders from optimum / transformers.js are not supported "
                               f"(text-only MusicGen only); export it with musicgen-onnx export instead")
    dec = r.obj(r.req(config, "decoder", "config.json"), "decoder")
    text = r.obj(r.req(config, "text_encoder", "config.json"), "text_encoder")
    codec = r.obj(r.req(config, "audio_encoder", "config.json"), "audio_encoder")
    if codec.get("model_type") != "encodec":
        raise ModelFolderError(f"{folder}: audio_encoder.model_type must be 'encodec', got {codec.get('model_type')!r}")
    if codec.get("chunk_length_s") is not None:
        raise ModelFolderError(f"{folder}: audio_encoder.chunk_length_s must be null (chunked EnCodec is not supported)")
    num_layers = r.integer(r.req(dec, "num_hidden_layers", "decoder"), "decoder.num_hidden_layers", 1, 256)
    num_codebooks = r.integer(r.req(dec, "num_codebooks", "decoder"), "decoder.num_codebooks", 1, 32)
    channels = r.integer(dec.get("audio_channels", 1), "decoder.audio_channels", 1, 2)
    ratios = r.array(r.req(codec, "upsampling_ratios", "audio_encoder"), "audio_encoder.upsampling_ratios", 8)
    hop = hop_length([r.integer(x, "audio_encoder.upsampling_ratios[]", 1, 64) for x in ratios])
    special = dec.get("pad_token_id")
    if special is None:
        special = config.get("decoder_start_token_id", gen.get("decoder_start_token_id"))
    guidance = gen.get("guidance_scale")
    guidance = None if guidance is None else float(r.number(guidance, "generation_config.guidance_scale"))
    codebook_size = r.integer(r.req(dec, "vocab_size", "decoder"), "decoder.vocab_size")
    merged = "merged" in files
    graphs = {"text_encoder": _graph(graph_dir, "text_encoder", files["text_encoder"], precision, num_layers),
              "decoder": _graph(graph_dir, "decoder", files["merged" if merged else "decoder"], precision, num_layers,
                                merged=merged),
              "audio_decoder": _graph(graph_dir, "audio_decoder", files["audio_decoder"], precision, num_layers)}
    if not merged:
        graphs["decoder_with_past"] = _graph(graph_dir, "decoder_with_past", files["decoder_with_past"], precision,
                                             num_layers)
    manifest = Manifest(
        conditioning="states", kv_cache="concat", kv_dtype=None,
        hidden_size=r.integer(r.req(dec, "hidden_size", "decoder"), "decoder.hidden_size"),
        num_layers=num_layers,
        num_heads=r.integer(r.req(dec, "num_attention_heads", "decoder"), "decoder.num_attention_heads"),
        num_codebooks=num_codebooks, audio_channels=channels,
        delays=codebook_delays(num_codebooks, channels),
        graphs=graphs,
        text_hidden_size=r.integer(r.req(text, "d_model", "text_encoder"), "text_encoder.d_model"),
        text_vocab_size=r.integer(r.req(text, "vocab_size", "text_encoder"), "text_encoder.vocab_size"),
        codebook_size=codebook_size,
        special_token_id=r.integer(special, "decoder.pad_token_id (or decoder_start_token_id)"),
        sample_rate=r.integer(r.req(codec, "sampling_rate", "audio_encoder"), "audio_encoder.sampling_rate"),
        hop_length=hop, max_duration=30.0,
        max_positions=r.optional_integer(dec.get("max_position_embeddings"), "decoder.max_position_embeddings"),
        defaults=checkpoint_defaults(codebook_size, guidance), tokenizer=TOKENIZER,
        source={"checkpoint": str(folder), "layout": "optimum", "precision": precision},
    )
    manifest.check(f"{folder}/{CONFIG}")
    if manifest.max_positions is not None and manifest.max_positions < manifest.max_frames + manifest.max_delay + 1:
        raise ModelFolderError(f"{folder}/{CONFIG}: decoder.max_position_embeddings {manifest.max_positions} is "
                               f"shorter than a 30 s window ({manifest.max_frames + manifest.max_delay + 1} steps)")
    return manifest


def _graph(graph_dir: Path, name: str, file: str, precision: str, num_layers: int, merged: bool = False) -> GraphInfo:
    """A graph's info from optimum's tensor naming (``past_key_values.{i}.decoder.key``, ...); the
    session check at load then refuses a graph that declares anything else."""
    from .onnx_files import MalformedGraph, external_data_locations

    path = folder_file(graph_dir, file)
    try:
        external = sorted(external_data_locations(path))
    except (MalformedGraph, OSError, ValueError) as exc:
        raise ModelFolderError(f"{path}: not a readable ONNX graph ({exc})") from None
    size = path.stat().st_size + sum(folder_file(graph_dir, loc).stat().st_size for loc in external)

    def kv(prefix: str, kind: str, role: str) -> dict[str, str]:
        return {f"{role}.{i}.{which}": f"{prefix}.{i}.{kind}.{which}" for i in range(num_layers) for which in ("key", "value")}

    past, past_cross = kv("past_key_values", "decoder", "past"), kv("past_key_values", "encoder", "past_cross")
    present, present_cross = kv("present", "decoder", "present"), kv("present", "encoder", "present_cross")
    if name == "text_encoder":
        role_map = {roles.TEXT_IDS: "input_ids", roles.TEXT_MASK: "attention_mask",
                    roles.TEXT_STATES: "last_hidden_state"}
        ins, outs = ["input_ids", "attention_mask"], ["last_hidden_state"]
    elif name == "audio_decoder":
        role_map = {roles.AUDIO_CODES: "audio_codes", roles.AUDIO_VALUES: "audio_values"}
        ins, outs = ["audio_codes"], ["audio_values"]
    elif name == "decoder_with_past":
        role_map = {roles.TOKEN_IDS: "input_ids", roles.ENCODER_MASK: "encoder_attention_mask",
                    roles.LOGITS: "logits", **past, **past_cross, **present}
        ins = ["input_ids", "encoder_attention_mask", *past.values(), *past_cross.values()]
        outs = ["logits", *present.values()]
    else:  # decoder: optimum's decoder_model, or the merged one
        role_map = {roles.TOKEN_IDS: "input_ids", roles.TEXT_STATES: "encoder_hidden_states",
                    roles.ENCODER_MASK: "encoder_attention_mask", roles.LOGITS: "logits", **present, **present_cross}
        ins = ["input_ids", "encoder_hidden_states", "encoder_attention_mask"]
        outs = ["logits", *present.values(), *present_cross.values()]
        if merged:
            role_map.update({**past, **past_cross, roles.USE_CACHE_BRANCH: "use_cache_branch"})
            ins += [*past.values(), *past_cross.values(), "use_cache_branch"]
    return GraphInfo(file=file, precision=precision, inputs=tuple(ins), outputs=tuple(outs),
                     files={file: "", **{loc: "" for loc in external}}, size_bytes=size, roles=role_map)
