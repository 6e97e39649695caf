"""audiocraft-format checkpoints -> a transformers MusicGen / MusicGen-Melody checkpoint folder.

audiocraft (the system MusicGen was trained and is fine-tuned with) writes its own format: a release
folder holds ``state_dict.bin`` (``best_state``: the LM and its conditioners' projections; ``xp.cfg``:
the experiment config as YAML) and ``compression_state_dict.bin`` (its EnCodec, or ``pretrained`` naming
one); a solver writes ``checkpoint.th`` (weights under ``best_state['model']`` beside a pickled
omegaconf ``xp.cfg``). The T5 text encoder is in neither: audiocraft loads ``t5-base`` by name, so it
comes from a local folder (``text_encoder``).

The mapping is ours (transformers' convert_musicgen_transformers.py is not in its wheel), written against
audiocraft's module names (audiocraft/models/lm.py, modules/transformer.py, modules/conditioners.py,
modules/seanet.py, quantization/core_vq.py) and checked both ways: every audiocraft tensor must map
(a leftover is an error naming it) and every transformers tensor must be produced (a missing one is an
error naming it), with shapes. The converted folder is then exported exactly as a transformers one.

Files are read with ``torch.load(weights_only=True)`` (tensors and plain data, no code); only a solver
``checkpoint.th``, whose config is a pickled omegaconf object, needs ``allow_pickle``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import reprlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runtime.errors import ExportError
from .checkpoint import read_config

log = logging.getLogger(__name__)

FORMAT = "audiocraft"
LM_FILE = "state_dict.bin"
CODEC_FILE = "compression_state_dict.bin"
SOLVER_FILE = "checkpoint.th"
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json", "special_tokens_map.json")
# audiocraft state entries that carry no weights of the model: the chroma extractor's STFT window
# (torchaudio.transforms.Spectrogram keeps it as a buffer; the runtime computes its own Hann window).
IGNORED = re.compile(r"condition_provider\.conditioners\.self_wav\.chroma\.spec\.window")


def is_audiocraft(path: str | Path) -> bool:
    p = Path(path)
    if p.is_file():
        return p.name == SOLVER_FILE or p.suffix == ".th"
    return p.is_dir() and not (p / "config.json").is_file() and (
        (p / LM_FILE).is_file() or (p / SOLVER_FILE).is_file())


# ---------------------------------------------------------------- reading
def _load(path: Path, allow_pickle: bool, what: str, mmap: bool = True) -> dict:
    """``mmap``: off for transformers' ``pytorch_model.bin``, which may predate torch's zip format."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        safe_error = "weights_only" in str(exc) or "Unsupported global" in str(exc) or "WeightsUnpickler" in str(exc)
        if not safe_error:
            raise ExportError(f"{what} {str(path)!r}: cannot be read ({type(exc).__name__}: {first[:200]})") from None
    if not allow_pickle:
        raise ExportError(f"{what} {str(path)!r} holds pickled objects beside its tensors (such as an audiocraft "
                          "solver's omegaconf config), which can run code when loaded; pass --allow-pickle if you trust it")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except ModuleNotFoundError as exc:
        raise ExportError(f"{what} {str(path)!r}: reading it needs the Python package {exc.name!r} "
                          f"(pip install {exc.name})") from None
    except Exception as exc:
        raise ExportError(f"{what} {str(path)!r}: cannot be read ({type(exc).__name__})") from None


# Bounds on xp.cfg, checked while it is parsed (audiocraft's own are ~20 KB, nested ~6 deep, without
# aliases): a crafted one must fail in one line, not in a RecursionError or an alias bomb's gigabytes.
MAX_CFG_BYTES = 1 << 20
MAX_CFG_DEPTH = 64
MAX_CFG_NODES = 200_000  # with every alias counted as the whole node it repeats
MAX_CFG_ALIASES = 1000
MAX_INTERPOLATIONS = 8  # ${a.b} -> ${c.d} -> ... hops followed before giving up


class _CfgTooBig(Exception):
    pass


def _bounded_loader():
    """A ``yaml.SafeLoader`` that refuses, while composing, a document nested deeper than MAX_CFG_DEPTH,
    with more than MAX_CFG_ALIASES aliases, or more than MAX_CFG_NODES nodes once aliases are expanded
    (what any consumer walking the result would have to visit)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def __init__(self, stream):
            super().__init__(stream)
            self.depth = 0
            self.aliases = 0
            self.sizes: dict[int, int] = {}

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_CFG_ALIASES:
                    raise _CfgTooBig(f"more than {MAX_CFG_ALIASES} aliases")
                node = super().compose_node(parent, index)
                if id(node) not in self.sizes:
                    raise _CfgTooBig("an alias repeats a node that contains it")
                return node
            self.depth += 1
            if self.depth > MAX_CFG_DEPTH:
                raise _CfgTooBig(f"nested deeper than {MAX_CFG_DEPTH} levels")
            try:
                node = super().compose_node(parent, index)
            finally:
                self.depth -= 1
            children = node.value if isinstance(node.value, list) else []
            size = 1 + sum(self.sizes.get(id(c), 0) if not isinstance(c, tuple)
                           else self.sizes.get(id(c[0]), 0) + self.sizes.get(id(c[1]), 0) for c in children)
            if size > MAX_CFG_NODES:
                raise _CfgTooBig(f"more than {MAX_CFG_NODES} values once its aliases are expanded")
            self.sizes[id(node)] = size
            return node

    return Loader


def _bracket_depth(text: str) -> int:
    """The deepest run of open ``[`` / ``{`` (quotes ignored: an over-estimate only refuses sooner)."""
    depth = deepest = 0
    for run in re.finditer(r"[\[{]+|[\]}]+", text):
        if run.group()[0] in "[{":
            depth += len(run.group())
            deepest = max(deepest, depth)
        else:
            depth = max(depth - len(run.group()), 0)
    return deepest


def _config(raw: Any, where: str) -> dict:
    """``xp.cfg`` as a plain dict: a YAML string (export_lm), a dict, or an omegaconf object (solver)."""
    if hasattr(raw, "_content") or type(raw).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        raw = OmegaConf.to_container(raw, resolve=False)
    if isinstance(raw, str):
        import yaml

        if len(raw) > MAX_CFG_BYTES:
            raise ExportError(f"{where}: xp.cfg is {len(raw)} characters; at most {MAX_CFG_BYTES} are read")
        if _bracket_depth(raw) > MAX_CFG_DEPTH:  # PyYAML scans a flow run ahead in quadratic time: refused first
            raise ExportError(f"{where}: xp.cfg is refused: nested deeper than {MAX_CFG_DEPTH} levels")
        try:
            raw = yaml.load(raw, Loader=_bounded_loader())  # noqa: S506 - a SafeLoader with bounds
        except yaml.YAMLError as exc:
            raise ExportError(f"{where}: xp.cfg is not valid YAML ({str(exc).splitlines()[0]})") from None
        except _CfgTooBig as exc:
            raise ExportError(f"{where}: xp.cfg is refused: {exc}") from None
        except RecursionError:
            raise ExportError(f"{where}: xp.cfg is nested too deeply") from None
    if not isinstance(raw, dict):
        raise ExportError(f"{where}: xp.cfg is missing or not a mapping (got {type(raw).__name__})")
    return raw


def _get(cfg: dict, dotted: str, where: str, default: Any = ...):
    """``cfg['a']['b']`` for ``'a.b'``, following audiocraft's ``${a.b}`` interpolations (a cycle, or a
    chain longer than MAX_INTERPOLATIONS, is refused)."""
    chain = [dotted]
    while True:
        node: Any = cfg
        for part in chain[-1].split("."):
            if not isinstance(node, dict) or part not in node:
                if default is not ...:
                    return default
                raise ExportError(f"{where}: xp.cfg has no {chain[-1]!r}")
            node = node[part]
        m = re.fullmatch(r"\$\{([\w.]+)\}", node) if isinstance(node, str) else None
        if m is None:
            return node
        if m.group(1) in chain or len(chain) > MAX_INTERPOLATIONS:
            path = " -> ".join([*chain, m.group(1)])
            raise ExportError(f"{where}: xp.cfg {dotted} interpolates in a cycle or more than "
                              f"{MAX_INTERPOLATIONS} deep ({path[:200]})")
        chain.append(m.group(1))


def _want(cfg: dict, dotted: str, allowed, where: str, default: Any = ...):
    value = _get(cfg, dotted, where, default)
    ok = value in allowed if isinstance(allowed, (list, tuple)) else allowed(value)
    if not ok:
        rule = f"one of {list(allowed)}" if isinstance(allowed, (list, tuple)) else "supported"
        raise ExportError(f"{where}: xp.cfg {dotted} = {reprlib.repr(value)} is not supported by this exporter "
                          f"(needs {rule})")
    return value


def _int(cfg, dotted, where, default: Any = ...):
    return _want(cfg, dotted, lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, where, default)


@dataclass
class LMSpec:
    """What the LM's config says, checked against what this exporter (and the runtime) can reproduce."""

    dim: int
    heads: int
    layers: int
    ffn: int
    n_q: int
    card: int
    conditioning: str  # "cross" (text-only) or "prefix" (melody)
    stereo: bool
    text_name: str
    cfg_coef: float
    segment_duration: float
    sample_rate: int


def lm_spec(cfg: dict, where: str) -> LMSpec:
    _want(cfg, "lm_model", ["transformer_lm"], where)
    t = "transformer_lm"
    dim, heads, layers = _int(cfg, f"{t}.dim", where), _int(cfg, f"{t}.num_heads", where), _int(cfg, f"{t}.num_layers", where)
    if dim % heads:
        raise ExportError(f"{where}: xp.cfg {t}.dim {dim} is not a multiple of num_heads {heads}")
    n_q, card = _int(cfg, f"{t}.n_q", where), _int(cfg, f"{t}.card", where)
    scale = _want(cfg, f"{t}.hidden_scale", lambda v: isinstance(v, (int, float)) and v > 0, where, 4)
    for key, allowed, default in (("activation", ["gelu"], "gelu"), ("norm_first", [True], False),
                                  ("norm", ["layer_norm"], "layer_norm"), ("positional_embedding", ["sin"], "sin"),
                                  ("layer_scale", [None], None), ("qk_layer_norm", [False], False),
                                  ("qk_layer_norm_cross", [False], False), ("kv_repeat", [1], 1),
                                  ("causal", [True], True), ("past_context", [None], None),
                                  ("xpos", [False], False)):
        _want(cfg, f"{t}.{key}", allowed, where, default)
    if _get(cfg, f"{t}.two_step_cfg", where, False):
        log.warning("%s: trained with two_step_cfg; this runtime batches CFG (audiocraft's default)", where)
    _want(cfg, "codebooks_pattern.modeling", ["delay"], where)
    delays = _get(cfg, "codebooks_pattern.delay.delays", where)
    stereo = bool(_get(cfg, "interleave_stereo_codebooks.use", where, False))
    if stereo and _get(cfg, "interleave_stereo_codebooks.per_timestep", where, False):
        raise ExportError(f"{where}: xp.cfg interleave_stereo_codebooks.per_timestep = true is not supported")
    expected = [k // 2 for k in range(n_q)] if stereo else list(range(n_q))
    if list(delays or []) != expected:
        raise ExportError(f"{where}: xp.cfg codebooks_pattern.delay.delays = {delays!r} is not supported "
                          f"(this runtime's {'stereo' if stereo else 'mono'} pattern is {expected})")
    _want(cfg, "fuser.cross_attention_pos_emb", [False], where, False)
    for key in ("sum", "input_interpolate"):
        _want(cfg, f"fuser.{key}", lambda v: not v, where, [])
    prepend = sorted(_get(cfg, "fuser.prepend", where, []) or [])
    cross = sorted(_get(cfg, "fuser.cross", where, []) or [])
    conditioners = _get(cfg, "conditioners", where)
    if not isinstance(conditioners, dict):
        raise ExportError(f"{where}: xp.cfg conditioners is not a mapping")
    names = sorted(k for k in conditioners if k != "args")
    if prepend == [] and cross == ["description"] and names == ["description"]:
        conditioning = "cross"
    elif prepend == ["description", "self_wav"] and cross == [] and names == ["description", "self_wav"]:
        conditioning = "prefix"
        _want(cfg, "conditioners.self_wav.model", ["chroma_stem"], where)
        for key, allowed in (("n_chroma", [12]), ("radix2_exp", [14]), ("argmax", [True])):
            _want(cfg, f"conditioners.self_wav.chroma_stem.{key}", allowed, where)
    else:
        raise ExportError(f"{where}: conditioners {names} fused as prepend={prepend} cross={cross} are not a MusicGen "
                          "family this exporter knows (text-only: cross=[description]; melody: "
                          "prepend=[self_wav, description])")
    _want(cfg, "conditioners.description.model", ["t5"], where)
    text_name = _want(cfg, "conditioners.description.t5.name", lambda v: isinstance(v, str), where)
    if _get(cfg, "conditioners.description.t5.finetune", where, False):
        raise ExportError(f"{where}: xp.cfg conditioners.description.t5.finetune = true: the fine-tuned T5 would be "
                          "in the state, which this exporter does not map yet")
    coef = _want(cfg, "classifier_free_guidance.inference_coef",
                 lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), where, 3.0)
    duration = _want(cfg, "dataset.segment_duration", lambda v: isinstance(v, (int, float)) and v > 0, where, 30)
    sample_rate = _int(cfg, "sample_rate", where, 32000)
    channels = _want(cfg, "channels", [1, 2], where, 2 if stereo else 1)
    if (channels == 2) != stereo:
        raise ExportError(f"{where}: xp.cfg channels = {channels} but interleave_stereo_codebooks.use = {stereo}")
    return LMSpec(dim=dim, heads=heads, layers=layers, ffn=int(scale * dim), n_q=n_q, card=card,
                  conditioning=conditioning, stereo=stereo, text_name=text_name, cfg_coef=float(coef),
                  segment_duration=float(duration), sample_rate=sample_rate)


# ---------------------------------------------------------------- the weight mapping
_LAYER = {  # audiocraft StreamingTransformerLayer -> transformers Musicgen(Melody)DecoderLayer
    "self_attn.out_proj.weight": "self_attn.out_proj.weight",
    "cross_attention.out_proj.weight": "encoder_attn.out_proj.weight",
    "norm1.weight": "self_attn_layer_norm.weight", "norm1.bias": "self_attn_layer_norm.bias",
    "norm_cross.weight": "encoder_attn_layer_norm.weight", "norm_cross.bias": "encoder_attn_layer_norm.bias",
    "norm2.weight": "final_layer_norm.weight", "norm2.bias": "final_layer_norm.bias",
    "linear1.weight": "fc1.weight", "linear2.weight": "fc2.weight",
}
_FUSED = {"self_attn.in_proj_weight": "self_attn", "cross_attention.in_proj_weight": "encoder_attn"}


def map_lm(state: dict, spec: LMSpec, where: str) -> dict:
    """audiocraft LMModel ``best_state`` -> transformers keys (``decoder.*``, ``enc_to_dec_proj.*``,
    ``audio_enc_to_dec_proj.*``). The fused ``in_proj_weight [3d, d]`` is ``[q; k; v]``."""
    out: dict = {}
    dec = "decoder.model.decoder"
    d = spec.dim
    for key, value in state.items():
        if IGNORED.fullmatch(key):
            continue
        m = re.fullmatch(r"transformer\.layers\.(\d+)\.(.+)", key)
        if m and m.group(2) in _FUSED:
            if value.shape[0] != 3 * d:
                raise ExportError(f"{where}: {key} has shape {tuple(value.shape)}, expected ({3 * d}, {d}) (fused q;k;v)")
            name = f"{dec}.layers.{m.group(1)}.{_FUSED[m.group(2)]}"
            out[f"{name}.q_proj.weight"], out[f"{name}.k_proj.weight"], out[f"{name}.v_proj.weight"] = (
                value[:d], value[d:2 * d], value[2 * d:])
        elif m and m.group(2) in _LAYER:
            out[f"{dec}.layers.{m.group(1)}.{_LAYER[m.group(2)]}"] = value
        elif m2 := re.fullmatch(r"emb\.(\d+)\.weight", key):
            out[f"{dec}.embed_tokens.{m2.group(1)}.weight"] = value
        elif m2 := re.fullmatch(r"linears\.(\d+)\.weight", key):
            out[f"decoder.lm_heads.{m2.group(1)}.weight"] = value
        elif m2 := re.fullmatch(r"out_norm\.(weight|bias)", key):
            out[f"{dec}.layer_norm.{m2.group(1)}"] = value
        elif m2 := re.fullmatch(r"condition_provider\.conditioners\.description\.output_proj\.(weight|bias)", key):
            out[f"enc_to_dec_proj.{m2.group(1)}"] = value
        elif spec.conditioning == "prefix" and (
                m2 := re.fullmatch(r"condition_provider\.conditioners\.self_wav\.output_proj\.(weight|bias)", key)):
            out[f"audio_enc_to_dec_proj.{m2.group(1)}"] = value
        else:
            raise ExportError(f"{where}: audiocraft tensor {key!r} {tuple(value.shape)} has no place in the "
                              f"transformers MusicGen layout (an unsupported module or option)")
    return out


def map_codec(state: dict, where: str) -> dict:
    """audiocraft EncodecModel (SEANet + RVQ) ``best_state`` -> transformers EncodecModel keys."""
    out: dict = {}
    for key, value in state.items():
        m = re.fullmatch(r"(encoder|decoder)\.model\.(\d+)\.(?:(block\.\d+)\.)?(conv\.conv|convtr\.convtr|lstm)\.(.+)", key)
        if m:
            side, index, block, kind, param = m.groups()
            if kind == "lstm":
                name = f"{side}.layers.{index}.lstm.{param}"
            else:
                param = {"weight_g": "parametrizations.weight.original0",
                         "weight_v": "parametrizations.weight.original1"}.get(param, param)
                name = f"{side}.layers.{index}.{block + '.' if block else ''}conv.{param}"
            out[name] = value
            continue
        m = re.fullmatch(r"quantizer\.vq\.layers\.(\d+)\._codebook\.(inited|cluster_size|embed|embed_avg)", key)
        if m:
            out[f"quantizer.layers.{m.group(1)}.codebook.{m.group(2)}"] = value
            continue
        raise ExportError(f"{where}: audiocraft codec tensor {key!r} {tuple(value.shape)} has no place in the "
                          "transformers EnCodec layout (an unsupported SEANet option: conv shortcuts, other norms?)")
    return {f"audio_encoder.{k}": v for k, v in out.items()}


def codec_config(cfg: dict, where: str):
    """transformers EncodecConfig from audiocraft's ``encodec`` / ``seanet`` / ``rvq`` config."""
    from transformers import EncodecConfig

    _want(cfg, "compression_model", ["encodec"], where)
    _want(cfg, "encodec.autoencoder", ["seanet"], where)
    _want(cfg, "encodec.quantizer", ["rvq"], where)
    _want(cfg, "encodec.renormalize", [False], where, False)
    channels = _want(cfg, "encodec.channels", [1], where)
    sample_rate = _int(cfg, "encodec.sample_rate", where)
    s = "seanet"
    _want(cfg, f"{s}.activation", ["ELU"], where, "ELU")
    _want(cfg, f"{s}.activation_params", lambda v: v in ({"alpha": 1.0}, {"alpha": 1}), where, {"alpha": 1.0})
    _want(cfg, f"{s}.norm", ["weight_norm"], where)
    _want(cfg, f"{s}.true_skip", [True], where, True)
    _want(cfg, f"{s}.disable_norm_outer_blocks", [0], where, 0)
    _want(cfg, f"{s}.decoder.final_activation", [None], where, None)
    for side in ("encoder", "decoder"):  # per-side overrides would give the two halves different shapes
        extra = {k for k in (_get(cfg, f"{s}.{side}", where, {}) or {}) if k not in ("trim_right_ratio", "final_activation",
                                                                                      "final_activation_params")}
        if extra:
            raise ExportError(f"{where}: xp.cfg {s}.{side} overrides {sorted(extra)}, which this exporter does not map")
    ratios = _want(cfg, f"{s}.ratios", lambda v: isinstance(v, list) and v and all(isinstance(r, int) for r in v), where)
    bins, n_q = _int(cfg, "rvq.bins", where), _int(cfg, "rvq.n_q", where)
    hop = 1
    for r in ratios:
        hop *= r
    frame_rate = sample_rate / hop
    bandwidth = n_q * math.log2(bins) * frame_rate / 1000  # kbps for exactly n_q codebooks
    return EncodecConfig(
        sampling_rate=sample_rate, audio_channels=channels, codebook_size=bins,
        hidden_size=_int(cfg, f"{s}.dimension", where), codebook_dim=_int(cfg, f"{s}.dimension", where),
        num_filters=_int(cfg, f"{s}.n_filters", where), num_residual_layers=_int(cfg, f"{s}.n_residual_layers", where),
        upsampling_ratios=list(ratios), norm_type="weight_norm", kernel_size=_int(cfg, f"{s}.kernel_size", where),
        last_kernel_size=_int(cfg, f"{s}.last_kernel_size", where),
        residual_kernel_size=_int(cfg, f"{s}.residual_kernel_size", where),
        dilation_growth_rate=_int(cfg, f"{s}.dilation_base", where),
        use_causal_conv=bool(_want(cfg, f"{s}.causal", [True, False], where)),
        pad_mode=_want(cfg, f"{s}.pad_mode", ["constant", "reflect", "replicate"], where),
        compress=_int(cfg, f"{s}.compress", where), num_lstm_layers=_want(cfg, f"{s}.lstm", lambda v: isinstance(v, int) and v >= 0, where),
        trim_right_ratio=float(_get(cfg, f"{s}.decoder.trim_right_ratio", where, 1.0)),
        use_conv_shortcut=False, normalize=False, chunk_length_s=None, overlap=None,
        target_bandwidths=[round(bandwidth, 6)],
    )


# ---------------------------------------------------------------- the parts from elsewhere
def _read_weights(folder: Path, what: str, allow_pickle: bool, prefix: str = "") -> dict:
    """Tensors of a transformers folder (``*.safetensors``, else ``pytorch_model.bin`` read as
    ``state_dict.bin`` is: weights-only unless ``allow_pickle``), those under ``prefix`` with it removed."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    tensors: dict = {}
    if files:
        for f in files:
            tensors.update(load_file(str(f)))
    else:
        for f in sorted(folder.glob("pytorch_model*.bin")):
            loaded = _load(f, allow_pickle, what, mmap=False)
            if not isinstance(loaded, dict):
                raise ExportError(f"{what} {str(f)!r}: not a state dict (got {type(loaded).__name__})")
            tensors.update(loaded)
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def text_encoder_parts(path: str | None, where: str, needed_dim: int, allow_pickle: bool = False):
    """(T5Config, T5 tensors, folder with the tokenizer) from a T5 folder or a transformers MusicGen folder."""
    from transformers import T5Config

    if not path:
        raise ExportError(f"{where}: an audiocraft checkpoint does not contain its T5 text encoder (audiocraft loads "
                          "it from the hub by name); pass --text-encoder FOLDER (a T5 folder, e.g. t5-base, or a "
                          "transformers MusicGen checkpoint folder)")
    folder = Path(path)
    cfg = read_config(folder, f"text encoder {path!r}", "expected a T5 or transformers MusicGen folder")
    if cfg.get("model_type") == "t5":
        t5_cfg, prefix = cfg, ""
    elif cfg.get("model_type") in ("musicgen", "musicgen_melody") and (cfg.get("text_encoder") or {}).get("model_type") == "t5":
        t5_cfg, prefix = cfg["text_encoder"], "text_encoder."
    else:
        raise ExportError(f"text encoder {path!r}: model_type {cfg.get('model_type')!r} is not a T5 encoder "
                          "(expected 't5', or a MusicGen folder whose text encoder is T5)")
    config = T5Config(**{k: v for k, v in t5_cfg.items() if k not in ("architectures", "transformers_version")})
    if config.d_model != needed_dim:
        raise ExportError(f"text encoder {path!r}: d_model {config.d_model}, but the checkpoint's text projection "
                          f"expects {needed_dim} inputs")
    tensors = {k: v for k, v in _read_weights(folder, "text encoder weights", allow_pickle, prefix).items()
               if k.startswith(("encoder.", "shared."))}  # a full T5 also has decoder.* / lm_head
    if not tensors:
        raise ExportError(f"text encoder {path!r}: no T5 weights found (*.safetensors or pytorch_model.bin)")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "spiece.model")):
        raise ExportError(f"text encoder {path!r}: no tokenizer (tokenizer.json or spiece.model)")
    return config, tensors, folder


def pretrained_codec_parts(path: str | None, name: str, where: str, allow_pickle: bool = False):
    """(EncodecConfig, tensors) for a ``compression_state_dict.bin`` that only names a pretrained codec."""
    from transformers import EncodecConfig

    if not path:
        raise ExportError(f"{where}: the codec is only named ({name!r}, audiocraft downloads it); pass --codec FOLDER "
                          "(a transformers EnCodec folder such as facebook/encodec_32khz, or a MusicGen folder)")
    folder = Path(path)
    cfg = read_config(folder, f"codec {path!r}", "expected a transformers EnCodec or MusicGen folder")
    if cfg.get("model_type") == "encodec":
        codec_cfg, prefix = cfg, ""
    elif (cfg.get("audio_encoder") or {}).get("model_type") == "encodec":
        codec_cfg, prefix = cfg["audio_encoder"], "audio_encoder."
    else:
        raise ExportError(f"codec {path!r}: model_type {cfg.get('model_type')!r} is not EnCodec")
    config = EncodecConfig(**{k: v for k, v in codec_cfg.items() if k not in ("architectures", "transformers_version")})
    tensors = {f"audio_encoder.{k}": v for k, v in _read_weights(folder, "codec weights", allow_pickle, prefix).items()}
    if not tensors:
        raise ExportError(f"codec {path!r}: no weights found")
    return config, tensors


# ---------------------------------------------------------------- the whole conversion
def _lm_package(source: Path, allow_pickle: bool) -> tuple[dict, dict, list[Path], str]:
    """(best_state, xp.cfg dict, files read, description) from a release folder or a solver checkpoint."""
    if source.is_file() or (source / SOLVER_FILE).is_file() and not (source / LM_FILE).is_file():
        path = source if source.is_file() else source / SOLVER_FILE
        where = f"checkpoint {str(path)!r}"
        pkg = _load(path, allow_pickle, "solver checkpoint")
        best = pkg.get("fsdp_best_state") or pkg.get("best_state")
        state = best.get("model") if isinstance(best, dict) else None
        if not isinstance(state, dict) or not state:
            raise ExportError(f"{where}: no best_state['model'] (not an audiocraft MusicGen solver checkpoint)")
        return state, _config(pkg.get("xp.cfg"), where), [path], where
    path = source / LM_FILE
    where = f"checkpoint {str(path)!r}"
    pkg = _load(path, allow_pickle, "audiocraft checkpoint")
    state = pkg.get("best_state") if isinstance(pkg, dict) else None
    if not isinstance(state, dict) or not state:
        raise ExportError(f"{where}: no best_state (not an audiocraft MusicGen state_dict.bin)")
    return state, _config(pkg.get("xp.cfg"), where), [path], where


def convert(source: str | Path, out_dir: str | Path, text_encoder: str | None = None, codec: str | None = None,
            allow_pickle: bool = False) -> Path:
    """Write the transformers checkpoint folder of an audiocraft ``source`` into ``out_dir``; returns it."""
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, MusicgenConfig, MusicgenMelodyConfig
    from transformers.models.musicgen.configuration_musicgen import MusicgenDecoderConfig
    from transformers.models.musicgen_melody.configuration_musicgen_melody import MusicgenMelodyDecoderConfig

    src = Path(source)
    state, cfg, files, where = _lm_package(src, allow_pickle)
    spec = lm_spec(cfg, where)
    weights = map_lm(state, spec, where)

    folder = src.parent if src.is_file() else src
    codec_path = folder / CODEC_FILE
    if not codec_path.is_file():
        if not codec:
            raise ExportError(f"checkpoint {str(folder)!r}: missing {CODEC_FILE} (the audio codec); "
                              "pass --codec FOLDER to take it from a transformers EnCodec or MusicGen folder")
        codec_cfg, codec_weights = pretrained_codec_parts(codec, "(none)", where, allow_pickle)
    else:
        cwhere = f"codec {str(codec_path)!r}"
        cpkg = _load(codec_path, allow_pickle, "audiocraft codec")
        files.append(codec_path)
        if isinstance(cpkg, dict) and "pretrained" in cpkg:
            codec_cfg, codec_weights = pretrained_codec_parts(codec, cpkg["pretrained"], cwhere, allow_pickle)
        elif isinstance(cpkg, dict) and isinstance(cpkg.get("best_state"), dict):
            codec_cfg = codec_config(_config(cpkg.get("xp.cfg"), cwhere), cwhere)
            codec_weights = map_codec(cpkg["best_state"], cwhere)
        else:
            raise ExportError(f"{cwhere}: neither best_state nor pretrained (not an audiocraft compression checkpoint)")
    codec_q = round(codec_cfg.target_bandwidths[-1] * 1000 / (math.log2(codec_cfg.codebook_size) * codec_cfg.frame_rate))
    if spec.n_q != codec_q * (2 if spec.stereo else 1) or spec.card != codec_cfg.codebook_size:
        raise ExportError(f"{where}: the LM models {spec.n_q} codebooks of {spec.card}, the codec gives {codec_q} of "
                          f"{codec_cfg.codebook_size}{' per channel' if spec.stereo else ''}")
    if spec.sample_rate != codec_cfg.sampling_rate:
        raise ExportError(f"{where}: sample_rate {spec.sample_rate} differs from the codec's {codec_cfg.sampling_rate}")

    text_dim = weights["enc_to_dec_proj.weight"].shape[1] if "enc_to_dec_proj.weight" in weights else None
    if text_dim is None:
        raise ExportError(f"{where}: audiocraft tensor 'condition_provider.conditioners.description.output_proj.weight'"
                          " is missing")
    t5_cfg, t5_weights, tok_folder = text_encoder_parts(text_encoder, where, text_dim, allow_pickle)

    decoder_kwargs = dict(vocab_size=spec.card, hidden_size=spec.dim, num_hidden_layers=spec.layers,
                          num_attention_heads=spec.heads, ffn_dim=spec.ffn, num_codebooks=spec.n_q,
                          audio_channels=2 if spec.stereo else 1, max_position_embeddings=2048,
                          activation_function="gelu", dropout=0.0, pad_token_id=spec.card, bos_token_id=spec.card,
                          decoder_start_token_id=spec.card)
    if spec.conditioning == "prefix":
        chroma_len = 1 + int(spec.sample_rate * spec.segment_duration) // (2 ** 14 // 4)  # ChromaStemConditioner._get_chroma_len
        config = MusicgenMelodyConfig(text_encoder=t5_cfg, audio_encoder=codec_cfg,
                                      decoder=MusicgenMelodyDecoderConfig(**decoder_kwargs),
                                      num_chroma=12, chroma_length=chroma_len)
        from transformers import MusicgenMelodyForConditionalGeneration as cls
    else:
        config = MusicgenConfig(text_encoder=t5_cfg, audio_encoder=codec_cfg, decoder=MusicgenDecoderConfig(**decoder_kwargs))
        from transformers import MusicgenForConditionalGeneration as cls
    config.decoder_start_token_id = config.pad_token_id = spec.card

    # Every tensor the transformers model stores must come from the sources, with its shape.
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
    tensors = {**weights, **codec_weights, **{f"text_encoder.{k}": v for k, v in t5_weights.items()}}
    for key, shape in expected.items():
        if key.startswith("text_encoder.") and key not in tensors:
            continue  # tied T5 embeddings: transformers fills encoder.embed_tokens from shared
        if key not in tensors:
            origin = "the T5 folder" if key.startswith("text_encoder.") else (
                "the codec" if key.startswith("audio_encoder.") else "the audiocraft LM state")
            raise ExportError(f"{where}: {origin} lacks the tensor for transformers {key!r} {shape}")
        if tuple(tensors[key].shape) != shape:
            raise ExportError(f"{where}: tensor for transformers {key!r} has shape {tuple(tensors[key].shape)}, "
                              f"the config implies {shape}")
    extra = sorted(k for k in tensors if k not in expected)
    if extra:
        raise ExportError(f"{where}: tensor {extra[0]!r} has no place in the transformers model ({len(extra)} such)")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)
    max_length = int(spec.segment_duration * codec_cfg.frame_rate)
    GenerationConfig(decoder_start_token_id=spec.card, pad_token_id=spec.card, bos_token_id=spec.card,
                     do_sample=True, guidance_scale=spec.cfg_coef, max_length=max_length).save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (tok_folder / name).is_file():
            shutil.copyfile(tok_folder / name, out / name)
    if spec.conditioning == "prefix":
        (out / "preprocessor_config.json").write_text(json.dumps({
            "feature_extractor_type": "MusicgenMelodyFeatureExtractor", "processor_class": "MusicgenMelodyProcessor",
            "feature_size": 12, "sampling_rate": spec.sample_rate, "hop_length": 4096,
            "chunk_length": int(spec.segment_duration), "n_fft": 16384, "num_chroma": 12, "padding_value": 0.0,
            "return_attention_mask": False, "stem_indices": [3, 2]}, indent=2) + "\n")
    (out / "audiocraft_source.json").write_text(json.dumps({
        "source": str(source), "files": [str(f) for f in files], "text_encoder": str(text_encoder),
        "codec": str(codec) if codec else None, "cfg_coef": spec.cfg_coef,
        "segment_duration": spec.segment_duration}, indent=2) + "\n")
    return out
