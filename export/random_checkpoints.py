"""Random-weight MusicGen checkpoints in the transformers format, with the released architectures.

Real weights cannot be downloaded on the project's machines, so tests and benchmarks use these: the
loading code is the real one, and random weights change no timing. The weights are *unit-gain*
(see ``_make_sensitive``) so that different prompts, melodies and previous tokens really change the
output; with transformers' default init (std 0.02 embeddings, zero EnCodec codebooks) every prompt
gives the same tokens and every token the same audio, and parity tests built on that prove nothing.

    python -m musicgen_onnx.export.random_checkpoints melody benchmarks/cache/melody   # full size, ~6 GB
    python -m musicgen_onnx.export.random_checkpoints tiny-melody /tmp/tiny             # seconds
    python -m musicgen_onnx.export.random_checkpoints --bundle [OUT_DIR]   # rebuild models/tiny-melody

It lives in the package (export extra) because the tests build their fixtures with it and the
benchmarks their full-size checkpoints.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

# (hidden, layers, heads, codebooks, conditioning): audiocraft's config/model/lm/model_scale/*.yaml and
# transformers' convert_musicgen(_melody)_transformers.py decoder configs
FULL_SIZE = {
    "small": (1024, 24, 16, 4, "cross"),
    "medium": (1536, 48, 24, 4, "cross"),
    "large": (2048, 48, 32, 4, "cross"),
    "melody": (1536, 48, 24, 4, "prefix"),
    "melody-large": (2048, 48, 32, 4, "prefix"),
    "stereo-small": (1024, 24, 16, 8, "cross"),
    "stereo-medium": (1536, 48, 24, 8, "cross"),
    "stereo-large": (2048, 48, 32, 8, "cross"),
    "stereo-melody": (1536, 48, 24, 8, "prefix"),
    "stereo-melody-large": (2048, 48, 32, 8, "prefix"),
}
TINY = {
    "tiny-melody": (32, 2, 2, 4, "prefix"),
    "tiny-melody-stereo": (32, 2, 2, 8, "prefix"),
    "tiny-text": (32, 2, 2, 4, "cross"),
    "tiny-text-stereo": (32, 2, 2, 8, "cross"),
    # shapes audiocraft trains that the released models do not have (issue 25's held-out set): fewer codes
    # per codebook than audiocraft's default top_k 250, and a head size (12) that is not a multiple of 8
    "tiny-text-stereo-64": (32, 2, 2, 8, "cross"),
    "tiny-melody-hd12": (24, 2, 2, 4, "prefix"),
}
ARCHITECTURES = {**FULL_SIZE, **TINY}
# codes per codebook where it is not EnCodec 32 kHz's 2048 (the special token is the next id)
CODEBOOK_SIZES = {"tiny-text-stereo-64": 64, "tiny-melody-hd12": 128}

# t5-base (every released checkpoint uses it: both transformers conversion scripts load "t5-base") and a tiny stand-in.
T5_BASE = dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)
T5_TINY = dict(vocab_size=512, d_model=24, d_kv=12, d_ff=48, num_layers=2, num_heads=2)
# facebook/encodec_32khz (its hub config.json) and a reduced codec that keeps the 640-sample hop and 2048 codes.
ENCODEC_32K = dict(hidden_size=128, num_filters=64)
ENCODEC_TINY = dict(hidden_size=16, num_filters=4)

_WORDS = {
    "mood": ["happy", "sad", "calm", "energetic", "dark", "bright", "dreamy", "epic", "warm", "gentle"],
    "genre": ["rock", "jazz", "techno", "folk", "ambient", "hip hop", "classical", "reggae", "blues", "pop"],
    "inst": ["piano", "guitar", "drums", "violin", "synth", "bass", "flute", "trumpet", "cello", "organ"],
    "extra": ["with a steady beat", "at a slow tempo", "for a film scene", "in the eighties style",
              "with heavy reverb", "and soft vocals", "at 120 bpm", "with a catchy melody"],
}


def corpus() -> list[str]:
    """A small deterministic corpus of music descriptions for the on-the-spot tokenizer."""
    lines = []
    for i, mood in enumerate(_WORDS["mood"]):
        for j, genre in enumerate(_WORDS["genre"]):
            inst = _WORDS["inst"][(i + 3 * j) % len(_WORDS["inst"])]
            extra = _WORDS["extra"][(2 * i + j) % len(_WORDS["extra"])]
            lines.append(f"A {mood} {genre} track with {inst} {extra}.")
    lines += ["80s pop track with bassy drums and synth", "90s rock song with loud guitars and heavy drums",
              "a light and cheerly EDM track, with syncopated drums, aery pads, and strong emotions",
              "lofi slow bpm electro chill with organic samples"]
    return lines


def train_tokenizer(vocab_size: int):
    """A T5-style fast tokenizer: Unigram over Metaspace pieces, ``</s>`` appended, pad id 0."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(r"\s+", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", shrinking_factor=0.9
    )
    tok.train_from_iterator(corpus() * 4, trainer=trainer)
    # The trainer sums scores in parallel (last-bit noise) and orders equal scores by thread timing:
    # round and sort, so every build gives the same file and the same ids.
    spec = json.loads(tok.to_str())
    vocab = [[piece, round(score, 9)] for piece, score in spec["model"]["vocab"]]
    spec["model"]["vocab"] = vocab[:3] + sorted(vocab[3:], key=lambda piece: (-piece[1], piece[0]))
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tok.enable_padding(pad_id=0, pad_token="<pad>")
    return tok


def build_sentencepiece_tokenizer(out_dir: str | Path, vocab_size: int = 100) -> Path:
    """A T5 tokenizer as the released checkpoints ship it: a SentencePiece Unigram ``spiece.model`` with
    the ``nmt_nfkc`` rules (a Precompiled charsmap) and the ``tokenizer.json`` transformers converts from
    it (WhitespaceSplit + Metaspace, ``</s>`` template, 100 ``<extra_id_*>`` tokens)."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = out / "corpus.txt"
    text.write_text("\n".join(corpus() * 4 + ["Café naïve Ünïcödé ﬁ ｆｕｌｌ 中文 音乐 déjà vu"]), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(out / "spiece"), vocab_size=vocab_size, model_type="unigram",
        normalization_rule_name="nmt_nfkc", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1,
        character_coverage=1.0, minloglevel=2)
    text.unlink()
    (out / "spiece.vocab").unlink()
    T5Tokenizer.from_pretrained(out).save_pretrained(out)
    return out


def build_config(arch: str):
    """The transformers config of one architecture (no weights)."""
    from transformers import EncodecConfig, MusicgenConfig, MusicgenMelodyConfig, T5Config
    from transformers.models.musicgen.configuration_musicgen import MusicgenDecoderConfig
    from transformers.models.musicgen_melody.configuration_musicgen_melody import MusicgenMelodyDecoderConfig

    hidden, layers, heads, codebooks, conditioning = ARCHITECTURES[arch]
    tiny = arch in TINY
    codes = CODEBOOK_SIZES.get(arch, 2048)
    # 2.2 kbps gives EnCodec 32 kHz its 4 codebooks at 2048 codes; fewer codes carry fewer bits per
    # codebook, so the bandwidth that still selects 4 (transformers' get_num_quantizers_for_bandwidth) is lower
    bandwidth = 2.2 if codes == 2048 else round(4.5 * math.log2(codes) * 50 / 1000, 4)
    t5 = T5Config(**(T5_TINY if tiny else T5_BASE), feed_forward_proj="relu", is_encoder_decoder=False,
                  use_cache=False, relative_attention_num_buckets=32, relative_attention_max_distance=128)
    codec = EncodecConfig(
        sampling_rate=32000, audio_channels=1, codebook_size=codes, upsampling_ratios=[8, 5, 4, 4],
        target_bandwidths=[bandwidth], norm_type="weight_norm", normalize=False, use_causal_conv=False,
        pad_mode="reflect", compress=2, num_residual_layers=1, num_lstm_layers=2, dilation_growth_rate=2,
        kernel_size=7, last_kernel_size=7, residual_kernel_size=3, trim_right_ratio=1.0,
        use_conv_shortcut=False, chunk_length_s=None, overlap=None,
        **(ENCODEC_TINY if tiny else ENCODEC_32K),
    )
    decoder_kwargs = dict(
        vocab_size=codes, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        ffn_dim=4 * hidden, num_codebooks=codebooks, audio_channels=2 if codebooks == 8 else 1,
        max_position_embeddings=2048, activation_function="gelu", dropout=0.0, pad_token_id=codes,
        bos_token_id=codes, decoder_start_token_id=codes,
    )
    if conditioning == "prefix":
        decoder = MusicgenMelodyDecoderConfig(**decoder_kwargs)
        config = MusicgenMelodyConfig(text_encoder=t5, audio_encoder=codec, decoder=decoder,
                                      num_chroma=12, chroma_length=235)
    else:
        decoder = MusicgenDecoderConfig(**decoder_kwargs)
        config = MusicgenConfig(text_encoder=t5, audio_encoder=codec, decoder=decoder)
    config.decoder_start_token_id = codes
    config.pad_token_id = codes
    return config


def _make_sensitive(model, seed: int) -> None:
    """Unit-gain random weights so that every input visibly moves the output (module docstring)."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def normal_(tensor, std):
        with torch.no_grad():
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * std)

    decoder = model.decoder
    for name, param in decoder.named_parameters():
        if "embed_tokens" in name:
            normal_(param, 1.0)
        elif name.endswith("weight") and param.dim() == 2:
            normal_(param, 1.0 / math.sqrt(param.shape[1]))
    for proj_name in ("enc_to_dec_proj", "audio_enc_to_dec_proj"):
        proj = getattr(model, proj_name, None)
        if proj is not None:
            fan_in = proj.weight.shape[1]
            normal_(proj.weight, 1.0 if proj_name == "audio_enc_to_dec_proj" else 1.0 / math.sqrt(fan_in))
            normal_(proj.bias, 0.5)
    for layer in model.audio_encoder.quantizer.layers:
        normal_(layer.codebook.embed, 1.0)
        layer.codebook.embed_avg.copy_(layer.codebook.embed)
        layer.codebook.cluster_size.fill_(1.0)


def build_checkpoint(arch: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a transformers-format checkpoint of ``arch`` with random weights into ``out_dir``."""
    import torch
    from transformers import GenerationConfig, MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration
    from transformers import PreTrainedTokenizerFast

    if arch not in ARCHITECTURES:
        raise SystemExit(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = build_config(arch)
    torch.manual_seed(seed)
    cls = MusicgenMelodyForConditionalGeneration if ARCHITECTURES[arch][4] == "prefix" else MusicgenForConditionalGeneration
    model = cls(config).eval()
    _make_sensitive(model, seed)
    special = CODEBOOK_SIZES.get(arch, 2048)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=special, pad_token_id=special, bos_token_id=special, do_sample=True,
        guidance_scale=3.0, max_length=1500,
    )
    # 2 GB shards: the whole-file serialisation would hold a second copy of a 3.3B model (13 GB) at once
    model.save_pretrained(out, safe_serialization=True, max_shard_size="2GB")

    tok = train_tokenizer(T5_TINY["vocab_size"] if arch in TINY else 1000)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512, padding_side="right")
    fast.save_pretrained(out)
    if ARCHITECTURES[arch][4] == "prefix":
        (out / "preprocessor_config.json").write_text(json.dumps({
            "feature_extractor_type": "MusicgenMelodyFeatureExtractor", "processor_class": "MusicgenMelodyProcessor",
            "feature_size": 12, "sampling_rate": 32000, "hop_length": 4096, "chunk_length": 30,
            "n_fft": 16384, "num_chroma": 12, "padding_value": 0.0, "return_attention_mask": False,
            "stem_indices": [3, 2],
        }, indent=2) + "\n")
    return out


BUNDLED = Path(__file__).resolve().parent.parent / "models" / "tiny-melody"
BUNDLED_ARCH, BUNDLED_SEED = "tiny-melody", 0


def build_bundled(out_dir: str | Path = BUNDLED, progress=print) -> Path:
    """The committed tiny model: this module's ``tiny-melody`` checkpoint (seed 0), exported."""
    import tempfile

    from .exporter import export

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_checkpoint(BUNDLED_ARCH, Path(tmp) / BUNDLED_ARCH, seed=BUNDLED_SEED)
        return export(str(ckpt), Path(out_dir), force=True, progress=progress,
                      source_label=f"random-weight {BUNDLED_ARCH} (musicgen_onnx/export/random_checkpoints.py, "
                                   f"seed {BUNDLED_SEED})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", action="store_true", help="rebuild the bundled tiny model (OUT_DIR optional)")
    parser.add_argument("arch", nargs="?", help=f"one of {', '.join(sorted(ARCHITECTURES))}")
    parser.add_argument("out_dir", nargs="?")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.bundle:
        out = args.out_dir or args.arch  # `--bundle DIR`: the one positional is the folder
        print(build_bundled(Path(out) if out else BUNDLED))
    elif args.arch and args.out_dir:
        print(build_checkpoint(args.arch, args.out_dir, args.seed))
    else:
        parser.error("give ARCH OUT_DIR, or --bundle [OUT_DIR]")


if __name__ == "__main__":
    main()
