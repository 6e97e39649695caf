"""Hostile HTTP clients (issue 24): numbers that overflow, malformed or cut-off multipart bodies, bytes
that are not text, slow bodies, stalled streams, credentials, shutdown with stalled clients. Each case
answers in one line (a 4xx, or a dropped connection) and never takes the service down."""

from __future__ import annotations

import httpx
import pytest

from conftest import serving
from musicgen_onnx.runtime import InvalidInputError
from musicgen_onnx.serve import ServeSettings, create_app
from test_serve import model, wav_bytes  # noqa: F401  (model: the module fixture, shared)
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
