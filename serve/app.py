"""The Starlette app: routes, body limits, one-line JSON errors, streaming, and the worker's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from ..runtime import audio as audio_io
from ..runtime.errors import MusicGenError
from .batcher import END, Batcher, Draining, Job, QueueFull
from .melody_view import melody_chroma
from .metrics import Metrics
from .openapi import openapi_spec
from .page import PAGE
from .params import DEFAULT_NORMALIZE, FIELDS, MEDIA_TYPES, RequestChecker, form_value
from .results import KeptStream, ResultStore
from .settings import MAX_JSON_BYTES, MAX_UPLOAD_BYTES, ServeSettings
from .stems import StemsService
from .uploads import decode_audio

logger = logging.getLogger(__name__)


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


def create_app(model, settings: ServeSettings, stems=None) -> Starlette:
    """``stems``: a :class:`~..runtime.stems.StemSeparator` for ``POST /v1/stems`` (default: the model
    folder's own, if it was exported with ``--stems``; none: no stems endpoint)."""
    settings = settings.check()
    metrics = Metrics()
    batcher = Batcher(model, settings, metrics)
    checker = RequestChecker(model, settings)
    m = model.manifest
    results = ResultStore()
    stems = stems if stems is not None else model.stems
    stems_service = StemsService(stems, settings.max_duration) if stems is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        logger.info("serving %s", model.folder)
        try:
            yield
        finally:  # uvicorn has finished every open request (SIGTERM: graceful); drain what is left
            await run_in_threadpool(batcher.stop)

    def keep_encoding(wav):
        """What a non-streamed request with the same fields gets (normalised WAV)."""
        return _encode(wav, model.sample_rate, DEFAULT_NORMALIZE, "wav"), MEDIA_TYPES["wav"]

    async def generate(request: Request) -> Response:
        return await _audio_request(request, "generate", "melody")

    async def continue_(request: Request) -> Response:
        return await _audio_request(request, "continue", "audio")

    async def _audio_request(request: Request, kind: str, file_field: str) -> Response:
        fields, upload = await _read_fields(request, file_field, required=kind == "continue")
        decoded = None
        if upload is not None:
            max_s = checker.settings.max_duration + m.max_duration + 1  # what any window could read
            decoded = await run_in_threadpool(decode_audio, upload, file_field, max_s)
        spec = await run_in_threadpool(checker.spec, kind, fields,
                                       decoded if kind == "generate" else None,
                                       decoded if kind == "continue" else None)
        job = Job(spec, asyncio.get_running_loop())
        if spec.key.stream:  # the normalised file, kept for GET /v1/results/{id} when the stream ends
            result_id = results.new_id()
            job.chunks = KeptStream(results, result_id, END, keep_encoding)
        try:
            batcher.submit(job)
        except QueueFull as exc:
            raise HttpError(503, f"server busy: {exc}; retry later", {"Retry-After": str(settings.retry_after_s)})
        except Draining as exc:
            raise HttpError(503, str(exc), {"Retry-After": str(settings.retry_after_s)})
        headers = {"X-Seed": str(spec.seed)}
        if spec.key.stream:
            headers["X-Result-Id"] = result_id
            return StreamingResponse(_stream(job), media_type="audio/wav", headers=headers)
        try:
            wav = await _wait(request, job)
        except ClientDisconnect:
            return Response(status_code=499)
        body = await run_in_threadpool(_encode, wav, model.sample_rate, spec.normalize, spec.format)
        headers["X-Batch-Size"] = str(job.batch_size)
        return Response(body, media_type=MEDIA_TYPES[spec.format], headers=headers)

    async def _wait(request: Request, job: Job):
        """The job's audio; a client that leaves while it waits gives up its place (or its row)."""
        while True:
            done, _ = await asyncio.wait({job.future}, timeout=0.25)
            if done:
                return job.future.result()
            if await request.is_disconnected():
                batcher.cancel(job)
                raise ClientDisconnect()

    async def _stream(job: Job):
        """A WAV header with unknown length (0xFFFFFFFF, as live streams write it), then 16-bit PCM as
        each chunk is generated. If the client leaves, the generator is closed: its row is cancelled."""
        finished = False
        try:
            yield wav_stream_header(model.sample_rate, model.audio_channels)
            while True:
                item = await job.chunks.get()
                if item is END:
                    finished = True
                    return
                if isinstance(item, BaseException):  # too late for a status code: the stream ends short
                    logger.warning("stream ended by an error: %s", item)
                    finished = True
                    return
                yield pcm16(item)
        finally:
            if not finished:
                batcher.cancel(job)

    async def model_info(request: Request) -> Response:
        src = m.source or {}
        d = model.options
        return JSONResponse({
            "checkpoint": src.get("checkpoint"), "family": m.family, "melody": m.is_melody,
            "sample_rate": m.sample_rate, "channels": m.audio_channels, "frame_rate": m.frame_rate,
            "window_s": m.max_duration, "codebooks": m.num_codebooks, "codebook_size": m.codebook_size,
            "precision": m.graphs["decoder"].precision, "kv_cache": m.kv_cache, "providers": model.providers,
            "can_continue": model.codec.can_encode,
            "defaults": {"duration": d.duration, "top_k": d.top_k, "top_p": d.top_p, "temperature": d.temperature,
                         "guidance": d.guidance_scale},
            "limits": {"max_duration_s": settings.max_duration, "max_batch": settings.max_batch,
                       "max_wait_ms": settings.max_wait_ms, "max_queue": settings.max_queue,
                       "max_json_bytes": MAX_JSON_BYTES, "max_upload_bytes": MAX_UPLOAD_BYTES},
        })

    async def kept_result(request: Request) -> Response:
        found = results.get(request.path_params["result_id"])
        if found is None:
            raise HttpError(404, f"no result {request.path_params['result_id'][:40]!r}: results of streamed requests "
                                 f"are kept for {results.ttl_s // 60:g} min, the newest {results.max_count}")
        return Response(found[0], media_type=found[1])

    def need_stems() -> StemsService:
        if stems_service is None:
            raise HttpError(404, "this server has no stems model (serve --stems FOLDER, or a model exported "
                                 "with --stems)")
        return stems_service

    async def stems_info(request: Request) -> Response:
        return JSONResponse(need_stems().facts())

    async def stems_separate(request: Request) -> Response:
        service = need_stems()
        fields, upload = await _read_fields(request, "audio", required=True)
        unknown = sorted(set(fields) - {"seed"})
        if unknown:
            raise HttpError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; known: 'seed' and the "
                                 f"'audio' file")
        seed = fields.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise HttpError(400, f"seed must be a non-negative integer, got {seed!r}")
        return JSONResponse(await run_in_threadpool(service.separate, upload, seed))

    async def chroma(request: Request) -> Response:
        if not m.is_melody:
            raise HttpError(404, "this model is text-only: it has no melody chroma")
        fields, upload = await _read_fields(request, "melody", required=True)
        if fields:
            raise HttpError(400, f"unexpected field(s) {', '.join(map(repr, sorted(fields)))}: send only the "
                                 f"'melody' file")
        decoded = await run_in_threadpool(decode_audio, upload, "melody", m.max_duration + 1)
        return JSONResponse(await run_in_threadpool(melody_chroma, decoded, m))

    async def health(request: Request) -> Response:
        # the pid tells replicas apart behind a proxy (Ray Serve)
        return JSONResponse({"status": "ok", "queue": batcher.queue_length(), "pid": os.getpid()})

    async def metrics_route(request: Request) -> Response:
        return PlainTextResponse(metrics.render(batcher.queue_length(), batcher.in_flight()),
                                 media_type="text/plain; version=0.0.4")

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_spec(settings))

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE)

    async def on_http_error(request, exc):
        if isinstance(exc, HttpError):
            return error(exc.status, str(exc), exc.headers)
        if isinstance(exc, MusicGenError):
            return error(400, str(exc))
        if isinstance(exc, HTTPException):
            return error(exc.status_code, exc.detail, getattr(exc, "headers", None))
        if isinstance(exc, ClientDisconnect):
            return Response(status_code=499)
        logger.error("unhandled error on %s", request.url.path, exc_info=exc)
        return error(500, "internal error; see the server log")

    routes = [
        Route("/", page), Route("/v1/generate", generate, methods=["POST"]),
        Route("/v1/continue", continue_, methods=["POST"]), Route("/v1/model", model_info),
        Route("/health", health), Route("/metrics", metrics_route), Route("/openapi.json", openapi),
        Route("/v1/results/{result_id}", kept_result), Route("/v1/stems", stems_info),
        Route("/v1/stems", stems_separate, methods=["POST"]), Route("/v1/chroma", chroma, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        Exception: on_http_error, HTTPException: on_http_error, HttpError: on_http_error,
        MusicGenError: on_http_error, ClientDisconnect: on_http_error})
    app.state.batcher, app.state.metrics = batcher, metrics
    known = {r.path for r in routes}
    return CountRequests(app, metrics, known)


async def _read_fields(request: Request, file_field: str, required: bool) -> tuple[dict, bytes | None]:
    """JSON or multipart fields, and the uploaded file's bytes (or None). The body is read with a byte
    limit before anything parses it; nothing from the request names a file."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        body = await _body(request, MAX_JSON_BYTES)
        try:
            fields = json.loads(body)
        except (ValueError, RecursionError):
            raise HttpError(400, "the body is not valid JSON") from None
        if not isinstance(fields, dict):
            raise HttpError(400, f"the body must be a JSON object, got {type(fields).__name__}")
        if required:
            raise HttpError(400, f"this endpoint needs a multipart/form-data upload with a {file_field!r} file")
        return fields, None
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        body = await _body(request, MAX_UPLOAD_BYTES)

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=len(FIELDS) + 1,
                                                             max_part_size=MAX_UPLOAD_BYTES)
        except HTTPException as exc:
            raise HttpError(400, f"malformed multipart body: {exc.detail}") from None
        except Exception as exc:  # python-multipart parse errors
            raise HttpError(400, f"malformed multipart body ({type(exc).__name__})") from None
        fields, upload = {}, None
        try:
            for name, value in form.multi_items():
                if name == file_field and not isinstance(value, str):
                    upload = await value.read()
                elif isinstance(value, str) and name != file_field:
                    if name in fields:
                        raise HttpError(400, f"field {name!r} given twice")
                    fields[name] = form_value(name, value) if name in FIELDS else value
                else:
                    raise HttpError(400, f"unexpected part {name!r}: the file goes in {file_field!r}, the options "
                                         f"in plain fields")
        finally:
            await form.close()
        if required and upload is None:
            raise HttpError(400, f"missing the {file_field!r} file")
        return fields, upload
    raise HttpError(415, "send application/json or multipart/form-data")


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HttpError(413, f"request body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _encode(wav: np.ndarray, sample_rate: int, strategy: str, fmt: str) -> bytes:
    return audio_io.encode_audio(audio_io.normalize(wav, sample_rate, strategy), sample_rate, fmt)


def wav_stream_header(sample_rate: int, channels: int) -> bytes:
    """44-byte PCM16 WAV header whose sizes are 0xFFFFFFFF: 'length unknown' for players and soundfile."""
    block = 2 * channels
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, channels,
            sample_rate, sample_rate * block, block, 16) + b"data" + struct.pack("<I", 0xFFFFFFFF))


def pcm16(wav: np.ndarray) -> bytes:
    """``[channels, samples]`` float -> interleaved little-endian 16-bit PCM (clipped, as the WAV writer)."""
    return (np.clip(wav.T, -1.0, 1.0) * 32767).round().astype("<i2").tobytes()


class CountRequests:
    """ASGI wrapper: count every HTTP response by route and status for /metrics (unknown paths as
    'other', so a scanner cannot grow the label set)."""

    def __init__(self, app, metrics: Metrics, known: set[str]):
        self.app, self.metrics, self.known = app, metrics, known
        self.state = app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in self.known else "other"

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.metrics.request(route, message["status"])
            await send(message)

        await self.app(scope, receive, counting_send)
