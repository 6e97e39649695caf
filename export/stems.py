"""Demucs (HTDemucs) -> ``stems.onnx`` + its manifest entry, validated against the torch model.

DEMUCS is what demucs 4.1 loads: a folder as published on the Hugging Face hub (the bag's
``NAME.yaml`` + one ``SIG.safetensors`` per model, class and init kwargs in the safetensors metadata:
``demucs/hf.py``), a pickled ``.th`` file (only with ``allow_pickle``: torch.load runs code), or a
name demucs resolves itself when online (``htdemucs``). A bag of one HTDemucs model is supported
(``htdemucs``, what audiocraft uses); bags of several (``htdemucs_ft``: one model per source) are refused.

The graph is the model between its STFT and its inverse (:class:`StemsCore`); the STFT, the
normalisation, the mask and the iSTFT are the runtime's numpy (``runtime/stems.py``). Two checks:
the ONNX graph against :class:`StemsCore` on random segments, then the whole numpy path around the
torch core against ``HTDemucs.forward`` on a real segment, so the runtime's half is validated too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..runtime import roles
from ..runtime.errors import ExportError
from ..runtime.manifest import STEMS_MANIFEST_NAME, GraphInfo, StemsManifest, StemsParams
from ..runtime.session import open_session
from . import tracing, validate
from .atomic_folder import partial_folder
from .folder_manifest import graph_info
from .progress import timed_steps

log = logging.getLogger(__name__)

HTDEMUCS_CLASS = "demucs.htdemucs.HTDemucs"
INPUTS = [roles.STEMS_WAVE, roles.STEMS_SPEC]
OUTPUTS = [roles.STEMS_TIME, roles.STEMS_FREQ]
# fp32 graph vs its torch module on random segments (outputs O(1..10) for random weights); and the
# numpy STFT path around the torch core vs HTDemucs.forward, relative to the stems' peak.
TOLERANCE = validate.Tolerance(1e-4, 1e-5)
PIPELINE_TOLERANCE = validate.Tolerance(1e-5, 1e-5)


class StemsCore(nn.Module):
    """HTDemucs.forward between ``_magnitude`` + normalisation and the de-normalisation + ``_mask``:
    the normalised waveform and complex-as-channels spectrogram in, both branches' raw outputs out.
    The body is demucs 4.1's own (htdemucs.py, ``forward``), with the model's modules."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, xt, x):
        m = self.model
        saved, saved_t, lengths, lengths_t = [], [], [], []
        for idx, encode in enumerate(m.encoder):
            lengths.append(x.shape[-1])
            inject = None
            if idx < len(m.tencoder):
                lengths_t.append(xt.shape[-1])
                tenc = m.tencoder[idx]
                xt = tenc(xt)
                if not tenc.empty:
                    saved_t.append(xt)
                else:
                    inject = xt
            x = encode(x, inject)
            if idx == 0 and m.freq_emb is not None:
                frs = torch.arange(x.shape[-2], device=x.device)
                emb = m.freq_emb(frs).t()[None, :, :, None].expand_as(x)
                x = x + m.freq_emb_scale * emb
            saved.append(x)
        if m.crosstransformer:
            if m.bottom_channels:
                b, c, f, t = x.shape
                x = m.channel_upsampler(x.reshape(b, c, f * t)).reshape(b, -1, f, t)
                xt = m.channel_upsampler_t(xt)
            x, xt = m.crosstransformer(x, xt)
            if m.bottom_channels:
                b, c, f, t = x.shape
                x = m.channel_downsampler(x.reshape(b, c, f * t)).reshape(b, -1, f, t)
                xt = m.channel_downsampler_t(xt)
        for idx, decode in enumerate(m.decoder):
            skip = saved.pop(-1)
            x, pre = decode(x, skip, lengths.pop(-1))
            offset = m.depth - len(m.tdecoder)
            if idx >= offset:
                tdec = m.tdecoder[idx - offset]
                length_t = lengths_t.pop(-1)
                if tdec.empty:
                    pre = pre[:, :, 0]
                    xt, _ = tdec(pre, None, length_t)
                else:
                    skip = saved_t.pop(-1)
                    xt, _ = tdec(xt, skip, length_t)
        return xt, x


# ---------------------------------------------------------------- loading DEMUCS
def load_demucs(source: str, allow_pickle: bool = False):
    """``(HTDemucs in eval mode, description for the manifest's source)`` or a one-line ExportError."""
    try:
        import demucs  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"stems need demucs (pip install 'musicgen-onnx[export]'): {exc}") from None
    path = Path(source)
    if path.is_dir():
        model = _load_hub_folder(path)
    elif path.is_file():
        model = _load_pickle(path, allow_pickle)
    elif os.sep in source or source.endswith((".th", ".yaml", ".safetensors")):
        raise ExportError(f"demucs model {source!r}: no such file or folder")
    else:
        model = _load_named(source)
    return _check_model(model, source), {"demucs": source, "demucs_version": _demucs_version()}


def _demucs_version() -> str:
    from importlib.metadata import version

    return version("demucs")


def _load_hub_folder(folder: Path):
    """demucs/hf.py's layout: ``NAME.yaml`` (``models: [SIG, ...]``, optional ``weights``, ``segment``)
    beside ``SIG.safetensors``. The class named in the metadata must be HTDemucs: the loader would
    import and call whatever it names."""
    import yaml
    from safetensors import safe_open

    yamls = sorted(folder.glob("*.yaml"))
    if len(yamls) != 1:
        raise ExportError(f"demucs folder {str(folder)!r}: expected one bag .yaml (as on the Hugging Face hub), "
                          f"found {len(yamls)}")
    try:
        bag = yaml.safe_load(yamls[0].read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ExportError(f"{yamls[0]}: unreadable bag definition ({str(exc).splitlines()[0][:120]})") from None
    sigs = bag.get("models") if isinstance(bag, dict) else None
    if not isinstance(sigs, list) or not sigs or not all(isinstance(s, str) for s in sigs):
        raise ExportError(f"{yamls[0]}: 'models' must be a list of model signatures")
    _refuse_bag(len(sigs), yamls[0])
    weights = bag.get("weights")
    if weights is not None and not (isinstance(weights, list) and len(weights) == 1
                                    and all(isinstance(w, (int, float)) and w > 0 for w in weights[0])):
        raise ExportError(f"{yamls[0]}: a bag of one model needs positive weights (they then cancel out), got {weights!r}")
    weight_file = folder / f"{sigs[0]}.safetensors"
    if not weight_file.is_file():
        raise ExportError(f"demucs folder {str(folder)!r}: missing {weight_file.name} (named by {yamls[0].name})")
    try:
        with safe_open(str(weight_file), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:
        raise ExportError(f"{weight_file}: not a readable safetensors file ({type(exc).__name__})") from None
    if metadata.get("klass") != HTDEMUCS_CLASS:
        raise ExportError(f"{weight_file}: model class {metadata.get('klass')!r} is not supported (only "
                          f"{HTDEMUCS_CLASS}: htdemucs, what audiocraft separates melodies with)")
    if "structure" in metadata:
        raise ExportError(f"{weight_file}: a quantised (diffq) demucs model is not supported")
    from demucs.apply import BagOfModels
    from demucs.hf import load_safetensors_model

    try:
        model = load_safetensors_model(weight_file)
    except Exception as exc:
        raise ExportError(f"{weight_file}: cannot build the model ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    segment = bag.get("segment")
    return BagOfModels([model], weights, segment).models[0]  # the bag applies its segment override


def _refuse_bag(count: int, where) -> None:
    if count != 1:
        raise ExportError(f"{where}: a bag of {count} models (e.g. htdemucs_ft: one model per source) is not "
                          f"supported; export a single-model bag such as htdemucs")


def _load_pickle(path: Path, allow_pickle: bool):
    if path.suffix != ".th":
        raise ExportError(f"demucs model {str(path)!r}: expected a hub folder (bag .yaml + .safetensors) or a .th file")
    if not allow_pickle:
        raise ExportError(f"demucs model {str(path)!r} is a pickle file, which can run code when loaded; "
                          f"pass --allow-pickle if you trust it")
    from demucs.states import load_model

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_model(path)
    except Exception as exc:
        raise ExportError(f"{path}: cannot load the demucs model ({type(exc).__name__})") from None


def _load_named(name: str):
    from demucs.apply import BagOfModels
    from demucs.pretrained import get_model

    try:
        model = get_model(name)
    except BaseException as exc:  # demucs exits (SystemExit) on unknown names
        raise ExportError(f"demucs model {name!r}: demucs cannot resolve it (offline, or an unknown name: "
                          f"{type(exc).__name__})") from None
    if isinstance(model, BagOfModels):
        _refuse_bag(len(model.models), f"demucs model {name!r}")
        model = model.models[0]
    return model


def _check_model(model, source: str):
    from demucs.htdemucs import HTDemucs

    where = f"demucs model {source!r}"
    if not isinstance(model, HTDemucs):
        raise ExportError(f"{where}: {type(model).__name__} is not supported (only HTDemucs, e.g. htdemucs)")
    if not model.cac:
        raise ExportError(f"{where}: only complex-as-channels HTDemucs (cac=True, every released one) is supported")
    if not model.use_train_segment:
        raise ExportError(f"{where}: use_train_segment=False models have no fixed segment; not supported")
    if model.hop_length != model.nfft // 4:
        raise ExportError(f"{where}: hop length must be nfft // 4")
    return model.float().eval()


def stems_params(model) -> StemsParams:
    return StemsParams(sources=tuple(model.sources), sample_rate=int(model.samplerate),
                       audio_channels=int(model.audio_channels),
                       segment_length=int(model.segment * model.samplerate), n_fft=int(model.nfft),
                       hop_length=int(model.hop_length))


# ---------------------------------------------------------------- export + validation
def _normalised_inputs(model, batch: int, gen: torch.Generator):
    p = stems_params(model)
    wave = torch.randn(batch, p.audio_channels, p.segment_length, generator=gen)
    spec = torch.randn(batch, 2 * p.audio_channels, p.freqs, p.frames, generator=gen)
    return wave, spec


class _FusedAttention(torch.autograd.Function):
    """Scaled dot-product attention over ``heads`` on ``[batch, tokens, dim]`` projections, exported as
    onnxruntime's ``com.microsoft.MultiHeadAttention``: on CPU that op runs MLAS flash attention, tile
    by tile, instead of MatMul -> Softmax -> MatMul through a ``[heads, tokens, tokens]`` matrix (231 MB
    per call for htdemucs's 2688 frequency tokens). Measured alone at that size, 2 threads: 0.18-0.21 s
    CPU against 0.39 s, outputs within 2e-7. In the whole graph (bench_stems, 12 s stereo, alternating
    with the MatMul/Softmax export): peak RSS 1190 MB against 2002 MB (apply_model: 1317), speed within
    the noise (2.04x vs 2.21x apply_model)."""

    @staticmethod
    def forward(ctx, q, k, v, heads: int):
        b, s, d = q.shape

        def split(t):
            return t.reshape(b, t.shape[1], heads, d // heads).transpose(1, 2)

        out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
        return out.transpose(1, 2).reshape(b, s, d)

    @staticmethod
    def symbolic(g, q, k, v, heads: int):
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=heads)
        out.setType(q.type())
        return out


class _ExportAttention(nn.Module):
    """``nn.MultiheadAttention`` (batch first, no masks: HTDemucs's dense cross-transformer) with its own
    projections around :class:`_FusedAttention`; swapped in only while the graph is traced."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        self.mha = mha

    def forward(self, query, key, value, attn_mask=None, key_padding_mask=None, need_weights=False,
                is_causal=False, **_):
        m = self.mha
        if (attn_mask is not None or key_padding_mask is not None or is_causal or not m.batch_first
                or m.in_proj_weight is None):
            raise ExportError("stems: this HTDemucs's transformer uses masks or separate projections; "
                              "only the dense batch-first attention of the released models is supported")
        w = m.in_proj_weight.chunk(3)
        b = m.in_proj_bias.chunk(3) if m.in_proj_bias is not None else (None,) * 3
        q, k, v = (nn.functional.linear(x, wi, bi) for x, wi, bi in zip((query, key, value), w, b))
        return m.out_proj(_FusedAttention.apply(q, k, v, m.num_heads)), None


@contextlib.contextmanager
def _fused_attention(model):
    """Every ``nn.MultiheadAttention`` of the cross-transformer replaced by :class:`_ExportAttention`,
    restored afterwards (validation runs the untouched model)."""
    swapped = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, nn.MultiheadAttention)]
    for parent, name, child in swapped:
        setattr(parent, name, _ExportAttention(child))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def export_graph(model, path: Path, opset: int = 17) -> None:
    core = StemsCore(model).eval()
    example = _normalised_inputs(model, 1, torch.Generator().manual_seed(5))
    axes = {n: {0: "segments"} for n in [*INPUTS, *OUTPUTS]}
    with _fused_attention(model):
        tracing.export_graph(tracing.GraphSpec("stems", core, example, list(INPUTS), list(OUTPUTS), axes), path,
                             opset)


@torch.no_grad()
def validate_graph(model, path: Path, tol: validate.Tolerance = TOLERANCE,
                   pipeline_tol: validate.Tolerance = PIPELINE_TOLERANCE) -> None:
    """ONNX == StemsCore on random segments (batch 1 and 3); then the runtime's numpy around the torch
    core == ``HTDemucs.forward`` on a music-like segment."""
    core = StemsCore(model).eval()
    session = open_session(path)
    gen = torch.Generator().manual_seed(11)
    for batch in (1, 3):
        case = _normalised_inputs(model, batch, gen)
        got = session.run(OUTPUTS, dict(zip(INPUTS, (t.numpy() for t in case))))
        validate.compare("stems", OUTPUTS, got, core(*case), tol, f" (case: {batch} segments)")
    from ..runtime.stems import StemSeparator

    p = stems_params(model)

    class TorchCore:  # the runtime's Graph interface around the torch module
        def run(self, outputs, feeds):
            return [t.numpy() for t in core(*(torch.from_numpy(feeds[n]) for n in INPUTS))]

    info = GraphInfo(file="stems.onnx", precision="fp32", inputs=tuple(INPUTS), outputs=tuple(OUTPUTS),
                     roles={n: n for n in [*INPUTS, *OUTPUTS]})
    separator = StemSeparator(TorchCore(), p, info)
    t = torch.arange(p.segment_length) / p.sample_rate
    mix = (0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.05 * torch.randn(p.audio_channels, p.segment_length, generator=gen))
    mix = mix[None].float()
    validate.compare("stems (numpy STFT path around the torch core vs HTDemucs.forward)", ["stems"],
                     [separator._model(mix.numpy())], [model(mix)], pipeline_tol)


def export_stems(model, folder: Path, opset: int = 17, validate_graph_: bool = True,
                 step: Callable[[str], None] = log.info, fast: bool = True) -> tuple[dict[str, GraphInfo], StemsParams]:
    """Write ``stems.onnx`` (+ data) into ``folder``, and with ``fast`` the melody path's int8
    ``stems_fast.onnx`` made from it (export/stems_fast.py); returns their manifest entries and the
    parameters."""
    path = folder / "stems.onnx"
    step("exporting stems (HTDemucs)")
    export_graph(model, path, opset)
    if validate_graph_:
        step("validating stems against its torch module")
        validate_graph(model, path)
    params = stems_params(model)
    graphs = {"stems": graph_info(folder, "stems", INPUTS, OUTPUTS, "fp32")}
    if fast:
        from . import stems_fast

        fast_info = stems_fast.export_stems_fast(folder, graphs["stems"], params, validate_graph_, step)
        if fast_info is not None:
            graphs[stems_fast.NAME] = fast_info
    return graphs, params


def fast_source(graphs: dict[str, GraphInfo]) -> dict[str, str]:
    """The manifest's ``source`` entry for the fast graph's recipe and calibration, if there is one."""
    from . import stems_fast

    return {stems_fast.NAME: stems_fast.describe()} if stems_fast.NAME in graphs else {}


def export_stems_folder(source: str, out_dir: str | os.PathLike, opset: int = 17, validate_graphs: bool = True,
                        force: bool = False, allow_pickle: bool = False,
                        progress: Callable[[str], None] | None = None, stems_fast: bool = True) -> Path:
    """``musicgen-onnx export-stems DEMUCS OUT``: a stems-only folder, written whole or not at all.
    ``stems_fast``: add the melody path's int8 graph (``--no-stems-fast``: the exact graph only)."""
    out = Path(out_dir)
    if out.exists() and not force:
        raise ExportError(f"output folder {str(out)!r} already exists; pass --force to replace it")
    step = timed_steps(progress or log.info)
    step(f"loading demucs model {source}")
    model, source_info = load_demucs(source, allow_pickle)
    with partial_folder(out) as tmp:
        graphs, params = export_stems(model, tmp, opset, validate_graphs, step, stems_fast)
        source_info["torch"] = torch.__version__
        source_info.update(fast_source(graphs))
        manifest = StemsManifest(stems=params, graphs=graphs, source=source_info)
        StemsManifest.from_dict(json.loads(manifest.to_json()))  # what we write, we can read
        (tmp / STEMS_MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    step(f"done: {out}")
    return out
