"""``serve --ray`` without starting Ray (CI does not install it; ``python -m benchmarks.ray_check`` starts
it): what cannot schedule and the options Ray Serve's proxy owns are refused in one line, before Ray
starts (issue 24 items 18-19); the front that gives --ray the plain server's options and turns Ray's
own errors into the app's (item 20, servex's leftover), against a stand-in for Ray Serve's proxy."""

from __future__ import annotations

import pytest

from helpers import run_cli
from musicgen_onnx.runtime.errors import InvalidInputError
from musicgen_onnx.serve.ray_app import fit_replica_cpus


def test_replicas_share_the_cpus_when_none_are_given():
    assert fit_replica_cpus(3, None, 2) == 0.66  # three replicas on two cores fit, instead of one never starting
    assert fit_replica_cpus(2, None, 2) == 1.0
    assert fit_replica_cpus(1, None, 16) == 1.0
    assert fit_replica_cpus(3, 0.5, 2) == 0.5


@pytest.mark.parametrize("replicas, cpus, available, words", [
    (3, 1.0, 2, "--replicas 3 x --replica-cpus 1 = 3 CPUs, but the Ray cluster has 2"),
    (64, None, 0.5, "cannot share"),
    (1, -1.0, 2, "--replica-cpus must be in (0, 1024]"),
])
def test_what_cannot_schedule_is_refused(replicas, cpus, available, words):
    with pytest.raises(InvalidInputError) as exc:
        fit_replica_cpus(replicas, cpus, available)
    assert words in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("args, words", [
    (["--ray", "--replicas", "64", "--replica-cpus", "1024"], "--replicas 64 x --replica-cpus 1024 = 65536 CPUs"),
    (["--ray", "--max-connections", "0"], "--max-connections"),  # the front's options are checked as without --ray
    (["--replica-cpus", "0.5"], "--replica-cpus and --ray-address work with --ray only"),
    (["--ray-address", "auto"], "--replica-cpus and --ray-address work with --ray only"),
])
def test_the_command_refuses_in_one_line(args, words):
    """Refused before Ray is imported: the same line whether or not the 'ray' extra is installed."""
    r = run_cli("serve", "--port", "1", *args, timeout=120)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0] and "Traceback" not in r.stderr


def rays_proxy_stand_in():
    """What Ray Serve's proxy answers: the app's responses, its own text 500 when a replica dies, a stream
    cut when the replica serving it dies."""
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/died":
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body", "body": b"ActorDiedError: The actor died unexpectedly"})
        elif path == "/app-error":
            await send({"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"error": "internal error; see the server log"}'})
        elif path == "/cut":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"audio/wav")]})
            await send({"type": "http.response.body", "body": b"RIFF" + b"\0" * 60, "more_body": True})
            raise RuntimeError("the replica died")  # uvicorn closes the connection mid-stream
        else:
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"got": %d}' % len(body)})
    return app


def test_the_front_turns_rays_own_errors_into_the_apps_and_ends_cut_streams(caplog):
    """Issue 24 item 20: a killed replica's request gets the app's JSON error with Retry-After (Ray's proxy
    gave a bare text 500), its open stream ends cleanly (it ended in 'incomplete chunked read'); the app's
    own responses and errors pass unchanged; while the application is deleted, new requests get 503."""
    import threading
    import time

    import httpx

    from helpers import serving
    from musicgen_onnx.serve import ServeSettings
    from musicgen_onnx.serve.ray_front import RayDrain, RayFront

    deleting = threading.Event()
    drain = RayDrain(deleting.wait)
    with serving(rays_proxy_stand_in()) as upstream, \
            serving(RayFront(upstream, ServeSettings(), drain)) as url:
        assert httpx.post(url + "/v1/generate", json={"prompt": "x" * 1000}).json()["got"] > 1000
        r = httpx.get(url + "/died")
        assert r.status_code == 503 and r.headers["retry-after"] == "2" and set(r.json()) == {"error"}
        assert "replica" in r.json()["error"] and "\n" not in r.json()["error"]
        r = httpx.get(url + "/app-error")
        assert r.status_code == 500 and r.json() == {"error": "internal error; see the server log"}
        with httpx.stream("GET", url + "/cut") as r:
            data = r.read()  # no RemoteProtocolError: the stream ended with its terminator
        assert r.status_code == 200 and data == b"RIFF" + b"\0" * 60
        drain.stop(timeout=0)
        assert drain.draining and not drain.drained()
        r = httpx.get(url + "/health")
        assert r.status_code == 503 and "shutting down" in r.json()["error"] and r.headers["retry-after"] == "2"
        deleting.set()
        for _ in range(100):
            if drain.drained():
                break
            time.sleep(0.01)
        assert drain.drained()


def test_the_reaper_ends_what_a_killed_command_leaves(tmp_path):
    """Issue 24 item 19: SIGKILL of ``serve --ray`` left two of Ray's processes running; the watcher kills
    the command's descendants once it is gone (here a parent whose child outlives it)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from musicgen_onnx.serve import reaper

    pidfile = tmp_path / "child"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        f"c = subprocess.Popen(['sleep', '120'], start_new_session=True)\n"
        f"open({str(pidfile)!r}, 'w').write(str(c.pid))\n"
        "time.sleep(120)\n")])
    for _ in range(200):
        if pidfile.exists() and pidfile.read_text():
            break
        time.sleep(0.05)
    child = int(pidfile.read_text())
    watcher = reaper.start(parent.pid)
    try:
        time.sleep(1.5)  # the watcher has seen the child
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        watcher.wait(timeout=10)
        for _ in range(50):
            if reaper.start_time(child) is None or open(f"/proc/{child}/stat").read().split(") ")[1][0] == "Z":
                break
            time.sleep(0.1)
        alive = reaper.start_time(child) is not None and open(f"/proc/{child}/stat").read().split(") ")[1][0] != "Z"
        assert not alive
    finally:
        for pid in (parent.pid, child):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def test_a_taken_port_is_one_line_before_ray_starts():
    import socket

    from musicgen_onnx.serve.ray_app import check_listen

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(InvalidInputError, match=f"--port {port}: cannot listen there"):
            check_listen("127.0.0.1", port)
    check_listen("127.0.0.1", port)  # free again
