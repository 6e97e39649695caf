"""A hostile-audio-header fuzzer (issue 24): WAV, AIFF and FLAC whose headers claim any rate, channel
count, sample width and frame count, with any truncation, given to the file reader, to the upload
decoder and to ``stems``. Each ends as valid audio or one line (InvalidInputError), within a deadline and
a memory bound (tracemalloc), never a traceback."""

from __future__ import annotations

import io
import math
import struct
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from musicgen_onnx.runtime import audio as audio_io
from musicgen_onnx.runtime.errors import InvalidInputError
from musicgen_onnx.runtime.stems import StemSeparator
from musicgen_onnx.serve.uploads import decode_audio

from helpers import ROOT

STEMS = ROOT / "models" / "tiny-stems"
MAX_PEAK = 64 << 20  # what one hostile file may make the process allocate, whatever its header says

_rates = st.one_of(st.sampled_from([0, 1, 999, 1000, 8000, 44099, 44100, 47999, 384000, 384001, 655350]),
                   st.integers(0, (1 << 32) - 1))
_channels = st.one_of(st.integers(0, 10), st.sampled_from([255, 256, 1024, 1025, 65535]))
_payload = st.one_of(st.integers(0, 16000), st.integers(4000, 16000))


def _mostly(good, hostile):
    """``good`` three times in four: a hostile file lies in one or two fields, not all, so the reader's
    later paths (decoding, the byte bound, truncation) are reached as well as its first refusals."""
    return st.one_of(st.just(good), st.just(good), st.just(good), hostile)


def _samples(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


@st.composite
def wav_files(draw) -> bytes:
    tag = draw(_mostly(1, st.sampled_from([3, 6, 7, 0xFFFE, 0, 0x55])))
    channels = draw(_mostly(draw(st.integers(1, 2)), _channels))
    rate = draw(_mostly(draw(st.sampled_from([8000, 32000, 44100, 44099, 47999])), _rates))
    bits = draw(_mostly(32 if tag == 3 else 16, st.sampled_from([8, 16, 24, 32, 64, 0, 12, 65535])))
    align = draw(_mostly(max(1, channels * bits // 8) & 0xFFFF, st.integers(0, 0xFFFF)))
    payload = _samples(draw(_payload), draw(st.integers(0, 9)))
    declared = draw(_mostly(len(payload), st.one_of(st.just(0xFFFFFFFF), st.integers(0, 0xFFFFFFFF))))
    fmt = struct.pack("<HHIIHH", tag, channels & 0xFFFF, rate, (rate * align) & 0xFFFFFFFF, align, bits & 0xFFFF)
    if tag == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: valid bits, channel mask, sub-format GUID (PCM or float)
        sub = draw(st.sampled_from([1, 3, 0x99]))
        fmt += struct.pack("<HHI", 22, bits & 0xFFFF, 0) + struct.pack("<I", sub) + bytes.fromhex(
            "000000001000800000aa00389b71")
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", declared) + payload
    data = b"RIFF" + struct.pack("<I", len(body)) + body
    return data[:draw(_mostly(len(data), st.integers(12, len(data))))]


def _extended(rate: float, exponent: int | None) -> bytes:
    """An IEEE 754 80-bit extended float (AIFF's sample rate), or any exponent a crafted header holds."""
    if exponent is None:
        mant, exp = math.frexp(max(rate, 1.0))
        return struct.pack(">HQ", 16382 + exp, int(mant * (1 << 64)) & ((1 << 64) - 1))
    return struct.pack(">HQ", exponent & 0xFFFF, 1 << 63)


@st.composite
def aiff_files(draw) -> bytes:
    channels = draw(_mostly(draw(st.integers(1, 2)), _channels))
    rate = draw(_mostly(draw(st.sampled_from([8000, 32000, 44100, 44099, 47999])), _rates))
    bits = draw(_mostly(16, st.sampled_from([8, 24, 32, 0, 64])))
    payload = _samples(draw(_payload), draw(st.integers(0, 9)))
    whole = len(payload) // max(1, channels * bits // 8)
    frames = draw(_mostly(whole, st.one_of(st.integers(0, 4000), st.integers(0, 0xFFFFFFFF))))
    comm = struct.pack(">hIh", channels & 0x7FFF, frames, bits) + _extended(rate, draw(
        _mostly(None, st.integers(0, 0xFFFF))))
    ssnd = struct.pack(">II", 0, 0) + payload
    body = b"AIFF" + b"COMM" + struct.pack(">I", len(comm)) + comm + b"SSND" + struct.pack(">I", len(ssnd)) + ssnd
    data = b"FORM" + struct.pack(">I", len(body)) + body
    return data[:draw(_mostly(len(data), st.integers(12, len(data))))]


_FLAC = {}


def _real_flac(channels: int) -> bytes:
    if channels not in _FLAC:
        buffer = io.BytesIO()
        wav = 0.3 * np.sin(np.arange(4000)[:, None] * 0.05 + np.arange(channels))
        sf.write(buffer, wav.astype(np.float32), 8000, format="FLAC", subtype="PCM_16")
        _FLAC[channels] = buffer.getvalue()
    return _FLAC[channels]


@st.composite
def flac_files(draw) -> bytes:
    """A real FLAC whose STREAMINFO (rate: 20 bits, channels - 1: 3, bits - 1: 5, total samples: 36) is
    rewritten, then truncated anywhere."""
    data = bytearray(_real_flac(draw(st.sampled_from([1, 2]))))
    info = 8 + 10  # "fLaC", the metadata block header, then min/max block and frame sizes
    written = int.from_bytes(data[info:info + 8], "big")
    rate = draw(_mostly(8000, st.one_of(st.sampled_from([0, 1000, 44099, 384000, 655350]),
                                        st.integers(0, (1 << 20) - 1))))
    ch = draw(_mostly(written >> 41 & 7, st.integers(0, 7)))
    bits = draw(_mostly(written >> 36 & 31, st.integers(0, 31)))
    total = draw(_mostly(4000, st.one_of(st.just(0), st.integers(0, (1 << 36) - 1))))
    packed = (rate << 44) | (ch << 41) | (bits << 36) | total
    data[info:info + 8] = packed.to_bytes(8, "big")
    if draw(_mostly(False, st.just(True))):  # and the block sizes
        data[8:12] = struct.pack(">HH", draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF)))
    return bytes(data[:draw(_mostly(len(data), st.integers(4, len(data))))])


hostile = st.one_of(wav_files(), aiff_files(), flac_files())


def _flac_of_dc(seconds: int, sr: int, channels: int) -> bytes:
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", sr, channels, format="FLAC") as f:
        for _ in range(seconds):
            f.write(np.full((sr, channels), 0.25, np.float32))
    return buffer.getvalue()


def _wav(seconds: float, sr: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, 0.3 * np.sin(np.arange(int(seconds * sr)) * 0.05).astype(np.float32), sr, format="WAV")
    return buffer.getvalue()


# The cases issue 24 found, always tried first: 8 channels of DC at 655350 Hz (the rate is refused before
# 84 MB are decoded), and a valid 47999 Hz WAV (julius's kernel table for it is 8.5 GB).
DC_655350 = _flac_of_dc(4, 655350, 8)
WAV_47999 = _wav(0.3, 47999)


def _bounded(call):
    """``call()``'s result or its one-line InvalidInputError, with the peak it allocated."""
    tracemalloc.start()
    try:
        try:
            result = call()
        except InvalidInputError as exc:
            assert "\n" not in str(exc) and str(exc), repr(exc)
            result = exc
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MAX_PEAK, peak
    return result


def _valid(result) -> None:
    if isinstance(result, InvalidInputError):
        return
    wav, sr = result
    assert wav.dtype == np.float32 and wav.ndim == 2 and wav.shape[1] > 0 and np.isfinite(wav).all()
    assert isinstance(sr, int) and 1000 <= sr <= 384000


FUZZ = settings(max_examples=120, deadline=10000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


@FUZZ
@given(hostile)
@example(DC_655350)
@example(WAV_47999)
def test_fuzz_reader_and_uploads(tmp_path, data):
    path = tmp_path / "hostile.bin"
    path.write_bytes(data)
    file_result = _bounded(lambda: audio_io.load_audio(path))
    _valid(file_result)
    upload_result = _bounded(lambda: decode_audio(data, "melody", 61.0))
    _valid(upload_result)
    if not isinstance(file_result, InvalidInputError) and not isinstance(upload_result, InvalidInputError):
        assert file_result[1] == upload_result[1]  # one reader: the same audio either way
        np.testing.assert_array_equal(file_result[0][:, :upload_result[0].shape[1]], upload_result[0])


@pytest.fixture(scope="module")
def separator():
    return StemSeparator.from_folder(STEMS, providers="cpu")


@settings(FUZZ, max_examples=40)
@given(hostile)
@example(DC_655350)
@example(WAV_47999)
def test_fuzz_stems(tmp_path_factory, separator, data):
    folder = tmp_path_factory.mktemp("stems")
    path = folder / "hostile.wav"
    path.write_bytes(data)
    out = folder / "out"
    out.mkdir()
    result = _bounded(lambda: separator.separate_file(path, out, seed=0))
    if isinstance(result, InvalidInputError):
        assert list(out.iterdir()) == []  # a refusal leaves nothing
    else:
        assert sorted(p.name for p in result) == sorted(f"{s}.wav" for s in separator.sources)


_SERVER_RSS = r"""
import io, json, resource, sys
import numpy as np, soundfile as sf
from starlette.testclient import TestClient
from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.serve import ServeSettings, create_app

data = open(sys.argv[2], "rb").read()
app = create_app(MusicGen.from_pretrained(sys.argv[1], providers="cpu"), ServeSettings(max_duration=30))
with TestClient(app) as client:
    client.post("/v1/generate", json={"prompt": "x", "duration": 0.1})  # warm: what any request costs
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = client.post("/v1/generate", data={"duration": "30"}, files={"melody": ("m.flac", data, "audio/flac")})
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"status": r.status_code, "error": r.json().get("error"), "grew_kib": after - before}))
"""


@pytest.mark.parametrize("seconds, rate, words", [(10, 655350, "sample rate must be an integer in [1000, 384000]"),
                                                  (6, 384000, "over the 64 MiB allowed")])
def test_a_hostile_upload_costs_the_server_no_memory(tmp_path, seconds, rate, words):
    """Issue 24 item 2, end to end in a fresh process: a FLAC of DC declaring minutes of 8-channel audio
    is a 400 before it is decoded; the server's peak RSS does not move (it grew 2.4 GB for 61 s)."""
    import json
    import subprocess
    import sys

    from helpers import BUNDLED

    upload = tmp_path / "dc.flac"
    upload.write_bytes(_flac_of_dc(seconds, rate, 8))
    r = subprocess.run([sys.executable, "-c", _SERVER_RSS, str(BUNDLED), str(upload)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["status"] == 400 and words in result["error"], result
    assert result["grew_kib"] < 32 * 1024, result
