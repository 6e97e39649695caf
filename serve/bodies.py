"""Request bodies -> option fields and at most one uploaded file, read strictly and within bounds.

Why not Starlette's ``request.form()``: it drops a last part whose closing boundary never came (a melody
silently lost), decodes a part that is not UTF-8 as Latin-1 (a prompt silently misread) and spools files
to disk. The body is read whole (it is bounded: 64 KiB JSON, 16 MiB multipart) under a deadline, then
parsed here in memory, so that each of those cases is a one-line 400 like the JSON path gives.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qsl

from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from .params import FIELDS, form_value
from .settings import MAX_JSON_BYTES, MAX_UPLOAD_BYTES


def error(status: int, message: str, headers: dict | None = None):
    """The service's one error shape: ``{"error": "<one line>"}``."""
    from starlette.responses import JSONResponse

    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


class HttpError(Exception):
    """A request answered with ``status`` and a one-line JSON error (and ``headers``)."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


async def read_fields(request, file_field: str, required: bool, limits) -> tuple[dict, bytes | None]:
    """JSON or form fields, and the uploaded file's bytes (or None). ``limits``: the ServeSettings (its
    body-read deadline). Nothing from the request names a file."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        body = await read_body(request, MAX_JSON_BYTES, limits.body_timeout_s)
        try:
            fields = json.loads(body)
        except (ValueError, RecursionError):
            raise HttpError(400, "the body is not valid JSON") from None
        if not isinstance(fields, dict):
            raise HttpError(400, f"the body must be a JSON object, got {type(fields).__name__}")
        if required:
            raise HttpError(400, f"this endpoint needs a multipart/form-data upload with a {file_field!r} file")
        return fields, None
    if ctype not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise HttpError(415, "send application/json or multipart/form-data")
    body = await read_body(request, MAX_UPLOAD_BYTES, limits.body_timeout_s)
    if not body:
        raise HttpError(400, f"the {ctype} body is empty: send the fields (and the file) as its parts")
    if ctype == "multipart/form-data":
        parts = multipart_parts(body, request.headers["content-type"], max_parts=len(FIELDS) + 1)
    else:
        parts = urlencoded_parts(body, max_parts=len(FIELDS) + 1)
    fields, upload = {}, None
    for name, data, is_file in parts:
        if name == file_field and is_file:
            if upload is not None:
                raise HttpError(400, f"more than one {file_field!r} file")
            upload = data
        elif not is_file and name != file_field:
            if name in fields:
                raise HttpError(400, f"field {name!r} given twice")
            text = _utf8(data, name)
            fields[name] = form_value(name, text) if name in FIELDS else text
        elif name == file_field:
            raise HttpError(400, f"{file_field!r} must be a file part (with a filename), not a plain field")
        else:
            raise HttpError(400, f"unexpected part {name[:40]!r}: the file goes in {file_field!r}, the options in "
                                 f"plain fields")
    if required and upload is None:
        raise HttpError(400, f"missing the {file_field!r} file")
    return fields, upload


async def read_body(request, limit: int, timeout_s: float) -> bytes:
    """The whole body, refused past ``limit`` bytes (413) or when it takes over ``timeout_s`` to arrive
    (408: a client sending a few bytes a minute holds a connection and a file descriptor)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or len(declared) > 18 or int(declared) > limit):
        raise HttpError(413, f"request body over {limit} bytes")
    chunks, size = [], 0

    async def read():
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"request body over {limit} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), timeout_s)
    except TimeoutError:
        raise HttpError(408, f"the request body took over {timeout_s:g} s to arrive ({size} bytes came)",
                        {"Connection": "close"}) from None
    return b"".join(chunks)


def multipart_parts(body: bytes, content_type: str, max_parts: int) -> list[tuple[str, bytes, bool]]:
    """``(name, bytes, is_file)`` per part of a complete multipart/form-data body."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise HttpError(400, "malformed multipart body: the content type has no boundary")
    parts: list[list] = []
    headers: dict[bytes, bytes] = {}
    header = [b"", b""]

    def on_part_begin():
        if len(parts) >= max_parts:
            raise HttpError(400, f"malformed multipart body: more than {max_parts} parts")
        headers.clear()
        parts.append([None, bytearray(), False])

    def on_header_field(data, start, end):
        header[0] += data[start:end]

    def on_header_value(data, start, end):
        header[1] += data[start:end]

    def on_header_end():
        headers[header[0].strip().lower()] = header[1]
        header[0] = header[1] = b""

    def on_headers_finished():
        _, options = parse_options_header(headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise HttpError(400, 'malformed multipart body: a part has no Content-Disposition "name"')
        parts[-1][0] = _utf8(options[b"name"], "a part's name")
        parts[-1][2] = b"filename" in options

    def on_part_data(data, start, end):
        parts[-1][1] += data[start:end]

    callbacks = dict(on_part_begin=on_part_begin, on_header_field=on_header_field, on_header_value=on_header_value,
                     on_header_end=on_header_end, on_headers_finished=on_headers_finished, on_part_data=on_part_data)
    try:
        parser = MultipartParser(boundary, callbacks)  # refuses a boundary over its maximum length
        parser.write(body)
    except HttpError:
        raise
    except Exception as exc:  # python-multipart's parse errors
        raise HttpError(400, f"malformed multipart body ({type(exc).__name__})") from None
    if parser.state != MultipartState.END:
        raise HttpError(400, "malformed multipart body: it ends before its closing boundary "
                             f"('--{boundary.decode('latin-1')[:70]}--'); was the upload cut off?")
    return [(name, bytes(data), is_file) for name, data, is_file in parts]


def urlencoded_parts(body: bytes, max_parts: int) -> list[tuple[str, bytes, bool]]:
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=True, encoding="utf-8",
                          errors="strict", max_num_fields=max_parts)
    except UnicodeDecodeError:
        raise HttpError(400, "a form field is not valid UTF-8 (percent-encoded)") from None
    except ValueError as exc:
        raise HttpError(400, f"malformed form body: {str(exc)[:80]}") from None
    return [(name, value.encode(), False) for name, value in pairs]


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HttpError(400, f"{what[:40]}: not valid UTF-8 (byte {exc.start}); send text as UTF-8") from None
