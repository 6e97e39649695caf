"""Who may call the service and how each call is traced: an ASGI wrapper around the app.

Why here and not in each route: a request id on every response (errors and 404s included), one bearer
check for every protected path, and CORS answered before the key check (a browser's preflight carries no
credentials) are rules about the whole service; a route added later gets them without asking.
"""

from __future__ import annotations

import contextvars
import hmac
import re
import uuid

from .bodies import error

REQUEST_ID = contextvars.ContextVar("request_id", default=None)
"""The current request's id, for log lines written while it is handled (serve/logs.py)."""

OPEN_PATHS = ("/", "/health", "/health/live", "/health/ready", "/openapi.json")
"""Paths that need no API key: probes, the API description and the page (its calls send the key)."""

_GOOD_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


class Access:
    """Request id (``X-Request-ID``: the client's if it is a sane token, else a new one, echoed on the
    response), then CORS for ``cors_origins``, then ``Authorization: Bearer <api_key>`` on every path
    outside OPEN_PATHS (401, one-line JSON, compared in constant time)."""

    def __init__(self, app, api_key: str | None = None, cors_origins: tuple[str, ...] = ()):
        self.state = app.state
        self.api_key = api_key.encode() if api_key else None
        inner = self._authorize(app)
        if cors_origins:
            from starlette.middleware.cors import CORSMiddleware

            inner = CORSMiddleware(inner, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                                   allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                                   expose_headers=["X-Seed", "X-Batch-Size", "X-Request-ID", "X-Result-Id",
                                                   "Retry-After"],
                                   allow_credentials=False, max_age=600)
        self.inner = inner

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        sent = _header(scope, b"x-request-id")
        rid = sent if sent is not None and _GOOD_ID.fullmatch(sent) else uuid.uuid4().hex
        token = REQUEST_ID.set(rid)

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.inner(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)

    def _authorize(self, app):
        if self.api_key is None:
            return app
        key = self.api_key

        async def authorized(scope, receive, send):
            if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
                given = _header(scope, b"authorization") or ""
                scheme, _, token = given.partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key):
                    await error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                {"WWW-Authenticate": "Bearer"})(scope, receive, send)
                    return
            await app(scope, receive, send)

        return authorized


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None
