"""Hostile audio in and out: huge, truncated, tiny, non-numeric and corrupt inputs; concurrent writers;
audio as bytes. Each bad input gets one line naming it and what is allowed."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import soundfile as sf

from musicgen_onnx.runtime import InvalidInputError
from musicgen_onnx.runtime import audio as audio_io
from musicgen_onnx.runtime.chroma import batch_chroma
from musicgen_onnx.runtime.manifest import ChromaParams
from musicgen_onnx.runtime.melody import prepare_melodies, window_chroma


CLI = [sys.executable, "-m", "musicgen_onnx.cli"]
PARAMS = ChromaParams()


def _pcm16_wav_header(frames: int, channels: int, sr: int, data_size: int | None = None, extra: bytes = b"") -> bytes:
    """A canonical PCM_16 WAV header (``extra`` chunks before ``data``) claiming ``frames``."""
    block = 2 * channels
    size = frames * block if data_size is None else data_size
    fmt = struct.pack("<HHIIHH", 1, channels, sr, sr * block, block, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + extra + b"data" + struct.pack("<I", size)
    return b"RIFF" + struct.pack("<I", min(len(body) + frames * block, 0xFFFFFFFF)) + body


def _tones(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """``[samples, channels]`` of a melody that changes note every half second (a chroma to compare)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    notes = rng.choice([220.0, 261.63, 329.63, 392.0, 440.0, 493.88], size=int(seconds * 2) + 1)
    wav = 0.4 * np.sin(2 * np.pi * notes[(t * 2).astype(int)] * t)
    return np.repeat(wav[:, None], channels, axis=1).astype(np.float32)


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if not line.startswith("using the bundled")]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


# ---------------------------------------------------------------- 1. read only what is used
def test_two_hour_melody_costs_memory_for_the_seconds_used(tmp_path):
    """A 2 h 44.1 kHz stereo WAV (sparse: 60 s of tones, then silence the file system does not store)
    prepared for a 15 s generation (max_seconds = 15 + 30): peak RSS grows by what is read, not by
    the 2.5 GB the whole file decodes to."""
    sr, hours = 44100, 2
    frames = hours * 3600 * sr
    path = tmp_path / "long.wav"
    with open(path, "wb") as fh:
        fh.write(_pcm16_wav_header(frames, 2, sr))
        fh.write((_tones(60, sr, 2) * 32767).astype("<i2").tobytes())
        fh.truncate(fh.tell() - 60 * sr * 4 + frames * 4)
    sf.write(tmp_path / "small.wav", _tones(1, sr, 2), sr)
    script = textwrap.dedent(f"""
        import json
        from musicgen_onnx.runtime.audio import load_audio
        from musicgen_onnx.runtime.manifest import ChromaParams
        from musicgen_onnx.runtime.melody import prepare_melodies

        def mib(field):
            for line in open("/proc/self/status"):
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024

        def reset_peak():  # ru_maxrss keeps the forking parent's peak; VmHWM can be reset
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return mib("VmRSS")

        prepare_melodies(r"{tmp_path / 'small.wav'}", None, 1, ChromaParams())  # libraries loaded
        base = reset_peak()
        wav, rate = load_audio(r"{path}", max_seconds=45)
        load = mib("VmHWM") - base
        loaded = list(wav.shape)
        del wav
        base = reset_peak()
        wavs = prepare_melodies(r"{path}", None, 1, ChromaParams(), max_seconds=45)
        print(json.dumps(dict(base=base, prepare=mib("VmHWM") - base, load=load, prepared=len(wavs[0]),
                              loaded=loaded)))
    """)
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    print(f"2 h melody, max_seconds=45: peak RSS +{got['prepare']:.0f} MiB (prepare_melodies), "
          f"+{got['load']:.0f} MiB (load_audio) over {got['base']:.0f} MiB")
    assert got["loaded"] == [2, 45 * sr]
    assert got["prepared"] == (45 + 1) * 32000  # 1 s resampler margin
    assert got["prepare"] < 300 and got["load"] < 300, got  # the whole file would be > 2500 MiB


def test_a_read_prefix_gives_the_whole_melodys_chroma(tmp_path):
    """Cutting the melody at max_seconds changes nothing the generation reads: the single-window
    chroma (first 30.2 s, whatever the duration) and every long-form window up to max_seconds."""
    sr = 44100
    path = tmp_path / "m.wav"
    sf.write(path, _tones(80, sr, 2), sr, subtype="FLOAT")
    whole = prepare_melodies(str(path), None, 1, PARAMS)
    wav, rate = audio_io.load_audio(path, max_seconds=10)
    assert rate == sr and wav.shape == (2, 10 * sr)
    np.testing.assert_array_equal(wav, sf.read(path, dtype="float32", always_2d=True)[0][: 10 * sr].T)
    for duration in (0.5, 40.0):  # the loop leaves `cut` read for a 40 s generation
        cut = prepare_melodies(str(path), None, 1, PARAMS, max_seconds=duration + 30)
        assert len(cut[0]) < len(whole[0])
        np.testing.assert_array_equal(batch_chroma(cut, PARAMS), batch_chroma(whole, PARAMS))
    for start in (0.0, 18.0, 36.0, 39.9):  # duration 40: windows start up to 40 s and read 30 s
        np.testing.assert_array_equal(window_chroma(cut, start, 30.0, PARAMS),
                                      window_chroma(whole, start, 30.0, PARAMS))
    arr = prepare_melodies(_tones(80, sr).T, sr, 1, PARAMS, max_seconds=31)  # arrays are cut too
    assert len(arr[0]) == (31 + 1) * 32000


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "45", True])
def test_max_seconds_must_be_a_positive_number(tmp_path, bad):
    sf.write(tmp_path / "m.wav", _tones(1, 32000), 32000)
    with pytest.raises(InvalidInputError, match="max_seconds must be a positive number"):
        audio_io.load_audio(tmp_path / "m.wav", max_seconds=bad)


def test_silence_over_the_part_read_is_named_as_such():
    sr = 32000
    melody = np.concatenate([np.zeros(40 * sr), 0.3 * np.sin(np.arange(5 * sr) * 0.05)])
    for max_seconds, read in ((0.1 + 30, "31.208"), (3 + 30, "34")):  # single window: its chroma's 30.2 s
        with pytest.raises(InvalidInputError, match=rf"melody is silent \(peak below -80 dBFS\) over its first "
                                                    rf"{read} s \(all this generation uses\) and carries no melody"):
            prepare_melodies(melody, sr, 1, PARAMS, max_seconds=max_seconds)
    assert len(prepare_melodies(melody, sr, 1, PARAMS)[0]) == 45 * sr  # whole: the tone counts


# ---------------------------------------------------------------- 2. truncated files
def _truncated_files(tmp_path):
    tone = (_tones(2, 32000) * 32767).astype("<i2")
    stereo = (_tones(1, 32000, 2) * 32767).astype("<i2")
    junk = b"JUNK" + struct.pack("<I", 10) + b"\0" * 10
    whole = _pcm16_wav_header(64000, 1, 32000) + tone.tobytes()
    (tmp_path / "cut60.wav").write_bytes(whole[:60])  # 44-byte header + 8 samples
    with_chunk = _pcm16_wav_header(32000, 2, 32000, extra=junk) + stereo.tobytes()
    (tmp_path / "cut_stereo.wav").write_bytes(with_chunk[: len(with_chunk) - 4 * 12000])
    sf.write(tmp_path / "whole.aiff", tone, 32000, subtype="PCM_16")
    aiff = (tmp_path / "whole.aiff").read_bytes()
    (tmp_path / "cut.aiff").write_bytes(aiff[: len(aiff) - 2 * 10000])
    return {"cut60.wav": (64000, 8), "cut_stereo.wav": (32000, 20000), "cut.aiff": (64000, 54000)}


def test_truncated_wav_and_aiff_are_refused_with_both_counts(tmp_path):
    for name, (header, held) in _truncated_files(tmp_path).items():
        with pytest.raises(InvalidInputError) as err:
            audio_io.load_audio(tmp_path / name)
        msg = str(err.value)
        assert msg == (f"melody file {str(tmp_path / name)!r} is truncated: "
                       f"header says {header} samples, file holds {held}")


def test_complete_files_with_extra_chunks_or_streamed_sizes_are_accepted(tmp_path):
    tone = (_tones(1, 32000) * 32767).astype("<i2")
    junk = b"JUNK" + struct.pack("<I", 10) + b"\0" * 10
    (tmp_path / "junk.wav").write_bytes(_pcm16_wav_header(32000, 1, 32000, extra=junk) + tone.tobytes())
    (tmp_path / "streamed.wav").write_bytes(_pcm16_wav_header(32000, 1, 32000, data_size=0xFFFFFFFF) + tone.tobytes())
    sf.write(tmp_path / "whole.aiff", tone, 32000, subtype="PCM_16")
    for name in ("junk.wav", "streamed.wav", "whole.aiff"):
        wav, sr = audio_io.load_audio(tmp_path / name)
        assert wav.shape == (1, 32000) and sr == 32000, name


def test_cli_truncated_melody_one_line(tmp_path):
    _truncated_files(tmp_path)
    r = subprocess.run([*CLI, "generate", "x", "--duration", "0.2", "--quiet", "-o", str(tmp_path / "o.wav"),
                        "--melody", str(tmp_path / "cut60.wav")], capture_output=True, text=True)
    assert r.returncode == 2
    assert "is truncated: header says 64000 samples, file holds 8" in _one_error_line(r.stderr)
    assert not (tmp_path / "o.wav").exists()


# ---------------------------------------------------------------- 3. melody shorter than one chroma hop
@pytest.mark.parametrize("samples, sr, ok", [(4095, 32000, False), (4096, 32000, True),
                                             (5644, 44100, False), (5645, 44100, True)])
def test_melody_needs_one_chroma_hop(model, samples, sr, ok):
    melody = 0.3 * np.sin(np.arange(samples) * 0.05)
    if ok:
        assert model.generate(["x"], melody=melody, melody_sample_rate=sr, duration=0.2).shape == (1, 1, 6400)
        return
    with pytest.raises(InvalidInputError) as err:
        model.generate(["x"], melody=melody, melody_sample_rate=sr, duration=0.2)
    msg = str(err.value)
    assert msg.startswith(f"melody is too short: {samples} samples") and "\n" not in msg
    assert "at least 0.128 s (4096 samples at 32000 Hz" in msg
    assert (f", 5645 at its 44100 Hz)" in msg) == (sr == 44100)


def test_melody_file_of_8_samples_is_refused_by_name(tmp_path, model):
    sf.write(tmp_path / "tiny.wav", np.full(8, 0.5), 32000)
    with pytest.raises(InvalidInputError, match=r"melody file '.*tiny.wav' is too short: 8 samples"):
        model.generate(["x"], melody=str(tmp_path / "tiny.wav"), duration=0.2)


# ---------------------------------------------------------------- 4. continuation prompts too short for EnCodec
def test_prompt_minimum_sits_above_what_the_audio_encoder_accepts(model):
    """The bundled audio_encoder.onnx fails below 1921 samples (reflect pad of the last conv);
    MIN_PROMPT_SECONDS is above that, and a prompt of exactly the minimum, at another rate, encodes."""
    ramp = lambda n: (0.1 * np.sin(np.arange(n) * 0.05)).astype(np.float32)[None, None]  # noqa: E731
    with pytest.raises(Exception, match="Pad"):
        model.codec.encode(ramp(1920))
    assert model.codec.encode(ramp(1921)).shape == (1, 4, 4)
    assert audio_io.MIN_PROMPT_SECONDS * model.sample_rate >= 1921
    n = int(np.ceil(audio_io.MIN_PROMPT_SECONDS * 44100))
    wav, sr, _ = audio_io.read_input(ramp(n)[0], 44100, "prompt", "prompt", min_seconds=audio_io.MIN_PROMPT_SECONDS)
    codes = model.codec.encode(audio_io.resample(wav, sr, model.sample_rate)[None])
    assert codes.shape == (1, 4, 5)
    with pytest.raises(InvalidInputError, match=f"prompt is too short: {n - 1} samples"):
        audio_io.read_input(ramp(n - 1)[0], 44100, "prompt", "prompt", min_seconds=audio_io.MIN_PROMPT_SECONDS)


def test_ten_sample_prompt_file_is_refused_with_the_minimum(tmp_path):
    sf.write(tmp_path / "p.wav", np.full(10, 0.5), 32000)
    with pytest.raises(InvalidInputError) as err:
        audio_io.read_input(str(tmp_path / "p.wav"), None, "prompt", "prompt", min_seconds=audio_io.MIN_PROMPT_SECONDS)
    assert str(err.value) == (f"prompt file {str(tmp_path / 'p.wav')!r} is too short: 10 samples (0.0003125 s at "
                              "32000 Hz); a prompt needs at least 0.1 s (3200 samples at 32000 Hz)")


def test_encode_prompt_refuses_a_10_sample_prompt(model, tmp_path):
    sf.write(tmp_path / "p.wav", np.full(10, 0.5), 32000)
    for prompt, rate in ((str(tmp_path / "p.wav"), None), (np.full((1, 10), 0.5), 32000)):
        with pytest.raises(InvalidInputError, match="too short: 10 samples"):
            model.encode_prompt(prompt, rate)


# ---------------------------------------------------------------- 5. in-memory inputs that are not numbers
NOT_NUMBERS = [
    (np.array(["x"]), "got strings"),
    (np.array(["0.5"] * 8000), "got strings"),
    (np.array([0.5] * 7999 + [None], dtype=object), "got Python objects"),
    (np.full(8000, 0.5 + 0.5j), "got complex numbers"),
    (np.ones(8000, dtype=bool), "got booleans"),
    (np.array([b"ab"] * 8000), "got bytes"),
]


@pytest.mark.parametrize("melody, message", NOT_NUMBERS, ids=[m for _, m in NOT_NUMBERS])
def test_non_numeric_melody_and_prompt_arrays_are_refused(model, melody, message):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ComplexWarning would mean the imaginary part was dropped
        with pytest.raises(InvalidInputError) as err:
            model.generate(["x"], melody=melody, melody_sample_rate=32000, duration=0.2)
        assert str(err.value) == f"melody: samples must be real numbers (integer or float), {message}"
        with pytest.raises(InvalidInputError, match=f"prompt: samples must be real numbers .*{message}"):
            model.encode_prompt(melody[None], 32000)


def test_ragged_samples_are_one_line_and_integers_still_work():
    with pytest.raises(InvalidInputError, match="rows differ in length") as err:
        audio_io.check_samples([[0.1, 0.2], [0.1]], 32000, "melody")
    assert "\n" not in str(err.value)
    assert audio_io.check_samples(np.full(100, 1000, dtype=np.int16), 32000, "melody").dtype == np.float32


# ---------------------------------------------------------------- 6. codec chatter on stderr
def _garbage_mp3(tmp_path):
    path = tmp_path / "x.mp3"
    path.write_bytes(b"this is not an mp3 file at all\n" * 100)  # libmpg123 prints 3 notes for it
    return path


def test_cli_corrupt_mp3_melody_prints_only_our_line(tmp_path):
    path = _garbage_mp3(tmp_path)
    r = subprocess.run([*CLI, "generate", "x", "--duration", "0.2", "--quiet", "-o", str(tmp_path / "o.wav"),
                        "--melody", str(path)], capture_output=True, text=True)
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert line.startswith(f"error: melody file {str(path)!r} cannot be read as audio (format not recognised")


def test_stderr_is_restored_after_a_silenced_read(tmp_path, capfd):
    with pytest.raises(InvalidInputError):
        audio_io.load_audio(_garbage_mp3(tmp_path))
    os.write(2, b"fd 2 works\n")
    print("sys.stderr works", file=sys.stderr)
    err = capfd.readouterr().err
    assert err == "fd 2 works\nsys.stderr works\n"


# ---------------------------------------------------------------- 7. partial files of other writers
def _partial(tmp_path, name, pid):
    path = tmp_path / f".{name}.{pid}.abcd1234.partial"
    path.write_bytes(b"x")
    return path


def test_stale_partial_cleanup_spares_live_writers_and_other_files(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    try:
        live = _partial(tmp_path, "song.wav", sleeper.pid)
        dead = _partial(tmp_path, "song.wav", finished.pid)
        other = _partial(tmp_path, "song.wav.2.wav", finished.pid)
        legacy = tmp_path / ".song.wav.k3j4h5g6.partial"  # old naming: no owner to check, left alone
        legacy.write_bytes(b"x")
        audio_io.write_audio(tmp_path / "song.wav", np.zeros((1, 100), np.float32), 32000)
        assert live.exists() and other.exists() and legacy.exists()
        assert not dead.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [live.name, other.name, legacy.name, "song.wav"])
    finally:
        sleeper.kill()
        sleeper.wait()


def test_two_live_writers_of_one_file_both_commit(tmp_path):
    """Two streams to the same output (one process, two writers): the second's cleanup used to delete
    the first's growing partial, whose commit then failed."""
    target = tmp_path / "song.wav"
    first = audio_io.StreamingWriter(target, 32000, 1)
    first.write(np.full((1, 3200), 0.1, np.float32))
    assert os.path.basename(first.tmp).startswith(f".song.wav.{os.getpid()}.")
    second = audio_io.StreamingWriter(target, 32000, 1)
    second.write(np.full((1, 6400), 0.2, np.float32))
    assert os.path.exists(first.tmp)
    assert first.commit("none") == target and sf.info(str(target)).frames == 3200
    second.commit("none")
    assert sf.info(str(target)).frames == 6400
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song.wav"]


# ---------------------------------------------------------------- 8. audio as bytes, one save path
@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_encode_audio_bytes_decode_to_what_write_audio_writes(tmp_path, fmt):
    wav = np.stack([0.5 * np.sin(np.arange(32000) * 0.05), 0.25 * np.cos(np.arange(32000) * 0.01)]).astype(np.float32)
    data = audio_io.encode_audio(wav, 32000, fmt)
    path = audio_io.write_audio(tmp_path / f"out.{fmt}", wav, 32000)
    from_bytes, sr_bytes = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    from_file, sr_file = sf.read(path, dtype="float32", always_2d=True)
    assert sr_bytes == sr_file == 32000 and from_bytes.shape == (32000, 2)
    np.testing.assert_array_equal(from_bytes, from_file)
    np.testing.assert_allclose(from_bytes.T, wav, atol=1 / 32767)  # PCM_16 of the input, not of something else
    assert sf.info(io.BytesIO(data)).subtype == "PCM_16"
    if fmt == "wav":
        assert data == path.read_bytes()


@pytest.mark.parametrize("fmt", ["ogg", "mp3", ".MP3"])
def test_encode_audio_lossy_formats_decode(fmt):
    wav = (0.3 * np.sin(np.arange(32000) * 0.05))[None].astype(np.float32)
    decoded, sr = sf.read(io.BytesIO(audio_io.encode_audio(wav, 32000, fmt)))
    assert sr == 32000 and abs(len(decoded) - 32000) < 2000


@pytest.mark.parametrize("args, message", [
    (((np.zeros((1, 10)), 32000, "aiff")), "audio format 'aiff' is unknown; use one of wav, flac, ogg, mp3"),
    (((np.zeros((1, 1, 10)), 32000, "wav")), "expected [channels, samples]"),
    (((np.zeros((1, 10)), 0, "wav")), "sample rate must be an integer"),
])
def test_encode_audio_bad_arguments_one_line(args, message):
    with pytest.raises(InvalidInputError) as err:
        audio_io.encode_audio(*args)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_save_audio_is_normalize_then_write_and_streaming_commit_uses_it(tmp_path):
    wav = (0.1 * np.sin(np.arange(32000) * 0.05))[None].astype(np.float32)
    saved = audio_io.save_audio(tmp_path / "a.wav", wav, 32000, "peak")
    want = audio_io.encode_audio(audio_io.normalize(wav, 32000, "peak"), 32000, "wav")
    assert saved.read_bytes() == want
    assert np.max(np.abs(sf.read(saved)[0])) == pytest.approx(10 ** (-1 / 20), abs=1e-3)
    writer = audio_io.StreamingWriter(tmp_path / "b.wav", 32000, 1)
    writer.write(wav[:, :10000])
    writer.write(wav[:, 10000:])
    assert writer.commit("peak").read_bytes() == want


# ---------------------------------------------------------------- issue 24 item 2: the header before the samples
def _flac(seconds: float, sr: int, channels: int) -> bytes:
    """A FLAC of DC written a second at a time: a few KB that declare ``seconds`` of audio."""
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", sr, channels, format="FLAC") as f:
        block = np.full((sr, channels), 0.25, np.float32)
        for _ in range(int(seconds)):
            f.write(block)
    return buffer.getvalue()


def _peak_bytes(fn) -> tuple[int, BaseException | None]:
    import tracemalloc

    tracemalloc.start()
    error = None
    try:
        fn()
    except InvalidInputError as exc:
        error = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, error


def test_a_rate_out_of_range_is_refused_before_decoding(tmp_path):
    """8 channels at 655350 Hz (FLAC's largest rate) of DC: 14 KB that decode to 210 MB; refused by
    its header's rate, as an upload and as a file, before a sample is decoded."""
    from musicgen_onnx.serve.uploads import decode_audio

    data = _flac(10, 655350, 8)
    (tmp_path / "dc.flac").write_bytes(data)
    for call in (lambda: decode_audio(data, "melody", 61.0), lambda: audio_io.load_audio(tmp_path / "dc.flac")):
        peak, error = _peak_bytes(call)
        assert error is not None and "sample rate must be an integer in [1000, 384000] Hz, got 655350" in str(error)
        assert peak < 8 << 20, peak


def test_decoded_bytes_are_bounded_before_decoding(tmp_path):
    """Within the rates, the frames x channels the header declares are checked against the decoded bytes
    allowed before decoding (uploads: serve.uploads.MAX_UPLOAD_DECODED_BYTES)."""
    from musicgen_onnx.serve.uploads import MAX_UPLOAD_DECODED_BYTES, decode_audio

    data = _flac(6, 384000, 8)  # 6 s x 8 channels x 384 kHz: 70 MiB of float32
    assert 6 * 384000 * 8 * 4 > MAX_UPLOAD_DECODED_BYTES
    peak, error = _peak_bytes(lambda: decode_audio(data, "melody", 61.0))
    assert error is not None and "would decode to 70 MiB, over the 64 MiB allowed" in str(error), error
    assert peak < 8 << 20, peak
    (tmp_path / "big.flac").write_bytes(data)
    peak, error = _peak_bytes(lambda: audio_io.load_audio(tmp_path / "big.flac", max_bytes=1 << 20))
    assert error is not None and str(error).startswith(f"melody file {str(tmp_path / 'big.flac')!r}: 2304000 frames")
    assert peak < 8 << 20, peak
    wav, sr = audio_io.load_audio(tmp_path / "big.flac", max_seconds=0.1, max_bytes=2 << 20)  # what is read counts
    assert wav.shape == (8, 38400) and sr == 384000


def test_uploads_use_the_file_reader_and_its_truncation_checks(tmp_path):
    """One reader for files and uploaded bytes: a cut-off AIFF upload is refused like the file."""
    from musicgen_onnx.serve.uploads import decode_audio

    _truncated_files(tmp_path)
    for name in ("cut.aiff", "cut60.wav"):
        with pytest.raises(InvalidInputError, match="melody: the upload is truncated: header says"):
            decode_audio((tmp_path / name).read_bytes(), "melody", 61.0)
    with pytest.raises(InvalidInputError, match="melody: the upload cannot be decoded as audio"):
        decode_audio(b"RIFF" + os.urandom(400), "melody", 61.0)
