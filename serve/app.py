"""The Starlette app: routes, body limits, one-line JSON errors, streaming, and the worker's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Match, Route

from ..runtime import audio as audio_io
from ..runtime.errors import MusicGenError
from ..runtime.layouts import describe
from ..runtime.options import check_seed
from .access import Access
from .batcher import END, Batcher, Draining, Job, QueueFull
from .bodies import HttpError, error, read_fields
from .melody_view import melody_chroma
from .metrics import Metrics, render as render_metrics
from .openapi import openapi_spec
from .page import PAGE
from .params import DEFAULT_NORMALIZE, MEDIA_TYPES, RequestChecker
from .results import KeptStream, ResultStore
from .settings import MAX_JSON_BYTES, MAX_UPLOAD_BYTES, ServeSettings
from .stems import StemsBusy, StemsService
from .streaming import AudioStream
from .uploads import decode_audio

logger = logging.getLogger(__name__)


def create_app(model, settings: ServeSettings, stems=None, replica: str | None = None, peers=None) -> Starlette:
    """``stems``: a :class:`~..runtime.stems.StemSeparator` for ``POST /v1/stems`` (default: the model
    folder's own, if it was exported with ``--stems``; none: no stems endpoint). ``replica``: this process's
    name among several (Ray Serve), a label on every metric; ``peers``: a callable giving the other replicas'
    metric families, so that any replica's /metrics shows them all."""
    settings = settings.check()
    m = model.manifest
    metrics = Metrics(info={"checkpoint": (m.source or {}).get("checkpoint"), "family": m.family,
                            "precision": m.graphs["decoder"].precision, "providers": ",".join(model.providers),
                            "sample_rate": m.sample_rate, "channels": m.audio_channels},
                      labels={"replica": replica} if replica else None)
    batcher = Batcher(model, settings, metrics)
    checker = RequestChecker(model, settings)
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
        fields, upload = await read_fields(request, file_field, kind == "continue", settings)
        decoded = None
        if upload is not None:
            max_s = checker.settings.max_duration + m.max_duration + 1  # what any window could read
            decoded = await run_in_threadpool(decode_audio, upload, file_field, max_s)
        spec = await run_in_threadpool(checker.spec, kind, fields,
                                       decoded if kind == "generate" else None,
                                       decoded if kind == "continue" else None)
        job = Job(spec, asyncio.get_running_loop())
        if spec.key.stream:  # bounded while unread; the normalised file kept for GET /v1/results/{id} at the end
            result_id = results.new_id()
            job.chunks = KeptStream(settings.stream_buffer_bytes, lambda: batcher.cancel(job), results, result_id,
                                    END, keep_encoding)
        try:
            batcher.submit(job)
        except QueueFull as exc:
            raise HttpError(503, f"server busy: {exc}; retry later", {"Retry-After": str(settings.retry_after_s)})
        except Draining as exc:
            raise HttpError(503, str(exc), {"Retry-After": str(settings.retry_after_s)})
        headers = {"X-Seed": str(spec.seed)}
        if spec.key.stream:
            headers["X-Result-Id"] = result_id
            return AudioStream(job, batcher.cancel, model.sample_rate, model.audio_channels, settings.stream_stall_s,
                               headers)
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

    async def model_info(request: Request) -> Response:
        return JSONResponse({
            **describe(model.adapter, model.options, model.device, model.exact_stems), "providers": model.providers,
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
        fields, upload = await read_fields(request, "audio", True, settings)
        unknown = sorted(set(fields) - {"seed"})
        if unknown:
            raise HttpError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; known: 'seed' and the "
                                 f"'audio' file")
        seed = fields.get("seed")
        check_seed(seed)
        try:
            return JSONResponse(await run_in_threadpool(service.separate, upload, seed))
        except StemsBusy as exc:
            raise HttpError(503, f"server busy: {exc}; retry later", {"Retry-After": str(settings.retry_after_s)})

    async def chroma(request: Request) -> Response:
        if not m.is_melody:
            raise HttpError(404, "this model is text-only: it has no melody chroma")
        fields, upload = await read_fields(request, "melody", True, settings)
        if fields:
            raise HttpError(400, f"unexpected field(s) {', '.join(map(repr, sorted(fields)))}: send only the "
                                 f"'melody' file")
        decoded = await run_in_threadpool(decode_audio, upload, "melody", m.max_duration + 1)
        return JSONResponse(await run_in_threadpool(melody_chroma, decoded, m))

    def health_facts(status: str) -> dict:
        # the pid tells replicas apart behind a proxy (Ray Serve)
        return {"status": status, "draining": batcher.draining, "queue": batcher.queue_length(),
                "pid": os.getpid()}

    async def health(request: Request) -> Response:
        """Up (200 while the process answers, draining or not): what supervisors and old probes poll."""
        return JSONResponse(health_facts("draining" if batcher.draining else "ok"))

    async def live(request: Request) -> Response:
        return JSONResponse(health_facts("live"))

    async def ready(request: Request) -> Response:
        """Takes new work: 503 once SIGTERM started the drain, so a balancer sends requests elsewhere."""
        if batcher.draining:
            return JSONResponse(health_facts("draining"), status_code=503,
                                headers={"Retry-After": str(settings.retry_after_s)})
        return JSONResponse(health_facts("ready"))

    async def metrics_route(request: Request) -> Response:
        others = await run_in_threadpool(peers) if peers is not None else []
        text = render_metrics([metrics.families(batcher.queue_length(), batcher.in_flight()), *others])
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

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
        Route("/health", health), Route("/health/live", live), Route("/health/ready", ready),
        Route("/metrics", metrics_route), Route("/openapi.json", openapi),
        Route("/v1/results/{result_id}", kept_result), Route("/v1/stems", stems_info),
        Route("/v1/stems", stems_separate, methods=["POST"]), Route("/v1/chroma", chroma, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        Exception: on_http_error, HTTPException: on_http_error, HttpError: on_http_error,
        MusicGenError: on_http_error, ClientDisconnect: on_http_error})
    app.state.batcher, app.state.metrics, app.state.settings = batcher, metrics, settings
    return CountRequests(Access(app, settings.api_key, settings.cors_origins), metrics, routes)


def _encode(wav: np.ndarray, sample_rate: int, strategy: str, fmt: str) -> bytes:
    return audio_io.encode_audio(audio_io.normalize(wav, sample_rate, strategy), sample_rate, fmt)


class CountRequests:
    """ASGI wrapper: count every HTTP response by route and status for /metrics, labelled by the route's
    template (``/v1/results/{result_id}``, not each id) and unknown paths as 'other', so a scanner or
    the kept results cannot grow the label set; and time the /v1/* ones to their last byte."""

    def __init__(self, app, metrics: Metrics, routes: list[Route]):
        self.app, self.metrics, self.routes = app, metrics, routes
        self.state = app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = next((r.path for r in self.routes if r.matches(scope)[0] != Match.NONE), "other")
        t0 = time.monotonic()

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.metrics.request(route, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            if route.startswith("/v1/"):
                self.metrics.request_done(route, time.monotonic() - t0)
