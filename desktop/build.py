"""Build the one-folder desktop app: ``python -m desktop.build [--out DIR]``.

Why a wrapper around ``pyinstaller desktop/musicgen_onnx.spec``: it checks the things that otherwise
fail minutes into a freeze or, worse, only on a user's machine (PyInstaller missing, the package not
installed or installed editable, a runtime library missing), keeps PyInstaller's work files out of the
repository, and checks the finished folder for the files a frozen app most often lacks.

Freeze from a regular (non-editable) install of the package with its runtime dependencies only:
whatever else the environment holds can be pulled in by import analysis.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from desktop.collect import APP_NAME, SPEC_FILE, PlanError, package_dir, plan

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "dist" / "desktop"  # dist/ is gitignored


class BuildError(RuntimeError):
    """A build that cannot start or produced an incomplete app; printed as one line."""


def check_environment() -> None:
    """Refuse, in one line, the environments that cannot produce a working app."""
    if importlib.util.find_spec("PyInstaller") is None:
        raise BuildError("the desktop build needs PyInstaller: pip install 'musicgen-onnx[package]'")
    if package_dir("musicgen_onnx") == ROOT:
        # An editable install maps the package onto this checkout through an import hook that
        # PyInstaller's analysis does not run: the build "succeeds" and the app dies on
        # `No module named 'musicgen_onnx.cli'` (measured).
        raise BuildError("musicgen_onnx is an editable install, which PyInstaller cannot follow; build from a "
                         "regular one: pip install '.[package]' (in a fresh venv)")


def app_problems(app: Path) -> list[str]:
    """Files the frozen app must have (the usual misses), as a list of what is wrong; empty when fine."""
    internal = app / "_internal"

    def one(folder: str, pattern: str) -> Path:
        found = sorted((internal / folder).glob(pattern))
        return found[0] if found else internal / folder / pattern

    checks = {
        "executable": app / APP_NAME,
        "bundled model manifest": internal / "musicgen_onnx" / "models" / "tiny-melody" / "musicgen_onnx.json",
        "libsndfile": one("_soundfile_data", "libsndfile*"),
        "onnxruntime extension": one("onnxruntime/capi", "onnxruntime_pybind11_state*"),
        "soxr extension": one("soxr", "soxr_ext*"),
    }
    return [f"{what} missing ({path})" for what, path in checks.items() if not path.exists()]


def build(out: Path, work: Path | None = None, clean: bool = True) -> Path:
    """Freeze the CLI into ``out/musicgen-onnx``; return that folder (30-50 s on two busy cores)."""
    check_environment()
    plan()  # a missing runtime dependency fails here in one line, not deep inside PyInstaller
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="musicgen-onnx-pyinstaller-") as tmp:
        work = Path(work).resolve() if work else Path(tmp)
        cmd = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
               "--distpath", str(out), "--workpath", str(work), str(SPEC_FILE)]
        if clean:
            cmd.insert(3, "--clean")
        logger.info("running %s", " ".join(cmd))
        t0 = time.perf_counter()
        # From the temporary folder: the repository root (the package's own source tree) must not
        # shadow the installed package during analysis.
        result = subprocess.run(cmd, cwd=tmp)
        if result.returncode != 0:
            raise BuildError(f"PyInstaller failed with exit code {result.returncode} (its output is above)")
        logger.info("froze in %.0f s", time.perf_counter() - t0)
    app = out / APP_NAME
    problems = app_problems(app)
    if problems:
        raise BuildError(f"the app in {app} is incomplete: " + "; ".join(problems))
    return app


def folder_mb(path: Path) -> float:
    """Bytes of regular files under ``path`` (symlinks not followed, so nothing counts twice), in MB."""
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m desktop.build", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where the app folder goes (default {DEFAULT_OUT})")
    parser.add_argument("--work", type=Path, default=None, help="PyInstaller's work folder (default: a temporary one)")
    parser.add_argument("--no-clean", action="store_true", help="reuse PyInstaller's cache (faster rebuilds)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        app = build(args.out, args.work, clean=not args.no_clean)
    except (BuildError, PlanError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"{app} ({folder_mb(app):.1f} MB); run {app / APP_NAME} --help")


if __name__ == "__main__":
    main()
