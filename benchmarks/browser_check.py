"""The web page in a real headless browser: type a prompt, generate, check the <audio> element.

    apt-get install -y chromium chromium-driver && pip install selenium
    python -m benchmarks.browser_check [--seconds 2]

Why here and not in tests/: CI installs with pip only and Debian's chromium comes from apt. Starts
``musicgen-onnx serve`` (bundled model) on a free 127.0.0.1 port, drives /usr/bin/chromium through
/usr/bin/chromedriver (no driver download), generates once from text and once with a melody file,
and checks that the <audio> element holds a playable WAV of the requested length (the browser's own
decoder reports the duration) and that progress reached 100%. Exit 1 on any miss.
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from musicgen_onnx.serve.health import wait_until_healthy

SR = 32000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


CHECK_AUDIO = """
const done = arguments[arguments.length - 1];
const audio = document.getElementById('player');
fetch(audio.src).then(r => r.arrayBuffer()).then(buf => {
  const v = new DataView(buf);
  const tag = String.fromCharCode(...new Uint8Array(buf.slice(0, 4)));
  const report = () => done({tag, bytes: buf.byteLength, riff: v.getUint32(4, true), data: v.getUint32(40, true),
    duration: audio.duration, ready: audio.readyState, progress: document.getElementById('progress').value,
    status: document.getElementById('status').textContent,
    download: document.getElementById('download').hidden ? null : document.getElementById('download').href});
  if (audio.readyState >= 1) report(); else audio.addEventListener('loadedmetadata', report, {once: true});
});
"""


def generate(driver, url: str, prompt: str, seconds: float, melody: Path | None) -> dict:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "model").text)
    box = driver.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(prompt)
    dur = driver.find_element(By.ID, "duration")
    dur.clear()
    dur.send_keys(str(seconds))
    if melody:
        driver.find_element(By.ID, "melody").send_keys(str(melody))
    driver.find_element(By.ID, "generate").click()
    WebDriverWait(driver, 120).until(
        lambda d: d.find_element(By.ID, "status").text.startswith(("done", "error")))
    driver.set_script_timeout(30)
    return driver.execute_async_script(CHECK_AUDIO)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "musicgen_onnx.cli", "serve", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    failures = []
    try:
        wait_until_healthy(url, timeout_s=60, poll_s=0.1)
        with tempfile.TemporaryDirectory() as tmp:
            melody = Path(tmp) / "melody.wav"
            t = np.arange(2 * 44100) / 44100
            sf.write(melody, 0.5 * np.sin(2 * np.pi * 330 * t), 44100)
            driver = browser()
            try:
                for name, mel in (("text", None), ("melody", melody)):
                    t0 = time.perf_counter()
                    got = generate(driver, url, f"browser check {name}", args.seconds, mel)
                    want_samples = int(args.seconds * 50) * 640
                    ok = (got["tag"] == "RIFF" and got["data"] == want_samples * 2 and got["bytes"] == 44 + got["data"]
                          and abs(got["duration"] - want_samples / SR) < 0.01 and got["ready"] >= 1
                          and got["progress"] == 1 and got["download"] and got["status"].startswith("done"))
                    print(f"{name}: {'ok' if ok else 'FAIL'} in {time.perf_counter() - t0:.1f} s: "
                          f"<audio> duration {got['duration']:.3f} s (want {want_samples / SR:.3f}), WAV data "
                          f"{got['data']} bytes, readyState {got['ready']}, progress {got['progress']}, "
                          f"status {got['status']!r}")
                    if not ok:
                        failures.append(name)
            finally:
                driver.quit()
    finally:
        server.terminate()
        server.wait(30)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
