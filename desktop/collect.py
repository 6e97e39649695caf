"""What the frozen app must contain, computed without PyInstaller.

Why a separate module: a freeze takes minutes, so CI cannot run one; but most ways a frozen app breaks
are a file that was not collected (the bundled model, libsndfile, onnxruntime's shared libraries,
soxr's extension). Computing that list here, with the standard library only, lets
``tests/packaging/test_desktop.py`` check it in milliseconds, and lets the spec file stay a thin consumer.

Everything is located with :func:`importlib.util.find_spec` on top-level names, which finds a package
without importing it (importing onnxruntime would cost a second and is not needed to list files).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

APP_NAME = "musicgen-onnx"
HERE = Path(__file__).resolve().parent
ENTRY_SCRIPT = HERE / "entry_cli.py"
SPEC_FILE = HERE / "musicgen_onnx.spec"

# Imports the frozen CLI must never carry: the exporter and everything it needs (torch alone is
# ~700 MB; `musicgen-onnx export` in the app then says which extra it needs, in one line), onnxruntime's
# optional Python tools (they import onnx, sympy, torch when present), and build/test tools that
# import analysis would otherwise drag in from a development venv.
EXCLUDES = [
    "musicgen_onnx.export",
    "torch", "transformers", "tokenizers", "sentencepiece", "safetensors", "onnx", "onnx_ir",
    "onnxruntime.transformers", "onnxruntime.quantization", "onnxruntime.tools", "onnxruntime.training",
    "onnxruntime.datasets", "onnxruntime.backend",
    "scipy", "sympy", "matplotlib", "pandas", "IPython", "tkinter", "_tkinter",
    "pytest", "_pytest", "hypothesis", "pyloudnorm", "PyInstaller", "setuptools", "pkg_resources", "pip",
]

# Extension modules that are reached only through a lazy import or a C-level import. Listing them
# makes the build independent of how a future version spells its imports.
HIDDEN_IMPORTS = [
    "musicgen_onnx.cli",
    "musicgen_onnx.runtime",
    "onnxruntime.capi.onnxruntime_pybind11_state",
    "soxr.soxr_ext",
    "_soundfile_data",
]

SHARED_LIBRARY_SUFFIXES = (".so", ".dylib", ".dll", ".pyd")


@dataclass
class Plan:
    """The collection plan: PyInstaller ``(source, destination folder)`` pairs plus import lists."""

    name: str
    entry_script: str
    datas: list[tuple[str, str]] = field(default_factory=list)
    binaries: list[tuple[str, str]] = field(default_factory=list)
    hiddenimports: list[str] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)
    # Destination names (as PyInstaller's TOC spells them) removed after analysis, with the reason.
    drop_binaries: dict[str, str] = field(default_factory=dict)

    def keep_binary(self, dest_name: str) -> bool:
        """Whether a binary that analysis or a hook collected stays in the app."""
        return dest_name.replace("\\", "/") not in self.drop_binaries


class PlanError(RuntimeError):
    """A runtime dependency is missing from the build environment (one line, says what to install)."""


def package_dir(name: str) -> Path:
    """Folder of top-level package ``name`` in this environment, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise PlanError(f"{name} is not installed in this environment ({sys.executable}); "
                        f"install the app's runtime first: pip install .")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def bundled_model_datas() -> list[tuple[str, str]]:
    """The bundled models' files as ``(source, musicgen_onnx/models/tiny-*)`` pairs.

    The same function the shipped PyInstaller hook uses, so the CLI app and a host app that freezes
    the library collect exactly the same files.
    """
    from musicgen_onnx._pyinstaller import BUNDLED_MODEL_SUBDIRS, bundled_model_datas as datas

    out = datas()
    missing = [sub for sub in BUNDLED_MODEL_SUBDIRS if not any(d.endswith(sub) for _, d in out)]
    if missing:
        raise PlanError(f"the bundled model is missing from {package_dir('musicgen_onnx') / missing[0]}; "
                        f"reinstall the package")
    return out


def _shared_libraries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and (p.suffix in SHARED_LIBRARY_SUFFIXES or ".so." in p.name))


def elf_needed(path: str | os.PathLike) -> list[str] | None:
    """DT_NEEDED entries of an ELF shared object (what the dynamic loader must find), or None if
    ``path`` is not ELF. Pure Python so the check works where ``readelf`` is not installed."""
    with open(path, "rb") as f:
        ident = f.read(16)
        if ident[:4] != b"\x7fELF":
            return None
        is64, end = ident[4] == 2, "<" if ident[5] == 1 else ">"
        if is64:
            f.seek(0x28)
            (shoff,) = struct.unpack(end + "Q", f.read(8))
            f.seek(0x3A)
            shentsize, shnum = struct.unpack(end + "HH", f.read(4))
            sh_fmt, dyn_fmt = end + "IIQQQQIIQQ", end + "qQ"
        else:
            f.seek(0x20)
            (shoff,) = struct.unpack(end + "I", f.read(4))
            f.seek(0x2E)
            shentsize, shnum = struct.unpack(end + "HH", f.read(4))
            sh_fmt, dyn_fmt = end + "IIIIIIIIII", end + "iI"
        sections = []
        for i in range(shnum):
            f.seek(shoff + i * shentsize)
            sections.append(struct.unpack(sh_fmt, f.read(struct.calcsize(sh_fmt))))
        needed = []
        for _name, sh_type, _flags, _addr, offset, size, link, *_ in sections:
            if sh_type != 6:  # SHT_DYNAMIC
                continue
            strtab = sections[link]
            f.seek(strtab[4])
            strings = f.read(strtab[5])
            f.seek(offset)
            raw = f.read(size)
            step = struct.calcsize(dyn_fmt)
            for j in range(0, len(raw) - step + 1, step):
                tag, val = struct.unpack(dyn_fmt, raw[j:j + step])
                if tag == 0:  # DT_NULL
                    break
                if tag == 1:  # DT_NEEDED
                    needed.append(strings[val:strings.index(b"\0", val)].decode())
        return needed


def onnxruntime_libraries() -> tuple[list[tuple[str, str]], dict[str, str]]:
    """onnxruntime's ``capi`` shared libraries to collect, and the ones to drop with the reason.

    The Python extension (``onnxruntime_pybind11_state``) links the runtime statically; recent wheels
    also ship ``libonnxruntime.so.X`` (the C API for other languages, 34 MB, a fifth of the app). It is
    dropped only when the extension provably does not load it (its DT_NEEDED list), so a future wheel
    that does link it keeps it.
    """
    capi = package_dir("onnxruntime") / "capi"
    libs = _shared_libraries(capi)
    extensions = [p for p in libs if p.name.startswith("onnxruntime_pybind11_state")]
    if not extensions:
        raise PlanError(f"onnxruntime's Python extension is missing from {capi}; reinstall onnxruntime")
    needed = set()
    for ext in extensions:
        needed.update(elf_needed(ext) or [])
    keep, drop = [], {}
    for lib in libs:
        if lib in extensions:
            continue  # an extension module: collected by import analysis (hidden import above)
        if lib.name.startswith("libonnxruntime.so") and all(elf_needed(e) is not None for e in extensions) \
                and not any(n.startswith("libonnxruntime.so") for n in needed):
            drop[f"onnxruntime/capi/{lib.name}"] = "C API library; the Python extension links the runtime statically"
            continue
        keep.append((str(lib), "onnxruntime/capi"))
    return keep, drop


def libsndfile_binaries() -> list[tuple[str, str]]:
    """soundfile's own libsndfile build (``_soundfile_data``), loaded with ctypes: invisible to analysis."""
    data = package_dir("_soundfile_data")
    libs = [p for p in _shared_libraries(data) if p.name.startswith("libsndfile")]
    if not libs:
        raise PlanError(f"libsndfile is missing from {data}; reinstall soundfile (pip install --force-reinstall soundfile)")
    return [(str(p), "_soundfile_data") for p in libs]


def plan() -> Plan:
    """Everything the one-folder CLI app collects beyond what import analysis finds on its own."""
    p = Plan(name=APP_NAME, entry_script=str(ENTRY_SCRIPT), hiddenimports=list(HIDDEN_IMPORTS),
             excludes=list(EXCLUDES))
    p.datas += bundled_model_datas()
    data = package_dir("_soundfile_data")
    if (data / "COPYING").is_file():  # libsndfile's LGPL licence travels with the library
        p.datas.append((str(data / "COPYING"), "_soundfile_data"))
    p.binaries += libsndfile_binaries()
    ort_keep, ort_drop = onnxruntime_libraries()
    p.binaries += ort_keep
    p.drop_binaries.update(ort_drop)
    package_dir("soxr")  # fails early, in one line, if soxr is missing
    logger.info("plan: %d data files, %d binaries, %d dropped", len(p.datas), len(p.binaries), len(p.drop_binaries))
    return p
