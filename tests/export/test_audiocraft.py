"""audiocraft checkpoints in: exported from audiocraft's own format, greedy tokens equal audiocraft's.

The fixture (tests/fixtures/audiocraft-tiny) was written by benchmarks/audiocraft_reference.py in an
environment with audiocraft 1.3.0: tiny random-weight models built by audiocraft's builders and saved in
its release format, a fine-tuned variant (three AdamW steps of audiocraft's own loss), the tiny T5 folder
audiocraft loaded, and the tokens audiocraft's ``MusicGen.generate`` / ``generate_with_chroma`` produced
greedily (cfg 3, melody stems off). audiocraft itself is not installed here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from musicgen_onnx.runtime.errors import ExportError

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "audiocraft-tiny"
T5 = FIXTURE / "t5"
TOKENS = json.loads((FIXTURE / "tokens.json").read_text())


def _melodies(seconds: float, seed: int, count: int) -> list[np.ndarray]:
    """benchmarks/audiocraft_reference.py ``melody_waves``: the melodies audiocraft was given."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        t = np.arange(int(seconds * 32000)) / 32000
        notes = rng.choice([220.0, 261.63, 329.63, 392.0, 440.0, 493.88], size=8)
        f = notes[np.minimum((t / seconds * 8).astype(int), 7)]
        out.append((0.5 * np.sin(2 * np.pi * f * t) + 0.01 * rng.standard_normal(t.shape)).astype(np.float32))
    return out


def audiocraft_folder(name: str, root: Path) -> Path:
    """A release folder as audiocraft writes it: the fixture's state_dict.bin and the shared codec."""
    folder = root / name
    if not folder.exists():
        folder.mkdir(parents=True)
        shutil.copyfile(FIXTURE / name / "state_dict.bin", folder / "state_dict.bin")
        shutil.copyfile(FIXTURE / "compression_state_dict.bin", folder / "compression_state_dict.bin")
    return folder


@pytest.fixture(scope="module")
def ac_exported(tmp_path_factory, build_cache):
    """``ac_exported(name, reference=None)`` -> the exported folder of a fixture model, built once
    (and kept across runs for the same exporter code and fixture files: conftest's build cache)."""
    from musicgen_onnx.export.exporter import export

    root = tmp_path_factory.mktemp("audiocraft")

    def get(name: str, reference: str | None = None) -> Path:
        def build(out: Path) -> None:
            # No graph validation: the converted folder is a transformers checkpoint, which test_export.py
            # validates; the tokens below are the stronger check (and keep this module under a minute).
            export(str(audiocraft_folder(name, root / "src")), out, text_encoder=str(T5), reference=reference,
                   validate_graphs=False)

        inputs = (FIXTURE / name, FIXTURE / "compression_state_dict.bin", T5)
        return build_cache.get(f"audiocraft-{name}-{reference}", build, inputs)

    return get


def _generate(folder: Path, record: dict, melody: bool) -> np.ndarray:
    from musicgen_onnx.runtime import MusicGen

    model = MusicGen.from_pretrained(folder, providers="cpu")
    kw = {}
    if melody:
        kw = dict(melody=_melodies(record["melody_seconds"], record["melody_seed"], len(record["prompts"])),
                  melody_sample_rate=32000)
    _, codes = model.generate(record["prompts"], duration=(record["frames"] + 0.5) / 50, greedy=True,
                              guidance_scale=record["cfg_coef"], return_codes=True, **kw)
    return codes


@pytest.mark.parametrize("case", ["tiny-text", "tiny-text-finetuned", "tiny-melody", "tiny-melody-no-melody"])
def test_greedy_tokens_equal_audiocraft(case, ac_exported):
    record = TOKENS[case]
    want = np.array(record["codes"])
    assert not np.array_equal(want[0], want[1]), "audiocraft's two prompts gave the same tokens"
    melody = record["melody_seconds"] is not None
    folder = ac_exported(case.removesuffix("-no-melody"))
    np.testing.assert_array_equal(_generate(folder, record, melody), want)


def test_codec_decodes_as_audiocraft_does(ac_exported):
    """The mapped EnCodec (audiocraft's own SEANet + RVQ, constant padding) decodes audiocraft's tokens to
    audiocraft's audio (``compression_model.decode``, written by the reference into the fixture)."""
    from musicgen_onnx.runtime import MusicGen

    want = np.load(FIXTURE / "tiny-text.audio.npy")
    model = MusicGen.from_pretrained(ac_exported("tiny-text"), providers="cpu")
    got = model.codec.decode(np.array(TOKENS["tiny-text"]["codes"]))
    assert got.shape == want.shape
    assert np.abs(want).max() > 0.05
    assert np.abs(got - want).max() < 1e-5  # measured 1.5e-7


def test_finetune_round_trip_follows_the_changed_weights(ac_exported):
    """The fine-tuned variant's export gives audiocraft's tokens on the *changed* model, not the base's."""
    base, tuned = np.array(TOKENS["tiny-text"]["codes"]), np.array(TOKENS["tiny-text-finetuned"]["codes"])
    assert (base != tuned).mean() > 0.3  # the fine-tune moved audiocraft's own output
    ours = _generate(ac_exported("tiny-text-finetuned"), TOKENS["tiny-text-finetuned"], melody=False)
    np.testing.assert_array_equal(ours, tuned)


def test_manifest_and_info_record_the_source(ac_exported, cli):
    from musicgen_onnx.runtime.manifest import load_manifest

    folder = ac_exported("tiny-text")
    m = load_manifest(folder)
    assert (m.source_format, m.reference) == ("audiocraft", "audiocraft")
    assert set(m.source["weights_sha256"]) == {"state_dict.bin", "compression_state_dict.bin"}
    assert m.defaults.guidance_scale == 3.0  # xp.cfg classifier_free_guidance.inference_coef
    out = cli("info", folder, "--no-hash")
    assert out.returncode == 0, out.stderr
    assert "(audiocraft format; follows audiocraft where" in out.stdout


def test_folders_without_the_new_fields_still_load(ac_exported):
    from musicgen_onnx.runtime.manifest import MANIFEST_NAME, Manifest, ModelFolderError

    data = json.loads((ac_exported("tiny-text") / MANIFEST_NAME).read_text())
    old = {k: v for k, v in data.items() if k not in ("source_format", "reference")}
    m = Manifest.from_dict(old)
    assert (m.source_format, m.reference) == ("transformers", "transformers")
    with pytest.raises(ModelFolderError, match="source_format must be one of"):
        Manifest.from_dict({**data, "source_format": "keras"})
    with pytest.raises(ModelFolderError, match="reference"):
        Manifest.from_dict({**data, "reference": True})


def test_transformers_on_the_same_weights(ac_exported, tmp_path):
    """The converted folder is a transformers checkpoint: transformers' greedy tokens on it equal this
    runtime's with ``reference="transformers"``. For batched text-only prompts of unequal length they differ
    from audiocraft's, in the padded prompt's row only: transformers masks the padded text positions in
    cross-attention, audiocraft attends to them (spec section 11, "text-only cross-attn padding")."""
    from musicgen_onnx.export import audiocraft, reference

    record = TOKENS["tiny-text"]
    converted = audiocraft.convert(audiocraft_folder("tiny-text", tmp_path), tmp_path / "hf", text_encoder=str(T5))
    model, tok = reference.load(converted)
    hf_codes, _ = reference.generate(model, tok, record["prompts"], record["frames"])
    ours = _generate(_with_reference(ac_exported("tiny-text"), "transformers", tmp_path), record, melody=False)
    np.testing.assert_array_equal(ours, hf_codes)
    ac_codes = np.array(record["codes"])
    lengths = [len(tok(p).input_ids) for p in record["prompts"]]
    longest = int(np.argmax(lengths))
    np.testing.assert_array_equal(hf_codes[longest], ac_codes[longest])  # no padding: the references agree
    assert not np.array_equal(hf_codes[1 - longest], ac_codes[1 - longest])


def _with_reference(folder: Path, name: str, tmp_path: Path) -> Path:
    """The same graphs with the manifest's ``reference`` switched (what ``export --reference`` records; the
    graphs do not depend on it, so this saves a second export)."""
    from musicgen_onnx.export.exporter import export
    from musicgen_onnx.runtime.manifest import MANIFEST_NAME

    with pytest.raises(ExportError, match="reference 'hf' is not supported"):
        export(str(FIXTURE / "tiny-text"), tmp_path / "x", reference="hf")
    copy = tmp_path / f"with-{name}"
    shutil.copytree(folder, copy)
    data = json.loads((copy / MANIFEST_NAME).read_text())
    assert data["reference"] != name
    (copy / MANIFEST_NAME).write_text(json.dumps({**data, "reference": name}))
    return copy


def test_transformers_melody_agrees_with_audiocraft(tmp_path):
    """Melody: no divergence left with stems off; transformers on the converted weights gives audiocraft's tokens."""
    from musicgen_onnx.export import audiocraft, reference

    record = TOKENS["tiny-melody"]
    converted = audiocraft.convert(audiocraft_folder("tiny-melody", tmp_path), tmp_path / "hf", text_encoder=str(T5))
    model, tok = reference.load(converted)
    feats = reference.chroma_features(_melodies(record["melody_seconds"], record["melody_seed"], 2))
    codes, _ = reference.generate(model, tok, record["prompts"], record["frames"], input_features=feats)
    np.testing.assert_array_equal(codes, np.array(record["codes"]))


def _solver_checkpoint(tmp_path: Path) -> Path:
    """A solver ``checkpoint.th`` as audiocraft's export_lm reads it (benchmarks/audiocraft_reference.py
    ``save_solver_checkpoint``): weights under best_state['model'], xp.cfg a pickled omegaconf DictConfig."""
    import torch
    from omegaconf import OmegaConf

    pkg = torch.load(FIXTURE / "tiny-text" / "state_dict.bin", weights_only=True)
    folder = tmp_path / "xp"
    folder.mkdir()
    torch.save({"best_state": {"model": pkg["best_state"]}, "fsdp_best_state": {}, "model": pkg["best_state"],
                "xp.cfg": OmegaConf.create(pkg["xp.cfg"]), "version": pkg["version"]}, folder / "checkpoint.th")
    shutil.copyfile(FIXTURE / "compression_state_dict.bin", folder / "compression_state_dict.bin")
    return folder / "checkpoint.th"


def test_solver_checkpoint_needs_allow_pickle(tmp_path):
    from safetensors.torch import load_file

    from musicgen_onnx.export import audiocraft

    solver = _solver_checkpoint(tmp_path)
    with pytest.raises(ExportError, match="--allow-pickle") as err:
        audiocraft.convert(solver, tmp_path / "a", text_encoder=str(T5))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "a").exists()
    from_solver = audiocraft.convert(solver, tmp_path / "b", text_encoder=str(T5), allow_pickle=True)
    from_release = audiocraft.convert(audiocraft_folder("tiny-text", tmp_path), tmp_path / "c", text_encoder=str(T5))
    got, want = load_file(from_solver / "model.safetensors"), load_file(from_release / "model.safetensors")
    assert got.keys() == want.keys()
    for key in want:
        assert np.array_equal(got[key].numpy(), want[key].numpy()), key


def _edited(tmp_path: Path, edit) -> Path:
    import torch

    folder = audiocraft_folder("tiny-text", tmp_path / "edit")
    pkg = torch.load(folder / "state_dict.bin", weights_only=True)
    edit(pkg)
    torch.save(pkg, folder / "state_dict.bin")
    return folder


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["best_state"].__setitem__("transformer.layers.0.self_attn.in_proj_bias", p["best_state"]["out_norm.bias"]),
     "'transformer.layers.0.self_attn.in_proj_bias'"),
    (lambda p: p["best_state"].pop("linears.3.weight"), "'decoder.lm_heads.3.weight'"),
    (lambda p: p["best_state"].__setitem__("linears.0.weight", p["best_state"]["linears.0.weight"][:7]),
     "'decoder.lm_heads.0.weight' has shape"),
    (lambda p: p.__setitem__("xp.cfg", p["xp.cfg"].replace("delays:\n    - 0\n    - 1", "delays:\n    - 0\n    - 0")),
     "codebooks_pattern.delay.delays"),
    (lambda p: p.__setitem__("xp.cfg", p["xp.cfg"].replace("positional_embedding: sin", "positional_embedding: rope")),
     "transformer_lm.positional_embedding = 'rope'"),
    (lambda p: p.pop("best_state"), "no best_state"),
])
def test_bad_checkpoints_are_one_line_errors(edit, message, tmp_path):
    from musicgen_onnx.export import audiocraft

    folder = _edited(tmp_path, edit)
    with pytest.raises(ExportError, match=message.replace("(", r"\(").replace("[", r"\[")) as err:
        audiocraft.convert(folder, tmp_path / "out", text_encoder=str(T5))
    assert "\n" not in str(err.value)


def test_missing_parts_are_named(tmp_path, cli):
    folder = audiocraft_folder("tiny-text", tmp_path)
    out = cli("export", folder, tmp_path / "out")  # no --text-encoder
    assert out.returncode != 0
    assert "--text-encoder" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    (folder / "compression_state_dict.bin").unlink()
    from musicgen_onnx.export import audiocraft

    with pytest.raises(ExportError, match="missing compression_state_dict.bin"):
        audiocraft.convert(folder, tmp_path / "o2", text_encoder=str(T5))
    with pytest.raises(ExportError, match="d_model"):
        audiocraft.convert(audiocraft_folder("tiny-melody", tmp_path), tmp_path / "o3",
                           text_encoder=str(_other_t5(tmp_path)))
    assert not (tmp_path / "out").exists()


def _other_t5(tmp_path: Path) -> Path:
    folder = tmp_path / "t5-wrong"
    shutil.copytree(T5, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["d_model"] = 32
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_a_named_codec_comes_from_codec_folder(checkpoint_dir, tmp_path):
    """compression_state_dict.bin that only names the codec (audiocraft downloads it): --codec supplies it."""
    import torch
    from safetensors.torch import load_file

    from musicgen_onnx.export import audiocraft

    folder = audiocraft_folder("tiny-text", tmp_path)
    torch.save({"pretrained": "facebook/encodec_32khz", "exported": True, "version": "1.3.0"},
               folder / "compression_state_dict.bin")
    with pytest.raises(ExportError, match="--codec"):
        audiocraft.convert(folder, tmp_path / "a", text_encoder=str(T5))
    source = checkpoint_dir("tiny-text")  # a transformers MusicGen folder: its audio_encoder is taken
    out = audiocraft.convert(folder, tmp_path / "b", text_encoder=str(T5), codec=str(source))
    got, want = load_file(out / "model.safetensors"), load_file(source / "model.safetensors")
    codec_keys = [k for k in want if k.startswith("audio_encoder.")]
    assert codec_keys and all(torch.equal(got[k], want[k]) for k in codec_keys)


def _alias_bomb() -> str:
    """A billion-laughs document under 1 KB: nine levels of nine aliases, the last one as the dim."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("edit, message", [
    (lambda cfg: cfg.replace("transformer_lm:\n  dim: 16", "transformer_lm:\n  dim: ${transformer_lm.dim}"),
     "interpolates in a cycle"),
    (lambda cfg: "[" * 100000, "nested deeper than 64 levels"),
    (lambda cfg: "a: " + "{b: " * 200 + "1" + "}" * 200 + "\n", "nested deeper than 64 levels"),
    (lambda cfg: _alias_bomb() + cfg.replace("transformer_lm:\n  dim: 16", "transformer_lm:\n  dim: *l8"),
     "values once its aliases are expanded"),
    (lambda cfg: "a: &a [*a]\n" + cfg, "an alias repeats a node that contains it"),
    (lambda cfg: cfg + "#" * (2 << 20), "at most 1048576 are read"),
])
def test_hostile_xp_cfg_is_one_line_quickly_in_bounded_memory(edit, message, tmp_path):
    """Issue 24 item 16: a self-reference, deep nesting and an alias bomb ended in RecursionError
    tracebacks or 4.9 GB and 75 s before a MemoryError."""
    import time
    import tracemalloc

    from musicgen_onnx.export import audiocraft

    folder = _edited(tmp_path, lambda p: p.__setitem__("xp.cfg", edit(p["xp.cfg"])))
    # what convert imports, imported before tracing starts (under tracemalloc it takes most of a minute)
    from transformers import GenerationConfig, MusicgenConfig, MusicgenMelodyConfig  # noqa: F401
    from transformers.models.musicgen.configuration_musicgen import MusicgenDecoderConfig  # noqa: F401
    from transformers.models.musicgen_melody.configuration_musicgen_melody import MusicgenMelodyDecoderConfig  # noqa: F401

    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ExportError, match=message) as err:
            audiocraft.convert(folder, tmp_path / "out", text_encoder=str(T5))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(err.value) and len(str(err.value)) < 400
    assert time.perf_counter() - t0 < 30 and peak < 64 << 20, (time.perf_counter() - t0, peak)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("part", ["text_encoder", "codec"])
def test_a_pickled_callable_in_a_parts_folder_is_one_line(part, checkpoint_dir, tmp_path):
    """Issue 24 item 17: pytorch_model.bin holding a pickled callable (torch refuses it: no code runs)
    gave an UnpicklingError traceback; it gets the line state_dict.bin gets."""
    import torch

    from musicgen_onnx.export import audiocraft

    folder = audiocraft_folder("tiny-text", tmp_path)
    parts = {"text_encoder": str(T5)}
    if part == "codec":
        torch.save({"pretrained": "facebook/encodec_32khz", "exported": True, "version": "1.3.0"},
                   folder / "compression_state_dict.bin")
        source = checkpoint_dir("tiny-text")
    else:
        source = T5
    hostile = tmp_path / f"hostile-{part}"
    hostile.mkdir()
    shutil.copyfile(source / "config.json", hostile / "config.json")
    if part == "text_encoder":
        shutil.copyfile(T5 / "spiece.model", hostile / "spiece.model")
    torch.save({"shared.weight": torch.zeros(2, 2), "hook": print}, hostile / "pytorch_model.bin")
    parts[part] = str(hostile)
    with pytest.raises(ExportError, match=r"pytorch_model\.bin' holds pickled objects .* --allow-pickle") as err:
        audiocraft.convert(folder, tmp_path / "out", **parts)
    assert "\n" not in str(err.value)
