"""What the test files share besides fixtures: the repository's paths, the CLI in a fresh interpreter, a
server in a thread. Importable as ``helpers`` because pyproject's pytest settings put tests/ on the path
(``pythonpath``), so no test edits ``sys.path`` and none imports ``conftest`` (pytest owns that name)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
FAMILIES = ["tiny-melody", "tiny-melody-stereo", "tiny-text", "tiny-text-stereo"]
BUNDLED = ROOT / "models" / "tiny-melody"
BUNDLED_STEMS = ROOT / "models" / "tiny-stems"
CLI = [sys.executable, "-m", "musicgen_onnx.cli"]


def run_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    """``musicgen-onnx ARGS`` in a fresh interpreter, output captured as text."""
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, **kw)


def run_cli_here(*args: str, **kw) -> subprocess.CompletedProcess:
    """``musicgen-onnx ARGS`` in this process (click's CliRunner), as :func:`run_cli` returns it.

    A fresh interpreter costs a second or two per call and proves nothing more about a user error's line
    and exit code: the command's own error handling runs either way, and an exception that escapes it
    fails the test here (``catch_exceptions=False``) as a traceback would there. Calls that set up a
    process (``env``, ``cwd``, ``timeout``) still get one."""
    if kw:
        return run_cli(*args, **kw)
    from click.testing import CliRunner

    from musicgen_onnx.cli import main

    argv = list(map(str, args))
    result = CliRunner().invoke(main, argv, prog_name="musicgen-onnx", catch_exceptions=False)
    return subprocess.CompletedProcess([*CLI, *argv], result.exit_code, result.stdout, result.stderr)


def fast_stems_entry(folder: Path, exact: dict) -> dict:
    """The manifest entry of a ``stems_fast`` graph that is a copy of ``exact``'s (made in ``folder``): tests
    of which tier is taken need the two graphs told apart, not quantised (tests/export does that)."""
    from musicgen_onnx.runtime.manifest import sha256_file

    shutil.copy(folder / exact["file"], folder / "stems_fast.onnx")
    return {**exact, "file": "stems_fast.onnx", "precision": "int8",
            "files": {"stems_fast.onnx": sha256_file(folder / "stems_fast.onnx")}}


def melody_folder_with_stems_tiers(folder: Path) -> Path:
    """The bundled tiny melody model copied to ``folder`` with the bundled tiny stems graph, exact and "fast"
    (:func:`fast_stems_entry`), without torch."""
    from musicgen_onnx.runtime.manifest import MANIFEST_NAME, STEMS_MANIFEST_NAME

    shutil.copytree(BUNDLED, folder)
    stems = json.loads((BUNDLED_STEMS / STEMS_MANIFEST_NAME).read_text())
    shutil.copy(BUNDLED_STEMS / "stems.onnx", folder / "stems.onnx")
    data = json.loads((folder / MANIFEST_NAME).read_text())
    data["stems"] = stems["stems"]
    data["graphs"]["stems"] = stems["graphs"]["stems"]
    data["graphs"]["stems_fast"] = fast_stems_entry(folder, stems["graphs"]["stems"])
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    return folder


@contextlib.contextmanager
def serving(app):
    """A uvicorn server for ``app`` in a thread of this process, on a free 127.0.0.1 port; yields its URL."""
    import uvicorn

    from musicgen_onnx.serve.health import free_port, wait_until_healthy

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until_healthy(url, timeout_s=30):
            raise RuntimeError(f"the test server on {url} did not start")
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
