"""The web page at ``/`` in a real headless browser: Debian's chromium, driven by selenium through
Debian's chromedriver (no driver download, no network). Type a prompt, generate with the bundled model,
and the <audio> element gets a playable WAV of the requested length: the page reports its duration,
the browser's own decoder decodes it, and the bytes, read back here, are the service's audio for the
seed the page shows. Once from text, once with a melody upload. The file the page plays and offers is
the normalised one the server kept from the stream (the CLI's loudness, not the quieter stream).

Then the page's other parts, checked in the browser and in screenshots: the settings and the drawn
seed reused (same audio), the list of this visit's results, the pictures drawn (canvas pixels, and
the waveform's colour in a screenshot), the model's facts, the melody's waveform, and the stems
panel (an upload gives four players of the song's length). ``PAGE_SCREENSHOT=path.png`` keeps one.

CI installs the browser with apt (``.ci/run``). Elsewhere a missing browser skips these tests with the
apt command to run; with ``CI`` set it fails them: the browser check must never vanish silently.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import struct
import zlib

import httpx
import numpy as np
import pytest
import soundfile as sf

from helpers import BUNDLED, serving

pytestmark = pytest.mark.slow  # a real browser

STEMS = BUNDLED.parent / "tiny-stems"

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SR, SECONDS = 32000, 2.0
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--mute-audio", "--autoplay-policy=no-user-gesture-required",
         "--window-size=1100,2400", "--force-device-scale-factor=1")

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
    from musicgen_onnx.runtime.stems import StemSeparator
    from musicgen_onnx.serve import ServeSettings, create_app

    app = create_app(MusicGen.from_pretrained(BUNDLED, providers="cpu"), ServeSettings(max_duration=5),
                     StemSeparator.from_folder(STEMS, providers="cpu"))
    with serving(app) as url:
        yield url


def open_page(driver, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "/")
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "model").text)


def type_into(driver, field: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, field)
    box.clear()
    box.send_keys(value)


def run_generation(driver) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.ID, "generate").click()
    WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "status").text.startswith(("done", "error")))


def generate_in_page(driver, url: str, prompt: str, melody=None) -> dict:
    from selenium.webdriver.common.by import By

    open_page(driver, url)
    type_into(driver, "prompt", prompt)
    type_into(driver, "duration", str(SECONDS))
    if melody is not None:
        driver.find_element(By.ID, "melody").send_keys(str(melody))
    run_generation(driver)
    return driver.execute_async_script(CHECK_AUDIO)


# Pixels of a canvas that differ from its background (the picture is drawn).
INK = """
const c = arguments[0], g = c.getContext('2d'), d = g.getImageData(0, 0, c.width, c.height).data;
let ink = 0;
for (let i = 0; i < d.length; i += 4)
  if (Math.abs(d[i] - d[0]) + Math.abs(d[i + 1] - d[1]) + Math.abs(d[i + 2] - d[2]) > 60) ink++;
return {ink: ink, pixels: c.width * c.height, label: c.getAttribute('aria-label')};
"""


def canvas_ink(driver, element) -> dict:
    return driver.execute_script(INK, element)


def lufs(wav: bytes) -> float:
    import pyloudnorm

    data, sr = sf.read(io.BytesIO(wav))
    return pyloudnorm.Meter(sr).integrated_loudness(data)


def read_png(png: bytes) -> np.ndarray:
    """8-bit RGB(A) non-interlaced PNG (what Chromium's screenshots are) -> ``[h, w, channels]`` uint8."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, head = 8, b"", None
    while pos < len(png):
        size, kind = struct.unpack(">I4s", png[pos:pos + 8])
        body = png[pos + 8:pos + 8 + size]
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + size
    w, h, depth, color, _, _, interlace = head
    assert depth == 8 and color in (2, 6) and interlace == 0, head
    ch = 3 if color == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * ch)
    out = np.zeros((h, w * ch), np.int32)
    prev = np.zeros(w * ch, np.int32)
    for y in range(h):
        f, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        if f == 0:
            row = line
        elif f == 2:
            row = (line + prev) & 255
        else:  # sub, average, paeth: left-dependent, pixel by pixel
            row = np.zeros_like(line)
            for x in range(w * ch):
                a = row[x - ch] if x >= ch else 0
                b, c = prev[x], prev[x - ch] if x >= ch else 0
                if f == 1:
                    pred = a
                elif f == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                row[x] = (line[x] + pred) & 255
        out[y], prev = row, row
    return out.reshape(h, w, ch).astype(np.uint8)


def screenshot_shows(driver, element, rgb, tolerance=40) -> int:
    """Pixels of ``element``'s area in a screenshot of the page within ``tolerance`` of colour ``rgb``."""
    img = read_png(driver.get_screenshot_as_png())
    r = element.rect
    box = img[int(r["y"]):int(r["y"] + r["height"]), int(r["x"]):int(r["x"] + r["width"]), :3].astype(int)
    return int((np.abs(box - np.array(rgb)).sum(axis=-1) < tolerance).sum())


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
    # the page's file is the service's non-streamed (normalised) response for the seed it reports, as the
    # CLI writes it: one LSB of float rounding apart (stream vs one-shot decode), the same loudness
    seed = int(re.search(r"seed (\d+)", got["status"]).group(1))
    fields = {"prompt": f"browser test {'melody' if with_melody else 'text'}", "duration": str(SECONDS),
              "seed": str(seed)}
    files = {"melody": ("m.wav", melody.read_bytes(), "audio/wav")} if melody else None
    r = httpx.post(page_server + "/v1/generate", data=fields, files=files, timeout=60)
    assert r.status_code == 200
    plain, _ = sf.read(io.BytesIO(r.content), dtype="int16")
    assert np.abs(plain.astype(int) - data).max() <= 1
    assert abs(lufs(wav) - lufs(r.content)) < 0.01 and abs(lufs(wav) + 14.0) < 0.5
    streamed = httpx.post(page_server + "/v1/generate", data={**fields, "stream": "true"}, files=files, timeout=60)
    assert lufs(streamed.content) < lufs(wav) - 1  # the stream itself is quieter: the page does not offer it
    if with_melody:  # what guides the music is drawn
        from selenium.webdriver.common.by import By

        ink = canvas_ink(browser, browser.find_element(By.ID, "melody-wave"))
        assert ink["ink"] > 0.05 * ink["pixels"] and "melody.wav" in ink["label"], ink
        chroma = canvas_ink(browser, browser.find_element(By.ID, "melody-chroma"))  # 330 Hz: E
        assert chroma["ink"] > 0.02 * chroma["pixels"] and "mostly E (" in chroma["label"], chroma


def test_settings_seed_reuse_results_list_pictures_and_facts(browser, page_server, tmp_path):
    from selenium.webdriver.common.by import By

    open_page(browser, page_server)
    facts = browser.find_element(By.ID, "facts").text
    assert "32000 Hz" in facts and "codebooks" in facts and "defaults" in facts
    assert browser.find_element(By.ID, "top_k").get_attribute("placeholder")  # the model's default shown
    type_into(browser, "prompt", "settings and seeds")
    type_into(browser, "duration", str(SECONDS))
    for field, value in (("guidance", "2"), ("temperature", "0.8"), ("top_k", "20"), ("top_p", "0")):
        type_into(browser, field, value)
    run_generation(browser)
    status = browser.find_element(By.ID, "status").text
    assert status.startswith("done"), status
    seed = re.search(r"seed (\d+)", status).group(1)
    assert browser.find_element(By.ID, "seed-shown").text == f"seed {seed}"
    # the drawn seed is reused from the results list, then a second run gives the same audio
    browser.find_element(By.CSS_SELECTOR, "#results li button.reuse").click()
    assert browser.find_element(By.ID, "seed").get_attribute("value") == seed
    run_generation(browser)
    assert browser.find_element(By.ID, "status").text.startswith("done") and f"seed {seed}" in \
        browser.find_element(By.ID, "status").text
    items = browser.find_elements(By.CSS_SELECTOR, "#results li")
    assert len(items) == 2 and all(f"seed {seed}" in li.text and "top_k 20" in li.text for li in items)
    files = browser.execute_async_script("""
      const done = arguments[arguments.length - 1];
      Promise.all([...document.querySelectorAll('#results li a')].map(async a => {
        const b = new Uint8Array(await (await fetch(a.href)).arrayBuffer());
        let s = ''; for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode(...b.subarray(i, i + 0x8000));
        return btoa(s);
      })).then(done, e => done(String(e)));""")
    assert isinstance(files, list) and len(files) == 2 and files[0] == files[1]  # same seed, same settings
    # the same request outside the page: these settings really were sent
    r = httpx.post(page_server + "/v1/generate", json={"prompt": "settings and seeds", "duration": SECONDS,
                   "seed": int(seed), "guidance": 2, "temperature": 0.8, "top_k": 20, "top_p": 0}, timeout=60)
    a, _ = sf.read(io.BytesIO(base64.b64decode(files[0])), dtype="int16")
    b, _ = sf.read(io.BytesIO(r.content), dtype="int16")
    assert np.abs(a.astype(int) - b).max() <= 1
    # the pictures are drawn: canvas pixels, and the waveform's colour in a screenshot of the page
    wave = browser.find_element(By.ID, "wave")
    ink = canvas_ink(browser, wave)
    assert ink["ink"] > 0.05 * ink["pixels"] and f"seed {seed}" in ink["label"], ink
    for canvas in browser.find_elements(By.CSS_SELECTOR, "#results canvas"):
        assert canvas_ink(browser, canvas)["ink"] > 0
    browser.execute_script("arguments[0].scrollIntoView()", wave)
    assert screenshot_shows(browser, wave, (0x33, 0x55, 0xCC)) > 500
    assert len(browser.find_elements(By.CSS_SELECTOR, "[role=status][aria-live=polite]")) == 2
    for field in ("prompt", "duration", "seed", "guidance", "temperature", "top_k", "top_p", "melody"):
        assert browser.find_element(By.CSS_SELECTOR, f"label[for={field}]").text  # every input has a label


def test_a_stems_upload_gives_four_players(browser, page_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    song = tmp_path / "song.wav"
    t = np.arange(int(1.5 * 44100)) / 44100
    sf.write(song, np.stack([0.4 * np.sin(2 * np.pi * 110 * t), 0.3 * np.sin(2 * np.pi * 660 * t)], axis=1), 44100)
    open_page(browser, page_server)
    browser.find_element(By.ID, "stems-file").send_keys(str(song))
    browser.find_element(By.ID, "stems-go").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "stems-status").text.startswith(("done", "error")))
    assert browser.find_element(By.ID, "stems-status").text.startswith("done: 4 stems of 1.50 s")
    durations = browser.execute_async_script("""
      const done = arguments[arguments.length - 1];
      Promise.all([...document.querySelectorAll('audio.stem')].map(a => a.readyState >= 1 ? a.duration :
        new Promise(ok => a.addEventListener('loadedmetadata', () => ok(a.duration), {once: true})))).then(done);""")
    names = [f.text.split("\n")[0] for f in browser.find_elements(By.CSS_SELECTOR, "#stems-out figure figcaption")]
    assert names == ["drums", "bass", "other", "vocals"]
    assert len(durations) == 4 and all(abs(d - 1.5) < 1e-3 for d in durations), durations
    links = browser.find_elements(By.CSS_SELECTOR, "#stems-out a[download]")
    assert [a.get_attribute("download") for a in links] == [f"song-{n}.wav" for n in names]
    for canvas in browser.find_elements(By.CSS_SELECTOR, "#stems-out canvas"):
        assert canvas_ink(browser, canvas)["ink"] > 0
    # the whole page as a user sees it after a generation and a separation
    type_into(browser, "prompt", "the page, whole")
    type_into(browser, "duration", str(SECONDS))
    browser.find_element(By.ID, "melody").send_keys(str(song))
    run_generation(browser)
    browser.execute_script("window.scrollTo(0, 0)")
    png = browser.get_screenshot_as_png()
    img = read_png(png)
    assert img.shape[0] > 1000 and len(np.unique(img[..., :3].reshape(-1, 3), axis=0)) > 50  # not a blank page
    (tmp_path / "page.png").write_bytes(png)
    if os.environ.get("PAGE_SCREENSHOT"):
        with open(os.environ["PAGE_SCREENSHOT"], "wb") as f:
            f.write(png)


def test_the_page_sends_the_api_key_typed_into_it(browser, tmp_path):
    """A server started with --api-key: the page says it needs the key (not a script error), then, once
    typed, every call of the page (facts, stems, generation, the kept result) carries it; a reload keeps it
    for this tab (sessionStorage)."""
    from selenium.webdriver.common.by import By

    from musicgen_onnx.runtime.musicgen import MusicGen
    from musicgen_onnx.runtime.stems import StemSeparator
    from musicgen_onnx.serve import ServeSettings, create_app

    key = "page-test-key-0123456789"
    app = create_app(MusicGen.from_pretrained(BUNDLED, providers="cpu"),
                     ServeSettings(max_duration=5, api_key=key), StemSeparator.from_folder(STEMS, providers="cpu"))
    with serving(app) as url:
        open_page(browser, url)
        assert "API key" in browser.find_element(By.ID, "model").text
        assert "API key" in browser.find_element(By.ID, "stems-about").text
        browser.find_element(By.CSS_SELECTOR, "#key-box summary").click()
        type_into(browser, "api-key", "wrong-key-wrong-key-0000")
        browser.find_element(By.ID, "prompt").click()  # 'change' fires when the field loses focus
        type_into(browser, "api-key", key)
        browser.find_element(By.ID, "prompt").click()
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(browser, 20).until(lambda d: "32000 Hz" in d.find_element(By.ID, "model").text)
        assert "drums" in browser.find_element(By.ID, "stems-about").text
        type_into(browser, "prompt", "with a key")
        type_into(browser, "duration", str(SECONDS))
        run_generation(browser)
        status = browser.find_element(By.ID, "status").text
        assert status.startswith("done"), status
        assert browser.find_element(By.CSS_SELECTOR, "#results li a").get_attribute("href").startswith("blob:")
        browser.refresh()  # the key stays for this tab
        WebDriverWait(browser, 20).until(lambda d: "32000 Hz" in d.find_element(By.ID, "model").text)
        assert browser.find_element(By.ID, "api-key").get_attribute("value") == key
        browser.execute_script("sessionStorage.clear()")


def test_a_result_kept_elsewhere_plays_the_stream_as_sent(browser, monkeypatch):
    """Under serve --ray another replica may answer GET /v1/results/{id} (404): the page then plays and
    offers the complete stream it received (its WAV sizes filled in), says it is not normalised, and
    is not an error. Here the server keeps no result at all."""
    from selenium.webdriver.common.by import By

    from musicgen_onnx.runtime.musicgen import MusicGen
    from musicgen_onnx.serve import ServeSettings, app as app_module, create_app
    from musicgen_onnx.serve.results import ResultStore

    monkeypatch.setattr(app_module, "ResultStore", lambda: ResultStore(max_count=0))
    app = create_app(MusicGen.from_pretrained(BUNDLED, providers="cpu"), ServeSettings(max_duration=5))
    with serving(app) as url:
        got = generate_in_page(browser, url, "kept elsewhere")
    assert "error" not in got, got
    samples = int(SECONDS * 50) * 640
    assert got["status"].startswith("done") and "the stream as sent, not normalised: no result" in got["status"]
    assert abs(got["duration"] - samples / SR) < 1e-3 and got["decoded_frames"] == samples
    wav = base64.b64decode(got["wav"])
    info = sf.info(io.BytesIO(wav))
    assert info.frames == samples and struct.unpack("<I", wav[40:44])[0] == 2 * samples
    assert browser.find_element(By.ID, "download").get_attribute("href").startswith("blob:")
