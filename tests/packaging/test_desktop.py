"""Desktop packaging, checked without freezing (a freeze takes minutes; see benchmarks/desktop_check.py).

What breaks frozen apps is almost always a file that was not collected: the bundled model, soundfile's
libsndfile, onnxruntime's shared libraries, soxr's extension. These tests check the collection plan the
spec hands to PyInstaller, run the spec itself against stand-ins for PyInstaller's build classes, and
run the PyInstaller hook the package ships for host apps.
"""

from __future__ import annotations

import importlib.metadata
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # desktop packaging

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def collect():
    """``desktop.collect`` (a build tool at the repository root, not an installed module)."""
    sys.path.insert(0, str(ROOT))
    try:
        import desktop.collect as module
    finally:
        sys.path.remove(str(ROOT))
    return module


@pytest.fixture(scope="module")
def plan(collect):
    return collect.plan()


def _package_dir(name: str) -> Path:
    import importlib.util

    return Path(list(importlib.util.find_spec(name).submodule_search_locations)[0]).resolve()


@pytest.mark.parametrize("name, manifest_name", [("tiny-melody", "musicgen_onnx.json"),  # cli.BUNDLED_MODEL
                                                  ("tiny-stems", "musicgen_onnx_stems.json")])  # cli.BUNDLED_STEMS
def test_plan_collects_the_bundled_models(plan, name, manifest_name):
    model = _package_dir("musicgen_onnx") / "models" / name
    manifest = json.loads((model / manifest_name).read_text())
    needed = {manifest_name} | {f for g in manifest["graphs"].values() for f in g["files"]}
    if name == "tiny-melody":
        needed.add("tokenizer.json")
    collected = {Path(src).name: dest for src, dest in plan.datas if Path(src).parent == model}
    assert needed <= set(collected), needed - set(collected)
    assert set(collected.values()) == {f"musicgen_onnx/models/{name}"}  # where the CLI looks


def test_plan_collects_native_libraries(plan):
    binaries = {Path(src).name: dest for src, dest in plan.binaries}
    sndfile = [n for n in binaries if n.startswith("libsndfile")]
    assert sndfile and all(binaries[n] == "_soundfile_data" for n in sndfile)  # soundfile looks there first
    capi = _package_dir("onnxruntime") / "capi"
    for lib in capi.iterdir():
        if lib.name.startswith("onnxruntime_pybind11_state"):
            assert "onnxruntime.capi.onnxruntime_pybind11_state" in plan.hiddenimports  # an extension module
        elif lib.name.endswith((".so", ".dll", ".dylib")) or ".so." in lib.name:
            dest = f"onnxruntime/capi/{lib.name}"
            assert (binaries.get(lib.name) == "onnxruntime/capi") != (dest in plan.drop_binaries), lib.name
    assert "soxr.soxr_ext" in plan.hiddenimports
    assert "musicgen_onnx.export" in plan.excludes and "torch" in plan.excludes


def test_dropped_onnxruntime_library_is_not_needed(collect, plan):
    """``libonnxruntime.so`` (34 MB) is dropped only if the Python extension does not link it."""
    capi = _package_dir("onnxruntime") / "capi"
    extensions = [p for p in capi.iterdir() if p.name.startswith("onnxruntime_pybind11_state")]
    needed = {n for e in extensions for n in (collect.elf_needed(e) or [])}
    for dest in plan.drop_binaries:
        assert Path(dest).name not in needed
    if sys.platform.startswith("linux"):
        assert "libc.so.6" in needed  # the ELF reader reads real DT_NEEDED entries


def test_spec_hands_the_plan_to_pyinstaller(plan):
    """Run the spec file with stand-ins for PyInstaller's Analysis/PYZ/EXE/COLLECT."""
    calls = {}

    class Analysis:
        def __init__(self, scripts, **kw):
            calls["Analysis"] = (scripts, kw)
            self.pure, self.scripts, self.datas = [], [], []
            self.binaries = [("onnxruntime/capi/" + Path(d).name, "/x", "BINARY") for d in plan.drop_binaries]
            self.binaries.append(("_soundfile_data/libsndfile.so", "/y", "BINARY"))

    def record(name):
        return lambda *args, **kw: calls.setdefault(name, (args, kw))

    spec = ROOT / "desktop" / "musicgen_onnx.spec"
    namespace = {"SPECPATH": str(spec.parent), "Analysis": Analysis, "PYZ": record("PYZ"), "EXE": record("EXE"),
                 "COLLECT": record("COLLECT"), "__file__": str(spec)}
    path_before = list(sys.path)
    exec(compile(spec.read_text(), str(spec), "exec"), namespace)
    assert sys.path == path_before  # the repository root must not stay importable during analysis
    scripts, kw = calls["Analysis"]
    assert Path(scripts[0]).is_file()
    assert sorted(kw["datas"]) == sorted(plan.datas) and sorted(kw["binaries"]) == sorted(plan.binaries)
    assert set(plan.hiddenimports) <= set(kw["hiddenimports"]) and "torch" in kw["excludes"]
    collected = calls["COLLECT"][0][1]
    assert [b[0] for b in collected] == ["_soundfile_data/libsndfile.so"]  # the dropped ones are gone
    assert calls["COLLECT"][1]["name"] == "musicgen-onnx"


def test_pyinstaller_hook_is_registered_and_collects_the_model(plan):
    """A host app that freezes ``import musicgen_onnx`` gets the bundled model via the entry point."""
    eps = [ep for ep in importlib.metadata.entry_points(group="pyinstaller40") if ep.value.startswith("musicgen_onnx")]
    assert [ep.value for ep in eps] == ["musicgen_onnx._pyinstaller:get_hook_dirs"]
    (hook_dir,) = eps[0].load()()
    hook = Path(hook_dir) / "hook-musicgen_onnx.py"
    assert hook.is_file()
    datas = runpy.run_path(str(hook))["datas"]
    model = {(src, dest) for src, dest in datas if dest.startswith("musicgen_onnx/models")}
    assert model == {d for d in plan.datas if d[1].startswith("musicgen_onnx/models")}
    assert any(dest.endswith((".dist-info", ".egg-info")) for _, dest in datas)  # for --version


def test_importing_the_package_does_not_import_pyinstaller(tmp_path):
    code = ("import sys, musicgen_onnx, musicgen_onnx._pyinstaller, musicgen_onnx.runtime; "
            "sys.exit('PyInstaller' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=tmp_path).returncode == 0


def test_build_without_pyinstaller_is_one_line(tmp_path):
    code = ("import sys; sys.modules['PyInstaller'] = None; sys.path.insert(0, sys.argv[1]); "
            "from desktop.build import main; main(['--out', sys.argv[2]])")
    r = subprocess.run([sys.executable, "-c", code, str(ROOT), str(tmp_path)], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == \
        "error: the desktop build needs PyInstaller: pip install 'musicgen-onnx[package]'"
    assert len(r.stderr.strip().splitlines()) == 1


def test_build_refuses_an_editable_install(collect, monkeypatch):
    """PyInstaller cannot follow setuptools' editable finder: such a build would freeze a broken app."""
    sys.path.insert(0, str(ROOT))
    try:
        import desktop.build as build
    finally:
        sys.path.remove(str(ROOT))
    monkeypatch.setattr(build, "package_dir", lambda name: ROOT)
    monkeypatch.setattr(build.importlib.util, "find_spec", lambda name: object())  # as if PyInstaller were there
    with pytest.raises(build.BuildError, match="editable install"):
        build.check_environment()
