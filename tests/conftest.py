"""Shared fixtures (the bundled model, tiny checkpoints and their exports, the CLI) and the two markers.

``export``: the test needs the export extra (torch, transformers, onnx). One rule gives it: every test
under tests/export/, and every test that asks for a fixture built with torch (``EXPORT_FIXTURES``) or is
marked by hand because it calls the onnx or tokenizers packages. Without torch, tests/export/ is not even
collected (its modules import torch at the top); ``-m "not export"`` deselects the rest.

``slow``: soak, kill -9, browser, desktop packaging, long-form and client-disconnect tests; the fast lane
is ``pytest -m "not slow and not export"``. The README's one test command runs everything.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from export_cache import BuildCache
from helpers import BUNDLED, run_cli_here

EXPORT_DIR = Path(__file__).resolve().parent / "export"
EXPORT_FIXTURES = {"checkpoint_dir", "exported", "reference_model"}
HAVE_TORCH = importlib.util.find_spec("torch") is not None
collect_ignore_glob = [] if HAVE_TORCH else ["export/*"]


def pytest_configure(config):
    config.addinivalue_line("markers", "export: needs the export extra (torch, transformers)")
    config.addinivalue_line("markers", "slow: soak, kill -9, browser, desktop, long-form or disconnect test; "
                                       "left out of the fast lane")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.is_relative_to(EXPORT_DIR) or EXPORT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.export)


@pytest.fixture
def cli():
    """``cli("generate", "a prompt", "-o", path)`` -> CompletedProcess (returncode, stdout, stderr), run in
    this process; ``helpers.run_cli`` where a test is about the process itself."""
    return run_cli_here


@pytest.fixture(scope="session")
def model():
    """The bundled tiny-melody model, loaded once per session: tests must leave it as they found it
    (test_hostile_folder checks that a call never changes it)."""
    from musicgen_onnx.runtime import MusicGen

    return MusicGen.from_pretrained(BUNDLED, providers="cpu")


@pytest.fixture(scope="session")
def build_cache(tmp_path_factory):
    return BuildCache(tmp_path_factory.mktemp("builds"))


@pytest.fixture(scope="session")
def checkpoint_dir(build_cache):
    """``checkpoint_dir(arch)`` -> a seed-0 transformers checkpoint folder, built on first use."""
    from musicgen_onnx.export.random_checkpoints import build_checkpoint

    return lambda arch: build_cache.get(f"{arch}-seed0", lambda out: build_checkpoint(arch, out, seed=0))


@pytest.fixture(scope="session")
def exported(checkpoint_dir, build_cache):
    """``exported(arch, kv_cache, **export_options)`` -> an exported model folder, built on first use.

    Validation runs once per family, on the static-cache export, and on one concat export (tiny-text) so
    that its checks stay exercised; the other concat exports are built without it, since the parity tests
    compare their greedy tokens and audio with transformers. Other options (``precision``, ``kv_dtype``)
    are exports of their own, validated."""
    from musicgen_onnx.export.exporter import export

    def get(arch: str, kv_cache: str = "static", **options) -> Path:
        validate = kv_cache == "static" or arch == "tiny-text"

        def build(out: Path) -> None:
            export(str(checkpoint_dir(arch)), out, kv_cache=kv_cache, validate_graphs=validate, **options)

        name = "-".join([arch, "seed0", kv_cache, *(f"{k}-{v}" for k, v in sorted(options.items()))])
        return build_cache.get(name, build)

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
