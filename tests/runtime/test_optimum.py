"""Folders from optimum / transformers.js, read through ``runtime/optimum_layout.py``.

The fixtures are optimum exports of this project's seed-0 random checkpoints, built by
``benchmarks/build_optimum_fixture.py`` in optimum's own environment: ``optimum-tiny-text`` as
``optimum-cli`` writes it (graphs at the top, split decoder), ``optimum-tiny-text-stereo`` as
transformers.js ships it (graphs in ``onnx/``, merged decoder). Parity tests rebuild the checkpoint
here (deterministic), prove it is the one the fixture came from (sha256 of its weights, recorded in
``source.json``) and compare greedy tokens with transformers' ``generate``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.runtime.errors import InvalidInputError, ModelFolderError

from helpers import ROOT

FIXTURES = {"tiny-text": ROOT / "tests" / "fixtures" / "optimum-tiny-text",
            "tiny-text-stereo": ROOT / "tests" / "fixtures" / "optimum-tiny-text-stereo"}
PROMPTS_3 = ["A happy rock track with guitar", "sad jazz with piano at a slow tempo and soft vocals", "techno"]
FRAMES = 12
AUDIO_TOL = 1e-5


@pytest.fixture(scope="module")
def loaded():
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = MusicGen.from_pretrained(FIXTURES[arch], providers="cpu")
        return cache[arch]

    return get


@pytest.fixture
def copy(tmp_path):
    def make(arch="tiny-text"):
        dst = tmp_path / arch
        shutil.copytree(FIXTURES[arch], dst)
        return dst

    return make


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text and text
    return text


# ---------------------------------------------------------------------- parity (needs transformers)
@pytest.mark.export
@pytest.mark.parametrize("arch", list(FIXTURES))
def test_fixture_was_exported_from_the_seed0_checkpoint(arch, checkpoint_dir):
    from musicgen_onnx.runtime.manifest import sha256_file

    source = json.loads((FIXTURES[arch] / "source.json").read_text())
    assert source["architecture"] == arch and source["seed"] == 0
    assert sha256_file(checkpoint_dir(arch) / "model.safetensors") == source["model_safetensors_sha256"]


@pytest.mark.export
@pytest.mark.parametrize("arch", list(FIXTURES))
@pytest.mark.parametrize("prompts", [PROMPTS_3[:1], PROMPTS_3], ids=["batch1", "batch3"])
def test_greedy_tokens_equal_transformers(arch, prompts, loaded, reference_model):
    from musicgen_onnx.export import reference

    model, tok = reference_model(arch)
    ref_codes, ref_audio = reference.generate(model, tok, prompts, FRAMES)
    if len(prompts) > 1:
        assert not np.array_equal(ref_codes[0], ref_codes[1])  # the reference listened to its prompts
    audio, codes = loaded(arch).generate(prompts, duration=FRAMES / 50, greedy=True, guidance_scale=3.0,
                                         return_codes=True)
    np.testing.assert_array_equal(codes, ref_codes)
    assert audio.shape == ref_audio.shape
    assert np.max(np.abs(audio - ref_audio)) < AUDIO_TOL


# ---------------------------------------------------------------------- runtime features (no torch)
@pytest.mark.parametrize("arch", list(FIXTURES))
def test_layout_is_detected(arch, loaded):
    model = loaded(arch)
    m = model.manifest
    assert model.adapter is not None and model.adapter.precision == "fp32"
    assert model.adapter.merged == (arch == "tiny-text-stereo")
    assert (model.adapter.graph_dir.name == "onnx") == (arch == "tiny-text-stereo")
    assert m.conditioning == "states" and m.kv_cache == "concat" and not m.is_melody
    assert m.audio_channels == (2 if arch.endswith("stereo") else 1)
    assert m.delays == ((0, 0, 1, 1, 2, 2, 3, 3) if arch.endswith("stereo") else (0, 1, 2, 3))


@pytest.mark.parametrize("arch", list(FIXTURES))
def test_long_form_windows_chain(arch, loaded):
    """Window 2 starts from window 1's tail: its first decoder call takes many columns at once (the
    split layout's decoder_model, the merged one's no-cache branch). The window is shrunk to 1 s so
    that the chain runs in CI; the same code runs 30 s windows."""
    base = loaded(arch)
    model = MusicGen.__new__(MusicGen)
    model.__dict__.update(base.__dict__)
    model.manifest = dataclasses.replace(base.manifest, max_duration=1.0)
    kw = dict(greedy=True, extend_stride=0.6)
    long = model.generate(["a piece"], duration=1.7, return_codes=True, **kw)[1]
    first = model.generate(["a piece"], duration=1.0, return_codes=True, **kw)[1]
    np.testing.assert_array_equal(long[:, :, :50], first)
    second = model.generate(["a piece"], duration=1.0, prompt_codes=first[:, :, 30:], return_codes=True, **kw)[1]
    np.testing.assert_array_equal(long[:, :, 50:80], second[:, :, 20:50])
    assert long.shape[2] == 85


def test_streaming_equals_one_shot(loaded):
    model = loaded("tiny-text-stereo")
    kw = dict(duration=2.0, seed=3, top_k=50)
    one_shot = model.generate(["a streamed piece"], **kw)
    chunks = list(model.generate_stream(["a streamed piece"], chunk_frames=25, **kw))
    streamed = np.concatenate(chunks, axis=2)
    assert len(chunks) >= 3 and streamed.shape == one_shot.shape == (1, 2, 64000)
    assert np.max(np.abs(streamed - one_shot)) < 1e-4


def test_continuation_is_refused_in_one_line(loaded):
    with pytest.raises(InvalidInputError) as exc:
        loaded("tiny-text").generate_continuation(np.zeros((1, 32000), np.float32), 32000, ["x"])
    assert "audio_encoder" in _one_line(exc)


def test_precision_variants(copy):
    folder = copy()
    for name in ("text_encoder", "decoder_model", "decoder_with_past_model", "encodec_decode"):
        shutil.copy2(folder / f"{name}.onnx", folder / f"{name}_q4.onnx")
    assert MusicGen.from_pretrained(folder, providers="cpu").adapter.precision == "fp32"
    q4 = MusicGen.from_pretrained(folder, providers="cpu", precision="q4")
    assert q4.adapter.precision == "int4" and q4.manifest.graphs["decoder"].file == "decoder_model_q4.onnx"
    assert q4.adapter.available == ("fp32", "int4")
    with pytest.raises(ModelFolderError) as exc:
        MusicGen.from_pretrained(folder, providers="cpu", precision="fp16")
    assert "no complete fp16 variant" in _one_line(exc) and "fp32, int4" in str(exc.value)
    with pytest.raises(InvalidInputError) as exc:
        MusicGen.from_pretrained(folder, providers="cpu", precision="fp8")
    _one_line(exc)


@pytest.mark.export  # onnx and onnxruntime's converters make the variants
def test_fp16_and_quantized_variants_run(copy):
    """transformers.js ships ``_fp16`` graphs (float16 inputs, caches and outputs) and ``_quantized``
    ones (int8 MatMul weights); these are made the same way by onnxruntime's tools from the split
    fixture. (onnxruntime's float16 converter breaks the merged graph's If branches, so the merged
    layout's fp16 is not exercised here.)"""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.float16 import convert_float_to_float16

    folder = copy()
    for name in ("text_encoder", "decoder_model", "decoder_with_past_model", "encodec_decode"):
        src = folder / f"{name}.onnx"
        onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=False), str(folder / f"{name}_fp16.onnx"))
        quantize_dynamic(str(src), str(folder / f"{name}_quantized.onnx"), weight_type=QuantType.QUInt8,
                         op_types_to_quantize=["MatMul", "Gather"])
    for precision, past_type in (("fp16", "tensor(float16)"), ("quantized", "tensor(float)")):
        model = MusicGen.from_pretrained(folder, providers="cpu", precision=precision)
        past = next(i for i in model.graphs["decoder_with_past"].get_inputs() if "past_key_values" in i.name)
        assert past.type == past_type
        audio, codes = model.generate(PROMPTS_3[:2], duration=0.3, greedy=True, return_codes=True)
        assert audio.dtype == np.float32 and audio.shape == (2, 1, 9600) and np.isfinite(audio).all()
        assert codes.shape == (2, 4, 15) and codes.max() < 2048


def _edit_config(folder: Path, **decoder):
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in decoder.items():
        if key == "model_type":
            cfg["model_type"] = value
        else:
            cfg["decoder"][key] = value
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("case, needle", [
    ("no-tokenizer", "'tokenizer.json' is missing"),
    ("no-codec", "lacks encodec_decode.onnx"),
    ("no-with-past", "decoder_with_past_model.onnx"),
    ("no-config-field", "has no 'num_codebooks'"),
    ("bool-as-int", "decoder.num_codebooks must be an integer"),
    ("huge-layers", "decoder.num_hidden_layers must be an integer in [1, 256]"),
    ("melody", "MusicGen-Melody"),
    ("bad-json", "unreadable JSON"),
    ("corrupt-graph", "not a readable ONNX graph"),
    ("wrong-graph", "not those the manifest lists"),
    ("layers-mismatch", "not those the manifest lists"),
    ("codebooks-vs-graphs", "decoder.num_codebooks 8 over audio_channels 1 is 8 codebooks per channel, but "
                            "encodec_decode.onnx decodes 4"),
    ("channels-vs-graphs", "decoder.num_codebooks 4 over audio_channels 2 is 2 codebooks per channel"),
])
def test_bad_folders_are_one_line_errors(case, needle, copy):
    folder = copy()
    if case == "no-tokenizer":
        (folder / "tokenizer.json").unlink()
    elif case == "no-codec":
        (folder / "encodec_decode.onnx").unlink()
    elif case == "no-with-past":
        (folder / "decoder_with_past_model.onnx").unlink()
    elif case == "no-config-field":
        cfg = json.loads((folder / "config.json").read_text())
        del cfg["decoder"]["num_codebooks"]
        (folder / "config.json").write_text(json.dumps(cfg))
    elif case == "bool-as-int":
        _edit_config(folder, num_codebooks=True)
    elif case == "huge-layers":
        _edit_config(folder, num_hidden_layers=10 ** 9)
    elif case == "melody":
        _edit_config(folder, model_type="musicgen_melody")
    elif case == "bad-json":
        (folder / "config.json").write_text("{not json")
    elif case == "corrupt-graph":
        data = (folder / "decoder_model.onnx").read_bytes()
        (folder / "decoder_model.onnx").write_bytes(data[: len(data) // 3])
    elif case == "wrong-graph":
        shutil.copy2(folder / "encodec_decode.onnx", folder / "text_encoder.onnx")
    elif case == "layers-mismatch":
        _edit_config(folder, num_hidden_layers=3)
    elif case == "codebooks-vs-graphs":
        _edit_config(folder, num_codebooks=8)
    elif case == "channels-vs-graphs":
        _edit_config(folder, audio_channels=2)
    with pytest.raises(ModelFolderError) as exc:
        MusicGen.from_pretrained(folder, providers="cpu").generate(["x"], duration=0.1)
    assert needle in _one_line(exc)


def test_a_checkpoint_folder_says_export_it_first(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "musicgen"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelFolderError) as exc:
        MusicGen.from_pretrained(tmp_path, providers="cpu")
    assert "not an ONNX export; export it first" in _one_line(exc)


def test_onnx_subfolder_linked_outside_is_refused(copy, tmp_path):
    folder = copy("tiny-text-stereo")
    outside = tmp_path / "elsewhere"
    (folder / "onnx").rename(outside)
    (folder / "onnx").symlink_to(outside)
    with pytest.raises(ModelFolderError) as exc:
        MusicGen.from_pretrained(folder, providers="cpu")
    assert "outside the model folder" in _one_line(exc)


def test_cli_info_and_generate(cli, tmp_path):
    r = cli("info", FIXTURES["tiny-text-stereo"])
    assert r.returncode == 0, r.stderr
    assert "optimum / transformers.js" in r.stdout and "onnx/" in r.stdout and "merged" in r.stdout
    assert "variant        fp32 (available: fp32)" in r.stdout
    assert "no continuation" in r.stdout and "text-only, stereo" in r.stdout
    out = tmp_path / "a.wav"
    r = cli("generate", "--model", FIXTURES["tiny-text"], "a prompt", "--duration", "0.5", "--quiet", "-o", out)
    assert r.returncode == 0, r.stderr
    assert out.exists()
    r = cli("generate", "--model", FIXTURES["tiny-text"], "x", "--precision", "fp16", "-o", tmp_path / "b.wav")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no complete fp16 variant" in r.stderr


def test_a_zero_padded_graph_is_refused_at_once(copy):
    """Issue 24 item 14: a codec graph zero-padded to 400 MB (sparse) kept the pre-scan walking field
    number 0 at ~5 MB/s; field 0 does not exist in protobuf and is refused where it starts."""
    folder = copy()
    codec = folder / "encodec_decode.onnx"
    size = codec.stat().st_size
    with open(codec, "r+b") as fh:
        fh.truncate(400 << 20)
    t0 = time.perf_counter()
    with pytest.raises(ModelFolderError) as exc:
        MusicGen.from_pretrained(folder, providers="cpu")
    assert f"invalid protobuf field number 0 at byte {size}" in _one_line(exc)
    assert time.perf_counter() - t0 < 5


def test_the_graph_pre_scan_is_bounded(tmp_path, monkeypatch):
    """Well-formed filler (a million repeated varint fields) is walked only up to the field budget."""
    from musicgen_onnx.runtime import onnx_files

    graph = tmp_path / "g.onnx"
    graph.write_bytes((FIXTURES["tiny-text"] / "encodec_decode.onnx").read_bytes() + b"\x08\x01" * 1_000_000)
    monkeypatch.setattr(onnx_files, "_MAX_FIELDS", 200_000)
    with pytest.raises(onnx_files.MalformedGraph, match="more than 200000 protobuf fields"):
        onnx_files.external_data_locations(graph)
    monkeypatch.setattr(onnx_files, "_MAX_FIELDS", 2_000_000)
    monkeypatch.setattr(onnx_files, "_MAX_SECONDS", 0.0)
    with pytest.raises(onnx_files.MalformedGraph, match="took over 0 s"):
        onnx_files.external_data_locations(graph)
    monkeypatch.undo()
    assert onnx_files.external_data_locations(FIXTURES["tiny-text"] / "encodec_decode.onnx") == set()


@pytest.mark.parametrize("edit", [{"num_codebooks": 8}, {"audio_channels": 2}])
def test_a_config_disagreeing_with_its_graphs_is_one_line_at_load(edit, copy, cli, tmp_path):
    """Issue 24 item 15: the disagreement surfaced mid-generation, with onnxruntime's own error log."""
    folder = copy()
    _edit_config(folder, **edit)
    r = cli("generate", "x", "--model", folder, "--duration", "0.2", "--quiet", "-o", tmp_path / "o.wav")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    assert "codebooks per channel" in r.stderr and not (tmp_path / "o.wav").exists()
