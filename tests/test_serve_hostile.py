"""Hostile HTTP clients (issue 24): numbers that overflow, malformed or cut-off multipart bodies, bytes
that are not text, slow bodies, stalled streams, credentials, shutdown with stalled clients. Each case
answers in one line (a 4xx, or a dropped connection) and never takes the service down."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import httpx
import pytest

from conftest import serving
from musicgen_onnx.runtime import InvalidInputError
from musicgen_onnx.serve import ServeSettings, create_app
from musicgen_onnx.serve.health import wait_until_healthy
from test_serve import SR, model, wav_bytes  # noqa: F401  (model: the module fixture, shared)
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
