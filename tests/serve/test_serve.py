"""The HTTP service on the bundled model: API, batching with per-row seeds, limits, faults, streaming,
shutdown. Most tests talk to a real uvicorn server on a free 127.0.0.1 port, run in this process (so a
test can pause the worker to fill the queue on purpose); the SIGTERM test runs ``musicgen-onnx serve``."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf

from helpers import BUNDLED, CLI, serving
from musicgen_onnx.serve import ServeSettings, create_app
from musicgen_onnx.serve.health import free_port, wait_until_healthy
from musicgen_onnx.serve.settings import MAX_JSON_BYTES, MAX_UPLOAD_BYTES

SAME_LENGTH = ["sad jazz", "lofi beat", "calm piano", "soft piano"]  # 8 tokens each
SR = 32000


def wav_bytes(seconds: float = 1.0, freq: float = 330.0, sr: int = SR) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(model):
    """(base url, app) of a uvicorn server in a thread: max batch 4, 300 ms wait, queue of 6."""
    app = create_app(model, ServeSettings(max_batch=4, max_wait_ms=300, max_queue=6, max_duration=12))
    with serving(app) as url:
        yield url, app


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server[0], timeout=60) as c:
        yield c


def post(url, **body) -> httpx.Response:
    return httpx.post(url + "/v1/generate", json=body, timeout=60)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{") and line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def one_line_error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert "\n" not in body["error"] and "Traceback" not in body["error"]
    return body["error"]


def wait_queued(app, n: int) -> None:
    for _ in range(400):
        if app.state.batcher.queue_length() >= n:
            return
        time.sleep(0.01)
    raise AssertionError(f"the queue never reached {n}")


# ---------------------------------------------------------------- the API
def test_generate_returns_audio_of_the_duration_in_each_format(client):
    for fmt in ("wav", "flac", "ogg"):
        r = client.post("/v1/generate", json={"prompt": "techno", "duration": 1.0, "seed": 3, "format": fmt})
        assert r.status_code == 200 and r.headers["content-type"] == f"audio/{fmt}", r.text
        data, sr = sf.read(io.BytesIO(r.content))
        assert sr == SR and abs(len(data) - SR) <= (0 if fmt != "ogg" else 2000)
        assert r.headers["x-seed"] == "3"


def test_same_seed_same_bytes_and_a_seed_is_returned_when_absent(client):
    body = {"prompt": "techno", "duration": 0.5, "seed": 11}
    assert client.post("/v1/generate", json=body).content == client.post("/v1/generate", json=body).content
    r = client.post("/v1/generate", json={"prompt": "techno", "duration": 0.5})
    again = client.post("/v1/generate", json={"prompt": "techno", "duration": 0.5, "seed": int(r.headers["x-seed"])})
    assert r.content == again.content


def test_the_service_gives_what_the_runtime_gives(client, model):
    from musicgen_onnx.runtime.audio import encode_audio, normalize

    r = client.post("/v1/generate", json={"prompt": "sad jazz", "duration": 0.6, "seed": 5, "top_k": 40})
    wav = model.generate(["sad jazz"], duration=0.6, seed=5, top_k=40)[0]
    assert r.content == encode_audio(normalize(wav, SR, "loudness"), SR, "wav")


def test_melody_upload_and_continuation(client, model):
    from musicgen_onnx.runtime.audio import encode_audio, normalize

    melody = wav_bytes(2.0, 440.0, 44100)
    r = client.post("/v1/generate", data={"prompt": "sad jazz", "duration": "0.8", "seed": "2", "normalize": "none"},
                    files={"melody": ("../../etc/passwd", melody, "audio/wav")})
    assert r.status_code == 200, r.text
    sine = sf.read(io.BytesIO(melody), dtype="float32")
    expect = model.generate(["sad jazz"], melody=sine[0][None], melody_sample_rate=44100, duration=0.8, seed=2)[0]
    assert r.content == encode_audio(normalize(expect, SR, "none"), SR, "wav")
    r = client.post("/v1/continue", data={"prompt": "techno", "duration": "1.5", "seed": "1"},
                    files={"audio": ("x.wav", wav_bytes(0.5), "audio/wav")})
    assert r.status_code == 200, r.text
    assert sf.info(io.BytesIO(r.content)).frames == int(1.5 * SR)


def test_model_health_metrics_openapi(client):
    facts = client.get("/v1/model").json()
    assert facts["sample_rate"] == SR and facts["melody"] is True and facts["limits"]["max_batch"] == 4
    assert facts["limits"]["max_upload_bytes"] == MAX_UPLOAD_BYTES
    assert client.get("/health").json()["status"] == "ok"
    text = client.get("/metrics").text
    for name in ("musicgen_requests_total", "musicgen_queue_length", "musicgen_batches_total",
                 "musicgen_steps_per_second", "musicgen_steps_total"):
        assert f"# TYPE {name} " in text
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert {"/v1/generate", "/v1/continue", "/v1/model", "/health", "/metrics"} <= set(spec["paths"])
    schema = spec["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]  # a named schema
    assert schema["additionalProperties"] is False and "seed" in schema["properties"]
    page = client.get("/")
    assert page.status_code == 200 and "<audio" in page.text and 'id="melody"' in page.text


# ---------------------------------------------------------------- limits and faults
@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"prompt": "x", "lenght": 3}', 400, "unknown field"),
    (b'{"melody": "/etc/passwd"}', 400, "unknown field"),  # no field is ever a path
    (b'{"duration": 1e9}', 400, "between 0.08 and 12 s on this server"),
    (b'{"duration": -1}', 400, "between 0.08 and 12 s on this server"),  # not the runtime's 3600
    (b'{"duration": 0.01}', 400, "between 0.08 and 12 s on this server"),
    (b'{"duration": "5"}', 400, "finite number"),
    (b'{"duration": NaN}', 400, "finite number"),
    (b'{"top_k": -1}', 400, "top_k"),
    (b'{"top_k": 1e400}', 400, "top_k"),
    (b'{"top_p": 7}', 400, "top_p"),
    (b'{"temperature": 0}', 400, "temperature"),
    (b'{"guidance": 1e12}', 400, "guidance_scale"),
    (b'{"seed": -3}', 400, "seed"),
    (b'{"seed": 1.5}', 400, "seed must be an integer"),
    (b'{"seed": 18446744073709551616}', 400, "below 2**64"),
    (b'{"format": "mp3"}', 400, "format"),
    (b'{"normalize": "loud"}', 400, "normalize"),
    (b'{"stream": "yes"}', 400, "true or false"),
    (b'{"stream": true, "format": "flac"}', 400, "stream=true"),
    (b'{"prompt": 5}', 400, "prompt must be a string"),
    (json.dumps({"prompt": "a" * 5000}).encode(), 400, "4096"),
    (b"[" * 100000, 413, str(MAX_JSON_BYTES)),
    (json.dumps({"prompt": "a" * (MAX_JSON_BYTES + 1)}).encode(), 413, "bytes"),
])
def test_bad_json_requests_are_one_line_4xx(server, body, status, words):
    r = httpx.post(server[0] + "/v1/generate", content=body, headers={"content-type": "application/json"})
    assert words in one_line_error(r, status)


def test_wrong_content_type_and_methods(client):
    assert "multipart" in one_line_error(client.post("/v1/generate", content=b"x",
                                                     headers={"content-type": "text/plain"}), 415)
    one_line_error(client.get("/v1/generate"), 405)
    one_line_error(client.get("/nowhere"), 404)
    assert "multipart" in one_line_error(client.post("/v1/continue", json={"prompt": "x"}), 400)


@pytest.mark.parametrize("kind, data, words", [
    ("melody", b"", "empty"),
    ("melody", os.urandom(5000), "cannot be decoded"),
    ("melody", wav_bytes(1.0)[:20000], "truncated"),
    ("melody", wav_bytes(0.05), "too short"),
    ("melody", b"RIFF" + wav_bytes(1.0)[4:44] + bytes(64000), "silent"),
    ("audio", wav_bytes(0.05), "too short"),
    ("audio", wav_bytes(31.5), "shorter than the model's"),
    ("audio", wav_bytes(3.0), "must be longer than the audio prompt"),
])
def test_corrupt_or_unusable_uploads_are_one_line_400(client, kind, data, words):
    route = "/v1/generate" if kind == "melody" else "/v1/continue"
    r = client.post(route, data={"duration": "2"}, files={kind: ("f.wav", data, "audio/wav")})
    assert words in one_line_error(r, 400)


def test_multipart_faults(client):
    big = b"\0" * (MAX_UPLOAD_BYTES + 1)
    r = client.post("/v1/generate", data={"duration": "1"}, files={"melody": ("f.wav", big, "audio/wav")})
    assert str(MAX_UPLOAD_BYTES) in one_line_error(r, 413)
    r = client.post("/v1/generate", data={"duration": "x"}, files={"melody": ("f.wav", wav_bytes(), "audio/wav")})
    assert "not a number" in one_line_error(r, 400)
    r = client.post("/v1/generate", data={"durtion": "1"}, files={"melody": ("f.wav", wav_bytes(), "audio/wav")})
    assert "unknown field" in one_line_error(r, 400)
    r = client.post("/v1/generate", files={"other": ("f.wav", wav_bytes(), "audio/wav")})
    assert "unexpected part" in one_line_error(r, 400)
    r = client.post("/v1/continue", data={"duration": "1"})
    one_line_error(r, 400)
    multipart = {"content-type": "multipart/form-data; boundary=xx"}
    no_name = b"--xx\r\nContent-Type: text/plain\r\n\r\nhi\r\n--xx--\r\n"
    r = client.post("/v1/generate", content=no_name, headers=multipart)
    assert "malformed multipart" in one_line_error(r, 400)
    part = b'--xx\r\nContent-Disposition: form-data; name="duration"\r\n\r\n1\r\n'
    r = client.post("/v1/generate", content=part + part + b"--xx--\r\n", headers=multipart)
    assert "given twice" in one_line_error(r, 400)
    long = {"content-type": "multipart/form-data; boundary=" + "b" * 5000}  # over python-multipart's maximum
    r = client.post("/v1/generate", content=b"--" + b"b" * 5000 + b"--\r\n", headers=long)
    assert "malformed multipart" in one_line_error(r, 400)
    r = client.post("/v1/generate", data={"duration": "1", "melody": "abc"})  # the file's name as a plain field
    assert "'melody' must be a file part" in one_line_error(r, 400)


def test_no_request_names_a_file(client, tmp_path):
    """A path in a field is refused, never opened; an upload's file name is ignored and never written."""
    target = tmp_path / "written-by-a-request.wav"
    r = client.post("/v1/generate", data={"duration": "0.3", "melody": "/etc/passwd"})
    assert "must be a file part" in one_line_error(r, 400)  # a melody is a file part, not a name
    body = {"duration": "0.3", "seed": "5", "prompt": "sad jazz"}
    named = client.post("/v1/generate", data=body, files={"melody": (str(target), wav_bytes(), "audio/wav")})
    plain = client.post("/v1/generate", data=body, files={"melody": ("m.wav", wav_bytes(), "audio/wav")})
    sneaky = client.post("/v1/generate", data=body, files={"melody": ("../../../etc/passwd", wav_bytes(), "audio/wav")})
    assert named.status_code == plain.status_code == sneaky.status_code == 200
    assert named.content == plain.content == sneaky.content and not target.exists()


def test_queue_full_is_503_with_retry_after(server):
    url, app = server
    batcher = app.state.batcher
    batcher.pause()
    try:
        with ThreadPoolExecutor(6) as pool:
            waiting = [pool.submit(post, url, prompt=f"q{i}", duration=0.2, seed=i) for i in range(6)]
            wait_queued(app, 6)
            r = post(url, prompt="one too many", duration=0.2)
            assert "busy" in one_line_error(r, 503) and r.headers["retry-after"] == "2"
            batcher.resume()
            assert all(f.result().status_code == 200 for f in waiting)
    finally:
        batcher.resume()
    assert 'status="503"' in httpx.get(url + "/metrics").text


def test_metrics_histograms_and_info(server):
    """Issue 24 item 21: latency histograms (request, queue wait, time to first audio), the batch size as
    a histogram, and process, build and model info, in the text format Prometheus parses."""
    url, _ = server
    before = httpx.get(url + "/metrics").text
    assert post(url, prompt="jazz", duration=0.2, seed=1).status_code == 200
    with httpx.stream("POST", url + "/v1/generate", json=dict(prompt="jazz", duration=0.2, stream=True),
                      timeout=60) as r:
        r.read()
    text = httpx.get(url + "/metrics").text
    for name in ("musicgen_queue_wait_seconds", "musicgen_time_to_first_audio_seconds", "musicgen_batch_size"):
        assert f"# TYPE {name} histogram" in text
        assert metric(text, name + "_count") == metric(before, name + "_count") + 2, name
        assert metric(text, f'{name}_bucket{{le="+Inf"}}') == metric(text, name + "_count")
    route = 'musicgen_request_seconds_count{route="/v1/generate"}'
    assert metric(text, route) == metric(before, route) + 2
    assert metric(text, 'musicgen_request_seconds_bucket{route="/v1/generate",le="300.0"}') == metric(text, route)
    assert metric(text, 'musicgen_batch_size_bucket{le="1"}') >= 2
    assert metric(text, "musicgen_time_to_first_audio_seconds_sum") > 0
    assert metric(text, "process_resident_memory_bytes") > 10e6 and metric(text, "process_cpu_seconds_total") > 0
    info = [line for line in text.splitlines() if line.startswith(("musicgen_build_info{", "musicgen_model_info{"))]
    assert len(info) == 2 and 'version="0.1.0"' in info[0] and 'family=' in info[1] and 'precision=' in info[1]
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(families) == len(set(families))  # each family once


def test_metrics_of_several_replicas_merge_into_one_family_each():
    """Under Ray Serve every scrape shows every replica's series, labelled, each family's HELP once."""
    from musicgen_onnx.serve.metrics import Metrics, render

    a, b = Metrics(labels={"replica": "a"}), Metrics(labels={"replica": "b"})
    a.request("/health", 200)
    b.request("/health", 200)
    b.batch(3, 10, 1.0, 2.0)
    text = render([a.families(0, 0), b.families(1, 0)])
    assert text.count("# TYPE musicgen_requests_total counter") == 1
    assert 'musicgen_requests_total{replica="a",route="/health",status="200"} 1' in text
    assert 'musicgen_requests_total{replica="b",route="/health",status="200"} 1' in text
    assert 'musicgen_batch_size_bucket{replica="b",le="4"} 1' in text
    assert 'musicgen_batch_size_bucket{replica="a",le="4"} 0' in text
    assert 'musicgen_queue_length{replica="b"} 1' in text


# ---------------------------------------------------------------- batching
def test_concurrent_requests_share_a_batch_and_rows_keep_their_seeds(server):
    url, app = server
    bodies = [dict(prompt=p, duration=0.5, seed=100 + i, normalize="none") for i, p in enumerate(SAME_LENGTH)]
    alone = [post(url, **b) for b in bodies]  # one at a time: each a batch of 1
    assert [r.headers["x-batch-size"] for r in alone] == ["1"] * 4
    before = metric(httpx.get(url + "/metrics").text, 'musicgen_batches_total{size="4"}')
    app.state.batcher.pause()
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(post, url, **b) for b in reversed(bodies)]
            wait_queued(app, 4)
            app.state.batcher.resume()
            together = [f.result() for f in futures][::-1]
    finally:
        app.state.batcher.resume()
    assert [r.headers["x-batch-size"] for r in together] == ["4"] * 4
    assert [r.content for r in together] == [r.content for r in alone]
    after = metric(httpx.get(url + "/metrics").text, 'musicgen_batches_total{size="4"}')
    assert after == before + 1


def test_batching_happens_without_pausing(server):
    """Four clients at once, no help: the 300 ms wait gathers them into fewer calls than requests."""
    url, _ = server
    with ThreadPoolExecutor(4) as pool:
        rs = list(pool.map(lambda p: post(url, prompt=p, duration=0.3, seed=1), SAME_LENGTH))
    assert all(r.status_code == 200 for r in rs) and max(int(r.headers["x-batch-size"]) for r in rs) > 1


def test_incompatible_requests_do_not_share_a_batch(server):
    url, app = server
    bodies = [dict(prompt="sad jazz", duration=0.3, seed=1), dict(prompt="happy rock", duration=0.3, seed=1),
              dict(prompt="sad jazz", duration=0.4, seed=1), dict(prompt="lofi beat", duration=0.3, seed=1, top_k=5)]
    app.state.batcher.pause()
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(post, url, **b) for b in bodies]
            wait_queued(app, 4)
            app.state.batcher.resume()
            sizes = [f.result().headers["x-batch-size"] for f in futures]
    finally:
        app.state.batcher.resume()
    assert sizes == ["1"] * 4  # token length, duration, sampling settings each split the batch


def test_melody_requests_batch_by_melody_length_and_keep_their_seeds(server):
    url, app = server

    def send(prompt, seconds, freq, seed):
        return httpx.post(url + "/v1/generate", data={"prompt": prompt, "duration": "0.4", "seed": str(seed)},
                          files={"melody": ("m.wav", wav_bytes(seconds, freq), "audio/wav")}, timeout=60)

    jobs = [("sad jazz", 1.0, 220, 1), ("lofi beat", 1.0, 330, 2), ("calm piano", 1.5, 440, 3)]
    alone = [send(*j) for j in jobs]
    app.state.batcher.pause()
    try:
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(send, *j) for j in jobs]
            wait_queued(app, 3)
            app.state.batcher.resume()
            together = [f.result() for f in futures]
    finally:
        app.state.batcher.resume()
    assert [r.headers["x-batch-size"] for r in together] == ["2", "2", "1"]  # the 1.5 s melody batches alone
    assert [r.content for r in together] == [r.content for r in alone]


@pytest.mark.slow  # disconnect
def test_a_client_leaving_the_queue_gives_up_its_place(server):
    url, app = server
    before = metric(httpx.get(url + "/metrics").text, "musicgen_cancelled_rows_total")
    app.state.batcher.pause()
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/generate", json={"prompt": "gone", "duration": 0.3}, timeout=0.5)
        for _ in range(100):
            if app.state.batcher.queue_length() == 0:
                break
            time.sleep(0.05)
        assert app.state.batcher.queue_length() == 0
    finally:
        app.state.batcher.resume()
    assert metric(httpx.get(url + "/metrics").text, "musicgen_cancelled_rows_total") == before + 1


# ---------------------------------------------------------------- streaming
def test_stream_sends_a_wav_as_it_is_generated(server, model):
    url, _ = server
    t0 = time.perf_counter()
    with httpx.stream("POST", url + "/v1/generate", json=dict(prompt="techno", duration=3, seed=4, stream=True),
                      timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
        parts, first = [], None
        for part in r.iter_raw():
            if first is None and part:
                first = time.perf_counter() - t0
            parts.append(part)
    total = time.perf_counter() - t0
    data = b"".join(parts)
    assert data[:4] == b"RIFF" and struct.unpack("<I", data[40:44])[0] == 0xFFFFFFFF
    pcm = np.frombuffer(data[44:], dtype="<i2")
    assert pcm.shape[0] == 3 * SR
    wav = model.generate(["techno"], duration=3, seed=4)[0, 0]
    assert np.abs(pcm / 32767 - np.clip(wav, -1, 1)).max() < 2e-3  # span decoding vs one-shot, plus 16-bit rounding
    assert first < total


def test_client_leaving_mid_stream_stops_its_batch(server):
    url, _ = server
    before = httpx.get(url + "/metrics").text
    with httpx.stream("POST", url + "/v1/generate", json=dict(prompt="techno", duration=12, stream=True),
                      timeout=60) as r:
        assert r.status_code == 200
        got = 0
        for part in r.iter_raw():  # the header, then the first second of audio: then hang up
            got += len(part)
            if got > 44:
                break
    for _ in range(200):
        after = httpx.get(url + "/metrics").text
        if metric(after, "musicgen_stopped_batches_total") > metric(before, "musicgen_stopped_batches_total"):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the batch ran on after its only client left")
    assert metric(after, "musicgen_cancelled_rows_total") >= 1
    steps = metric(after, "musicgen_steps_total") - metric(before, "musicgen_steps_total")
    assert steps < 12 * 50  # stopped well before the 603 steps of a 12 s clip
    assert post(url, prompt="still here", duration=0.2).status_code == 200


def stream_bytes(url: str, body: dict, leave_after: int | None = None) -> bytes:
    """The streamed response's bytes; with ``leave_after``, hang up once that many have come."""
    got = []
    with httpx.stream("POST", url + "/v1/generate", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        for part in r.iter_raw():
            got.append(part)
            if leave_after is not None and sum(map(len, got)) > leave_after:
                break
    return b"".join(got)


def paused_together(app, *calls):
    """Run ``calls`` at once while the worker is held, so that they land in one batch; their results."""
    app.state.batcher.pause()
    try:
        with ThreadPoolExecutor(len(calls)) as pool:
            futures = [pool.submit(call) for call in calls]
            wait_queued(app, len(calls))
            app.state.batcher.resume()
            return [f.result() for f in futures]
    finally:
        app.state.batcher.resume()


@pytest.fixture
def slow_steps(monkeypatch):
    """Each decoder step takes at least 4 ms, so a batch outlasts the hang-up and its detection (a 0.25 s
    poll) on any machine: without it a fast machine finishes the tiny model's batch first (seen in CI)."""
    from musicgen_onnx.runtime import stepper

    for cls in (stepper.ConcatStepper, stepper.StaticStepper):
        run = cls.run

        def slowed(self, ids, new_positions, _run=run):
            time.sleep(0.004)
            return _run(self, ids, new_positions)

        monkeypatch.setattr(cls, "run", slowed)


@pytest.mark.slow  # disconnect
def test_a_client_leaving_mid_stream_frees_its_row_and_its_batch_mate_goes_on(server, slow_steps):
    url, app = server
    stay = dict(prompt="sad jazz", duration=8, seed=21)  # long enough to outlast the hang-up on a fast machine
    leave = dict(prompt="lofi beat", duration=8, seed=22)
    solo = stream_bytes(url, stay)
    before = httpx.get(url + "/metrics").text
    together, partial = paused_together(app, lambda: stream_bytes(url, stay),
                                        lambda: stream_bytes(url, leave, leave_after=44 + 2 * SR))
    after = httpx.get(url + "/metrics").text
    assert len(partial) < len(solo) == 44 + 2 * 8 * SR
    assert together == solo  # same codes, and the codec gives the same samples at batch 2 and 1
    delta = {name: metric(after, name) - metric(before, name) for name in (
        "musicgen_freed_rows_total", "musicgen_cancelled_rows_total", "musicgen_stopped_batches_total",
        'musicgen_batches_total{size="2"}', "musicgen_steps_total")}
    # the row left the batch before its end (a row still live at the end is cancelled, not freed)
    assert delta == {"musicgen_freed_rows_total": 1, "musicgen_cancelled_rows_total": 1,
                     "musicgen_stopped_batches_total": 0, 'musicgen_batches_total{size="2"}': 1,
                     "musicgen_steps_total": 8 * 50 + 3}


@pytest.mark.slow  # disconnect
def test_a_client_leaving_a_running_batch_frees_its_row(server, slow_steps):
    """Not streamed: the client that gives up waiting is dropped from the batch; its mate's file is the
    one it gets alone."""
    url, app = server
    stay = dict(prompt="calm piano", duration=12, seed=31)  # 603 steps: still running when the other leaves
    solo = post(url, **stay)
    before = metric(httpx.get(url + "/metrics").text, "musicgen_freed_rows_total")

    def give_up():
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/generate", json=dict(prompt="soft piano", duration=12, seed=32), timeout=0.8)

    together, _ = paused_together(app, lambda: post(url, **stay), give_up)
    assert together.headers["x-batch-size"] == "2" and together.content == solo.content
    assert metric(httpx.get(url + "/metrics").text, "musicgen_freed_rows_total") == before + 1


# ---------------------------------------------------------------- the command
def test_sigterm_drains_the_queue_then_stops(tmp_path):
    port = free_port()
    proc = subprocess.Popen([*CLI, "serve", "--port", str(port), "--max-wait-ms", "1500", "--max-batch", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, timeout_s=30)
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(post, url, prompt=p, duration=0.5, seed=1) for p in SAME_LENGTH[:3]]
            for _ in range(200):  # all three queued, waiting for batch mates
                if metric(httpx.get(url + "/metrics").text, "musicgen_queue_length") >= 3:
                    break
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            results = [f.result() for f in futures]
        assert [r.status_code for r in results] == [200] * 3
        assert all(sf.info(io.BytesIO(r.content)).frames == SR // 2 for r in results)
        out, _ = proc.communicate(timeout=30)
        # uvicorn re-raises the SIGTERM it caught once shutdown is complete: death by that signal, after the drain
        assert proc.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in out, out
        assert f"http://127.0.0.1:{port}" in out  # the default bind address
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("field, flag", [("max_wait_ms", "--max-wait-ms"), ("max_duration", "--max-duration"),
                                         ("body_timeout_s", "--body-timeout"),
                                         ("stream_stall_s", "--stream-stall-timeout"),
                                         ("header_timeout_s", "--header-timeout"),
                                         ("graceful_timeout_s", "--graceful-timeout")])
def test_a_setting_out_of_range_names_the_serve_flag_that_sets_it(field, flag):
    from musicgen_onnx.cli import serve
    from musicgen_onnx.runtime.errors import InvalidInputError
    from musicgen_onnx.serve.server import ServerOptions

    assert flag in [opt for p in serve.params for opt in p.opts]
    settings = ServeSettings if field in ServeSettings.__dataclass_fields__ else ServerOptions
    with pytest.raises(InvalidInputError, match=f"^{flag} must be .*, got nan$"):
        settings(**{field: float("nan")}).check()


def test_serve_help_lists_every_route(model):
    from click.testing import CliRunner

    from musicgen_onnx.cli import main

    help_text = " ".join(CliRunner().invoke(main, ["serve", "--help"], terminal_width=1000).stdout.split())
    for path in {r.path.replace("{result_id}", "ID") for r in create_app(model).routes}:
        assert path.replace("/health/", "/") in help_text or path in help_text, path


def serve_with_fake_ray(monkeypatch, *args):
    """``serve --ray ARGS`` with Ray faked: (exit code, output, the RayOptions ray_app.run got)."""
    import types

    from click.testing import CliRunner

    from musicgen_onnx.cli import main
    from musicgen_onnx.serve import ray_app

    fake = types.ModuleType("ray")
    fake.serve = types.ModuleType("ray.serve")
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setitem(sys.modules, "ray.serve", fake.serve)
    got = {}
    monkeypatch.setattr(ray_app, "run", lambda *a, **k: got.setdefault("args", a))
    r = CliRunner().invoke(main, ["serve", "--ray", "--replicas", "1", "--provider", "cpu", *args])
    return r.exit_code, r.output, got["args"][4] if "args" in got else None


def test_serve_ray_passes_the_stems_folder_to_each_replica(monkeypatch):
    """serve --ray with the bundled model (or --stems): each replica's app has the stems endpoint, as
    without --ray (it was dropped: the page's stems panel said 'no stems model'). Ray itself is faked."""
    from starlette.testclient import TestClient

    from musicgen_onnx.cli import BUNDLED_STEMS
    from musicgen_onnx.serve import ray_app

    code, output, options = serve_with_fake_ray(monkeypatch)
    assert code == 0, output
    assert options.stems_dir == str(BUNDLED_STEMS)
    app = ray_app.build_app(str(BUNDLED), ServeSettings(), "cpu", 1, stems_dir=options.stems_dir)
    with TestClient(app) as client:
        assert client.get("/v1/stems").json()["sources"] == ["drums", "bass", "other", "vocals"]


def test_serve_stems_takes_the_bundled_name_and_refuses_an_empty_one(monkeypatch):
    from musicgen_onnx.cli import BUNDLED_STEMS

    code, output, options = serve_with_fake_ray(monkeypatch, "--model", str(BUNDLED), "--stems", "tiny-stems")
    assert code == 0 and options.stems_dir == str(BUNDLED_STEMS), output  # as `stems --model tiny-stems`
    code, output, _ = serve_with_fake_ray(monkeypatch, "--stems", "")
    assert code == 2 and "error: the model is empty ('')" in output, output


def test_missing_extra_is_one_line():
    code = ("import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None; "
            "from musicgen_onnx.cli import main; sys.argv = ['musicgen-onnx', 'serve']; main()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "pip install 'musicgen-onnx[serve]'" in r.stderr


def test_the_runtime_never_imports_the_web_stack():
    code = ("import sys, musicgen_onnx.runtime as rt, musicgen_onnx.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn', 'multipart')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
