"""audiocraft itself as the reference: random-weight audiocraft models in audiocraft's own format, and
their greedy tokens from audiocraft's own ``MusicGen.generate`` / ``generate_with_chroma``.

Runs in a separate environment with audiocraft (it is never a dependency of this project):

    python3 -m venv /work/venv-audiocraft
    /work/venv-audiocraft/bin/pip install torch==2.9.1 'torchaudio==2.9.*'
    /work/venv-audiocraft/bin/pip install --no-deps audiocraft==1.3.0 xformers demucs
    /work/venv-audiocraft/bin/pip install 'transformers<5' sentencepiece einops omegaconf hydra-core julius \
        num2words soundfile av librosa flashy torchmetrics spacy
    PYTHONPATH=/path/to/pp  # a folder holding musicgen_onnx (for random_checkpoints' tokenizer builder)

    python benchmarks/audiocraft_reference.py build small OUT          # state_dict.bin + compression_state_dict.bin
    python benchmarks/audiocraft_reference.py t5 base T5_DIR             # a random t5-base folder (+ tokenizer)
    python benchmarks/audiocraft_reference.py generate OUT --t5 T5_DIR --frames 30 -o tokens.json [--melody]
    python benchmarks/audiocraft_reference.py finetune OUT OUT_FT --t5 T5_DIR   # three real AdamW steps
    python benchmarks/audiocraft_reference.py fixture tests/fixtures/audiocraft-tiny   # the CI fixture

What is audiocraft's and what is ours:
* The models are built by audiocraft's ``builders.get_lm_model`` / ``get_compression_model`` from the
  released configs, written out below (``lm_config``) from audiocraft's yaml files (config/model/lm/
  default.yaml + musicgen_lm.yaml + model_scale/*.yaml, config/conditioner/text2music.yaml and
  chroma2music.yaml, config/solver/musicgen/default.yaml, config/model/encodec/encodec_large_nq4_s640.yaml;
  stereo: audiocraft/grids/musicgen/musicgen_stereo_finetune_32khz.py), because the PyPI wheel ships none.
  They are saved the way ``audiocraft.utils.export.export_lm`` / ``export_encodec`` write them
  (``best_state``, ``xp.cfg`` as YAML, ``version``, ``exported``) and loaded back with audiocraft's own
  ``loaders.load_lm_model`` / ``load_compression_model`` before generating.
* The weights are random, then made *unit-gain* as ``random_checkpoints._make_sensitive`` does for the
  transformers checkpoints (audiocraft's own init gives every prompt the same tokens).
* T5: audiocraft loads ``t5-base`` from the hub by name; here ``T5EncoderModel.from_pretrained`` and
  ``T5Tokenizer.from_pretrained`` are pointed at a local folder (``--t5``). TINY models use a tiny T5
  (d_model 24): ``T5Conditioner.MODELS_DIMS['t5-base']`` is set to 24 while they are built.
* Melody, stems off: ``ChromaStemConditioner`` runs Demucs (``pretrained.get_model('htdemucs')``, a hub
  download) on every real melody. Here Demucs is not loaded (a stand-in with htdemucs' source list) and
  ``ChromaStemConditioner._get_stemmed_wav`` returns the collated mono 32 kHz melody unchanged, so the
  chroma is computed on the full mix, as this runtime does without its stems option. Everything else of
  the chroma path (collate, ChromaExtractor, 235-frame matching, projection) is audiocraft's.
* Generation: ``MusicGen(name, compression, lm)`` as ``MusicGen.get_pretrained`` builds it (including its
  ``match_len_on_eval = True``, ``_use_masking = False`` for melody), ``set_generation_params(
  use_sampling=False, cfg_coef=3.0, duration=frames / 50)``, the seed's defaults otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent

# (dim, heads, layers, n_q, melody): audiocraft config/model/lm/model_scale/*.yaml and the released families
ARCHS = {
    "small": (1024, 16, 24, 4, False),
    "stereo-small": (1024, 16, 24, 8, False),
    "melody": (1536, 24, 48, 4, True),
    "stereo-melody": (1536, 24, 48, 8, True),
    "tiny-text": (16, 1, 2, 4, False),
    "tiny-text-stereo": (16, 1, 2, 8, False),
    "tiny-melody": (16, 1, 2, 4, True),
    "tiny-melody-stereo": (16, 1, 2, 8, True),
}
TINY_T5_DIM = 24


def _random_checkpoints():
    """This project's random-checkpoint module, imported by path (the package's runtime needs onnxruntime)."""
    path = ROOT / "export" / "random_checkpoints.py"
    spec = importlib.util.spec_from_file_location("_random_checkpoints", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the released configs, written out
def lm_config(arch: str) -> dict:
    dim, heads, layers, n_q, melody = ARCHS[arch]
    stereo = n_q == 8
    transformer_lm = dict(  # config/model/lm/default.yaml, overridden by musicgen_lm.yaml and model_scale
        dim=dim, num_heads=heads, num_layers=layers, hidden_scale=4, n_q=n_q, card=2048, dropout=0.0,
        emb_lr=None, activation="gelu", norm_first=True, bias_ff=False, bias_attn=False, bias_proj=False,
        past_context=None, causal=True, custom=False, memory_efficient=True, attention_as_float32=False,
        layer_scale=None, positional_embedding="sin", xpos=False, checkpointing="none",
        weight_init="gaussian", depthwise_init="current", zero_bias_init=True, norm="layer_norm",
        cross_attention=False, qk_layer_norm=False, qk_layer_norm_cross=False, attention_dropout=None,
        kv_repeat=1, two_step_cfg=False)
    description = {"model": "t5", "t5": {"name": "t5-base", "finetune": False,
                                         "word_dropout": 0.2 if melody else 0.3, "normalize_text": False}}
    if melody:  # config/conditioner/chroma2music.yaml
        conditioners = {
            "self_wav": {"model": "chroma_stem", "chroma_stem": {
                "sample_rate": "${sample_rate}", "n_chroma": 12, "radix2_exp": 14, "argmax": True,
                "match_len_on_eval": False, "eval_wavs": None, "n_eval_wavs": 100, "cache_path": None}},
            "description": description}
        fuser = {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1, "sum": [],
                 "prepend": ["self_wav", "description"], "cross": [], "input_interpolate": []}
        cfg_guidance = {"training_dropout": 0.2, "inference_coef": 3.0}
        attribute_dropout = {"args": {"active_on_eval": False}, "text": {}, "wav": {"self_wav": 0.5}}
    else:  # config/conditioner/text2music.yaml
        conditioners = {"description": description}
        fuser = {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1, "sum": [], "prepend": [],
                 "cross": ["description"], "input_interpolate": []}
        cfg_guidance = {"training_dropout": 0.3, "inference_coef": 3.0}
        attribute_dropout = {}
    return {
        "solver": "musicgen", "device": "cpu", "dtype": "float32", "autocast": False,
        "sample_rate": 32000, "channels": 2 if stereo else 1,
        "compression_model_checkpoint": "//pretrained/facebook/encodec_32khz", "compression_model_n_q": None,
        "interleave_stereo_codebooks": {"use": stereo, "per_timestep": False},
        "lm_model": "transformer_lm",
        "codebooks_pattern": {"modeling": "delay", "delay": {
            "delays": [k // 2 for k in range(8)] if stereo else [0, 1, 2, 3], "flatten_first": 0, "empty_initial": 0}},
        "transformer_lm": transformer_lm,
        "classifier_free_guidance": cfg_guidance, "attribute_dropout": attribute_dropout,
        "fuser": fuser, "conditioners": conditioners,
        "dataset": {"segment_duration": 30, "batch_size": 192},
    }


def compression_config(tiny: bool) -> dict:
    """config/model/encodec/default.yaml + encodec_large_nq4_s640.yaml (the musicgen 32 kHz codec); TINY keeps
    the 640 hop and 2048 codes with fewer filters, like random_checkpoints.ENCODEC_TINY."""
    return {
        "device": "cpu", "dtype": "float32", "sample_rate": 32000, "channels": 1, "compression_model": "encodec",
        "encodec": {"autoencoder": "seanet", "quantizer": "rvq", "sample_rate": "${sample_rate}",
                    "channels": "${channels}", "causal": False, "renormalize": False},
        "seanet": {"dimension": 4 if tiny else 128, "channels": "${channels}", "causal": "${encodec.causal}",
                   "n_filters": 2 if tiny else 64, "n_residual_layers": 1, "ratios": [8, 5, 4, 4], "activation": "ELU",
                   "activation_params": {"alpha": 1.0}, "norm": "weight_norm", "norm_params": {}, "kernel_size": 7,
                   "residual_kernel_size": 3, "last_kernel_size": 7, "dilation_base": 2, "pad_mode": "constant",
                   "true_skip": True, "compress": 2, "lstm": 2, "disable_norm_outer_blocks": 0,
                   "decoder": {"trim_right_ratio": 1.0, "final_activation": None, "final_activation_params": None},
                   "encoder": {}},
        "rvq": {"n_q": 4, "q_dropout": False, "bins": 2048, "decay": 0.99, "kmeans_init": True, "kmeans_iters": 50,
                "threshold_ema_dead_code": 2, "orthogonal_reg_weight": 0.0, "orthogonal_reg_active_codes_only": False},
    }


# ---------------------------------------------------------------- audiocraft, offline
class _DemucsStandIn:
    """What ChromaStemConditioner.__init__ reads from htdemucs; never run (stems off, see the docstring)."""
    sources = ["drums", "bass", "other", "vocals"]
    samplerate = 44100
    audio_channels = 2

    def to(self, device):
        return self

    def eval(self):
        return self


@contextlib.contextmanager
def offline_audiocraft(t5_dir: Path, tiny_t5: bool = False):
    """T5 from ``t5_dir`` instead of the hub, no Demucs download, stems off (the module docstring)."""
    import demucs.pretrained
    import transformers
    from audiocraft.modules import conditioners

    saved = [(transformers.T5EncoderModel, "from_pretrained", transformers.T5EncoderModel.from_pretrained),
             (transformers.T5Tokenizer, "from_pretrained", transformers.T5Tokenizer.from_pretrained),
             (demucs.pretrained, "get_model", demucs.pretrained.get_model)]
    enc_load, tok_load = saved[0][2], saved[1][2]
    transformers.T5EncoderModel.from_pretrained = lambda name, *a, **k: enc_load(str(t5_dir), *a, **k)
    transformers.T5Tokenizer.from_pretrained = lambda name, *a, **k: tok_load(str(t5_dir), *a, **k)
    demucs.pretrained.get_model = lambda name, *a, **k: _DemucsStandIn()
    dims = dict(conditioners.T5Conditioner.MODELS_DIMS)
    if tiny_t5:
        conditioners.T5Conditioner.MODELS_DIMS["t5-base"] = TINY_T5_DIM
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
        conditioners.T5Conditioner.MODELS_DIMS.clear()
        conditioners.T5Conditioner.MODELS_DIMS.update(dims)


@contextlib.contextmanager
def stems_off():
    """ChromaStemConditioner without Demucs: the collated mono 32 kHz melody goes straight to the chroma."""
    from audiocraft.modules import conditioners

    cls = conditioners.ChromaStemConditioner
    saved = cls._get_stemmed_wav
    cls._get_stemmed_wav = lambda self, wav, sample_rate: wav
    try:
        yield
    finally:
        cls._get_stemmed_wav = saved


def build_t5(kind: str, out: Path) -> Path:
    """A random T5 encoder folder with a SentencePiece tokenizer (what audiocraft's T5Conditioner loads)."""
    from transformers import T5Config, T5EncoderModel

    rc = _random_checkpoints()
    params = dict(rc.T5_TINY, d_model=TINY_T5_DIM) if kind == "tiny" else rc.T5_BASE
    config = T5Config(**params, feed_forward_proj="relu", is_encoder_decoder=False, use_cache=False,
                      relative_attention_num_buckets=32, relative_attention_max_distance=128)
    torch.manual_seed(1)
    T5EncoderModel(config).eval().save_pretrained(out, safe_serialization=True)
    rc.build_sentencepiece_tokenizer(out, vocab_size=100)  # the corpus allows ~117 pieces; ids stay < vocab_size
    return out


def _make_sensitive(lm, compression, seed: int) -> None:
    """random_checkpoints._make_sensitive, on audiocraft's module names."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if name.startswith("emb."):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name.startswith("condition_provider.conditioners.self_wav.output_proj"):
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 if name.endswith("weight") else 0.5))
            elif name.startswith("condition_provider.conditioners.description.output_proj"):
                scale = 1.0 / math.sqrt(p.shape[1]) if name.endswith("weight") else 0.5
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
            elif name.endswith("weight") and p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
        for layer in compression.quantizer.vq.layers:
            book = layer._codebook
            book.embed.copy_(torch.randn(book.embed.shape, generator=gen))
            book.embed_avg.copy_(book.embed)
            book.cluster_size.fill_(1.0)
            book.inited.fill_(1.0)


def _save(pkg: dict, path: Path) -> None:
    from audiocraft import __version__

    torch.save({**pkg, "version": __version__, "exported": True}, path)


def build(arch: str, out: Path, t5_dir: Path, seed: int = 0) -> Path:
    """Random-weight audiocraft model of ``arch`` in audiocraft's release format (export_lm / export_encodec)."""
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    tiny = arch.startswith("tiny")
    out.mkdir(parents=True, exist_ok=True)
    cfg = OmegaConf.create(lm_config(arch))
    ccfg = OmegaConf.create(compression_config(tiny))
    torch.manual_seed(seed)
    with offline_audiocraft(t5_dir, tiny_t5=tiny):
        lm = builders.get_lm_model(cfg).eval()
    compression = builders.get_compression_model(ccfg).eval()
    _make_sensitive(lm, compression, seed)
    _save({"best_state": lm.state_dict(), "xp.cfg": OmegaConf.to_yaml(cfg)}, out / "state_dict.bin")
    _save({"best_state": compression.state_dict(), "xp.cfg": OmegaConf.to_yaml(ccfg)}, out / "compression_state_dict.bin")
    return out


def load(folder: Path, t5_dir: Path):
    """audiocraft's own loaders, then what ``MusicGen.get_pretrained`` does after them."""
    from audiocraft.models import loaders
    from audiocraft.models.musicgen import MusicGen
    from omegaconf import OmegaConf

    pkg = torch.load(folder / "state_dict.bin", map_location="cpu", weights_only=True)
    tiny = OmegaConf.create(pkg["xp.cfg"]).transformer_lm.dim < 256
    with offline_audiocraft(t5_dir, tiny_t5=tiny):
        lm = loaders.load_lm_model(folder, device="cpu")
    compression = loaders.load_compression_model(folder, device="cpu")  # BaseGenModel wraps it for stereo
    if "self_wav" in lm.condition_provider.conditioners:
        lm.condition_provider.conditioners["self_wav"].match_len_on_eval = True
        lm.condition_provider.conditioners["self_wav"]._use_masking = False
    return MusicGen(folder.name, compression, lm)


def melody_waves(count: int, seconds: float, sr: int = 32000, seed: int = 0) -> list[np.ndarray]:
    """Stepped sine melodies (as tests/export/test_parity.py's), deterministic from ``seed``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        t = np.arange(int(seconds * sr)) / sr
        notes = rng.choice([220.0, 261.63, 329.63, 392.0, 440.0, 493.88], size=8)
        f = notes[np.minimum((t / seconds * 8).astype(int), 7)]
        out.append((0.5 * np.sin(2 * np.pi * f * t) + 0.01 * rng.standard_normal(t.shape)).astype(np.float32))
    return out


@torch.no_grad()
def generate(model, prompts: list[str], frames: int, melodies: list[np.ndarray] | None = None) -> np.ndarray:
    """audiocraft's greedy tokens ``[B, K, frames]`` (cfg_coef 3, use_sampling=False)."""
    duration = (frames + 0.5) / model.frame_rate  # int(duration * 50) == frames
    model.set_generation_params(use_sampling=False, cfg_coef=3.0, duration=duration)
    if melodies is None:
        _, tokens = model.generate(prompts, return_tokens=True)
    else:
        batch = [torch.from_numpy(m)[None] for m in melodies]  # [C=1, T] each, at 32 kHz
        with stems_off():
            _, tokens = model.generate_with_chroma(prompts, batch, melody_sample_rate=32000, return_tokens=True)
    assert tokens.shape[-1] == frames, tokens.shape
    return tokens.cpu().numpy()


def finetune(folder: Path, out: Path, t5_dir: Path, steps: int = 3, lr: float = 1e-3, seed: int = 5) -> Path:
    """A fine-tune in miniature: ``steps`` AdamW steps of audiocraft's own training loss
    (``LMModel.compute_predictions`` + cross-entropy on the valid pattern positions, as
    ``MusicGenSolver._compute_cross_entropy``) on random codes with text conditions; saved as export_lm does."""
    from audiocraft.modules.conditioners import ConditioningAttributes, WavCondition
    from omegaconf import OmegaConf

    out.mkdir(parents=True, exist_ok=True)
    model = load(folder, t5_dir)
    lm = model.lm
    lm.train()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=lr)
    melody = "self_wav" in lm.condition_provider.conditioners
    for step in range(steps):
        codes = torch.randint(0, 2048, (2, lm.num_codebooks, 20), generator=gen)
        attrs = []
        for text in ["a happy rock track", "calm piano at a slow tempo"]:
            a = ConditioningAttributes(text={"description": text})
            if melody:
                a.wav["self_wav"] = WavCondition(torch.randn(1, 1, 32000, generator=gen) * 0.3,
                                                 torch.tensor([32000]), sample_rate=[32000], path=[None])
            attrs.append(a)
        with offline_audiocraft(t5_dir, tiny_t5=lm.dim < 256), stems_off():
            tokenized = lm.condition_provider.tokenize(attrs)
            conditions = lm.condition_provider(tokenized)
        out_pred = lm.compute_predictions(codes, [], condition_tensors=conditions)
        logits, mask = out_pred.logits, out_pred.mask
        loss = torch.nn.functional.cross_entropy(logits[mask], codes[mask])
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"fine-tune step {step}: loss {loss.item():.4f}", file=sys.stderr)
    lm.eval()
    pkg = torch.load(folder / "state_dict.bin", map_location="cpu", weights_only=True)
    _save({"best_state": lm.state_dict(), "xp.cfg": pkg["xp.cfg"]}, out / "state_dict.bin")
    comp = torch.load(folder / "compression_state_dict.bin", map_location="cpu", weights_only=True)
    torch.save(comp, out / "compression_state_dict.bin")
    return out


def save_solver_checkpoint(folder: Path, out_file: Path) -> Path:
    """The layout of a solver's ``checkpoint.th`` as ``audiocraft.utils.export.export_lm`` reads it: the
    weights under ``best_state['model']`` (``fsdp_best_state`` empty) and ``xp.cfg`` as an omegaconf
    DictConfig object (pickled), beside the latest ``model`` state."""
    from omegaconf import OmegaConf

    pkg = torch.load(folder / "state_dict.bin", map_location="cpu", weights_only=True)
    state = pkg["best_state"]
    torch.save({"best_state": {"model": state}, "fsdp_best_state": {}, "model": state,
                "xp.cfg": OmegaConf.create(pkg["xp.cfg"]), "version": pkg.get("version")}, out_file)
    return out_file


FIXTURE_PROMPTS = ["A happy rock track with guitar", "sad jazz with piano at a slow tempo and soft vocals"]
FIXTURE_FRAMES = 12


def tokens_record(arch, folder, prompts, frames, codes, melody_seed=None, melody_seconds=None) -> dict:
    import audiocraft

    return {"arch": arch, "folder": str(folder), "prompts": prompts, "frames": frames, "cfg_coef": 3.0,
            "use_sampling": False, "melody_seed": melody_seed, "melody_seconds": melody_seconds,
            "stems": False, "audiocraft": audiocraft.__version__, "torch": torch.__version__,
            "codes": codes.tolist()}


def build_fixture(out: Path) -> None:
    """The committed CI fixture (a few MB): tiny text-only and melody models in audiocraft's format, a
    fine-tuned variant of the text-only one, the tiny T5 folder, and audiocraft's greedy tokens on each
    (``tokens.json``). The three models share one codec, stored once as ``compression_state_dict.bin``
    beside them (a test puts it into each folder: ``tests/export/test_audiocraft.py``)."""
    import shutil
    import tempfile

    out.mkdir(parents=True, exist_ok=True)
    t5_dir = build_t5("tiny", out / "t5")
    records = {}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        folders = {}
        for arch in ("tiny-text", "tiny-melody"):
            folders[arch] = build(arch, work / arch, t5_dir)
        shutil.copyfile(work / "tiny-text" / "compression_state_dict.bin", work / "tiny-melody" / "compression_state_dict.bin")
        folders["tiny-text-finetuned"] = finetune(folders["tiny-text"], work / "tiny-text-finetuned", t5_dir)
        for name, path in folders.items():
            melodies = melody_waves(2, 1.5, seed=3) if name.startswith("tiny-melody") else None
            codes = generate(load(path, t5_dir), FIXTURE_PROMPTS, FIXTURE_FRAMES, melodies)
            records[name] = tokens_record(name, name, FIXTURE_PROMPTS, FIXTURE_FRAMES, codes,
                                          3 if melodies else None, 1.5 if melodies else None)
            if melodies:  # and the melody model without a melody (bin-0 chroma on both CFG rows)
                codes = generate(load(path, t5_dir), FIXTURE_PROMPTS, FIXTURE_FRAMES)
                records[f"{name}-no-melody"] = tokens_record(name, name, FIXTURE_PROMPTS, FIXTURE_FRAMES, codes)
            (out / name).mkdir(exist_ok=True)
            shutil.copyfile(path / "state_dict.bin", out / name / "state_dict.bin")
        shutil.copyfile(work / "tiny-text" / "compression_state_dict.bin", out / "compression_state_dict.bin")
    (out / "tokens.json").write_text(json.dumps(records, indent=1) + "\n")
    fixture_audio(out, t5_dir)


def fixture_audio(out: Path, t5_dir: Path) -> Path:
    """audiocraft's own decode (its EnCodec: SEANet + RVQ from compression_state_dict.bin) of the
    fixture's tiny-text tokens, as ``tiny-text.audio.npy`` [B, 1, 640 * frames] float32."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "tiny-text"
        folder.mkdir()
        shutil.copyfile(out / "tiny-text" / "state_dict.bin", folder / "state_dict.bin")
        shutil.copyfile(out / "compression_state_dict.bin", folder / "compression_state_dict.bin")
        model = load(folder, t5_dir)
        codes = torch.tensor(json.loads((out / "tokens.json").read_text())["tiny-text"]["codes"])
        with torch.no_grad():
            wav = model.compression_model.decode(codes)
    np.save(out / "tiny-text.audio.npy", wav.numpy().astype(np.float32))
    return out / "tiny-text.audio.npy"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("arch", choices=sorted(ARCHS))
    b.add_argument("out", type=Path)
    b.add_argument("--t5", type=Path, required=True)
    b.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("t5")
    t.add_argument("kind", choices=["tiny", "base"])
    t.add_argument("out", type=Path)
    g = sub.add_parser("generate")
    g.add_argument("folder", type=Path)
    g.add_argument("--t5", type=Path, required=True)
    g.add_argument("--frames", type=int, default=30)
    g.add_argument("--prompts", nargs="+", default=FIXTURE_PROMPTS)
    g.add_argument("--melody-seconds", type=float, default=None, help="stepped-sine melodies of this length")
    g.add_argument("--melody-seed", type=int, default=3)
    g.add_argument("-o", "--output", type=Path, required=True)
    f = sub.add_parser("finetune")
    f.add_argument("folder", type=Path)
    f.add_argument("out", type=Path)
    f.add_argument("--t5", type=Path, required=True)
    s = sub.add_parser("solver-checkpoint")
    s.add_argument("folder", type=Path)
    s.add_argument("out", type=Path)
    x = sub.add_parser("fixture")
    x.add_argument("out", type=Path)
    xa = sub.add_parser("fixture-audio", help="(re)write the fixture's audiocraft-decoded audio only")
    xa.add_argument("out", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "build":
        print(build(args.arch, args.out, args.t5, args.seed))
    elif args.cmd == "t5":
        print(build_t5(args.kind, args.out))
    elif args.cmd == "generate":
        t0 = time.perf_counter()
        model = load(args.folder, args.t5)
        melodies = (melody_waves(len(args.prompts), args.melody_seconds, seed=args.melody_seed)
                    if args.melody_seconds else None)
        codes = generate(model, args.prompts, args.frames, melodies)
        rec = tokens_record(args.folder.name, args.folder, args.prompts, args.frames, codes,
                            args.melody_seed if melodies else None, args.melody_seconds)
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        args.output.write_text(json.dumps(rec) + "\n")
        print(args.output)
    elif args.cmd == "finetune":
        print(finetune(args.folder, args.out, args.t5))
    elif args.cmd == "solver-checkpoint":
        print(save_solver_checkpoint(args.folder, args.out))
    elif args.cmd == "fixture":
        build_fixture(args.out)
    elif args.cmd == "fixture-audio":
        print(fixture_audio(args.out, args.out / "t5"))


if __name__ == "__main__":
    main()
