"""Load test of ``musicgen-onnx serve`` on 127.0.0.1: batching against one request at a time.

    python -m benchmarks.bench_serve [--model FOLDER] [--requests 32] [--seconds 2] [--clients 1,4,16]
        [--time-limit 300] [--stream-seconds 10] [--repeat N] [--no-unbatched] [--json out.json]

For each client count C it starts a server (``--max-batch 16``, and again with ``--max-batch 1``:
the same requests served one at a time), sends the same fixed number of requests from C closed-loop
clients (each sends its next request when the last one returns), and reports throughput (seconds of
audio per wall second), p50/p95 latency, the batch sizes the server reported (``X-Batch-Size``),
failed requests and the server's RSS (first sample, last, max; read from /proc). A scenario that
passes ``--time-limit`` stops sending and counts what is left as failed. Prompts share one token
length (requests only batch with prompts of the same length: see ``serve/params.py``); seeds differ.
Then the time to the first streamed audio byte of a ``--stream-seconds`` clip against the whole
non-streamed response, on the batched server.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from musicgen_onnx.serve.health import free_port, wait_until_healthy

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["sad jazz", "lofi beat", "calm piano", "soft piano"]  # 8 tokens each with the bundled tokenizer
CANDIDATES = ["sad jazz", "lofi beat", "calm piano", "soft piano", "happy rock", "dark techno", "epic drums",
              "warm synth", "slow blues", "funky bass", "chill house", "jazz trio", "rock anthem", "folk guitar"]


def same_length_prompts(model: str | None) -> list[str]:
    """Prompts of one token length for ``model``'s tokenizer (the biggest such group): only those batch."""
    if model is None:
        return PROMPTS
    from collections import defaultdict

    from musicgen_onnx.runtime.layouts import open_layout
    from musicgen_onnx.runtime.prompt_ids import TextTokenizer

    layout = open_layout(model, verify_hashes=False)  # any folder kind, its tokenizer found as the model finds it
    tok = TextTokenizer(layout.tokenizer_path, max_id=layout.manifest.text_vocab_size)
    groups = defaultdict(list)
    for p in CANDIDATES:
        groups[tok([p])[0].shape[1]].append(p)
    return max(groups.values(), key=len)


class Server:
    """``musicgen-onnx serve`` in a subprocess, with an RSS sampler."""

    def __init__(self, model: str | None, max_batch: int, max_wait_ms: float, extra: tuple[str, ...] = (),
                 log=subprocess.DEVNULL):
        self.port = free_port()
        cmd = [sys.executable, "-m", "musicgen_onnx.cli", "serve", "--port", str(self.port),
               "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--max-queue", "256", *extra]
        if model:
            cmd += ["--model", model]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT if log is not subprocess.DEVNULL
                                     else subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        self.rss: list[float] = []
        self._stop = threading.Event()
        if not wait_until_healthy(self.url, timeout_s=120, poll_s=0.1):
            self.close()
            raise SystemExit("the server did not start")
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            try:
                with open(f"/proc/{self.proc.pid}/status") as f:
                    kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
                self.rss.append(kb / 1024)
            except (OSError, StopIteration):
                return

    def close(self) -> None:
        self._stop.set()
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_load(url: str, clients: int, requests: int, seconds: float, time_limit: float, prompts: list[str]) -> dict:
    deadline = time.monotonic() + time_limit
    lock = threading.Lock()
    todo = list(range(requests))
    latencies, sizes, failures, audio_s = [], Counter(), [], 0.0

    sessions = [httpx.Client(base_url=url, timeout=time_limit) for _ in range(clients)]  # made before the clock

    def client(c: httpx.Client) -> None:
        nonlocal audio_s
        with c:
            while True:
                with lock:
                    if not todo or time.monotonic() > deadline:
                        return
                    i = todo.pop(0)
                t0 = time.perf_counter()
                try:
                    r = c.post("/v1/generate", json={"prompt": prompts[i % len(prompts)], "duration": seconds,
                                                      "seed": i})
                    ok = r.status_code == 200
                except httpx.HTTPError as exc:
                    ok, r = False, exc
                with lock:
                    if ok:
                        latencies.append(time.perf_counter() - t0)
                        sizes[int(r.headers["x-batch-size"])] += 1
                        audio_s += seconds
                    else:
                        failures.append(str(getattr(r, "status_code", r)))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for c in sessions:
            pool.submit(client, c)
    wall = time.perf_counter() - t0
    failures += ["not sent (time limit)"] * len(todo)
    q = statistics.quantiles(latencies, n=20) if len(latencies) >= 2 else latencies * 19
    return {"clients": clients, "requests": requests, "ok": len(latencies), "failed": len(failures),
            "wall_s": wall, "audio_per_wall_s": audio_s / wall, "p50_s": statistics.median(latencies),
            "p95_s": q[18], "batch_sizes": dict(sorted(sizes.items()))}


def time_to_first_byte(url: str, seconds: float) -> dict:
    body = {"prompt": PROMPTS[0], "duration": seconds, "seed": 1}
    t0 = time.perf_counter()
    first = None
    with httpx.stream("POST", url + "/v1/generate", json={**body, "stream": True, "normalize": "none"},
                      timeout=600) as r:
        for part in r.iter_raw():
            if first is None and len(part) > 0:
                first = time.perf_counter() - t0
    stream_total = time.perf_counter() - t0
    t0 = time.perf_counter()
    httpx.post(url + "/v1/generate", json=body, timeout=600).raise_for_status()
    return {"seconds": seconds, "first_byte_s": first, "stream_total_s": stream_total,
            "full_response_s": time.perf_counter() - t0}


def first_audio(url: str, seconds: float) -> float:
    """Time to the first PCM bytes (past the 44-byte header), which is what a listener waits for."""
    t0, got = time.perf_counter(), 0
    with httpx.stream("POST", url + "/v1/generate", json={"prompt": PROMPTS[0], "duration": seconds, "seed": 1,
                                                          "stream": True}, timeout=600) as r:
        for part in r.iter_raw():
            got += len(part)
            if got > 44:
                return time.perf_counter() - t0
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the bundled tiny model)")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=2.0, help="audio per request")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--time-limit", type=float, default=300.0, help="per scenario, seconds")
    ap.add_argument("--max-wait-ms", type=float, default=50.0)
    ap.add_argument("--stream-seconds", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=1, help="run each scenario N times on the same server "
                                                          "(RSS over a longer run)")
    ap.add_argument("--no-unbatched", action="store_true", help="skip the --max-batch 1 server")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    prompts = same_length_prompts(args.model)
    print(f"prompts: {prompts}", file=sys.stderr)
    for max_batch in (16,) if args.no_unbatched else (16, 1):
        server = Server(args.model, max_batch, args.max_wait_ms)
        try:
            for c in [int(x) for x in args.clients.split(",")]:
                if max_batch == 1 and c == 1:
                    continue  # one client is one request at a time already
                for rep in range(args.repeat):
                    server.rss.clear()
                    time.sleep(0.3)
                    row = run_load(server.url, c, args.requests, args.seconds, args.time_limit, prompts)
                    rss = server.rss or [float("nan")]
                    row.update(max_batch=max_batch, rss_first_mb=rss[0], rss_last_mb=rss[-1], rss_max_mb=max(rss),
                               repeat=rep)
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
            if max_batch == 16:
                ttfb = time_to_first_byte(server.url, args.stream_seconds)
                ttfb["first_audio_s"] = first_audio(server.url, args.stream_seconds)
                print(json.dumps(ttfb), file=sys.stderr, flush=True)
        finally:
            server.close()
    print(f"{args.requests} requests of {args.seconds:g} s each; {len(prompts)} prompts of one token length; "
          f"--max-wait-ms {args.max_wait_ms:g}; model {args.model or 'bundled tiny-melody'}\n")
    print("| clients | server | ok | failed | wall s | audio s / wall s | p50 s | p95 s | batch sizes seen "
          "(size: requests) | server RSS MB first / last / max |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["clients"], -r["max_batch"], r["repeat"])):
        mode = "batched (--max-batch 16)" if r["max_batch"] > 1 else "one at a time (--max-batch 1)"
        sizes = ", ".join(f"{k}: {v}" for k, v in r["batch_sizes"].items())
        print(f"| {r['clients']} | {mode} | {r['ok']} | {r['failed']} | {r['wall_s']:.1f} | "
              f"{r['audio_per_wall_s']:.2f} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | {sizes} | "
              f"{r['rss_first_mb']:.0f} / {r['rss_last_mb']:.0f} / {r['rss_max_mb']:.0f} |")
    print(f"\nstream=true, {ttfb['seconds']:g} s clip: first byte {ttfb['first_byte_s']:.2f} s, first audio "
          f"{ttfb['first_audio_s']:.2f} s, stream complete {ttfb['stream_total_s']:.2f} s; non-streamed response "
          f"{ttfb['full_response_s']:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "stream": ttfb}, indent=1))
    if any(r["failed"] for r in rows):
        raise SystemExit("some requests failed")


if __name__ == "__main__":
    main()
