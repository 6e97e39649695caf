"""Shared fixtures: tiny random-weight checkpoints of each family, exported once per session, and the CLI.

Two kinds of test live here. Runtime tests need only the runtime install (numpy, onnxruntime,
soundfile, soxr, click) plus the test tools; export tests need the ``export`` extra (torch,
transformers) to build checkpoints or compute references. Export tests are marked ``export``:
automatically when they use a checkpoint fixture, by ``pytestmark`` where a whole module needs torch.
``.ci/run`` runs everything, then ``-m "not export"`` again in a virtual environment without torch;
there the modules that import torch at the top are not collected (``collect_ignore``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:  # the tests' shared helpers (`from conftest import ...`)
    sys.path.insert(0, str(ROOT / "tests"))

FAMILIES = ["tiny-melody", "tiny-melody-stereo", "tiny-text", "tiny-text-stereo"]
BUNDLED = ROOT / "models" / "tiny-melody"
CLI = [sys.executable, "-m", "musicgen_onnx.cli"]
EXPORT_FIXTURES = {"checkpoint_dir", "exported", "reference_model"}
EXPORT_MODULES = ["test_export.py", "test_export_streaming.py", "test_parity.py", "test_sensitivity.py",
                  "test_stems_parity.py", "test_tiers.py", "test_tokenizer.py", "test_capture.py"]
HAVE_TORCH = importlib.util.find_spec("torch") is not None
collect_ignore = [] if HAVE_TORCH else EXPORT_MODULES


def pytest_configure(config):
    config.addinivalue_line("markers", "export: needs the export extra (torch, transformers)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if EXPORT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.export)


def run_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    """``musicgen-onnx ARGS`` in a fresh interpreter, output captured as text."""
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, **kw)


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


@pytest.fixture
def cli():
    """``cli("generate", "a prompt", "-o", path)`` -> CompletedProcess (returncode, stdout, stderr)."""
    return run_cli


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory):
    """``checkpoint_dir(arch)`` -> a transformers checkpoint folder, built on first use."""
    from musicgen_onnx.export.random_checkpoints import build_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    built = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = build_checkpoint(arch, root / arch, seed=0)
        return built[arch]

    return get


@pytest.fixture(scope="session")
def exported(checkpoint_dir, tmp_path_factory):
    """``exported(arch, kv_cache)`` -> an exported (and validated) model folder, built on first use."""
    from musicgen_onnx.export.exporter import export

    root = tmp_path_factory.mktemp("onnx")
    done = {}

    def get(arch: str, kv_cache: str = "static") -> Path:
        key = (arch, kv_cache)
        if key not in done:
            done[key] = export(str(checkpoint_dir(arch)), root / f"{arch}-{kv_cache}", kv_cache=kv_cache)
        return done[key]

    return get


@pytest.fixture(scope="session")
def reference_model(checkpoint_dir):
    """``reference_model(arch)`` -> (transformers model, tokenizer), cached."""
    from musicgen_onnx.export import reference

    cache = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = reference.load(checkpoint_dir(arch))
        return cache[arch]

    return get
