"""Hostile HTTP clients (issue 24): numbers that overflow, malformed or cut-off multipart bodies, bytes
that are not text, slow bodies, stalled streams, credentials, shutdown with stalled clients. Each case
answers in one line (a 4xx, or a dropped connection) and never takes the service down."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import serving
from musicgen_onnx.runtime import InvalidInputError
from musicgen_onnx.serve import ServeSettings, create_app
from musicgen_onnx.serve.health import wait_until_healthy
from test_serve import SR, wav_bytes
from test_serve import one_line_error as serve_error

HUGE = "9" * 400  # a JSON integer no float holds


@pytest.fixture(scope="module")
def server(model):
    app = create_app(model, ServeSettings(max_batch=4, max_wait_ms=20, max_queue=6, max_duration=12))
    with serving(app) as url:
        yield url, app


def one_line_error(r: httpx.Response, status: int) -> str:
    message = serve_error(r, status)
    assert len(message) < 300  # a hostile value is named, not echoed whole
    return message


def multipart(*parts: tuple[str, bytes, str | None], close: bool = True) -> bytes:
    """A multipart body by hand: (name, data, filename or None) per part; ``close=False`` leaves out the
    closing boundary, as a cut-off upload does."""
    out = b""
    for name, data, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--xx\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + (b"--xx--\r\n" if close else b"")


MULTIPART = {"content-type": "multipart/form-data; boundary=xx"}


# ---------------------------------------------------------------- item 6: numbers no float holds
@pytest.mark.parametrize("name", ["duration", "top_p", "temperature", "guidance"])
def test_a_400_digit_number_is_a_400_as_json_and_as_a_form_field(server, name):
    url, _ = server
    r = httpx.post(url + "/v1/generate", content=f'{{"{name}": {HUGE}}}', headers={"content-type": "application/json"})
    assert "finite number" in one_line_error(r, 400)
    r = httpx.post(url + "/v1/generate", content=multipart((name, HUGE.encode(), None)), headers=MULTIPART)
    assert "finite number" in one_line_error(r, 400)


@pytest.mark.parametrize("option", ["duration", "top_p", "temperature", "guidance_scale"])
def test_the_python_api_refuses_a_number_no_float_holds_in_one_line(model, option):
    with pytest.raises(InvalidInputError) as info:
        model.generate(["x"], **{option: 10 ** 400})
    assert "finite number" in str(info.value) and "\n" not in str(info.value) and len(str(info.value)) < 200


# ---------------------------------------------------------------- items 7-9: multipart read strictly
def test_a_deeply_nested_form_number_is_a_400(server):
    r = httpx.post(server[0] + "/v1/generate", content=multipart(("duration", b"[" * 3000, None)), headers=MULTIPART)
    assert "not a number" in one_line_error(r, 400)


def test_a_multipart_body_without_its_closing_boundary_is_a_400(server):
    """The melody part is cut off with the boundary: the request must not be generated without it."""
    body = multipart(("duration", b"1", None), ("melody", wav_bytes(), "m.wav"), close=False)
    r = httpx.post(server[0] + "/v1/generate", content=body, headers=MULTIPART)
    assert "closing boundary" in one_line_error(r, 400)


@pytest.mark.parametrize("ctype", ["multipart/form-data; boundary=xx", "application/x-www-form-urlencoded"])
def test_an_empty_form_body_is_a_400(server, ctype):
    r = httpx.post(server[0] + "/v1/generate", content=b"", headers={"content-type": ctype})
    assert "empty" in one_line_error(r, 400)


def test_a_prompt_that_is_not_utf8_is_a_400_as_in_json(server):
    url, _ = server
    bad = "café".encode("latin-1")
    r = httpx.post(url + "/v1/generate", content=multipart(("prompt", bad, None), ("duration", b"0.3", None)),
                   headers=MULTIPART)
    assert "UTF-8" in one_line_error(r, 400)
    r = httpx.post(url + "/v1/generate", content=b'{"prompt": "caf\xe9"}', headers={"content-type": "application/json"})
    one_line_error(r, 400)
    r = httpx.post(url + "/v1/generate", content=b"prompt=caf%E9&duration=0.3",
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert "UTF-8" in one_line_error(r, 400)
    ok = httpx.post(url + "/v1/generate", content=multipart(("prompt", "café".encode(), None),
                                                            ("duration", b"0.3", None)), headers=MULTIPART)
    assert ok.status_code == 200, ok.text


# ---------------------------------------------------------------- item 3: a stream its client stops reading
@contextlib.contextmanager
def small_buffer_server(model, **settings):
    """A server whose accepted sockets have 8 KiB send buffers (they inherit the listener's): a client that
    stops reading blocks the server's writes at once instead of after megabytes of kernel buffer."""
    import uvicorn

    app = create_app(model, ServeSettings(max_batch=4, max_wait_ms=20, max_duration=12, **settings))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        assert wait_until_healthy(url, 30)
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def unread_stream(url: str, seconds: float) -> socket.socket:
    """Ask for a streamed clip on a socket with a 4 KiB receive buffer, and read nothing."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, int(port)))
    body = json.dumps({"prompt": "techno", "duration": seconds, "stream": True}).encode()
    s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return s


def dropped(s: socket.socket, full: int, timeout: float = 20) -> bool:
    """Read what the server sent; True when it closed the connection before ``full`` bytes."""
    s.settimeout(timeout)
    got = 0
    while True:
        data = s.recv(65536)
        if not data:
            return got < full
        got += len(data)


@pytest.mark.parametrize("limits", [dict(stream_buffer_bytes=64 * 1024),  # over the buffer
                                    dict(stream_stall_s=0.5)])  # no byte taken for 0.5 s
def test_a_stream_its_client_stops_reading_is_dropped_and_its_row_freed(model, limits):
    from test_serve import metric

    with small_buffer_server(model, **limits) as url:
        s = unread_stream(url, 12)
        try:
            for _ in range(300):  # the row leaves its batch before the clip's end: freed, the batch stopped
                text = httpx.get(url + "/metrics").text
                if metric(text, "musicgen_stopped_batches_total") >= 1:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the unread stream's batch ran to its end")
            assert metric(text, "musicgen_freed_rows_total") == 1
            assert dropped(s, 44 + 2 * 12 * SR)  # and the connection is closed, the clip short
        finally:
            s.close()
        assert httpx.post(url + "/v1/generate", json={"duration": 0.3}).status_code == 200


def test_an_unread_stream_holds_at_most_its_buffer_bytes():
    """The memory bound itself: 250 s of stereo chunks offered to a stream nobody reads keep at most the
    limit's worth of audio (before: all of it, ~64 MB per stream), then only the drop marker."""
    import asyncio

    import numpy as np

    from musicgen_onnx.serve.streaming import DROPPED, StreamBuffer

    async def offer():
        dropped = []
        buf = StreamBuffer(1 << 20, lambda: dropped.append(True))
        peak = 0
        for _ in range(250):
            buf.put_nowait(np.zeros((2, SR), np.float32))
            held = sum(item.size * item.itemsize for item in list(buf._queue) if isinstance(item, np.ndarray))
            peak = max(peak, held)
        return peak, list(buf._queue), dropped

    peak, left, dropped = asyncio.run(offer())
    assert peak <= 2 * (1 << 20)  # float32 chunks are counted as the 16-bit bytes they become: 2x in memory
    assert left == [DROPPED] and dropped == [True]


# ---------------------------------------------------------------- item 4: slow bodies
def raw(url: str, data: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(data)
    return s


def test_over_the_connection_cap_the_503_is_the_apps_json_error_with_retry_after(model):
    """uvicorn's own cap answered plain text "Service Unavailable" without Retry-After (servex leftover)."""
    import uvicorn

    from musicgen_onnx.serve.health import free_port
    from musicgen_onnx.serve.server import ConnectionCap

    app = create_app(model, ServeSettings())
    capped = ConnectionCap(app, 3, app.state.settings.retry_after_s)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(capped, host="127.0.0.1", port=port, log_level="warning"))
    capped.server_state = server.server_state
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    held = []
    try:
        assert wait_until_healthy(url, 30)
        held = [raw(url, b"") for _ in range(2)]  # two idle connections; the next request is the third
        time.sleep(0.2)
        r = httpx.get(url + "/health", timeout=5)
        assert "--max-connections 3" in serve_error(r, 503) and r.headers["retry-after"] == "2"
        for s in held:
            s.close()
        time.sleep(0.2)
        assert httpx.get(url + "/health", timeout=5).status_code == 200
    finally:
        for s in held:
            s.close()
        server.should_exit = True
        thread.join(10)


def test_a_body_that_does_not_arrive_in_time_is_a_408_and_the_connection_closed(model):
    app = create_app(model, ServeSettings(body_timeout_s=0.5))
    with serving(app) as url:
        s = raw(url, b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"du")
        s.settimeout(10)
        t0 = time.monotonic()
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
        s.close()
        assert answer.startswith(b"HTTP/1.1 408") and b"took over 0.5 s" in answer, answer
        assert time.monotonic() - t0 < 5


# ---------------------------------------------------------------- item 22: access and traceability
KEY = "k" * 12 + "-secret"


def test_api_key_cors_request_id_and_live_ready_health(model):
    app = create_app(model, ServeSettings(api_key=KEY, cors_origins=("https://app.example",)))
    with serving(app) as url:
        r = httpx.post(url + "/v1/generate", json={"duration": 0.3})
        assert "API key" in one_line_error(r, 401) and r.headers["www-authenticate"] == "Bearer"
        r = httpx.post(url + "/v1/generate", json={"duration": 0.3}, headers={"Authorization": "Bearer wrong"})
        one_line_error(r, 401)
        one_line_error(httpx.get(url + "/metrics"), 401)
        auth = {"Authorization": f"Bearer {KEY}"}
        r = httpx.post(url + "/v1/generate", json={"duration": 0.3}, headers={**auth, "X-Request-ID": "trace-7"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "trace-7"
        ids = {httpx.get(url + "/health").headers["x-request-id"] for _ in range(2)}
        assert len(ids) == 2  # a fresh id when none is sent
        # not a sane token (a space; every HTTP parser uvicorn may use passes it through): a fresh id instead
        assert httpx.get(url + "/nowhere", headers={"X-Request-ID": "bad id"}).headers["x-request-id"] != "bad id"
        pre = httpx.options(url + "/v1/generate", headers={"Origin": "https://app.example",
                                                           "Access-Control-Request-Method": "POST",
                                                           "Access-Control-Request-Headers": "authorization"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.options(url + "/v1/generate", headers={"Origin": "https://evil.example",
                                                             "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in other.headers
        assert httpx.get(url + "/health/live").json()["status"] == "live"
        assert httpx.get(url + "/health/ready").json()["status"] == "ready"
        app.state.batcher.stop(timeout=10)  # what SIGTERM starts: the queue drains, new work is refused
        ready = httpx.get(url + "/health/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert httpx.get(url + "/health").json() == {**httpx.get(url + "/health").json(), "status": "draining",
                                                     "draining": True}
        assert httpx.get(url + "/health/live").status_code == 200
        assert "shutting down" in one_line_error(httpx.post(url + "/v1/generate", json={}, headers=auth), 503)


@pytest.mark.parametrize("key", ["short", "has a space in it ok", "x" * 600])
def test_a_bad_api_key_setting_is_one_line(key):
    with pytest.raises(InvalidInputError, match="api-key"):
        ServeSettings(api_key=key).check()


# ---------------------------------------------------------------- items 4-5 and 22 on the command
def test_the_command_under_slow_clients_and_sigterm_with_a_stalled_client(tmp_path):
    """``serve`` under a 160-file limit: 200 connections that send nothing or a few body bytes get quick
    503s or are closed by the deadlines, /health answers again, the log has one line per event (JSON,
    the app's own info lines kept, no traceback); SIGTERM with a request queued and a half-sent body open
    finishes the request, then exits after the grace."""
    import resource
    import signal
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    from helpers import CLI
    from musicgen_onnx.serve.health import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def low_fd_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (160, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*CLI, "serve", "--port", str(port), "--log-format", "json", "--header-timeout", "1",
                                 "--body-timeout", "5", "--graceful-timeout", "1", "--max-wait-ms", "1500"],
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=low_fd_limit)
    held = []
    try:
        assert wait_until_healthy(url, 30)
        for i in range(200):  # half send nothing, half headers and 5 of 100 body bytes
            try:
                held.append(raw(url, b"" if i % 2 else b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                                       b"application/json\r\nContent-Length: 100\r\n\r\n{\"a\":"))
            except OSError:
                pass
        t0 = time.monotonic()
        r = httpx.get(url + "/health", timeout=5)  # answered at once: 200, or 503 while over the cap
        assert r.status_code in (200, 503) and time.monotonic() - t0 < 2
        assert wait_until_healthy(url, 15)  # the deadlines free what the slow clients held
        for s in held:
            s.close()
        stalled = raw(url, b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 100\r\n\r\n{")
        with ThreadPoolExecutor(1) as pool:
            queued = pool.submit(httpx.post, url + "/v1/generate", json={"duration": 0.5}, timeout=30)
            for _ in range(200):  # queued: waiting 1.5 s for batch mates
                if httpx.get(url + "/health").json()["queue"] == 1:
                    break
                time.sleep(0.02)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert queued.result().status_code == 200
        proc.wait(timeout=15)
        took = time.monotonic() - t0
        assert took < 6, took  # the drain, the 1 s grace, the close
        stalled.close()
    finally:
        for s in held:
            s.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(records) == len([line for line in lines if line.strip()]) - 2  # the two banner lines, then JSON
    messages = " | ".join(r["message"] for r in records)
    assert "Traceback" not in log.read_text() and "Too many open files" not in messages.replace(
        "cannot accept connections: Too many open files", "")
    accept_lines = sum("cannot accept connections" in r["message"] for r in records)
    assert accept_lines <= 40  # at most one a second, whatever the backlog of failed accepts
    assert "batch of 1" in messages and "no complete request headers" in messages  # the app's info lines
    assert "closing 1 connection(s) still open after the 1 s grace" in messages


# ---------------------------------------------------------------- item 23: a spec generated clients can use
def test_openapi_defaults_sit_in_their_enums_and_operations_are_named(server):
    url, _ = server
    spec = httpx.get(url + "/openapi.json").json()
    schemas = spec["components"]["schemas"]

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                assert node["$ref"].rsplit("/", 1)[1] in schemas, node
            if "enum" in node and "default" in node:
                assert node["default"] in node["enum"], node
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    ops = [op for path in spec["paths"].values() for op in path.values()]
    ids = [op["operationId"] for op in ops]
    assert len(set(ids)) == len(ids) == len(ops)
    for path in ("/v1/generate", "/v1/continue"):
        assert {"400", "500", "503"} <= set(spec["paths"][path]["post"]["responses"])
    for path, name in (("/v1/model", "ModelInfo"), ("/health", "Health"), ("/health/ready", "Health")):
        content = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
        assert content["schema"] == {"$ref": f"#/components/schemas/{name}"}
    facts = httpx.get(url + "/v1/model").json()
    assert set(facts) == set(schemas["ModelInfo"]["properties"])
    assert set(httpx.get(url + "/health").json()) == set(schemas["Health"]["properties"])
    # what a generated client sends when the caller leaves every option at its default
    defaults = {name: prop["default"] for name, prop in schemas["GenerateOptions"]["properties"].items()
                if "default" in prop}
    assert defaults and httpx.post(url + "/v1/generate", json={**defaults, "duration": 0.3}).status_code == 200


# ---------------------------------------------------------------- the hostile-request fuzzer
def _json_values():
    scalars = (st.none() | st.booleans() | st.integers(-(10 ** 500), 10 ** 500) | st.floats(allow_nan=True)
               | st.text(max_size=50) | st.sampled_from(["[" * 3000, "1e400", "-0", "wav", "none", "loudness"]))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                           max_size=4), max_leaves=8)


FIELD_NAMES = st.sampled_from(["prompt", "duration", "seed", "top_k", "top_p", "temperature", "guidance", "greedy",
                               "stream", "format", "normalize", "melody", "audio"]) | st.text(max_size=12)
PART_DATA = (st.binary(max_size=200) | st.sampled_from([b"0.3", b"[" * 3000, HUGE.encode(), "café".encode("latin-1"),
                                                        b"true", b"RIFF\xff\xff\xff\xffWAVE"])
             | st.builds(lambda v: json.dumps(v).encode(), _json_values()))


@st.composite
def hostile_requests(draw):
    """(path, body bytes, content type): any JSON value, any multipart shape, any bytes."""
    path = draw(st.sampled_from(["/v1/generate", "/v1/continue"]))
    kind = draw(st.sampled_from(["json-object", "json-any", "multipart", "urlencoded", "bytes"]))
    if kind == "json-object":
        body = draw(st.dictionaries(FIELD_NAMES, _json_values(), max_size=5))
        return path, json.dumps(body).encode(), "application/json"
    if kind == "json-any":
        return path, json.dumps(draw(_json_values())).encode(), "application/json"
    if kind == "multipart":
        parts = draw(st.lists(st.tuples(FIELD_NAMES, PART_DATA, st.none() | st.just("f.wav")), max_size=5))
        if draw(st.booleans()):
            parts.append(("melody" if path == "/v1/generate" else "audio", wav_bytes(0.5), "m.wav"))
        body = b"".join(
            f'--xx\r\nContent-Disposition: form-data; name="{name}"{f"; filename={fn!r}" if fn else ""}\r\n\r\n'.encode(
                "utf-8", "surrogatepass") + data + b"\r\n" for name, data, fn in parts)
        ending = draw(st.sampled_from([b"--xx--\r\n", b"--xx--", b"", b"--xx", b"garbage"]))
        return path, body + ending, draw(st.sampled_from(["multipart/form-data; boundary=xx", "multipart/form-data",
                                                          "multipart/form-data; boundary="]))
    if kind == "urlencoded":
        return path, draw(st.binary(max_size=200)), "application/x-www-form-urlencoded"
    return path, draw(st.binary(max_size=300)), draw(st.sampled_from(["application/json", "text/plain", "",
                                                                     "multipart/form-data; boundary=xx"]))


@pytest.fixture(scope="module")
def in_process(model):
    from starlette.testclient import TestClient

    app = create_app(model, ServeSettings(max_batch=4, max_wait_ms=0, max_duration=0.3, body_timeout_s=5))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(request=hostile_requests())
def test_fuzz_hostile_requests_never_give_500(in_process, request):
    path, body, ctype = request
    t0 = time.monotonic()
    r = in_process.post(path, content=body, headers={"content-type": ctype} if ctype else {})
    assert time.monotonic() - t0 < 10  # within a deadline
    assert r.status_code < 500, (r.status_code, r.text[:200])
    if r.status_code >= 400:
        one_line_error(r, r.status_code)


def test_tls_from_certificate_files_and_a_bad_key_is_one_line(tmp_path, cli):
    import shutil
    import subprocess

    from helpers import CLI
    from musicgen_onnx.serve.health import free_port

    openssl = shutil.which("openssl")
    assert openssl, "the TLS test makes its certificate with the openssl command"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    bad = cli("serve", "--ssl-certfile", cert, "--ssl-keyfile", cert)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") <= 1 and "certificate" in bad.stderr, bad.stderr
    port = free_port()
    proc = subprocess.Popen([*CLI, "serve", "--port", str(port), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trust = ssl.create_default_context(cafile=str(cert))
    r = None
    try:
        for _ in range(300):
            try:
                r = httpx.get(f"https://127.0.0.1:{port}/health/live", verify=trust, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert r is not None and r.status_code == 200 and r.json()["status"] == "live"
    finally:
        proc.terminate()
        proc.wait(30)
