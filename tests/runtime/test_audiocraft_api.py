"""audiocraft's ``MusicGen`` API on the runtime: its documented examples run with only the import changed.

docs/MUSICGEN.md's example and the calls of audiocraft's demo notebook / gradio app (return_tokens,
generate_audio, set_custom_progress_callback, model.device, keyword arguments), with numpy arrays
where audiocraft code has torchaudio tensors; one test passes real torch tensors (marked export).
"""

from __future__ import annotations

import io
import math
import textwrap

import numpy as np
import pytest
import soundfile as sf

from musicgen_onnx.runtime import InvalidInputError, MusicGen, audio_write
from musicgen_onnx.runtime.generation import StderrProgress

# docs/MUSICGEN.md (audiocraft 1.3.0), "API": the example as written there
MUSICGEN_MD = textwrap.dedent("""
    import torchaudio
    from audiocraft.models import MusicGen
    from audiocraft.data.audio import audio_write

    model = MusicGen.get_pretrained('facebook/musicgen-melody')
    model.set_generation_params(duration=8)  # generate 8 seconds.
    wav = model.generate_unconditional(4)    # generates 4 unconditional audio samples
    descriptions = ['happy rock', 'energetic EDM', 'sad jazz']
    wav = model.generate(descriptions)  # generates 3 samples.

    melody, sr = torchaudio.load('./assets/bach.mp3')
    # generates using the melody from the given audio and the provided descriptions.
    wav = model.generate_with_chroma(descriptions, melody[None].expand(3, -1, -1), sr)

    for idx, one_wav in enumerate(wav):
        # Will save under {idx}.wav, with loudness normalization at -14 db LUFS.
        audio_write(f'{idx}', one_wav.cpu(), model.sample_rate, strategy="loudness", loudness_compressor=True)
""")
IMPORTS = {  # the only lines a user changes
    "import torchaudio\n": "",
    "from audiocraft.models import MusicGen\n": "from musicgen_onnx import MusicGen\n",
    "from audiocraft.data.audio import audio_write\n": "from musicgen_onnx import audio_write\n",
    "'facebook/musicgen-melody'": "'tiny-melody'",  # the bundled model: no download, no export
    "set_generation_params(duration=8)": "set_generation_params(duration=1)",  # test time
}


def _ported(code: str, **more: str) -> str:
    for old, new in {**IMPORTS, **more}.items():
        assert old in code, old
        code = code.replace(old, new)
    return code


def _bach(folder) -> None:
    sr = 44100
    t = np.arange(sr * 3) / sr
    (folder / "assets").mkdir()
    sf.write(folder / "assets" / "bach.wav", np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 330 * t)], 1) * 0.3, sr)


def _numpy_load(path):
    """torchaudio.load's contract ([channels, samples], rate) with soundfile: numpy in place of torch."""
    data, sr = sf.read(str(path).replace(".mp3", ".wav"), dtype="float32", always_2d=True)
    return data.T, sr


def test_musicgen_md_example_runs_with_numpy_arrays(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _bach(tmp_path)
    code = _ported(MUSICGEN_MD, **{"torchaudio.load(": "load(",
                                   # numpy's spelling of torch's expand (the only torch call on the melody)
                                   "melody[None].expand(3, -1, -1)": "np.broadcast_to(melody[None], (3, *melody.shape))"})
    scope = {"load": _numpy_load, "np": np}
    exec(code, scope)
    assert scope["model"].duration == 1
    assert [p.name for p in sorted(tmp_path.glob("?.wav"))] == ["0.wav", "1.wav", "2.wav"]
    assert sf.info(str(tmp_path / "0.wav")).frames == 32000
    assert scope["wav"].shape == (3, 1, 32000)


@pytest.mark.export  # needs torch: real tensors, as torchaudio.load returns them
def test_musicgen_md_example_runs_with_torch_tensors(tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    _bach(tmp_path)
    scope = {"load": lambda path: tuple((torch.from_numpy(a) if isinstance(a, np.ndarray) else a)
                                        for a in _numpy_load(path))}
    exec(_ported(MUSICGEN_MD, **{"torchaudio.load(": "load("}), scope)
    assert sorted(p.name for p in tmp_path.glob("?.wav")) == ["0.wav", "1.wav", "2.wav"]
    model, melody, sr = scope["model"], scope["melody"], scope["sr"]
    assert isinstance(melody, torch.Tensor)
    # a tensor melody gives what the same numbers as an array give
    kw = dict(duration=0.5, seed=1)
    np.testing.assert_array_equal(model.generate(["x"], melody=melody, melody_sample_rate=sr, **kw),
                                  model.generate(["x"], melody=melody.numpy(), melody_sample_rate=sr, **kw))
    # the demo notebook's continuation prompt, a tensor [B, C, T]
    t = torch.arange(int(0.5 * 32000), dtype=torch.float) / 32000
    prompt = torch.cos(2 * math.pi * 440 * t)[None][None].expand(2, -1, -1)
    model.set_generation_params(duration=1)
    assert model.generate_continuation(prompt, 32000, ["jazz", "EDM"], progress=False).shape == (2, 1, 32000)
    with pytest.raises(InvalidInputError, match=r"melody: numpy cannot read this Tensor .* x.detach\(\).cpu\(\)"):
        model.generate(["x"], melody=melody.requires_grad_(), melody_sample_rate=sr)


@pytest.fixture(scope="module")
def model():
    m = MusicGen.get_pretrained("tiny-melody", device="cpu")
    m.set_generation_params(duration=0.5)
    return m


def test_demo_notebook_calls(model, tmp_path):
    """audiocraft's demo notebook and gradio app, call for call, with numpy in place of torch."""
    assert model.device == "cpu" and model.name == "tiny-melody"
    assert (model.sample_rate, model.audio_channels, model.frame_rate, model.max_duration) == (32000, 1, 50, 30)
    model.set_generation_params(use_sampling=True, top_k=250, duration=0.5)
    assert model.generation_params == {"use_sampling": True, "temp": 1.0, "top_k": 250, "top_p": 0.0,
                                       "cfg_coef": 3.0, "two_step_cfg": False}
    output = model.generate(descriptions=["80s pop track", "90s rock song"], progress=True, return_tokens=True)
    wav, tokens = output
    assert wav.shape == (2, 1, 16000) and tokens.shape == (2, 4, 25) and tokens.dtype == np.int64
    np.testing.assert_array_equal(model.generate_audio(tokens), wav)  # tokens decode to the same audio
    assert wav.cpu().detach().numpy().__class__ is np.ndarray and wav.dim() == 3

    seen = []
    model.set_custom_progress_callback(lambda generated, to_generate: seen.append((generated, to_generate)))
    t = np.arange(int(0.25 * 32000)) / 32000
    bip = np.cos(2 * np.pi * 440 * t)[None].astype(np.float32)
    res = model.generate_continuation(np.broadcast_to(bip[None], (2, 1, bip.shape[-1])), 32000,
                                      ["Jazz jazz and only jazz", "Heartful EDM"], progress=True)
    assert res.shape == (2, 1, 16000) and seen[-1][0] == seen[-1][1] and len(seen) == seen[-1][1]
    count = len(seen)
    model.generate(["quiet"], progress=False)  # audiocraft reports only when progress is asked for
    assert len(seen) == count
    melody = np.broadcast_to(bip[None], (2, 1, bip.shape[-1]))
    wav, tokens = model.generate_with_chroma(descriptions=["a", "b"], melody_wavs=melody, melody_sample_rate=32000,
                                             progress=True, return_tokens=True)
    assert wav.shape == (2, 1, 16000) and len(seen) > count
    assert model.generate_unconditional(2, return_tokens=True)[1].shape == (2, 4, 25)
    model.set_custom_progress_callback(None)
    # audiocraft's positional form: generate(descriptions, progress, return_tokens)
    wav, tokens = model.generate(["x"], False, True)
    assert tokens.shape == (1, 4, 25)
    assert model.generate(["x"], return_codes=True)[1].shape == (1, 4, 25)  # the old name still works


def test_api_refusals_are_one_line(model):
    with pytest.raises(InvalidInputError, match=r"gen_tokens: expected integer codes \[B, 4, T\], got \[4, 25\]"):
        model.generate_audio(np.zeros((4, 25), dtype=np.int64))
    with pytest.raises(InvalidInputError, match=r"gen_tokens: codes must lie in \[0, "):
        model.generate_audio(np.full((1, 4, 5), 99999))
    with pytest.raises(InvalidInputError, match="progress_callback must be callable"):
        model.set_custom_progress_callback(3)
    with pytest.raises(InvalidInputError, match="cfg_coef_beta"):
        model.set_generation_params(cfg_coef_beta=2.0)


def test_audio_write_takes_audiocrafts_arguments(tmp_path):
    sr = 32000
    wav = (0.1 * np.sin(np.arange(sr) * 0.05))[None].astype(np.float32)
    for fmt in ("wav", "mp3", "ogg", "flac"):
        path = audio_write(tmp_path / "a" / "b" / fmt, wav, sr, format=fmt)  # make_parent_dir
        assert path == tmp_path / "a" / "b" / f"{fmt}.{fmt}" and sf.info(str(path)).samplerate == sr
    small = audio_write(tmp_path / "r64", wav, sr, format="mp3", mp3_rate=64).stat().st_size
    large = audio_write(tmp_path / "r320", wav, sr, format="mp3").stat().st_size
    assert 3.5 < large / small < 6  # 320 vs 64 kbps
    # normalize=False: 'peak' only scales down what would clip (audiocraft's normalize_audio)
    quiet, _ = sf.read(str(audio_write(tmp_path / "q", wav, sr, normalize=False)))
    assert abs(np.abs(quiet).max() - 0.1) < 1e-3
    peak, _ = sf.read(str(audio_write(tmp_path / "p", wav, sr)))
    assert abs(np.abs(peak).max() - 10 ** (-1 / 20)) < 1e-3
    clip, _ = sf.read(str(audio_write(tmp_path / "c", wav * 20, sr, strategy="clip", peak_clip_headroom_db=6)))
    assert abs(np.abs(clip).max() - 10 ** (-6 / 20)) < 1e-3
    rms, _ = sf.read(str(audio_write(tmp_path / "s", wav, sr, strategy="rms", rms_headroom_db=20)))
    assert abs(np.sqrt(np.mean(rms ** 2)) - 0.1) < 1e-3
    bare = audio_write(tmp_path / "nosuffix", wav, sr, format="flac", add_suffix=False)
    assert bare.name == "nosuffix" and sf.info(str(bare)).format == "FLAC"


@pytest.mark.parametrize("kwargs, message", [
    (dict(format="aac"), "format 'aac' is not one of wav, mp3, ogg, flac"),
    (dict(format="ogg", ogg_rate=128), "ogg_rate needs audiocraft's ffmpeg encoder"),
    (dict(format="mp3", mp3_rate=500), r"mp3_rate must be a bitrate in \(32, 320\] kbps at 32000 Hz, got 500"),
    (dict(strategy="loud"), "strategy 'loud' is not one of 'peak', 'clip', 'rms', 'loudness', 'none', ''"),
    (dict(strategy="loudness", loudness_headroom_db=float("nan")), "loudness_headroom_db must be a finite number"),
    (dict(strategy="rms", rms_headroom_db=float("-inf")), "rms_headroom_db must be a finite number"),
    (dict(peak_clip_headroom_db="1"), "peak_clip_headroom_db must be a finite number of dB, got '1'"),
])
def test_audio_write_refusals_name_what_is_allowed(tmp_path, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        audio_write(tmp_path / "x", np.zeros((1, 100), dtype=np.float32), 32000, **kwargs)
    assert list(tmp_path.iterdir()) == []


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stream, carriage", [(io.StringIO, False), (_Terminal, True)])
def test_progress_is_plain_lines_unless_stderr_is_a_terminal(monkeypatch, stream, carriage):
    err = stream()
    monkeypatch.setattr("sys.stderr", err)
    report = StderrProgress("separating", "segments", interval=0, log_interval=0)
    for done in range(1, 4):
        report(done, 3)
    text = err.getvalue()
    assert ("\r" in text) is carriage and text.count("\n") == (1 if carriage else 3)
    assert text.rstrip("\n").split("\r" if carriage else "\n")[-1].startswith("separating: 3/3 segments")


def test_cli_progress_in_a_log_is_one_line_per_report(tmp_path):
    """Where stderr is a file or pipe (CliRunner's is neither a terminal), no carriage returns."""
    from click.testing import CliRunner

    from musicgen_onnx.cli import main

    sf.write(tmp_path / "song.wav", 0.1 * np.random.default_rng(0).standard_normal((44100, 2)), 44100)
    for args in (["generate", "x", "--duration", "0.2", "-o", tmp_path / "a.wav"],
                 ["stems", tmp_path / "song.wav", "--out-dir", tmp_path / "stems"]):
        r = CliRunner().invoke(main, [str(a) for a in args])
        assert r.exit_code == 0 and "\r" not in r.stderr, r.output
        assert any(line.startswith(("generating: ", "separating: ")) for line in r.stderr.splitlines()), r.stderr
