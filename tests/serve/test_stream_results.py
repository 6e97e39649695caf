"""The page's server side: a streamed request's normalised file kept under ``X-Result-Id`` (the file the
page offers: it must match a non-streamed response for the same request and seed, in samples and in
loudness, not the quieter unnormalised stream), the store's bounds, and ``POST /v1/stems`` giving the
``stems`` command's four stems."""

from __future__ import annotations

import base64
import io
import time

import httpx
import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from helpers import BUNDLED, serving

STEMS = BUNDLED.parent / "tiny-stems"


@pytest.fixture(scope="module")
def model():
    from musicgen_onnx.runtime.musicgen import MusicGen

    return MusicGen.from_pretrained(BUNDLED, providers="cpu")


@pytest.fixture(scope="module")
def server(model):
    from musicgen_onnx.runtime.stems import StemSeparator
    from musicgen_onnx.serve import ServeSettings, create_app

    app = create_app(model, ServeSettings(max_duration=5), StemSeparator.from_folder(STEMS, providers="cpu"))
    with serving(app) as url:
        yield url


def lufs(wav_bytes: bytes) -> float:
    data, sr = sf.read(io.BytesIO(wav_bytes))
    return pyloudnorm.Meter(sr).integrated_loudness(data)


def test_a_streamed_result_is_kept_normalised_as_a_non_streamed_response(server):
    fields = {"prompt": "kept result", "duration": 2.0, "seed": 11}
    with httpx.stream("POST", server + "/v1/generate", json={**fields, "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        result_id = r.headers["X-Result-Id"]
        streamed = r.read()
    kept = httpx.get(f"{server}/v1/results/{result_id}", timeout=10)
    assert kept.status_code == 200 and kept.headers["content-type"] == "audio/wav"
    plain = httpx.post(server + "/v1/generate", json=fields, timeout=60)
    assert plain.status_code == 200
    a, _ = sf.read(io.BytesIO(kept.content), dtype="int16")
    b, _ = sf.read(io.BytesIO(plain.content), dtype="int16")
    assert a.shape == b.shape == (64000,)
    # the stream decoder's chunks equal the one-shot decode within float rounding: at most one LSB apart
    assert np.abs(a.astype(int) - b).max() <= 1
    assert abs(lufs(kept.content) - lufs(plain.content)) < 0.01
    assert abs(lufs(kept.content) - (-14.0)) < 0.5  # audiocraft's loudness target, as the CLI writes
    assert abs(lufs(streamed) - lufs(kept.content)) > 1  # what the stream itself sends is not normalised


def test_an_unknown_result_is_one_line_404(server):
    r = httpx.get(server + "/v1/results/nope", timeout=10)
    assert r.status_code == 404 and "no result 'nope'" in r.json()["error"]
    # counted under the route's template in /metrics (not as 'other', nor one label per id)
    metrics = httpx.get(server + "/metrics", timeout=10).text
    assert 'musicgen_requests_total{route="/v1/results/{result_id}",status="404"}' in metrics
    assert "nope" not in metrics


def test_the_result_store_is_bounded_in_count_bytes_and_age():
    from musicgen_onnx.serve.results import ResultStore

    store = ResultStore(max_count=3, max_bytes=100, ttl_s=0.2)
    for i in range(4):
        store.put(f"r{i}", b"x" * 10, "audio/wav")
    assert store.get("r0") is None and store.get("r3") == (b"x" * 10, "audio/wav") and len(store) == 3
    store.put("big", b"y" * 90, "audio/wav")  # 30 + 90 bytes: the oldest go until it fits
    assert len(store) == 2 and store.size_bytes == 100 and store.get("r1") is None
    store.put("huge", b"z" * 101, "audio/wav")  # never fits: not kept, nothing else dropped
    assert store.get("huge") is None and len(store) == 2
    time.sleep(0.25)
    assert store.get("big") is None and len(store) == 0 and store.size_bytes == 0


def test_stems_endpoint_gives_the_stems_commands_four_stems(server, tmp_path, cli):
    t = np.arange(int(1.5 * 22050)) / 22050
    song = tmp_path / "song.wav"
    sf.write(song, 0.4 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1500 * t), 22050)
    facts = httpx.get(server + "/v1/stems", timeout=10).json()
    assert facts["sources"] == ["drums", "bass", "other", "vocals"]
    r = httpx.post(server + "/v1/stems", data={"seed": "3"}, files={"audio": ("s.wav", song.read_bytes())}, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()
    assert list(got["stems"]) == facts["sources"]
    done = cli("stems", str(song), "--model", str(STEMS), "--seed", "3", "--out-dir", str(tmp_path / "cli"), "--quiet")
    assert done.returncode == 0, done.stderr
    for name, b64 in got["stems"].items():
        data, sr = sf.read(io.BytesIO(base64.b64decode(b64)), always_2d=True)
        ref, ref_sr = sf.read(tmp_path / "cli" / f"{name}.wav", always_2d=True)
        assert sr == ref_sr == facts["sample_rate"] and data.shape == ref.shape
        assert data.shape[0] == round(1.5 * sr)
        assert np.abs(data - np.clip(ref, -1, 1)).max() <= 1 / 32767 + 1e-9  # the CLI's stems, as 16-bit PCM


def test_stems_endpoint_refusals(server, model):
    from musicgen_onnx.serve import create_app

    r = httpx.post(server + "/v1/stems", json={}, timeout=10)
    assert r.status_code == 400 and "'audio' file" in r.json()["error"]
    r = httpx.post(server + "/v1/stems", data={"shift": "1"}, files={"audio": ("s.wav", b"RIFF")}, timeout=10)
    assert r.status_code == 400 and "unknown field(s) 'shift'" in r.json()["error"]
    for seed in ("-1", str(2 ** 64), "1.5"):  # the generation seed's rule, before any decoding
        r = httpx.post(server + "/v1/stems", data={"seed": seed}, files={"audio": ("s.wav", b"RIFF")}, timeout=10)
        assert r.status_code == 400 and "seed must be a non-negative integer below 2**64" in r.json()["error"], r.text
    long = io.BytesIO()
    sf.write(long, np.full(6 * 8000, 0.1), 8000, format="WAV")
    r = httpx.post(server + "/v1/stems", files={"audio": ("s.wav", long.getvalue())}, timeout=10)
    assert r.status_code == 400 and "at most 5 s" in r.json()["error"]
    with serving(create_app(model)) as url:  # the bundled melody folder has no stems graph of its own
        r = httpx.get(url + "/v1/stems", timeout=10)
        assert r.status_code == 404 and "no stems model" in r.json()["error"]


def test_chroma_endpoint_gives_the_models_chroma_of_a_melody(server):
    t = np.arange(3 * 44100) / 44100
    tone = io.BytesIO()
    sf.write(tone, 0.5 * np.sin(2 * np.pi * 440 * t), 44100, format="WAV")  # A4
    r = httpx.post(server + "/v1/chroma", files={"melody": ("a.wav", tone.getvalue())}, timeout=30)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["notes"][9] == "A" and got["frame_rate"] == 32000 / 4096 and abs(got["seconds"] - 3) < 1e-6
    assert len(got["bins"]) == 1 + 3 * 32000 // 4096 and sum(b == 9 for b in got["bins"]) >= 20  # centred frames
    r = httpx.post(server + "/v1/chroma", data={"x": "1"}, files={"melody": ("a.wav", tone.getvalue())}, timeout=30)
    assert r.status_code == 400 and "unexpected field(s) 'x'" in r.json()["error"]


def test_stems_requests_past_the_pending_bound_get_503(model, monkeypatch):
    """Separations run one at a time; while MAX_PENDING are running or waiting (each holding a worker
    thread the other routes share), another gets 503 + Retry-After at once, and the service still answers."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from musicgen_onnx.runtime.stems import StemSeparator
    from musicgen_onnx.serve import ServeSettings, create_app
    from musicgen_onnx.serve import stems as stems_module
    from musicgen_onnx.serve.stems import MAX_PENDING

    release, decoding = threading.Event(), []
    decode = stems_module.decode_audio
    monkeypatch.setattr(stems_module, "decode_audio", lambda *a: decoding.append(1) or decode(*a))

    class Slow(StemSeparator):
        def track_blocks(self, *args, **kwargs):
            release.wait(30)
            return super().track_blocks(*args, **kwargs)

    slow = Slow.from_folder(STEMS, providers="cpu")
    song = io.BytesIO()
    sf.write(song, 0.3 * np.sin(np.arange(22050) / 10), 22050, format="WAV")
    with serving(create_app(model, ServeSettings(max_duration=5), slow)) as url:
        def post():
            return httpx.post(url + "/v1/stems", files={"audio": ("s.wav", song.getvalue())}, timeout=60)

        with ThreadPoolExecutor(MAX_PENDING) as pool:
            held = [pool.submit(post) for _ in range(MAX_PENDING)]
            deadline = time.monotonic() + 20
            while len(decoding) < MAX_PENDING and time.monotonic() < deadline:  # all four counted as pending
                time.sleep(0.02)
            r = post()
            assert r.status_code == 503 and "server busy" in r.json()["error"] and r.headers["Retry-After"], r.text
            assert httpx.get(url + "/health", timeout=5).status_code == 200
            assert "503" in httpx.get(url + "/openapi.json", timeout=5).json()["paths"]["/v1/stems"]["post"]["responses"]
            release.set()
            assert [f.result().status_code for f in held] == [200] * MAX_PENDING
