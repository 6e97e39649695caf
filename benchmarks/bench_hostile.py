"""Load test of ``musicgen-onnx serve`` under attack, on 127.0.0.1 only: ordinary clients beside slow
bodies, silent connections, stalled streams and hostile uploads (issue 24).

    python -m benchmarks.bench_hostile [--model FOLDER] [--seconds 60] [--clients 4] [--duration 1]
        [--slow 200] [--silent 100] [--stalled 2] [--stalled-seconds 8] [--body-timeout 20] [--json out.json]

Two runs of ``--seconds`` each on a fresh server (default settings, the bundled tiny model): ordinary
clients alone (closed loop, ``--duration`` s clips), then the same clients with the attackers. Reported:
ordinary requests served and failed, their p50/p99 latency in both runs, the responses with status 500
(ordinary and hostile; the service must give none), tracebacks in the server's log, the peak RSS, and
the time from SIGTERM to exit with the attackers still connected. The stalled streams' clips are
generated like any request (the queue is first come, first served): their compute shows in the ordinary
clients' latency; what the test checks is that nothing an attacker holds grows or outlives the deadlines.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

from benchmarks.bench_serve import PROMPTS, Server

HUGE = b"9" * 400


def hostile_bodies() -> list[tuple[str, bytes, str]]:
    """(path, body, content type): each of issue 24's request cases, and a few more shapes."""
    mp = "multipart/form-data; boundary=xx"

    def part(name, data, filename=None):
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        return f"--xx\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"

    wav = b"RIFF\x24\x00\x01\x00WAVEfmt " + bytes.fromhex("10000000010001007d0000fa0000000200100064617461") + \
        b"\x00\x00\x01\x00" + bytes(200)
    return [
        ("/v1/generate", b'{"duration": ' + HUGE + b"}", "application/json"),
        ("/v1/generate", b'{"top_p": ' + HUGE + b"}", "application/json"),
        ("/v1/generate", part("duration", HUGE) + b"--xx--\r\n", mp),
        ("/v1/generate", part("duration", b"[" * 3000) + b"--xx--\r\n", mp),
        ("/v1/generate", part("duration", b"1") + part("melody", wav, "m.wav"), mp),  # no closing boundary
        ("/v1/generate", b"", mp),
        ("/v1/generate", part("prompt", "café".encode("latin-1")) + b"--xx--\r\n", mp),
        ("/v1/generate", part("melody", os.urandom(4000), "m.wav") + b"--xx--\r\n", mp),
        ("/v1/continue", part("audio", wav, "a.wav") + b"--xx--\r\n", mp),
        ("/v1/generate", b"[" * 60000, "application/json"),
        ("/v1/generate", os.urandom(3000), "application/x-www-form-urlencoded"),
    ]


class Attackers:
    """Threads that keep ``slow`` connections sending a body byte a second, ``silent`` connections that
    send nothing, ``stalled`` streams nobody reads, and a loop of hostile uploads; each reconnects when
    the server drops it."""

    def __init__(self, port: int, slow: int, silent: int, stalled: int, stalled_seconds: float):
        self.port, self.stop = port, threading.Event()
        self.statuses: Counter = Counter()
        self.dropped = Counter()
        self.threads = [threading.Thread(target=fn, daemon=True) for fn in (
            lambda: self._holders(slow, b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                        b"Content-Length: 1000\r\n\r\n{", b" ", "slow"),
            lambda: self._holders(silent, b"", b"", "silent"),
            lambda: self._holders(stalled, _stream_request(stalled_seconds), b"", "stalled", rcvbuf=4096),
            self._uploads)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(10)

    def _connect(self, first: bytes, rcvbuf: int | None):
        s = socket.socket()
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(2)
        s.connect(("127.0.0.1", self.port))
        if first:
            s.sendall(first)
        s.setblocking(False)
        return s

    def _holders(self, n: int, first: bytes, drip: bytes, kind: str, rcvbuf: int | None = None) -> None:
        socks: list = [None] * n
        while not self.stop.is_set():
            for i in range(n):
                try:
                    if socks[i] is None:
                        socks[i] = self._connect(first, rcvbuf)
                        continue
                    if drip:
                        socks[i].send(drip)
                    if kind != "stalled" and socks[i].recv(65536) == b"":  # the server closed it (a 408 read)
                        raise ConnectionError
                except BlockingIOError:
                    pass
                except OSError:
                    if socks[i] is not None:
                        socks[i].close()
                        self.dropped[kind] += 1
                    socks[i] = None
            self.stop.wait(1.0)
        for s in socks:
            if s is not None:
                s.close()

    def _uploads(self) -> None:
        bodies = hostile_bodies()
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30) as client:
            while not self.stop.is_set():
                for path, body, ctype in bodies:
                    try:
                        r = client.post(path, content=body, headers={"content-type": ctype})
                        self.statuses[r.status_code] += 1
                    except httpx.HTTPError as exc:
                        self.statuses[type(exc).__name__] += 1
                self.stop.wait(0.2)


def _stream_request(seconds: float) -> bytes:
    body = json.dumps({"prompt": "stalled", "duration": seconds, "stream": True}).encode()
    return (b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body))


def ordinary(url: str, clients: int, seconds: float, duration: float) -> dict:
    """Closed-loop clients for ``seconds``: latencies of the served requests, counts of the rest."""
    end = time.monotonic() + seconds
    lat, statuses = [], Counter()
    lock = threading.Lock()

    def client(i: int) -> None:
        with httpx.Client(timeout=120) as c:
            k = 0
            while time.monotonic() < end:
                t0 = time.perf_counter()
                try:
                    r = c.post(url + "/v1/generate", json={"prompt": PROMPTS[i % len(PROMPTS)], "duration": duration,
                                                           "seed": i * 1000 + k})
                    status = r.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                with lock:
                    statuses[status] += 1
                    if status == 200:
                        lat.append(time.perf_counter() - t0)
                k += 1

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
    return {"served": statuses[200], "failed": sum(v for k, v in statuses.items() if k != 200),
            "statuses": {str(k): v for k, v in statuses.items()}, "p50_s": q[49], "p99_s": q[98]}


def scenario(args, attack: bool) -> dict:
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
        server = Server(args.model, 16, 50.0, extra=("--body-timeout", str(args.body_timeout)), log=log)
        try:
            if attack:
                with Attackers(server.port, args.slow, args.silent, args.stalled, args.stalled_seconds) as attackers:
                    load = ordinary(server.url, args.clients, args.seconds, args.duration)
                    t0 = time.monotonic()
                    server.proc.send_signal(signal.SIGTERM)  # the attackers are still connected
                    server.proc.wait(120)
                    load["sigterm_to_exit_s"] = time.monotonic() - t0
                load["hostile_statuses"] = {str(k): v for k, v in attackers.statuses.items()}
                load["attackers_dropped_by_server"] = dict(attackers.dropped)
            else:
                load = ordinary(server.url, args.clients, args.seconds, args.duration)
        finally:
            server.close()
        log.seek(0)
        text = log.read()
    load["peak_rss_mb"] = max(server.rss, default=float("nan"))
    load["log_lines"] = text.count("\n")
    load["tracebacks_in_log"] = text.count("Traceback")
    load["too_many_open_files_tracebacks"] = text.count("OSError: [Errno 24]")
    load["status_500"] = load["statuses"].get("500", 0) + load.get("hostile_statuses", {}).get("500", 0)
    return load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the bundled tiny model)")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each run (baseline, then attacked)")
    ap.add_argument("--clients", type=int, default=4, help="ordinary closed-loop clients")
    ap.add_argument("--duration", type=float, default=1.0, help="seconds of audio per ordinary request")
    ap.add_argument("--slow", type=int, default=200, help="connections sending a body byte a second")
    ap.add_argument("--silent", type=int, default=100, help="connections sending nothing")
    ap.add_argument("--stalled", type=int, default=2, help="streams nobody reads")
    ap.add_argument("--stalled-seconds", type=float, default=8.0,
                    help="audio each stalled stream asks for (its generation is real work the server does)")
    ap.add_argument("--body-timeout", type=float, default=20.0, help="the server's --body-timeout: below --seconds, "
                                                                      "so the slow clients are dropped, reconnect, "
                                                                      "and are mid-body at SIGTERM")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not 1 <= args.seconds <= 600:
        raise SystemExit("--seconds must be in [1, 600]")
    base = scenario(args, attack=False)
    hit = scenario(args, attack=True)
    print(f"ordinary clients {args.clients} x {args.duration:g} s clips, {args.seconds:g} s per run, 127.0.0.1")
    print(f"{'':28}{'alone':>14}{'under attack':>16}")
    for key, fmt in (("served", "{:d}"), ("failed", "{:d}"), ("p50_s", "{:.3f} s"), ("p99_s", "{:.3f} s"),
                     ("peak_rss_mb", "{:.0f} MB"), ("status_500", "{:d}"), ("tracebacks_in_log", "{:d}")):
        print(f"{key:28}{fmt.format(base[key]):>14}{fmt.format(hit[key]):>16}")
    print(f"SIGTERM to exit (attackers connected): {hit['sigterm_to_exit_s']:.2f} s")
    print(f"hostile responses: {hit['hostile_statuses']}; attackers dropped by the server: "
          f"{hit['attackers_dropped_by_server']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "alone": base, "attacked": hit}, f, indent=1)


if __name__ == "__main__":
    main()
