"""Knowing when a server is up: the one poll (and the one free port) that tests, benchmarks and supervisors share."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request


def wait_until_healthy(url: str, timeout_s: float, poll_s: float = 0.05) -> bool:
    """Poll ``url``/health until it answers 200 (the model is loaded) or ``timeout_s`` passes.
    Proxies are bypassed: the server is local, and a proxy from the environment would never reach it."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with opener.open(url.rstrip("/") + "/health", timeout=1) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(poll_s)
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the OS picks it), for a test or benchmark server."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
