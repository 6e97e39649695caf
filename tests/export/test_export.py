"""Export: each family validates, the manifest round-trips, failures leave nothing, errors are clear."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from musicgen_onnx.export.exporter import export
from musicgen_onnx.runtime import MusicGen, roles
from musicgen_onnx.runtime.errors import ExportError, ModelFolderError
from musicgen_onnx.runtime.manifest import FORMAT_VERSION, MANIFEST_NAME, Manifest, load_manifest, verify_files

from helpers import BUNDLED, FAMILIES


@pytest.mark.parametrize("arch", FAMILIES)
def test_each_family_exports_and_validates(arch, exported):
    folder = exported(arch)  # export() ran every validation and would have raised
    m = load_manifest(folder)
    verify_files(folder, m)
    assert sorted(m.graphs) == ["audio_decoder", "audio_encoder", "decoder", "text_encoder"]
    assert m.is_melody == arch.startswith("tiny-melody")
    assert m.audio_channels == (2 if "stereo" in arch else 1)
    assert list(m.delays) == ([0, 0, 1, 1, 2, 2, 3, 3] if "stereo" in arch else [0, 1, 2, 3])
    dec = onnx.load(str(folder / "decoder.onnx"), load_external_data=False)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in dec.graph.input}
    assert dims["input_ids"] == ["batch_x_cfg", m.num_codebooks, "new_length"]
    assert m.kv_cache == "static"
    assert dims["past.0.key"] == ["batch_x_cfg", m.num_heads, "max_length", m.head_dim]
    # the step's values come in as inputs (issue 26), so nothing in the step is computed on the host
    assert m.step_inputs == "positions" and "past_length" not in dims
    assert dims["position_ids"] == ["batch_x_cfg", "new_positions"] and dims["seqlens_k"] == ["batch_x_cfg"]
    assert dims["total_sequence_length"] == []
    assert any(n.op_type == "GroupQueryAttention" for n in dec.graph.node)
    if m.is_melody:
        assert dims["prefix_embeds"] == ["batch_x_cfg", "prefix_length", m.hidden_size]
    else:
        assert dims["encoder_attention_mask"] == ["batch_x_cfg", "text_length"]
        assert "cross.0.key" in dims  # cross K/V are inputs: computed once by the text encoder
        te = onnx.load(str(folder / "text_encoder.onnx"))
        assert [o.name for o in te.graph.output][:2] == ["cross.0.key", "cross.0.value"]


def test_concat_cache_graph_is_plain_onnx(exported):
    folder = exported("tiny-text", "concat")
    dec = onnx.load(str(folder / "decoder.onnx"))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in dec.graph.input}
    assert dims["past.0.key"][2] == "past_length" and "past_length" not in dims
    assert {op.domain for op in dec.opset_import} <= {"", "ai.onnx"}


def test_manifest_round_trip_and_version_check(exported, tmp_path):
    m = load_manifest(exported("tiny-text"))
    again = Manifest.from_dict(json.loads(m.to_json()))
    assert again == m
    data = m.to_dict()
    data["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(ModelFolderError, match="format version"):
        Manifest.from_dict(data)
    bad = m.to_dict()
    bad["num_layers"] = 10**9  # a crafted manifest must not make the runtime allocate from it
    with pytest.raises(ModelFolderError, match="num_layers"):
        Manifest.from_dict(bad)
    bad = m.to_dict()
    bad["graphs"]["decoder"]["file"] = "../../etc/passwd"
    with pytest.raises(ModelFolderError, match="plain name"):
        Manifest.from_dict(bad)


@pytest.mark.parametrize("stage", ["text_encoder", "decoder", "audio_encoder"])
def test_failure_mid_export_leaves_nothing(stage, checkpoint_dir, tmp_path, monkeypatch):
    from musicgen_onnx.export import folder_manifest

    real = folder_manifest.graph_info

    def fail_after(folder, name, *args):
        info = real(folder, name, *args)
        if name == stage:
            raise ExportError(f"injected failure after {name}")
        return info

    monkeypatch.setattr(folder_manifest, "graph_info", fail_after)
    out = tmp_path / "model"
    with pytest.raises(ExportError, match="injected"):
        export(str(checkpoint_dir("tiny-text")), out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary sibling is gone too


def test_force_replaces_and_existing_folder_is_refused(checkpoint_dir, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match="already exists"):
        export(str(checkpoint_dir("tiny-text")), out)
    assert (out / "keep.txt").exists()
    export(str(checkpoint_dir("tiny-text")), out, force=True, validate_graphs=False)
    assert (out / MANIFEST_NAME).exists() and not (out / "keep.txt").exists()


def _copy_ckpt(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_export_options_are_one_checked_object(tmp_path):
    """export() takes an ExportOptions (frozen, checked when made) or its fields as keywords, which are
    applied over it; a bad value fails before any checkpoint is looked at."""
    import dataclasses

    from musicgen_onnx.export.options import ExportOptions

    options = ExportOptions(precision="int8", atol=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.precision = "fp32"
    with pytest.raises(ExportError, match=r"opset 13 is not supported; choose an opset in \[14, 21\]"):
        ExportOptions(opset=13)
    with pytest.raises(ExportError, match="rtol must be a finite number >= 0, got nan"):
        export(str(tmp_path / "not-looked-at"), tmp_path / "a", options, rtol=float("nan"))
    with pytest.raises(ExportError, match="kv_dtype 'fp16' needs precision int8 or int4 with the static KV cache"):
        export(str(tmp_path / "not-looked-at"), tmp_path / "a", ExportOptions(kv_dtype="fp16"))
    with pytest.raises(ExportError, match="no such folder"):  # options pass: the checkpoint is looked at next
        export(str(tmp_path / "missing"), tmp_path / "a", options, kv_dtype="fp16")


def test_export_errors(checkpoint_dir, tmp_path):
    src = checkpoint_dir("tiny-text")
    with pytest.raises(ExportError, match="precision 'int3'"):
        export(str(src), tmp_path / "a", precision="int3")
    with pytest.raises(ExportError, match="kv_dtype 'fp16' needs precision int8 or int4 with the static KV cache"):
        export(str(src), tmp_path / "a", kv_dtype="fp16")
    with pytest.raises(ExportError, match="not int8/concat"):
        export(str(src), tmp_path / "a", precision="int8", kv_cache="concat", kv_dtype="fp16")
    with pytest.raises(ExportError, match="kv_dtype 'bf16' is not supported"):
        export(str(src), tmp_path / "a", kv_dtype="bf16")
    with pytest.raises(ExportError, match="no such folder"):
        export(str(tmp_path / "missing"), tmp_path / "a")
    other = _copy_ckpt(src, tmp_path / "bert")
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    with pytest.raises(ExportError, match="model_type 'bert' is not a MusicGen checkpoint"):
        export(str(other), tmp_path / "a")
    codec = _copy_ckpt(src, tmp_path / "dac")
    cfg["audio_encoder"]["model_type"] = "dac"
    (codec / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match="unsupported audio encoder 'dac'"):
        export(str(codec), tmp_path / "a")
    noweights = _copy_ckpt(src, tmp_path / "noweights")
    (noweights / "model.safetensors").unlink()
    with pytest.raises(ExportError, match="missing weight files"):
        export(str(noweights), tmp_path / "a")
    (noweights / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(ExportError, match="--allow-pickle"):
        export(str(noweights), tmp_path / "a")
    corrupt = _copy_ckpt(src, tmp_path / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\0" * 100)
    with pytest.raises(ExportError, match="cannot load weights"):
        export(str(corrupt), tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_no_disk_space_is_a_clear_error(checkpoint_dir, tmp_path, monkeypatch):
    import shutil as sh
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(sh, "disk_usage", lambda p: usage(10, 10, 1000))
    with pytest.raises(ExportError, match="not enough disk space"):
        export(str(checkpoint_dir("tiny-text")), tmp_path / "a")




def test_cli_export_errors_are_one_line_exit_2(checkpoint_dir, tmp_path, cli):
    r = cli("export", str(checkpoint_dir("tiny-text")), str(tmp_path / "x"), "--precision", "int3")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "precision 'int3'" in r.stderr and "Traceback" not in r.stderr
    r = cli("export", str(checkpoint_dir("tiny-text")), str(tmp_path / "x"), "--kv-dtype", "fp16")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "needs precision int8 or int4" in r.stderr
    r = cli("export", str(tmp_path / "nope"), str(tmp_path / "x"))
    assert r.returncode == 2 and "no such folder" in r.stderr


def test_cli_export_then_info(checkpoint_dir, tmp_path, cli):
    out = tmp_path / "m"
    r = cli("export", str(checkpoint_dir("tiny-melody-stereo")), str(out))
    assert r.returncode == 0, r.stderr
    for stage in ("loading", "exporting decoder", "validating decoder", "done"):
        assert stage in r.stderr
    r = cli("info", str(out))
    assert r.returncode == 0, r.stderr
    assert "melody, stereo" in r.stdout and "sha256 verified" in r.stdout and "decoder" in r.stdout


def test_info_refuses_broken_folders(exported, tmp_path, cli):
    folder = shutil.copytree(exported("tiny-text"), tmp_path / "m")
    data = (folder / "decoder.onnx").read_bytes()
    (folder / "decoder.onnx").write_bytes(data[: len(data) // 2])
    r = cli("info", str(folder))
    assert r.returncode == 2 and "truncated" in r.stderr
    (folder / "decoder.onnx").write_bytes(data[:-4] + b"abcd")
    r = cli("info", str(folder))
    assert r.returncode == 2 and "sha256 does not match" in r.stderr
    (folder / "decoder.onnx").unlink()
    r = cli("info", str(folder))
    assert r.returncode == 2 and "missing" in r.stderr
    r = cli("info", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_bundled_model_matches_what_the_exporter_builds(tmp_path):
    """Rebuild the committed tiny model with its script: manifest numbers and graph I/O must agree."""
    from musicgen_onnx.export.random_checkpoints import build_bundled as build

    fresh = load_manifest(build(tmp_path / "tiny", progress=lambda m: None))
    committed = load_manifest(BUNDLED)

    # the committed folder predates the decoder's step inputs (issue 26); it stays as the old folders' case
    step = {"past_length"} | set(roles.STEP_INPUTS)

    def shape_of(m):
        d = m.to_dict()
        d.pop("source")
        d.pop("step_inputs")
        for g in d["graphs"].values():
            g.pop("files")
            g.pop("size_bytes")
            g["inputs"] = [i for i in g["inputs"] if i not in step]
            g["roles"] = {k: v for k, v in g["roles"].items() if k not in step}
        return d

    assert (committed.step_inputs, fresh.step_inputs) == ("past_length", "positions")
    assert shape_of(fresh) == shape_of(committed)
    for name in committed.graphs:
        a = onnx.load(str(BUNDLED / f"{name}.onnx"), load_external_data=False)
        b = onnx.load(str(tmp_path / "tiny" / f"{name}.onnx"), load_external_data=False)
        assert [str(i.type) for i in a.graph.input if i.name not in step] == \
            [str(i.type) for i in b.graph.input if i.name not in step]
        assert [str(o.type) for o in a.graph.output] == [str(o.type) for o in b.graph.output]
    # same seed, same weights: the committed graphs compute what a fresh export computes
    import onnxruntime as ort

    feeds = {"audio_codes": np.arange(4 * 6, dtype=np.int64).reshape(1, 4, 6)}
    run = lambda p: ort.InferenceSession(str(p / "audio_decoder.onnx")).run(None, feeds)[0]
    np.testing.assert_allclose(run(BUNDLED), run(tmp_path / "tiny"), atol=1e-6)


def test_fp16_export_validates_and_is_recorded(checkpoint_dir, tmp_path):
    out = export(str(checkpoint_dir("tiny-text")), tmp_path / "fp16", precision="fp16")
    m = load_manifest(out)
    assert m.graphs["decoder"].precision == "fp16" and m.graphs["text_encoder"].precision == "fp16"
    assert m.graphs["audio_decoder"].precision == "fp32"  # the codec stays fp32
    # the KV cache lives in fp16 (half the memory, and in-place updates need no cast); logits stay fp32
    dec = onnx.load(str(out / "decoder.onnx"))
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in dec.graph.initializer)
    assert [o.type.tensor_type.elem_type for o in dec.graph.output if o.name == "logits"] == [onnx.TensorProto.FLOAT]
    ours = MusicGen.from_pretrained(out, providers="cpu")
    audio = ours.generate(["a fp16 test"], duration=0.3, greedy=True)
    assert audio.shape == (1, 1, 15 * 640) and np.isfinite(audio).all()
    assert {i.type.tensor_type.elem_type for i in dec.graph.input if i.name.startswith("past.")} == {onnx.TensorProto.FLOAT16}


def test_hub_id_resolves_through_the_local_cache(checkpoint_dir, tmp_path, monkeypatch):
    """An 'owner/name' id is looked up in the Hugging Face cache (offline here), exactly as on a user's machine."""
    from musicgen_onnx.export.sources import resolve

    cache = tmp_path / "hub"
    snap = cache / "models--facebook--musicgen-tiny" / "snapshots" / "0123abc"
    shutil.copytree(checkpoint_dir("tiny-text"), snap)
    (cache / "models--facebook--musicgen-tiny" / "refs").mkdir()
    (cache / "models--facebook--musicgen-tiny" / "refs" / "main").write_text("0123abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    ckpt = resolve("facebook/musicgen-tiny")
    assert ckpt.folder == snap and ckpt.revision == "0123abc" and ckpt.conditioning == "cross"
    with pytest.raises(ExportError, match="not in the Hugging Face cache"):
        resolve("facebook/not-there")


def test_external_weight_files_load_like_inline_graphs(checkpoint_dir, exported, tmp_path, monkeypatch):
    """Above EXTERNAL_DATA_THRESHOLD (64 MB: every full-size graph) weights live in NAME.onnx.data; the
    tiny model is forced over it here so the layout the real exports use is tested in CI."""
    from musicgen_onnx.export import tracing

    monkeypatch.setattr(tracing, "EXTERNAL_DATA_THRESHOLD", 0)
    out = export(str(checkpoint_dir("tiny-text")), tmp_path / "ext")
    m = load_manifest(out)
    for name, graph in m.graphs.items():
        assert sorted(graph.files) == [f"{name}.onnx", f"{name}.onnx.data"], name
    # most weight bytes moved beside the graphs (tensors under 1 KB stay inline, as onnx saves them)
    moved = sum((out / f"{name}.onnx.data").stat().st_size for name in m.graphs)
    inline = sum((exported("tiny-text") / f"{name}.onnx").stat().st_size for name in m.graphs)
    assert moved > inline / 2
    kw = dict(duration=0.3, greedy=True)
    ext = MusicGen.from_pretrained(out, providers="cpu").generate(["an external test"], **kw)
    inline = MusicGen.from_pretrained(exported("tiny-text"), providers="cpu").generate(["an external test"], **kw)
    np.testing.assert_array_equal(ext, inline)
    data = out / "decoder.onnx.data"
    data.write_bytes(data.read_bytes()[:-10])
    with pytest.raises(ModelFolderError, match="decoder.onnx.data"):
        MusicGen.from_pretrained(out, providers="cpu")


def test_validation_is_relative_to_each_outputs_scale(checkpoint_dir, tmp_path):
    """A checkpoint with larger activations than the fixtures (its text projection scaled x1000): an
    absolute bound fails on the cross-attention keys, the per-graph relative bound passes."""
    from safetensors.torch import load_file, save_file

    src = Path(shutil.copytree(checkpoint_dir("tiny-text"), tmp_path / "big"))
    weights = load_file(src / "model.safetensors")
    for key in [k for k in weights if k.startswith("enc_to_dec_proj.")]:
        weights[key] = weights[key] * 1000
    save_file(weights, src / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ExportError, match=r"graph text_encoder, output cross\.\d\.(key|value) .* > tolerance .*rtol 0 x"):
        export(str(src), tmp_path / "absolute", rtol=0)
    export(str(src), tmp_path / "relative")
    with pytest.raises(ExportError, match="rtol must be a finite number >= 0"):
        export(str(src), tmp_path / "x", rtol=-1)


def test_info_shows_the_kv_cache_dtype(exported, cli):
    r = cli("info", exported("tiny-text"))
    assert r.returncode == 0 and "static KV cache (fp32)" in r.stdout, r.stderr


def test_a_transformers_known_to_be_a_wrong_reference_is_refused(checkpoint_dir, monkeypatch):
    from musicgen_onnx.export import checkpoint as ckpt_mod

    for good in ("5.0.0", "5.16.0", "5.18.0", "5.24.0"):
        ckpt_mod.check_transformers("prefix", good)
    ckpt_mod.check_transformers("cross", "5.17.0")
    with pytest.raises(ExportError, match=r"transformers 5.17.0 gives other greedy tokens than the released model for "
                                          r"MusicGen-Melody checkpoints \(5.16.1 up to 5.18.0 do\); install transformers>=5.18.0"):
        ckpt_mod.check_transformers("prefix", "5.17.0")
    with pytest.raises(ExportError, match="5.16.1 gives other greedy tokens"):
        ckpt_mod.check_transformers("prefix", "5.16.1")
    with pytest.raises(ExportError, match="4.57.6 is too old .* text-only MusicGen"):
        ckpt_mod.check_transformers("cross", "4.57.6")
    monkeypatch.setattr(ckpt_mod, "_installed_transformers", lambda: "5.17.0")
    with pytest.raises(ExportError, match="install transformers>=5.18.0"):
        ckpt_mod.transformers_folder(str(checkpoint_dir("tiny-melody")))
    ckpt_mod.transformers_folder(str(checkpoint_dir("tiny-text")))  # text-only is fine on 5.17
