"""Stem separation without torch: the bundled tiny stems folder, the ``stems`` command, bad input, the
manifest rules, and the numpy pieces' own properties. Parity with demucs is in test_stems_parity.py."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.runtime.errors import InvalidInputError, ModelFolderError
from musicgen_onnx.runtime.manifest import STEMS_MANIFEST_NAME, load_manifest, load_stems_manifest
from musicgen_onnx.runtime.resample_frac import resample_frac
from musicgen_onnx.runtime.stems import StemSeparator, istft, stft

from helpers import BUNDLED, ROOT

STEMS = ROOT / "models" / "tiny-stems"
SOURCES = ["drums", "bass", "other", "vocals"]


@pytest.fixture(scope="module")
def separator():
    return StemSeparator.from_folder(STEMS, providers="cpu")


def tones(seconds: float, sr: int, channels: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return np.stack([0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)]).astype(np.float32)


def write(path, wav, sr):
    sf.write(str(path), wav.T, sr, subtype="FLOAT")
    return path


# ---------------------------------------------------------------- the stems command
def test_stems_command_writes_one_float_wav_per_source(tmp_path, cli):
    src = write(tmp_path / "song.wav", tones(0.8, 48000, 2), 48000)
    out = tmp_path / "out"
    result = cli("stems", src, "--model", STEMS, "--out-dir", out, "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(out / f"{s}.wav") for s in SOURCES]
    assert "separating:" in result.stderr
    for name in SOURCES:
        info = sf.info(str(out / f"{name}.wav"))
        assert (info.samplerate, info.channels, info.subtype) == (44100, 2, "FLOAT")
        assert info.frames == int(0.8 * 48000 * 44100 / 48000)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.wav" for s in SOURCES)  # no partials left
    again = tmp_path / "again"
    assert cli("stems", src, "--model", STEMS, "--out-dir", again, "--seed", "3", "--quiet").returncode == 0
    for name in SOURCES:  # seeded: the same shift, the same stems
        np.testing.assert_array_equal(sf.read(str(out / f"{name}.wav"))[0], sf.read(str(again / f"{name}.wav"))[0])
    stems = np.stack([sf.read(str(out / f"{s}.wav"), dtype="float32")[0] for s in SOURCES])
    assert all(np.abs(stems[i] - stems[j]).max() > 1e-4 for i in range(4) for j in range(i + 1, 4))


@pytest.mark.parametrize("seed", ["-5", str(2 ** 64)])
def test_stems_seed_outside_the_seed_rule_is_one_line(tmp_path, cli, seed):
    """generate's seed rule (non-negative, below 2**64), not numpy's traceback for a negative seed."""
    src = write(tmp_path / "song.wav", tones(0.5, 44100, 2), 44100)
    result = cli("stems", src, "--model", STEMS, "--out-dir", tmp_path / "out", "--seed", seed)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: seed must be a non-negative integer below 2**64, got {seed}"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_mono_input_is_separated_as_both_channels(tmp_path, separator):
    """demucs ``convert_audio_channels``: mono is duplicated into the model's two channels."""
    wav = tones(0.5, 44100, 1)
    (tmp_path / "m").mkdir()
    (tmp_path / "s").mkdir()
    mono = separator.separate_file(write(tmp_path / "mono.wav", wav, 44100), tmp_path / "m", seed=0)
    stereo = separator.separate_file(write(tmp_path / "st.wav", np.repeat(wav, 2, axis=0), 44100), tmp_path / "s", seed=0)
    for a, b in zip(mono, stereo, strict=True):
        np.testing.assert_array_equal(sf.read(str(a))[0], sf.read(str(b))[0])


def test_default_folder_is_named_after_the_input(tmp_path, cli):
    write(tmp_path / "track.wav", tones(0.3, 44100, 2), 44100)
    result = cli("stems", "track.wav", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "bundled tiny stems model" in result.stderr
    assert sorted(p.name for p in (tmp_path / "track_stems").iterdir()) == sorted(f"{s}.wav" for s in SOURCES)


def _bad_inputs(tmp_path):
    write(tmp_path / "surround.wav", np.full((6, 48000), 0.1, np.float32), 48000)
    write(tmp_path / "silent.wav", np.zeros((2, 48000), np.float32), 48000)
    write(tmp_path / "short.wav", np.full((2, 100), 0.1, np.float32), 44100)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + b"\x01" * 40)
    (tmp_path / "folder.wav").mkdir()
    return {"surround.wav": "has 6 channels; stems takes mono or 2-channel", "silent.wav": "is silent",
            "short.wav": "is too short", "corrupt.wav": "cannot be read as audio", "missing.wav": "does not exist",
            "folder.wav": "is a directory"}


def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, cli, separator):
    cases = _bad_inputs(tmp_path)
    for name in ("surround.wav", "corrupt.wav"):  # the command: exit 2, one line, no folder left
        out = tmp_path / f"out-{name}"
        result = cli("stems", tmp_path / name, "--model", STEMS, "--out-dir", out)
        assert result.returncode == 2, (name, result.stderr)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
        assert cases[name] in result.stderr, result.stderr
        assert not out.exists()
    out = tmp_path / "out"
    out.mkdir()
    for name, message in cases.items():  # every case, in-process: one line, nothing written
        with pytest.raises(InvalidInputError, match=message) as info:
            separator.separate_file(tmp_path / name, out)
        assert "\n" not in str(info.value)
        assert list(out.iterdir()) == []


def test_stems_never_replace_their_input(tmp_path, cli, separator):
    """Issue 24 item 10: ``stems dir/vocals.wav --out-dir dir`` overwrote its input with the vocals stem."""
    src = write(tmp_path / "vocals.wav", tones(0.3, 44100, 2), 44100)
    before = src.read_bytes()
    result = cli("stems", src, "--model", STEMS, "--out-dir", tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"output file {str(tmp_path / 'vocals.wav')!r} would replace the input file" in result.stderr
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vocals.wav"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.link(src, elsewhere / "bass.wav")  # the same file by another name: refused too
    with pytest.raises(InvalidInputError, match="would replace the input file"):
        separator.separate_file(src, elsewhere)
    assert src.read_bytes() == before and sorted(p.name for p in elsewhere.iterdir()) == ["bass.wav"]


def test_a_refused_output_leaves_nothing_behind(tmp_path, cli):
    """Issue 24 item 11: out-dir holding a directory named vocals.wav left the other stems' partials."""
    src = write(tmp_path / "a.wav", tones(0.3, 44100, 2), 44100)
    out = tmp_path / "out"
    (out / "vocals.wav").mkdir(parents=True)
    result = cli("stems", src, "--model", STEMS, "--out-dir", out)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "vocals.wav' is a directory" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["vocals.wav"]


def test_info_describes_a_stems_folder(cli):
    result = cli("info", STEMS)
    assert result.returncode == 0, result.stderr
    assert "musicgen-onnx stems folder" in result.stdout and "drums, bass, other, vocals" in result.stdout


def test_bad_model_folder_is_one_line(tmp_path, cli):
    src = write(tmp_path / "a.wav", tones(0.3, 44100, 2), 44100)
    result = cli("stems", src, "--model", BUNDLED, "--out-dir", tmp_path / "o")
    assert result.returncode == 2 and "has no stems graph" in result.stderr and result.stderr.count("\n") == 1
    broken = tmp_path / "broken"
    shutil.copytree(STEMS, broken)
    (broken / "stems.onnx").write_bytes((broken / "stems.onnx").read_bytes()[:-10] + b"0123456789")
    result = cli("stems", src, "--model", broken, "--out-dir", tmp_path / "o")
    assert result.returncode == 2 and "sha256 does not match" in result.stderr
    assert not (tmp_path / "o").exists()


def test_interrupted_separation_writes_nothing(tmp_path, separator):
    src = write(tmp_path / "a.wav", tones(1.0, 44100, 2), 44100)
    out = tmp_path / "out"
    out.mkdir()

    def stop(done, total):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        separator.separate_file(src, out, seed=0, progress=stop)
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------- streaming and the numpy pieces
def test_blocks_stream_and_add_up_to_the_whole(separator):
    mix = tones(2.0, 44100, 2)[None]
    seen = []
    blocks = []
    for block in separator.blocks(mix, 500, progress=lambda d, n: seen.append(d)):
        blocks.append((len(seen), block.shape[-1]))
    p = separator.params
    total_segments = seen[-1]
    assert len(blocks) > 2 and blocks[0][0] < total_segments  # output leaves before the last segment runs
    assert max(n for _, n in blocks) <= separator.segments_per_run * p.stride + p.segment_length
    whole = separator.separate(mix, 500)
    assert whole.shape == (1, 4, 2, mix.shape[-1]) and sum(n for _, n in blocks) == mix.shape[-1]


def test_melody_blocks_are_the_melody_stems_summed_and_mixed_down(separator):
    """The melody path sums [vocals, other] and averages channels before the inverse STFT; all after
    the graph is linear, so it equals the four stems separated and then reduced."""
    mix = tones(1.3, 44100, 2)[None] + np.float32(0.05) * np.random.default_rng(3).standard_normal((1, 2, 57330),
                                                                                                    dtype=np.float32)
    whole = separator.separate(mix, 321)
    want = whole[:, list(separator.params.melody_indices)].sum(axis=1).mean(axis=1)
    got = np.concatenate([b[:, 0, 0] for b in separator.blocks(mix, 321, melody=True)], axis=-1)
    assert got.shape == want.shape and np.abs(want).max() > 1e-3
    np.testing.assert_allclose(got, want, atol=1e-6 * np.abs(want).max())


def test_silence_gives_exact_zeros(separator):
    np.testing.assert_array_equal(separator.separate(np.zeros((1, 2, 9000), np.float32), 7), 0.0)


def test_shift_must_be_in_range(separator):
    with pytest.raises(InvalidInputError, match="shift must be in"):
        separator.separate(tones(0.1, 44100, 2)[None], separator.params.max_shift + 1)


def test_stft_inverts(separator):
    x = np.random.default_rng(0).standard_normal((2, 3000)).astype(np.float32)
    z = stft(x, 256, 64)
    assert z.shape == (2, 129, 1 + 3000 // 64)
    np.testing.assert_allclose(istft(z, 64, 3000), x, atol=1e-5)


def test_resample_frac_lengths_and_passband():
    x = tones(1.0, 32000, 1)
    y = resample_frac(x, 32000, 44100)
    assert y.shape == (1, 44100)
    t = np.arange(44100) / 44100
    np.testing.assert_allclose(y[0, 1000:-1000], 0.3 * np.sin(2 * np.pi * 220 * t[1000:-1000]), atol=2e-3)
    assert resample_frac(x, 32000, 32000) is x or np.array_equal(resample_frac(x, 32000, 32000), x)
    assert resample_frac(np.ones(7, np.float32), 44100, 32000).shape == (5,)  # floor(32000 * 7 / 44100)


@pytest.mark.parametrize("rates, seconds", [((44099, 44100), 0.5), ((47999, 44100), 0.5), ((44100, 47999), 0.5),
                                            ((383999, 44100), 0.5), ((1000, 44100), 0.5),
                                            ((47999, 44100), 14.0)])  # long enough to table the phases
def test_resample_frac_of_coprime_rates_is_bounded_and_accurate(rates, seconds):
    """Issue 24 item 1: julius's kernel table for rates sharing no factor is new x (2 w + old) (7.8 GB for
    44099 -> 44100); the per-output path holds a few copies of the audio and stays a clean resampler."""
    import tracemalloc

    old, new = rates
    x = tones(seconds, old, 2)
    tracemalloc.start()
    try:
        y = resample_frac(x, old, new)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert y.shape == (2, new * x.shape[1] // old)
    assert peak < 8 * (x.nbytes + y.nbytes) + (16 << 20), peak
    t = np.arange(y.shape[1]) / new
    edge = new // 20  # replicate padding bends the first and last few ms, as in julius
    for c in range(2):
        want = 0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t)
        np.testing.assert_allclose(y[c, edge:-edge], want[edge:-edge], atol=2e-3)


# ---------------------------------------------------------------- manifest rules
def test_folders_without_stems_load_as_before():
    m = load_manifest(BUNDLED)
    assert m.stems is None and "stems" not in m.graphs
    assert "stems" not in m.to_dict()  # readable by releases that predate the field


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["stems"].update(hop_length=100), "hop_length must be n_fft // 4"),
    (lambda d: d["stems"].update(segment_length=1.5), "segment_length must be an integer"),
    (lambda d: d["stems"].update(melody_stems=["vocals", "piano"]), "melody_stems must name sources"),
    (lambda d: d["stems"].update(sources=["a", "a"]), "distinct plain names"),
    (lambda d: d["stems"].update(audio_channels=True), "audio_channels must be an integer"),
    (lambda d: d["stems"].update(overlap=1.0), "overlap must be in [0, 1)"),
    (lambda d: d["stems"].update(n_fft=1 << 20, hop_length=1 << 18), "n_fft must be a power of two"),
    (lambda d: d["stems"].update(colour="red"), "unknown field"),
    (lambda d: d["graphs"]["stems"]["roles"].pop("waveform"), "role 'waveform'"),
    (lambda d: d.update(format_version=1), "format version 1 is not supported"),
])
def test_stems_manifest_is_read_as_untrusted(tmp_path, edit, message):
    folder = tmp_path / "s"
    shutil.copytree(STEMS, folder)
    data = json.loads((folder / STEMS_MANIFEST_NAME).read_text())
    edit(data)
    (folder / STEMS_MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")) as info:
        load_stems_manifest(folder)
    assert "\n" not in str(info.value)


def test_a_melody_folder_with_half_a_stems_entry_is_refused(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(BUNDLED, folder)
    data = json.loads((folder / "musicgen_onnx.json").read_text())
    data["stems"] = json.loads((STEMS / STEMS_MANIFEST_NAME).read_text())["stems"]
    (folder / "musicgen_onnx.json").write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match="graph 'stems' and the stems parameters come together"):
        load_manifest(folder)


def test_generate_refuses_a_bad_stems_option():
    model = MusicGen.from_pretrained(BUNDLED, providers="cpu")
    with pytest.raises(InvalidInputError, match="stems must be True, False or None"):
        model.generate(["x"], melody=tones(1.0, 32000, 1)[0], melody_sample_rate=32000, duration=0.1, stems="yes")
    with pytest.raises(InvalidInputError, match="has no stems graph"):
        model.generate(["x"], melody=tones(1.0, 32000, 1)[0], melody_sample_rate=32000, duration=0.1, stems=True)


def test_stems_of_a_span_need_only_one_segment_and_shift_past_it(separator):
    """Why a single window separates only the melody's first ~31 s (melody.single_window_cut): the stems
    of [0, used) are those of the audio cut one segment and the largest shift past ``used``."""
    p = separator.params
    mix = np.random.default_rng(1).standard_normal((1, 2, 3 * 44100)).astype(np.float32) * 0.2
    used = 44100
    cut = used + p.segment_length + p.max_shift
    for shift in (0, p.max_shift):
        np.testing.assert_array_equal(separator.separate(mix[..., :cut], shift)[..., :used],
                                      separator.separate(mix, shift)[..., :used])
