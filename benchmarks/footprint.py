"""Runtime-only install footprint and import time.

    python -m benchmarks.footprint [--json out.json]

Creates a fresh venv, installs this package without extras (CPU onnxruntime), and reports the size of
site-packages without pip/setuptools, the largest packages, whether torch/transformers/scipy came
along, and the time of ``import musicgen_onnx.runtime`` (best of 5 fresh interpreters).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXCLUDE = ("pip", "setuptools", "_distutils_hack", "distutils-precedence.pth", "pkg_resources")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        py = venv / "bin" / "python"
        subprocess.run([str(py), "-m", "pip", "install", "-q", str(ROOT)], check=True)
        site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
        groups: dict[str, int] = {}
        for entry in site.iterdir():
            if entry.name.startswith(EXCLUDE) or entry.name == "__pycache__":
                continue
            key = entry.name.split("-")[0].split(".")[0].lower()
            groups[key] = groups.get(key, 0) + _size(entry)
        total = sum(groups.values())
        times = []
        for _ in range(5):
            r = subprocess.run([str(py), "-c", "import time; t = time.perf_counter(); import musicgen_onnx.runtime; "
                                "print(time.perf_counter() - t)"], capture_output=True, text=True, check=True)
            times.append(float(r.stdout.strip()))
        heavy = sorted(k for k in groups if k in ("torch", "transformers", "scipy"))
    top = sorted(groups.items(), key=lambda kv: -kv[1])[:8]
    print(f"runtime-only install: {total / 1e6:.1f} MB in site-packages (without pip/setuptools)")
    print("largest: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in top))
    print(f"torch/transformers/scipy installed: {heavy or 'none'}")
    print(f"import musicgen_onnx.runtime: {min(times):.3f} s (best of 5)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"site_packages_mb": total / 1e6, "packages_mb": {k: v / 1e6 for k, v in top},
                                         "heavy": heavy, "import_s": min(times)}, indent=2))


if __name__ == "__main__":
    main()
