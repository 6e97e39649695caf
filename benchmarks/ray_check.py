"""``musicgen-onnx serve --ray --replicas 2`` on a private Ray cluster: both replicas answer, every
request succeeds, a seed gives the same bytes whichever replica served it, /metrics shows every
replica's series (labelled), SIGTERM with requests in flight finishes them (drain) and leaves no Ray
process behind; a RAY_ADDRESS in the environment is not followed.

    pip install ".[ray]" && python -m benchmarks.ray_check [--replicas 2] [--requests 16]

Why here and not in tests/: Ray is an optional extra that CI does not install, and starting a Ray
instance takes tens of seconds. Local addresses only; exit 1 on any miss.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from musicgen_onnx.serve.health import free_port

PROMPTS = ["sad jazz", "lofi beat", "calm piano", "soft piano"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--signals", action="store_true", help="only the signal checks: SIGTERM/Ctrl-C while Ray "
                                                               "starts, SIGKILL while serving, --replicas 3")
    args = ap.parse_args()
    if args.signals:
        failures = signal_checks(3)
        print("FAILED: " + ", ".join(failures) if failures else "signal checks: all ok")
        return 1 if failures else 0
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}  # nothing there: followed, the start would fail
    before = ray_processes()
    proc = subprocess.Popen([sys.executable, "-m", "musicgen_onnx.cli", "serve", "--ray", "--replicas",
                             str(args.replicas), "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    failures = []
    try:
        pids = set()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and len(pids) < args.replicas:
            try:
                r = httpx.get(url + "/health", timeout=2)
                if r.status_code == 200:
                    pids.add(r.json()["pid"])
                    continue
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if proc.poll() is not None:
                break
            time.sleep(0.3)
        print(f"ready after {time.perf_counter() - t0:.1f} s; replicas seen via /health: {len(pids)} {sorted(pids)}")
        if len(pids) < args.replicas:
            failures.append("replicas")
        body = lambda i: {"prompt": PROMPTS[i % 4], "duration": args.seconds, "seed": i % 4}  # noqa: E731
        t1 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            rs = list(pool.map(lambda i: httpx.post(url + "/v1/generate", json=body(i), timeout=120),
                               range(args.requests)))
        wall = time.perf_counter() - t1
        ok = [r for r in rs if r.status_code == 200]
        same = len(ok) == len(rs) and all(r.content == rs[i % 4].content for i, r in enumerate(rs))
        sizes = sorted(int(r.headers.get("x-batch-size", 0)) for r in ok)
        print(f"{len(ok)}/{len(rs)} requests ok in {wall:.1f} s ({len(ok) * args.seconds / wall:.2f} audio s per "
              f"wall s); same seed -> same bytes on any replica: {same}; batch sizes {sizes}")
        if len(ok) != len(rs) or not same:
            failures.append("requests")
        time.sleep(2)  # a metrics post from each replica
        text = httpx.get(url + "/metrics", timeout=10).text
        labelled = {line.split('replica="', 1)[1].split('"', 1)[0] for line in text.splitlines()
                    if line.startswith("musicgen_requests_total{replica=")}
        print(f"/metrics: series of {len(labelled)} replicas in one scrape")
        if len(labelled) != args.replicas:
            failures.append("metrics")
        victim = sorted(pids)[0]  # a replica killed with requests and a stream in flight
        with ThreadPoolExecutor(args.replicas * 4) as pool:
            flying = [pool.submit(httpx.post, url + "/v1/generate", json=body(i) | {"duration": 30}, timeout=120)
                      for i in range(args.replicas * 3)]
            stream = pool.submit(read_stream, url, body(0) | {"duration": 30, "stream": True})
            time.sleep(1.0)  # 30 s clips: still generating on every replica
            os.kill(victim, signal.SIGKILL)
            answers = [f.result() for f in flying]
            streamed = stream.result()
        shapes = sorted(f"{r.status_code}{' json' if r.headers.get('content-type') == 'application/json' else ''}"
                        f"{' retry-after' if 'retry-after' in r.headers else ''}" for r in answers)
        print(f"replica {victim} killed with {len(answers)} requests and a stream in flight: {shapes}; "
              f"stream: {streamed}")
        if any(r.status_code != 200 and not (r.status_code == 503 and "retry-after" in r.headers and
                                             set(r.json()) == {"error"}) for r in answers) or "error" in streamed:
            failures.append("killed replica")
        deadline = time.monotonic() + 60
        pids = set()
        while time.monotonic() < deadline and len(pids) < args.replicas:
            try:
                pids.add(httpx.get(url + "/health", timeout=2).json()["pid"])
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        print(f"replicas answering again: {len(pids)} (the killed one replaced: {victim not in pids})")
        with ThreadPoolExecutor(args.replicas * 3) as pool:  # in flight when SIGTERM arrives
            flying = [pool.submit(httpx.post, url + "/v1/generate", json=body(i) | {"duration": 3}, timeout=120)
                      for i in range(args.replicas * 3)]
            time.sleep(1.0)
            t2 = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            codes = [f.result().status_code if not f.exception() else type(f.exception()).__name__ for f in flying]
        print(f"SIGTERM with {len(flying)} requests in flight: {codes}")
        if any(c != 200 for c in codes):
            failures.append("drain")
        try:
            out = proc.communicate(timeout=120)[0]
            print(f"SIGTERM: stopped with status {proc.returncode} after {time.perf_counter() - t2:.1f} s")
            if proc.returncode != 0:
                failures.append("sigterm status")
                print(out[-3000:])
        except subprocess.TimeoutExpired:
            failures.append("sigterm")
        time.sleep(2)
        left = ray_processes() - before
        print(f"Ray processes left behind: {len(left)}")
        if left:
            failures.append("leftover processes")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if failures:
        print("FAILED: " + ", ".join(failures))
        if proc.stdout and not proc.stdout.closed:
            print(proc.stdout.read()[-4000:])
    return 1 if failures else 0


def signal_checks(replicas: int) -> list[str]:
    """SIGTERM / Ctrl-C while Ray starts (at 2, 8 and 15 s) and SIGKILL once serving: how long each took to
    exit and how many Ray processes it left."""
    failures = []
    for delay, sig in ((2, signal.SIGTERM), (8, signal.SIGINT), (15, signal.SIGTERM), (None, signal.SIGKILL)):
        port = free_port()
        before = ray_processes()
        proc = subprocess.Popen([sys.executable, "-m", "musicgen_onnx.cli", "serve", "--ray", "--replicas",
                                 str(replicas), "--port", str(port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        if delay is None:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
        else:
            time.sleep(delay)
        t0 = time.perf_counter()
        proc.send_signal(sig)
        try:
            err = proc.communicate(timeout=60)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            err = proc.communicate()[1]
            failures.append(f"{sig.name} at {delay} s: no exit in 60 s")
        took = time.perf_counter() - t0
        time.sleep(10 if delay is None else 3)
        left = ray_processes() - before
        when = "once serving" if delay is None else f"{delay} s into the start"
        tracebacks = err.count("Traceback")
        print(f"{sig.name} {when}: exit status {proc.returncode} after {took:.1f} s; Ray processes left: "
              f"{len(left)}; tracebacks on stderr: {tracebacks}")
        if left:
            failures.append(f"{sig.name} {when}: {len(left)} Ray processes left")
            for pid in left:  # ours: this check started them
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        if tracebacks and sig is not signal.SIGKILL:
            failures.append(f"{sig.name} {when}: traceback")
            print(err[-2000:])
    return failures


def read_stream(url: str, body: dict) -> str:
    """How a streamed request ended: 'complete', 'ended short (N bytes)' or 'error: ...'."""
    try:
        with httpx.stream("POST", url + "/v1/generate", json=body, timeout=120) as r:
            data = r.read()
        want = 44 + int(body["duration"] * 32000) * 2
        return f"{r.status_code} complete" if len(data) == want else f"{r.status_code} ended short ({len(data)} bytes)"
    except httpx.HTTPError as exc:
        return f"error: {type(exc).__name__}: {exc}"


def ray_processes() -> set[int]:
    """Pids of Ray's own processes (raylet, gcs_server, workers) on this machine."""
    out = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"raylet" in cmd or b"gcs_server" in cmd or b"ray::" in cmd or b"default_worker.py" in cmd:
            out.add(int(pid))
    return out


if __name__ == "__main__":
    sys.exit(main())
