"""Tiny checkpoints and their validated exports, kept across test runs.

Exporting and validating the tiny families is most of the suite's time, and the result only changes when
the exporter's code, the folder contract or the libraries that trace and check do. So each build is stored
under ``~/.cache/musicgen-onnx-tests/<key>/<name>`` (``$XDG_CACHE_HOME`` honoured), where the key hashes
those files and versions; what goes into a build (architecture, seed, options) is in its name. A second
run, or a second pytest-xdist worker, finds the folder and skips the build. Each folder's own digest is
checked on every first use in a session, so a test that damaged a cached folder costs a rebuild, never a
wrong result. ``MUSICGEN_ONNX_TEST_CACHE=off`` builds into the session's temporary folder instead (the old
behaviour); any other value is the cache folder to use.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from helpers import ROOT

# what an export's bytes and its validation depend on (globs, so that the files may move within the package): the
# exporter imports the runtime's manifest, roles, options (the defaults it writes), sessions (validation) and more,
# so every runtime module counts; a runtime edit costs a rebuild, never a stale export
CODE = ["export/**/*.py", "runtime/**/*.py"]
LIBRARIES = ["torch", "transformers", "onnx", "onnxruntime", "numpy"]
UNUSED_DAYS = 14  # key folders not used for this long are removed (old code's builds)


def cache_root() -> Path | None:
    """The cache folder, or None when ``MUSICGEN_ONNX_TEST_CACHE=off``."""
    setting = os.environ.get("MUSICGEN_ONNX_TEST_CACHE", "")
    if setting.lower() in ("off", "0", "no"):
        return None
    if setting:
        return Path(setting)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "musicgen-onnx-tests"


def code_key() -> str:
    """Hash of the exporter's code and the versions of the libraries it runs on."""
    h = hashlib.sha256()
    files = sorted({p for pattern in CODE for p in ROOT.glob(pattern) if ".partial" not in p.name})
    for path in files:
        h.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    for name in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            h.update(f"{name}=={metadata.version(name)}\0".encode())
    return h.hexdigest()[:16]


def tree_digest(folder: Path) -> str:
    """Hash of a folder's (or one file's) names and bytes."""
    h = hashlib.sha256()
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        h.update(path.relative_to(folder.parent).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@contextlib.contextmanager
def _locked(path: Path):
    """One builder at a time per name (pytest-xdist workers, two worktrees sharing the cache)."""
    try:
        import fcntl
    except ImportError:  # no flock: builds may race, each still renames a complete folder into place
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _prune(root: Path, keep: Path) -> None:
    cutoff = time.time() - UNUSED_DAYS * 86400
    for old in root.iterdir():
        if old != keep and old.is_dir() and old.stat().st_mtime < cutoff:
            shutil.rmtree(old, ignore_errors=True)


class BuildCache:
    """``cache.get(name, build, inputs)`` -> a folder built once by ``build(out_dir)`` for this code key and
    the contents of ``inputs`` (files or folders the build reads, such as a checkpoint fixture)."""

    def __init__(self, fallback: Path):
        root = cache_root()
        self.fallback = fallback
        self.folder = None if root is None else root / code_key()
        self.seen: dict[tuple, Path] = {}
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            os.utime(self.folder)
            _prune(root, self.folder)

    def get(self, name: str, build: Callable[[Path], object], inputs: tuple[Path, ...] = ()) -> Path:
        if (name, inputs) not in self.seen:
            self.seen[name, inputs] = self._get(name, build, inputs)
        return self.seen[name, inputs]

    def _get(self, name: str, build: Callable[[Path], object], inputs: tuple[Path, ...]) -> Path:
        if inputs:
            name += "-" + hashlib.sha256("".join(tree_digest(Path(p)) for p in inputs).encode()).hexdigest()[:12]
        if self.folder is None:
            build(self.fallback / name)
            return self.fallback / name
        target, stamp = self.folder / name, self.folder / f"{name}.sha256"
        with _locked(self.folder / f"{name}.lock"):
            if not (target.is_dir() and stamp.is_file() and stamp.read_text() == tree_digest(target)):
                shutil.rmtree(target, ignore_errors=True)
                staging = self.folder / f".building-{os.getpid()}"
                shutil.rmtree(staging, ignore_errors=True)
                build(staging / name)  # the same folder name as the final one, in case the build records it
                os.rename(staging / name, target)
                shutil.rmtree(staging, ignore_errors=True)
                stamp.with_suffix(".partial").write_text(tree_digest(target))
                os.replace(stamp.with_suffix(".partial"), stamp)
        return target
