"""The web page at ``/`` in a real headless browser: Debian's chromium, driven by selenium through
Debian's chromedriver (no driver download, no network). Type a prompt, generate with the bundled model,
and the <audio> element gets a playable WAV of the requested length: the page reports its duration,
the browser's own decoder decodes it, and the bytes, read back here, are the service's audio for the
seed the page shows. Once from text, once with a melody upload.

CI installs the browser with apt (``.ci/run``). Elsewhere a missing browser skips these tests with the
apt command to run; with ``CI`` set it fails them: the browser check must never vanish silently.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil

import httpx
import numpy as np
import pytest
import soundfile as sf

from helpers import BUNDLED, serving

pytestmark = pytest.mark.slow  # a real browser

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SR, SECONDS = 32000, 2.0
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--mute-audio", "--autoplay-policy=no-user-gesture-required")

# The <audio> element's facts once it has loaded, its bytes (base64), and what the browser's Web Audio
# decoder makes of those bytes, and whether it plays: the clock of a playing element moves.
CHECK_AUDIO = """
const done = arguments[arguments.length - 1];
const audio = document.getElementById('player');
(async () => {
  if (audio.readyState < 1) await new Promise(ok => audio.addEventListener('loadedmetadata', ok, {once: true}));
  const buf = await (await fetch(audio.src)).arrayBuffer();
  const decoded = await new OfflineAudioContext(1, 1, 32000).decodeAudioData(buf.slice(0));
  let bin = ''; const bytes = new Uint8Array(buf);
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  await audio.play();
  const t0 = performance.now();
  while (audio.currentTime === 0 && performance.now() - t0 < 5000) await new Promise(ok => setTimeout(ok, 20));
  audio.pause();
  done({duration: audio.duration, ready: audio.readyState, played: audio.currentTime,
        decoded_frames: decoded.length, decoded_rate: decoded.sampleRate, wav: btoa(bin),
        progress: document.getElementById('progress').value, status: document.getElementById('status').textContent,
        download: document.getElementById('download').hidden ? null : document.getElementById('download').href});
})().catch(e => done({error: String(e)}));
"""


def have_browser() -> bool:
    return all(shutil.which(p) for p in (CHROMIUM, CHROMEDRIVER))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not have_browser():
        why = (f"Debian's chromium and chromium-driver are not installed ({CHROMIUM}, {CHROMEDRIVER}): "
               f"apt-get install -y --no-install-recommends chromium chromium-driver")
        if os.environ.get("CI"):
            pytest.fail(why + " (CI must run the browser test)")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page_server():
    from musicgen_onnx.runtime.musicgen import MusicGen
    from musicgen_onnx.serve import ServeSettings, create_app

    app = create_app(MusicGen.from_pretrained(BUNDLED, providers="cpu"), ServeSettings(max_duration=5))
    with serving(app) as url:
        yield url


def generate_in_page(driver, url: str, prompt: str, melody=None) -> dict:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "/")
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "model").text)
    for field, value in (("prompt", prompt), ("duration", str(SECONDS))):
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    if melody is not None:
        driver.find_element(By.ID, "melody").send_keys(str(melody))
    driver.find_element(By.ID, "generate").click()
    WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "status").text.startswith(("done", "error")))
    return driver.execute_async_script(CHECK_AUDIO)


@pytest.mark.parametrize("with_melody", [False, True], ids=["text", "melody"])
def test_the_page_generates_a_playable_wav_of_the_right_length(browser, page_server, tmp_path, with_melody):
    melody = None
    if with_melody:
        melody = tmp_path / "melody.wav"
        t = np.arange(2 * 44100) / 44100
        sf.write(melody, 0.5 * np.sin(2 * np.pi * 330 * t), 44100)
    got = generate_in_page(browser, page_server, f"browser test {'melody' if with_melody else 'text'}", melody)
    assert "error" not in got, got
    samples = int(SECONDS * 50) * 640  # frames at 50/s, 640 samples each
    assert got["status"].startswith("done") and got["progress"] == 1 and got["download"]
    assert abs(got["duration"] - samples / SR) < 1e-3 and got["ready"] >= 1
    assert got["decoded_frames"] == samples and got["decoded_rate"] == SR  # the browser's decoder read it all
    assert got["played"] > 0  # it plays
    wav = base64.b64decode(got["wav"])
    data, sr = sf.read(io.BytesIO(wav), dtype="int16")
    assert sr == SR and data.shape == (samples,) and np.abs(data).max() > 0
    # the page's file is the service's streamed audio for the seed it reports (sizes fixed up by the page)
    seed = int(re.search(r"seed (\d+)", got["status"]).group(1))
    fields = {"prompt": f"browser test {'melody' if with_melody else 'text'}", "duration": str(SECONDS),
              "seed": str(seed), "stream": "true"}
    files = {"melody": ("m.wav", melody.read_bytes(), "audio/wav")} if melody else None
    r = httpx.post(page_server + "/v1/generate", data=fields, files=files, timeout=60)
    assert r.status_code == 200 and r.content[44:] == wav[44:]
