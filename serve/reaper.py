"""Ends what a SIGKILLed ``serve --ray`` leaves: a watcher process that outlives it.

Why: the private Ray cluster's processes end with ``ray.shutdown()``, but a SIGKILL gives the command
no chance to call it, and two of Ray's processes (its dashboard and runtime-env agents) outlive their
raylet (issue 24 item 19). The watcher notes the command's descendants every half second; once the
command is gone it kills those still running (the same process: its start time is checked, so a
recycled pid is left alone). Linux only (/proc); elsewhere nothing is started.

    python -m musicgen_onnx.serve.reaper PID
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks
    except (OSError, IndexError):
        return None


def descendants(root: int) -> dict[int, str]:
    """pid -> start time of every process below ``root``."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    out, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            t = start_time(child)
            if t is not None and child not in out:
                out[child] = t
                todo.append(child)
    return out


def watch(pid: int, period_s: float = 0.5) -> int:
    """Until ``pid`` is gone, note its descendants; then kill those still running. Returns how many."""
    born = start_time(pid)
    seen: dict[int, str] = {}
    while born is not None and start_time(pid) == born:
        seen.update(descendants(pid))
        seen.pop(os.getpid(), None)  # the watcher is one of them
        seen = {p: t for p, t in seen.items() if start_time(p) == t}
        time.sleep(period_s)
    killed = 0
    for p, t in seen.items():
        if start_time(p) == t:
            try:
                os.kill(p, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


def start(pid: int | None = None) -> subprocess.Popen | None:
    """A watcher for ``pid`` (this process), in its own session: Ctrl-C at a terminal does not reach it."""
    if not sys.platform.startswith("linux"):
        return None
    return subprocess.Popen([sys.executable, "-m", "musicgen_onnx.serve.reaper", str(pid or os.getpid())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(int(sys.argv[1]))
