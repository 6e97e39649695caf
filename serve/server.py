"""Running the app under uvicorn so that slow, stalled or too many clients cannot take it down.

What plain ``uvicorn.run`` left open (issue 24 items 4-5): a connection that never completes its request
headers held a file descriptor for ever; past the process's open-file limit every accept logged a
"Too many open files" traceback and /health went unanswered; SIGTERM waited for ever on one stalled client.
Here: a cap on connections below the open-file limit (over it: a quick JSON 503 with Retry-After), a deadline for request
headers (the app bounds the body), accept errors logged as one line, and a shutdown that drains the
queue, gives open sockets ``graceful_timeout_s``, then closes what is left and exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import ssl
import time
from dataclasses import dataclass

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..runtime.errors import InvalidInputError
from .bodies import error
from .logs import FORMATS, log_config
from .settings import refuse_flag

logger = logging.getLogger(__name__)

FD_RESERVE = 64
"""Descriptors kept free beside the connections: model files, logs, the worker's pipes, a probe's accept."""


@dataclass(frozen=True)
class ServerOptions:
    max_connections: int = 1000
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    graceful_timeout_s: float = 10.0
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    log_format: str = "text"

    def check(self) -> "ServerOptions":
        bad = refuse_flag
        if not isinstance(self.max_connections, int) or not 1 <= self.max_connections <= 1_000_000:
            bad("max_connections", self.max_connections, "an integer in [1, 1000000]")
        for name in ("header_timeout_s", "keep_alive_s", "graceful_timeout_s"):
            if not 0 < getattr(self, name) <= 3600:
                bad(name.removesuffix("_s"), getattr(self, name), "in (0, 3600] seconds")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise InvalidInputError("--ssl-certfile and --ssl-keyfile go together: give both or neither")
        if self.ssl_certfile is not None:  # loaded now, before the model: a wrong file is one line at once
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise InvalidInputError(f"--ssl-certfile/--ssl-keyfile: cannot load the certificate and key: "
                                        f"{exc}") from None
        if self.log_format not in FORMATS:
            bad("log_format", self.log_format, f"one of {', '.join(FORMATS)}")
        return self


def connection_cap(wanted: int) -> int:
    """``wanted``, lowered to what the open-file limit leaves after the descriptors already open and a
    reserve, so that the cap answers 503 before accept() starts failing."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        used = 32
    return max(1, min(wanted, soft - used - FD_RESERVE))


def guarded_protocol(header_timeout_s: float):
    """uvicorn's h11 protocol with a deadline for each request's headers: a connection that opens (or
    idles after a response) and does not complete its next request's headers in time is closed."""

    class GuardedH11(H11Protocol):
        _timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self):
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc):
            if self._timer is not None:
                self._timer.cancel()
            super().connection_lost(exc)

        def _arm(self):
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_later(header_timeout_s, self._late)

        def _late(self):
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and not self.transport.is_closing():
                logger.info("closed a connection from %s: no complete request headers in %g s",
                            _peer(self.client), header_timeout_s)
                self.transport.close()

    return GuardedH11


def _peer(client) -> str:
    return "%s:%d" % client if client else "?"


class DrainingServer(uvicorn.Server):
    """SIGTERM: refuse new work (503, /health/ready says draining), finish every queued job, then give the
    connections still open ``grace_s`` to finish, close the rest and stop."""

    def __init__(self, config: uvicorn.Config, batcher, grace_s: float):
        super().__init__(config)
        self.batcher, self.grace_s = batcher, grace_s

    async def startup(self, sockets=None):
        asyncio.get_running_loop().set_exception_handler(_one_line_loop_errors)
        await super().startup(sockets)

    async def shutdown(self, sockets=None):
        t0 = time.monotonic()
        logger.info("draining: %d queued, %d rows running", self.batcher.queue_length(), self.batcher.in_flight())
        self.batcher.stop(timeout=0)  # no new work; the worker ends once the queue is empty
        while not self.batcher.drained() and not self.force_exit:
            await asyncio.sleep(0.05)
        logger.info("queue drained in %.1f s; %d connection(s) open, %g s grace", time.monotonic() - t0,
                    len(self.server_state.connections), self.grace_s)
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()  # idle keep-alive connections close now; busy ones after their response
        end = time.monotonic() + self.grace_s
        while self.server_state.connections and time.monotonic() < end and not self.force_exit:
            await asyncio.sleep(0.05)
        if self.server_state.connections:
            logger.warning("closing %d connection(s) still open after the %g s grace",
                           len(self.server_state.connections), self.grace_s)
            for connection in list(self.server_state.connections):
                connection.transport.close()
            await asyncio.sleep(0.1)  # their handlers see the disconnect and end
        await super().shutdown(sockets)


_accept_errors = {"last": 0.0, "since": 0}


def _one_line_loop_errors(loop, context):
    """asyncio's handler for errors outside any task: out of descriptors at accept() is at most one line a
    second with the count of failed accepts (asyncio reports each of the backlog's attempts, and pauses
    accepting a second), never a traceback per attempt; other errors as asyncio logs them."""
    exc = context.get("exception")
    if isinstance(exc, OSError) and "accept" in context.get("message", ""):
        _accept_errors["since"] += 1
        now = time.monotonic()
        if now - _accept_errors["last"] >= 1.0:
            logger.warning("cannot accept connections: %s (open-file limit %d; %d failed accepts); retrying",
                           exc.strerror or exc, resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                           _accept_errors["since"])
            _accept_errors["last"], _accept_errors["since"] = now, 0
        return
    loop.default_exception_handler(context)


class ConnectionCap:
    """Over ``cap`` open connections (or requests running): the app's own 503, a one-line JSON error with
    Retry-After, where uvicorn's ``limit_concurrency`` answers plain text "Service Unavailable" without
    one. The same count as uvicorn's: this request's connection is among those open."""

    def __init__(self, app, cap: int, retry_after_s: int):
        self.app, self.cap, self.retry_after = app, cap, str(retry_after_s)
        self.state = app.state
        self.server_state = None  # set by run(): uvicorn's open connections and running requests

    async def __call__(self, scope, receive, send):
        st = self.server_state
        if scope["type"] == "http" and st is not None and (len(st.connections) >= self.cap or
                                                           len(st.tasks) > self.cap):
            logger.warning("503 for %s %s: %d connections open (--max-connections %d)", scope.get("method"),
                           scope.get("path"), len(st.connections), self.cap)
            busy = error(503, f"server busy: {len(st.connections)} connections open (--max-connections "
                              f"{self.cap}); retry later", {"Retry-After": self.retry_after, "Connection": "close"})
            return await busy(scope, receive, send)
        return await self.app(scope, receive, send)


def run(app, host: str, port: int, options: ServerOptions) -> None:
    """Serve ``app`` (from ``create_app``) until SIGTERM or Ctrl-C."""
    options = options.check()
    cap = connection_cap(options.max_connections)
    capped = ConnectionCap(app, cap, app.state.settings.retry_after_s)
    config = uvicorn.Config(
        capped, host=host, port=port, http=guarded_protocol(options.header_timeout_s),
        timeout_keep_alive=options.keep_alive_s, timeout_graceful_shutdown=1.0, log_config=log_config(
            options.log_format), ssl_certfile=options.ssl_certfile, ssl_keyfile=options.ssl_keyfile)
    if cap < options.max_connections:  # logged once the log configuration is in place
        logger.warning("--max-connections %d lowered to %d: the open-file limit is %d", options.max_connections,
                       cap, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    server = DrainingServer(config, app.state.batcher, options.graceful_timeout_s)
    capped.server_state = server.server_state
    server.run()
