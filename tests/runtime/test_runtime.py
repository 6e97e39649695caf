"""The runtime on its own: seeds, no torch, the audiocraft API, the CLI, and every bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from importlib import metadata

import numpy as np
import pytest
import soundfile as sf

from musicgen_onnx.runtime import InvalidInputError, ModelFolderError, MusicGen
from musicgen_onnx.runtime.manifest import MANIFEST_NAME

from helpers import BUNDLED


def test_same_seed_same_tokens_other_seed_other_tokens(model):
    kw = dict(duration=0.5, top_k=50, return_codes=True)
    _, a = model.generate(["happy rock", "sad jazz"], seed=7, **kw)
    _, b = model.generate(["happy rock", "sad jazz"], seed=7, **kw)
    _, c = model.generate(["happy rock", "sad jazz"], seed=8, **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sampling_options_change_the_draws(model):
    kw = dict(duration=0.5, seed=3, return_codes=True)
    _, k = model.generate(["techno"], top_k=5, **kw)
    _, p = model.generate(["techno"], top_p=0.5, **kw)
    _, t = model.generate(["techno"], top_k=5, temperature=0.3, **kw)
    assert not np.array_equal(k, p) and not np.array_equal(k, t)


def test_low_memory_gives_the_same_audio_without_a_resident_text_encoder(model, tmp_path, cli):
    lean = MusicGen.from_pretrained(BUNDLED, providers="cpu", low_memory=True)
    assert not lean.graphs.is_open("text_encoder")
    kw = dict(duration=0.3, seed=5, melody=np.sin(np.arange(32000) * 0.05)[None], melody_sample_rate=32000)
    np.testing.assert_array_equal(lean.generate(["happy rock"], **kw), model.generate(["happy rock"], **kw))
    assert not lean.graphs.is_open("text_encoder")  # loaded for the call, released after
    r = cli("generate", "techno", "--duration", "0.2", "--low-memory", "--quiet", "-o", tmp_path / "x.wav")
    assert r.returncode == 0 and sf.info(str(tmp_path / "x.wav")).frames == 6400, r.stderr


def test_generate_shapes_and_progress(model):
    seen = []
    audio = model.generate(["a", "b", "c"], duration=0.3, progress=lambda d, t: seen.append((d, t)))
    assert audio.shape == (3, 1, 15 * 640) and audio.dtype == np.float32
    assert seen[-1] == (18, 18) and len(seen) == 18  # T + 3 forward passes


def test_runtime_generates_with_torch_unimportable(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers", "tokenizers"):
                    raise ImportError("blocked: " + name)
                if name.startswith("musicgen_onnx.export"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        from musicgen_onnx.cli import main
        try:
            main(["generate", "a test", "--duration", "0.5", "-o", r"{tmp_path / 'x.wav'}", "--quiet",
                  "--melody", r"{tmp_path / 'm.wav'}"])
        except SystemExit as e:
            assert e.code in (0, None), e.code
        assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "tokenizers")]
        print("OK")
    """)
    sf.write(tmp_path / "m.wav", 0.3 * np.sin(np.arange(48000) * 0.05), 48000)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr
    assert sf.info(str(tmp_path / "x.wav")).frames == 16000


def test_runtime_install_pulls_neither_torch_nor_transformers():
    runtime_reqs = [r for r in metadata.requires("musicgen-onnx") if "extra ==" not in r]
    names = {r.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower() for r in runtime_reqs}
    assert names == {"numpy", "onnxruntime", "soundfile", "soxr", "click"}


def test_runtime_sources_never_import_torch_or_export():
    import ast
    from pathlib import Path

    import musicgen_onnx.runtime as rt

    for path in Path(rt.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [("." * node.level) + (node.module or "")]
            else:
                continue
            for mod in mods:
                assert mod.split(".")[0] not in ("torch", "transformers", "tokenizers"), f"{path.name} imports {mod}"
                assert not mod.startswith(("..export", "musicgen_onnx.export")), f"{path.name} imports {mod}"


# ---------------------------------------------------------------- bad input, API
@pytest.mark.parametrize("kwargs, message", [
    (dict(descriptions=[]), "non-empty list of prompts"),
    (dict(duration=0), "duration must be between"),
    (dict(duration=-1), "duration must be between"),
    (dict(duration=3601), "duration must be between"),
    (dict(duration=40, extend_stride=30), "extend_stride must be"),
    (dict(duration=float("nan")), "duration must be a finite number"),
    (dict(top_k=0), r"top_k must be an integer in \[1, 2048\]"),
    (dict(top_k=2049), r"top_k must be an integer in \[1, 2048\]"),
    (dict(top_p=-0.1), r"top_p must be in \[0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \[0, 1\]"),
    (dict(temperature=0), "temperature must be > 0 when sampling"),
    (dict(guidance_scale=-1), "guidance_scale must be >= 0"),
    (dict(melody=[np.ones(32000)] * 2, melody_sample_rate=32000), "2 melodies for 1 prompts"),
    (dict(melody=np.full(32000, np.nan), melody_sample_rate=32000), "NaN or infinite"),
    (dict(melody=np.full(32000, np.inf), melody_sample_rate=32000), "NaN or infinite"),
    (dict(melody=np.zeros(32000), melody_sample_rate=32000), "is silent"),
    (dict(melody=np.ones(32000)), "needs melody_sample_rate"),
    (dict(melody=np.ones(32000), melody_sample_rate=12), "sample rate must be an integer"),
    (dict(melody=np.ones((2, 2, 2, 2)), melody_sample_rate=32000), "expected a file path"),
])
def test_bad_generate_arguments(model, kwargs, message):
    kwargs = {"descriptions": ["x"], "duration": 0.2, **kwargs}
    with pytest.raises(InvalidInputError, match=message) as err:
        model.generate(**kwargs)
    assert "\n" not in str(err.value)


def test_temperature_zero_is_fine_when_greedy(model):
    model.generate(["x"], duration=0.2, temperature=0, greedy=True)


def test_melody_on_text_only_model_is_refused(exported):
    m = MusicGen.from_pretrained(exported("tiny-text"), providers="cpu")
    with pytest.raises(InvalidInputError, match="text-only"):
        m.generate(["x"], duration=0.2, melody=np.ones(32000), melody_sample_rate=32000)


def test_bad_model_folders(tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        MusicGen.from_pretrained(tmp_path / "none")
    folder = shutil.copytree(BUNDLED, tmp_path / "m")
    (folder / "text_encoder.onnx").unlink()
    with pytest.raises(ModelFolderError, match="missing"):
        MusicGen.from_pretrained(folder)
    folder = shutil.copytree(BUNDLED, tmp_path / "v")
    data = json.loads((folder / MANIFEST_NAME).read_text())
    data["format_version"] = 99
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match="format version 99"):
        MusicGen.from_pretrained(folder)
    with pytest.raises(InvalidInputError, match="provider 'tpu' is unknown"):
        MusicGen.from_pretrained(BUNDLED, providers="tpu")


# ---------------------------------------------------------------- bad input, CLI
def _files(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 4)
    (tmp_path / "notes.xyz").write_text("this is not audio")
    (tmp_path / "adir").mkdir()
    sf.write(tmp_path / "nan.wav", np.full(32000, np.nan, dtype=np.float32), 32000, subtype="FLOAT")
    sf.write(tmp_path / "ok.wav", 0.3 * np.sin(np.arange(32000) * 0.05), 32000)
    sf.write(tmp_path / "silent.wav", np.zeros(32000), 32000)
    (tmp_path / "afile").write_text("x")
    folder = shutil.copytree(BUNDLED, tmp_path / "model_nograph")
    (folder / "decoder.onnx").unlink()
    folder = shutil.copytree(BUNDLED, tmp_path / "model_v2")
    data = json.loads((folder / MANIFEST_NAME).read_text())
    data["format_version"] = 3
    (folder / MANIFEST_NAME).write_text(json.dumps(data))


CLI_CASES = [
    (["--melody", "{d}/missing.wav"], "melody file '{d}/missing.wav' does not exist"),
    (["--melody", "{d}/empty.wav"], "is empty"),
    (["--melody", "{d}/corrupt.wav"], "cannot be read as audio"),
    (["--melody", "{d}/notes.xyz"], "cannot be read as audio"),
    (["--melody", "{d}/adir"], "is a directory"),
    (["--melody", "{d}/nan.wav"], "NaN or infinite"),
    (["--melody", "{d}/ok.wav", "--melody", "{d}/ok.wav", "--melody", "{d}/ok.wav"], "3 melodies for 1 prompts"),
    (["--duration", "0"], "duration must be between"),
    (["--duration", "4000"], "duration must be between"),
    (["--top-k", "0"], "top_k must be an integer"),
    (["--top-k", "4096"], "top_k must be an integer"),
    (["--top-p", "2"], "top_p must be in [0, 1]"),
    (["--temperature", "-1"], "temperature must be > 0"),
    (["--guidance", "-0.5"], "guidance_scale must be >= 0"),
    (["-o", "{d}/afile/out.wav"], "does not exist"),
    (["-o", "{d}/nofolder/out.wav"], "does not exist"),
    (["-o", "{d}/out.aiff2"], "unknown format"),
    (["--model", "{d}/model_nograph"], "decoder.onnx"),
    (["--model", "{d}/model_v2"], "format version 3"),
    (["--model", "{d}/nothing"], "does not exist"),
    (["--provider", "tpu"], "provider 'tpu' is unknown"),
    (["--provider", "cuda"], "provider 'cuda' is not available here"),
    (["--melody", "{d}/silent.wav"], "is silent"),
    (["--duration", "nan"], "duration must be a finite number"),
    (["--temperature", "0"], "temperature must be > 0"),
    (["--top-p", "-0.5"], "top_p must be in [0, 1]"),
    (["--duration", "60", "--extend-stride", "40"], "extend_stride must be"),
    (["--continue", "{d}/missing.wav", "--duration", "5"], "prompt file '{d}/missing.wav' does not exist"),
    (["--continue", "{d}/adir", "--duration", "5"], "is a directory"),
    (["--continue", "{d}/ok.wav", "--melody", "{d}/ok.wav"], "cannot be combined"),
    (["--out-dir", "{d}/o", "-o", "{d}/x.wav"], "either --output or --out-dir"),
    (["-o", "{d}/adir"], "is a directory"),
]


@pytest.mark.parametrize("args, message", CLI_CASES, ids=[" ".join(a).replace("{d}/", "") for a, _ in CLI_CASES])
def test_cli_bad_input_one_line_exit_2_no_output(args, message, tmp_path, cli):
    _files(tmp_path)
    args = [a.format(d=tmp_path) for a in args]
    out = ["-o", str(tmp_path / "result.wav")] if "-o" not in args else []
    r = cli("generate", "a prompt", "--duration", "0.3", "--quiet", *out, *args)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if not line.startswith("using the bundled")]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert message.format(d=tmp_path) in lines[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "result.wav").exists()
    assert not list(tmp_path.glob(".*.partial"))


def test_cli_generate_writes_files(tmp_path, cli):
    r = cli("generate", "happy rock", "sad jazz", "--duration", "1", "--out-dir", tmp_path / "o", "--seed", "1",
            "--normalize", "peak")
    assert r.returncode == 0, r.stderr
    files = sorted((tmp_path / "o").glob("*.wav"))
    assert [f.name for f in files] == ["00_happy_rock.wav", "01_sad_jazz.wav"]
    data, sr = sf.read(str(files[0]))
    assert sr == 32000 and len(data) == 32000
    assert np.max(np.abs(data)) == pytest.approx(10 ** (-1 / 20), abs=1e-3)
    assert "random weights" in r.stderr and "steps/s" in r.stderr


def test_failed_write_keeps_the_existing_file(tmp_path, monkeypatch):
    from musicgen_onnx.runtime import audio as audio_mod

    target = tmp_path / "keep.wav"
    target.write_bytes(b"precious")

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sf, "write", full_disk)
    with pytest.raises(InvalidInputError, match="No space left on device"):
        audio_mod.write_audio(target, np.zeros((1, 100), np.float32), 32000)
    assert target.read_bytes() == b"precious"
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("suffix, subtype", [(".flac", "PCM_16"), (".ogg", "VORBIS"), (".mp3", "MPEG_LAYER_III"),
                                             (".wav", "FLOAT")])
def test_melody_files_of_every_readable_format(model, tmp_path, suffix, subtype):
    sr = 44100
    t = np.arange(sr * 2) / sr
    path = tmp_path / f"m{suffix}"
    sf.write(str(path), np.stack([np.sin(2 * np.pi * 440 * t)] * 2, 1) * 0.3, sr, subtype=subtype)
    from musicgen_onnx.runtime.audio import load_audio

    wav, rate = load_audio(path)
    assert rate == sr and wav.shape[0] == 2
    audio = model.generate(["x"], melody=str(path), duration=0.2)
    assert audio.shape == (1, 1, 6400)


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg", ".mp3"])
def test_output_formats(tmp_path, suffix):
    from musicgen_onnx.runtime.audio import write_audio

    wav = (0.3 * np.sin(np.arange(32000) * 0.05))[None].astype(np.float32)
    path = write_audio(tmp_path / f"out{suffix}", wav, 32000)
    info = sf.info(str(path))
    assert info.samplerate == 32000 and abs(info.frames - 32000) < 2000  # lossy codecs pad
