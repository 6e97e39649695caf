"""Desktop app check: build (or take) the frozen app, prove it runs with no Python visible, measure it.

    python -m benchmarks.desktop_check [--app dist/desktop/musicgen-onnx] [--json FILE]

Why a benchmark and not a test: a freeze takes about a minute of two busy cores here and more on CI
runners, and the timings are the point; tests/packaging/test_desktop.py checks the collection plan in CI
instead. This script:

1. builds the app with ``desktop.build`` unless ``--app`` names a built one;
2. runs the frozen executable from another folder with ``env -i PATH=/usr/bin:/bin HOME=...`` (no venv,
   no PYTHONPATH, no site-packages): ``info``, ``generate`` (bundled model, 2 s), ``generate --melody``,
   ``generate --stream``, ``--version``, a user error and ``export`` (which must say it needs the export
   extra: torch is not in the app), checking exit codes and each WAV (soundfile reads it; 32 kHz;
   ``int(duration * 50) * 640`` samples), and that every shared library the process mapped came from
   the app folder or the system (read from /proc/PID/maps while it runs);
3. freezes a four-line host app that uses the Python API with a plain ``pyinstaller host.py`` (only the
   package's pyinstaller40 hook collects the bundled model) and runs it the same way;
4. reports the folder size (with and without the model; the largest parts), cold start to the first
   progress line (and to ``info`` completing), and the same generation's wall and CPU time frozen vs
   installed (the venv's ``musicgen-onnx``), alternating ABBA, twice each by default (medians), plus
   whether both wrote the same samples for the same seed.

Run it from a regular (non-editable) install with the ``package`` extra. Results go to ``--json``
(default benchmarks/results/desktop_check.json, gitignored) and a table on stdout. Exit 1 if a check
failed, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "lofi chill beat with piano"
SAMPLE_RATE = 32000
SAMPLES_PER_FRAME = 640  # 32 kHz / 50 frames per second
SHARED_LIBRARY = re.compile(r"\.so(\.[0-9.]+)?\s*$")  # libfoo.so, libfoo.so.1.2 (not /etc/ld.so.cache)
SYSTEM_LIB_DIRS = ("/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/", "/usr/local/lib/")


class Run:
    """One process: exit code, output, wall time, time to first progress line, libraries it mapped."""

    def __init__(self, cmd: list[str], cwd: Path, env: dict, watch_maps: bool = False):
        self.cmd = cmd
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.first_progress_s = None
        out, err = bytearray(), bytearray()

        def read(stream, buf, watch):
            while chunk := os.read(stream.fileno(), 65536):
                if watch and self.first_progress_s is None and b"generating:" in bytes(buf[-64:]) + chunk:
                    self.first_progress_s = time.perf_counter() - t0
                buf += chunk

        readers = [threading.Thread(target=read, args=(proc.stdout, out, False)),
                   threading.Thread(target=read, args=(proc.stderr, err, True))]
        for r in readers:
            r.start()
        self.mapped: set[str] = set()
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # rusage: CPU seconds of this child
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if watch_maps:
                try:
                    for line in Path(f"/proc/{proc.pid}/maps").read_text().splitlines():
                        parts = line.split(maxsplit=5)
                        if len(parts) == 6 and SHARED_LIBRARY.search(parts[5]):
                            self.mapped.add(parts[5].strip())
                except OSError:  # exited between poll and read
                    pass
            time.sleep(0.01)
        for r in readers:
            r.join()
        self.wall_s = time.perf_counter() - t0
        # CPU time is what a shared machine disturbs least: the same work costs the same CPU seconds
        # however many other processes compete for the cores, while wall time does not.
        self.cpu_s = usage.ru_utime + usage.ru_stime
        self.rc = proc.returncode
        self.stdout, self.stderr = out.decode(errors="replace"), err.decode(errors="replace")
        match = re.search(r"audio in ([0-9.]+) s \(model load ([0-9.]+) s\)", self.stderr)
        self.total_s, self.load_s = (float(match[1]), float(match[2])) if match else (None, None)


def folder_sizes(app: Path) -> dict:
    """Total, model and largest parts in MB (1e6 bytes); symlinks not followed (nothing counted twice)."""
    files = [p for p in app.rglob("*") if p.is_file() and not p.is_symlink()]
    total = sum(p.lstat().st_size for p in files)
    model_dir = app / "_internal" / "musicgen_onnx" / "models"
    model = sum(p.lstat().st_size for p in files if model_dir in p.parents)
    groups: dict[str, int] = {}
    for p in files:
        rel = p.relative_to(app)
        key = "/".join(rel.parts[:2]) if rel.parts[0] == "_internal" else rel.parts[0]
        groups[key] = groups.get(key, 0) + p.lstat().st_size
    largest_files = sorted(files, key=lambda p: -p.lstat().st_size)[:8]
    return {
        "total_mb": total / 1e6, "model_mb": model / 1e6, "without_model_mb": (total - model) / 1e6,
        "files": len(files),
        "largest_parts_mb": {k: v / 1e6 for k, v in sorted(groups.items(), key=lambda kv: -kv[1])[:8]},
        "largest_files_mb": {str(p.relative_to(app)): p.lstat().st_size / 1e6 for p in largest_files},
    }


def check_wav(path: Path, duration: float) -> str | None:
    """None when ``path`` is the WAV the CLI must write for ``duration`` seconds, else what is wrong."""
    if not path.is_file():
        return f"{path.name} not written"
    try:
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 (any reading failure is the finding)
        return f"{path.name} unreadable: {exc}"
    expected = int(duration * SAMPLE_RATE / SAMPLES_PER_FRAME) * SAMPLES_PER_FRAME
    if sr != SAMPLE_RATE:
        return f"{path.name}: {sr} Hz, expected {SAMPLE_RATE}"
    if audio.shape[0] != expected:
        return f"{path.name}: {audio.shape[0]} samples, expected {expected}"
    if not np.isfinite(audio).all() or not np.abs(audio).max() > 0:
        return f"{path.name}: silent or not finite"
    return None


HOST_SCRIPT = """\
# A host app that uses the Python API; frozen with a plain `pyinstaller host.py`, no options: the
# bundled model must arrive through the package's pyinstaller40 hook.
from pathlib import Path

import musicgen_onnx
from musicgen_onnx.runtime import MusicGen

model = MusicGen.from_pretrained(Path(musicgen_onnx.__file__).parent / "models" / "tiny-melody")
wav = model.generate(["host app"], duration=1, seed=0)
print("host ok", wav.shape, model.sample_rate)
"""


def host_app_check(tmp: Path, work: Path, env: dict) -> dict:
    """Freeze HOST_SCRIPT with plain PyInstaller (only the shipped hook helps) and run it like the app."""
    folder = tmp / "host"
    folder.mkdir()
    (folder / "host.py").write_text(HOST_SCRIPT)
    t0 = time.perf_counter()
    build = subprocess.run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
                            "--distpath", str(folder / "dist"), "--workpath", str(folder / "work"),
                            "--specpath", str(folder), str(folder / "host.py")], cwd=folder,
                           capture_output=True, text=True)
    out = {"build_s": time.perf_counter() - t0, "ok": False, "problems": []}
    if build.returncode != 0:
        out["problems"].append(f"PyInstaller failed: {build.stderr.strip()[-300:]}")
        return out
    app = folder / "dist" / "host"
    out["size_mb"] = folder_sizes(app)["total_mb"]
    out["model_collected"] = (app / "_internal" / "musicgen_onnx" / "models" / "tiny-melody" / "musicgen_onnx.json").is_file()
    run = Run([str(app / "host")], work, env)
    out["wall_s"] = run.wall_s
    if run.rc != 0 or "host ok (1, 1, 32000) 32000" not in run.stdout:
        out["problems"].append(f"exit code {run.rc}: {(run.stdout + run.stderr).strip()[-300:]}")
    if not out["model_collected"]:
        out["problems"].append("the bundled model was not collected (is the pyinstaller40 hook registered?)")
    out["ok"] = not out["problems"]
    logger.info("host app (API)         %s %.2f s", "ok" if out["ok"] else "FAIL " + "; ".join(out["problems"]),
                run.wall_s)
    return out


def installed_cli() -> list[str]:
    """The venv's console script (what a pip user runs); ``-m`` if the script is not there."""
    script = Path(sys.executable).parent / "musicgen-onnx"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "musicgen_onnx.cli"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", type=Path, default=None, help="a built app folder (default: build one)")
    parser.add_argument("--out", type=Path, default=None, help="where to build (default: a temporary folder)")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds generated by the checks")
    parser.add_argument("--bench-durations", default="2,30", help="seconds per timed generation, comma-separated")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per side (alternating)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (WAVs, and the app if built here)")
    parser.add_argument("--skip-host", action="store_true", help="skip freezing the API host app (~1 min)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "desktop_check.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    tmp = Path(tempfile.mkdtemp(prefix="musicgen-onnx-desktop-check-"))
    result: dict = {"python": sys.version.split()[0], "platform": sys.platform, "cpus": os.cpu_count()}
    if args.app:
        app = args.app.resolve()
        if not (app / "musicgen-onnx").is_file():
            print(f"error: --app {args.app}: no musicgen-onnx executable in it (build one: python -m desktop.build)",
                  file=sys.stderr)
            return 2
    else:
        sys.path.insert(0, str(ROOT))
        from desktop.build import BuildError, build
        from desktop.collect import PlanError

        t0 = time.perf_counter()
        try:
            app = build(args.out or tmp / "dist")
        except (BuildError, PlanError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        result["build_s"] = time.perf_counter() - t0
    exe = app / "musicgen-onnx"
    result["app"] = str(app)
    result["size"] = folder_sizes(app)

    work = tmp / "elsewhere"  # neither the repository nor the app folder
    (work / "home").mkdir(parents=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work / "home")}  # env -i: no venv, no PYTHONPATH
    melody = work / "melody.wav"
    t = np.arange(int(3.0 * 44100)) / 44100  # 44.1 kHz on purpose: the app must resample it (soxr)
    notes = 440.0 * 2 ** (np.array([0, 4, 7, 12]) / 12)
    sf.write(melody, 0.3 * np.sin(2 * np.pi * notes[(t * 4).astype(int) % 4] * t).astype(np.float32), 44100)
    model = app / "_internal" / "musicgen_onnx" / "models" / "tiny-melody"
    d = f"{args.duration:g}"

    checks: list[dict] = []
    runs: dict[str, Run] = {}

    def check(name: str, cmd_args: list[str], wav: str | None = None, expect_rc: int = 0, want: str | None = None,
              frozen: bool = True) -> Run:
        cmd = ([str(exe)] if frozen else installed_cli()) + cmd_args
        run = Run(cmd, work, env, watch_maps=frozen)
        problems = []
        if run.rc != expect_rc:
            problems.append(f"exit code {run.rc}, expected {expect_rc}: {run.stderr.strip()[-300:]}")
        if want and want not in run.stdout + run.stderr:
            problems.append(f"output lacks {want!r}")
        if wav and (bad := check_wav(work / wav, args.duration)):
            problems.append(bad)
        if frozen:
            foreign = sorted(p for p in run.mapped if not p.startswith(str(app) + "/") and not p.startswith(SYSTEM_LIB_DIRS))
            if foreign:
                problems.append(f"mapped libraries from outside the app: {foreign[:5]}")
        checks.append({"check": name, "ok": not problems, "problems": problems, "wall_s": round(run.wall_s, 3),
                       "first_progress_s": run.first_progress_s, "command": " ".join(cmd_args)})
        runs[name] = run
        logger.info("%-22s %s %.2f s", name, "ok" if not problems else "FAIL " + "; ".join(problems), run.wall_s)
        return run

    check("info", ["info", str(model)], want="sizes and sha256 verified")
    check("generate", ["generate", PROMPT, "--duration", d, "--seed", "1", "-o", "gen.wav"], wav="gen.wav")
    check("generate --melody", ["generate", PROMPT, "--melody", str(melody), "--duration", d, "--seed", "1",
                                "-o", "melody.out.wav"], wav="melody.out.wav")
    check("generate --stream", ["generate", PROMPT, "--stream", "--duration", d, "--seed", "1", "-o", "stream.wav"],
          wav="stream.wav", want="first audio after")
    check("--version", ["--version"], want="0.1.0")
    check("user error", ["generate", PROMPT, "--melody", "missing.wav", "-o", "x.wav"], expect_rc=2, want="error: ")
    check("export needs extra", ["export", "facebook/musicgen-melody", "out"], expect_rc=2,
          want="pip install 'musicgen-onnx[export]'")
    err_lines = [ln for ln in runs["user error"].stderr.splitlines() if ln.startswith("error:") or "Traceback" in ln]
    if len(err_lines) != 1:  # one `error: ...` line, no traceback (the bundled-model notice may precede it)
        checks[-2]["ok"] = False
        checks[-2]["problems"].append(f"{len(err_lines)} error/traceback lines, expected one")
    # The installed CLI, same seed: the frozen app must write the same samples.
    check("installed generate", ["generate", PROMPT, "--duration", d, "--seed", "1", "-o", "gen.installed.wav"],
          wav="gen.installed.wav", frozen=False)
    check("installed info", ["info", str(model)], want="sizes and sha256 verified", frozen=False)
    if (work / "gen.wav").is_file() and (work / "gen.installed.wav").is_file():
        a, b = sf.read(work / "gen.wav")[0], sf.read(work / "gen.installed.wav")[0]
        result["frozen_vs_installed_max_abs_diff"] = float(np.abs(a - b).max()) if a.shape == b.shape else None
    result["checks"] = checks

    timing = []
    for seconds in [float(s) for s in args.bench_durations.split(",")]:
        row = {"duration_s": seconds, "frozen": [], "installed": []}
        for i in range(args.repeats):
            # Alternate, and swap who goes first every repeat (ABBA): drift on a shared machine and
            # whatever the previous run leaves warm then hit both sides alike.
            for side in ("frozen", "installed") if i % 2 == 0 else ("installed", "frozen"):
                exe_cmd = [str(exe)] if side == "frozen" else installed_cli()
                run = Run(exe_cmd + ["generate", PROMPT, "--duration", f"{seconds:g}", "--seed", "0",
                                     "-o", f"bench.{side}.wav"], work, env)
                if run.rc != 0:
                    raise SystemExit(f"error: timed {side} run failed: {run.stderr.strip()[-300:]}")
                row[side].append({"wall_s": run.wall_s, "cpu_s": run.cpu_s, "first_progress_s": run.first_progress_s,
                                  "in_process_s": run.total_s, "load_s": run.load_s})
        for key in ("wall_s", "cpu_s", "in_process_s", "first_progress_s"):  # medians: one busy moment on a shared
            f = float(np.median([r[key] for r in row["frozen"]]))    # machine should not decide the ratio
            n = float(np.median([r[key] for r in row["installed"]]))
            row[f"{key}_frozen_median"], row[f"{key}_installed_median"], row[f"{key}_ratio"] = f, n, f / n
        timing.append(row)
    result["timing"] = timing
    result["cold_start"] = {  # from the timed runs (nothing watching /proc), and the very first launch
        "frozen_first_progress_s_median": timing[0]["first_progress_s_frozen_median"],
        "installed_first_progress_s_median": timing[0]["first_progress_s_installed_median"],
        "frozen_first_launch_first_progress_s": runs["generate"].first_progress_s,
        "frozen_info_s": runs["info"].wall_s,
        "installed_info_s": runs["installed info"].wall_s,
        "frozen_version_s": runs["--version"].wall_s,
    }
    if not args.skip_host:
        result["host_app"] = host_app_check(tmp, work, env)
    result["ok"] = all(c["ok"] for c in checks) and result.get("host_app", {}).get("ok", True)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(render(result))
    if args.keep:
        print(f"\n(json: {args.json}; scratch kept: {tmp})")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"\n(json: {args.json})")
    return 0 if result["ok"] else 1


def render(r: dict) -> str:
    s = r["size"]
    lines = [f"app {r['app']}" + (f" (built in {r['build_s']:.0f} s)" if "build_s" in r else ""), "",
             "| check | result | wall s |", "|---|---|---|"]
    lines += [f"| {c['check']} | {'ok' if c['ok'] else 'FAIL: ' + '; '.join(c['problems'])} | {c['wall_s']:.2f} |"
              for c in r["checks"]]
    lines += ["", f"size: {s['total_mb']:.1f} MB total, {s['without_model_mb']:.1f} MB without the model "
              f"({s['model_mb']:.1f} MB), {s['files']} files",
              "largest parts: " + ", ".join(f"{k} {v:.1f}" for k, v in s["largest_parts_mb"].items()),
              "largest files: " + ", ".join(f"{Path(k).name} {v:.1f}" for k, v in s["largest_files_mb"].items())]
    c = r["cold_start"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines += ["", f"cold start to first progress line (median of the timed {r['timing'][0]['duration_s']:g} s runs): "
              f"frozen {fmt(c['frozen_first_progress_s_median'])} s, installed "
              f"{fmt(c['installed_first_progress_s_median'])} s (first launch after the build: "
              f"{fmt(c['frozen_first_launch_first_progress_s'])} s); `info` frozen {fmt(c['frozen_info_s'])} s, installed "
              f"{fmt(c['installed_info_s'])} s; frozen `--version` "
              f"{fmt(c['frozen_version_s'])} s",
              f"same seed, frozen vs installed samples: max abs diff {r.get('frozen_vs_installed_max_abs_diff')}", "",
              "| generation | frozen wall s | installed wall s | wall frozen/installed (medians) | CPU s frozen / installed "
              "(medians) | CPU ratio | in-process s frozen / installed (medians) | ratio |", "|---|---|---|---|---|---|---|---|"]
    for t in r["timing"]:
        lines.append(f"| {t['duration_s']:g} s | " + " / ".join(f"{x['wall_s']:.2f}" for x in t["frozen"]) + " | "
                     + " / ".join(f"{x['wall_s']:.2f}" for x in t["installed"]) + f" | {t['wall_s_ratio']:.3f} | "
                     f"{t['cpu_s_frozen_median']:.2f} / {t['cpu_s_installed_median']:.2f} | {t['cpu_s_ratio']:.3f} | "
                     f"{t['in_process_s_frozen_median']:.2f} / {t['in_process_s_installed_median']:.2f} | "
                     f"{t['in_process_s_ratio']:.3f} |")
    if "host_app" in r:
        h = r["host_app"]
        lines += ["", f"API host app (plain `pyinstaller host.py`): {'ok' if h['ok'] else 'FAIL: ' + '; '.join(h['problems'])}"
                  + (f", model collected by the hook: {h['model_collected']}, {h['size_mb']:.1f} MB, "
                     f"built in {h['build_s']:.0f} s, ran in {h['wall_s']:.2f} s" if "size_mb" in h else "")]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
