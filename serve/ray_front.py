"""The front of ``serve --ray``: the plain server's socket (serve/server.py: connection cap, header
deadline, TLS, log format, SIGTERM drain) in front of Ray Serve's proxy, which listens on loopback only.

Why a front: what reaches the client from Ray Serve's proxy is the proxy's own making. A replica that
dies mid-request gave a bare text 500 and cut its open streams ("incomplete chunked read"), and none of
the server options could be applied to the proxy's socket (issue 24 item 20, servex's leftover). Here
Ray's own errors (a 5xx that is not the app's JSON) become the app's one-line JSON 503 with Retry-After,
a stream whose replica died ends with the chunked terminator (the audio so far is whole 16-bit frames;
the log says why it is short), and SIGTERM deletes this application in Ray Serve (its replicas finish
their requests) before the front closes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from types import SimpleNamespace

import httpx

from .bodies import error

logger = logging.getLogger(__name__)

HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
              b"proxy-connection", b"host"}


class RayDrain:
    """What serve/server.py's DrainingServer asks of a batcher, for the front: stop() deletes the
    application in a thread (Ray Serve stops routing to its replicas and waits for their requests),
    drained() says it has gone."""

    def __init__(self, delete):
        self._delete = delete
        self._thread = None
        self.requests = 0  # requests the front is forwarding now

    def queue_length(self) -> int:
        return self.requests

    def in_flight(self) -> int:
        return 0

    @property
    def draining(self) -> bool:
        return self._thread is not None

    def stop(self, timeout: float | None = None) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._delete, name="musicgen-ray-delete", daemon=True)
            self._thread.start()
        self._thread.join(timeout)

    def drained(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()


class RayFront:
    """ASGI app forwarding every request to Ray Serve's proxy at ``upstream`` (streamed both ways)."""

    def __init__(self, upstream: str, settings, drain: RayDrain):
        self.upstream, self.drain = upstream, drain
        self.retry = str(settings.retry_after_s)
        self.state = SimpleNamespace(settings=settings, batcher=drain)
        self.client: httpx.AsyncClient | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            return
        if self.drain.draining:
            return await error(503, "the server is shutting down", {"Retry-After": self.retry})(scope, receive, send)
        self.drain.requests += 1
        try:
            await self._forward(scope, receive, send)
        finally:
            self.drain.requests -= 1

    async def _lifespan(self, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.client = httpx.AsyncClient(base_url=self.upstream, timeout=httpx.Timeout(None, connect=10),
                                                limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _forward(self, scope, receive, send):
        async def body():
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientLeft()
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    return

        headers = [(k, v) for k, v in scope["headers"] if k not in HOP_BY_HOP]
        client = scope.get("client")
        if client:
            headers.append((b"x-forwarded-for", client[0].encode()))
        target = scope["raw_path"].decode("latin-1") if scope.get("raw_path") else scope["path"]
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        has_body = any(k == b"content-length" for k, _ in headers) or scope["method"] in ("POST", "PUT", "PATCH")
        request = self.client.build_request(scope["method"], target, headers=headers,
                                            content=body() if has_body else None)
        try:
            response = await self.client.send(request, stream=True)
        except ClientLeft:
            return
        except httpx.HTTPError as exc:
            logger.warning("Ray Serve's proxy did not answer %s %s: %s", scope["method"], scope["path"], exc)
            return await error(503, "no replica answered; retry later", {"Retry-After": self.retry})(
                scope, receive, send)
        try:
            if response.status_code >= 500 and not response.headers.get("content-type", "").startswith(
                    "application/json"):  # Ray's own error, not the app's: a replica died, or Ray is overloaded
                text = " ".join((await response.aread()).decode("utf-8", "replace").split())[:300]
                logger.warning("Ray Serve answered %d for %s %s: %s", response.status_code, scope["method"],
                               scope["path"], text)
                retry = response.headers.get("retry-after", self.retry)
                return await error(503, f"the replica serving this request failed or none was free (Ray Serve: "
                                        f"{response.status_code}); retry later", {"Retry-After": retry})(
                    scope, receive, send)
            out = [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
            await send({"type": "http.response.start", "status": response.status_code, "headers": out})
            left = asyncio.ensure_future(_disconnected(receive))
            try:
                async for chunk in response.aiter_raw():
                    if left.done():  # closing the upstream response tells the replica its client left
                        return
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except httpx.HTTPError as exc:
                logger.warning("response to %s %s cut by its replica (%s): ended here", scope["method"],
                               scope["path"], exc)
                if "content-length" in response.headers:
                    return  # a sized body cannot end early: the connection closes
            finally:
                left.cancel()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class ClientLeft(Exception):
    """The client disconnected while its request body was being forwarded."""
