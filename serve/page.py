"""The web page at ``/``: one self-contained HTML file (no external scripts, fonts or styles: it works
offline, served by the package).

Generation asks for ``stream=true`` so progress shows as the audio arrives (bytes received against the
bytes the duration implies). A stream cannot be loudness-normalised, so what the page plays, draws and
offers for download is the normalised file the server kept when the stream ended (``X-Result-Id`` ->
``GET /v1/results/{id}``, serve/results.py): the CLI's loudness, from one generation, with no loudness
code in JavaScript. Where the result is kept by another process (``serve --ray``: another replica
answers 404), the page falls back to the complete stream it received, and says it is not normalised.
Pictures (result waveforms, the melody's waveform, each stem's) are drawn into
<canvas> elements from the browser's own decode of the audio files.
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>musicgen-onnx</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 :root{--fg:#1d2330;--muted:#5b6475;--line:#d8dce5;--accent:#3355cc;--bg:#f5f6f9;--wave:#3355cc}
 *{box-sizing:border-box} body{font-family:system-ui,sans-serif;max-width:56rem;margin:0 auto;padding:1rem 1.2rem 3rem;
   color:var(--fg);background:var(--bg);line-height:1.4}
 h1{font-size:1.5rem;margin:.6rem 0 .2rem} h2{font-size:1.1rem;margin:0 0 .6rem}
 section{background:#fff;border:1px solid var(--line);border-radius:.6rem;padding:1rem 1.2rem;margin-top:1rem}
 label{display:block;font-size:.9rem;color:var(--muted);margin:.6rem 0 .2rem}
 input[type=text],input[type=number]{width:100%;padding:.45rem;border:1px solid var(--line);border-radius:.35rem;font:inherit}
 input[type=file]{font:inherit} .grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(9rem,1fr));gap:0 .9rem}
 button{font:inherit;padding:.45rem 1.1rem;border-radius:.35rem;border:1px solid var(--accent);background:var(--accent);color:#fff;cursor:pointer}
 button.plain{background:#fff;color:var(--accent);padding:.2rem .6rem;font-size:.85rem}
 button:disabled{opacity:.5;cursor:default} :focus-visible{outline:3px solid #f0a020;outline-offset:2px}
 fieldset{border:1px solid var(--line);border-radius:.4rem;margin:.8rem 0 0;padding:.2rem .9rem .8rem}
 legend{color:var(--muted);font-size:.9rem;padding:0 .3rem} .hint{color:var(--muted);font-size:.8rem}
 progress{width:100%;margin-top:.8rem} #status,#stems-status{margin-top:.4rem;min-height:1.3rem}
 canvas{width:100%;height:90px;display:block;background:#f0f2f7;border-radius:.35rem;margin-top:.5rem}
 canvas.small{height:48px} canvas.chroma{height:110px} audio{width:100%;margin-top:.5rem}
 dl#facts{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;margin:.3rem 0 0;font-size:.9rem}
 dl#facts dt{color:var(--muted)} dl#facts dd{margin:0}
 ol#results{padding-left:1.3rem;margin:0} ol#results li{margin-bottom:1rem}
 .row{display:flex;gap:.6rem;align-items:center;flex-wrap:wrap} .row a{font-size:.9rem}
 #stems-out{display:grid;grid-template-columns:repeat(auto-fit,minmax(12rem,1fr));gap:.8rem;margin-top:.6rem}
 #stems-out figure{margin:0} figcaption{font-weight:600;font-size:.9rem}
</style></head><body>
<header><h1>musicgen-onnx</h1><p id="model" class="hint"></p>
<details id="key-box"><summary>API key</summary>
 <label for="api-key">API key (servers started with --api-key; kept in this browser tab only)</label>
 <input id="api-key" type="password" autocomplete="off" spellcheck="false"></details></header>
<main>
<section aria-labelledby="gen-h"><h2 id="gen-h">Generate</h2>
<form id="form">
 <label for="prompt">Prompt</label><input id="prompt" type="text" maxlength="4096" value="lofi chill beat with piano">
 <div class="grid">
  <div><label for="duration">Duration (seconds)</label><input id="duration" type="number" min="0.1" step="0.1" value="5"></div>
  <div><label for="seed">Seed (empty: random)</label><input id="seed" type="number" min="0" step="1" inputmode="numeric"></div>
 </div>
 <label for="melody">Melody (optional audio file: its chroma guides the music)</label>
 <input id="melody" type="file" accept="audio/*" aria-describedby="melody-note">
 <canvas id="melody-wave" class="small" role="img" aria-label="melody waveform: no melody chosen" hidden></canvas>
 <canvas id="melody-chroma" class="chroma" role="img" aria-label="melody chroma: no melody chosen" hidden></canvas>
 <div id="melody-note" class="hint"></div>
 <fieldset><legend>Sampling</legend><div class="grid">
  <div><label for="guidance">Guidance (CFG)</label><input id="guidance" type="number" min="0" step="0.5"></div>
  <div><label for="temperature">Temperature</label><input id="temperature" type="number" min="0" step="0.05"></div>
  <div><label for="top_k">Top-k</label><input id="top_k" type="number" min="1" step="1"></div>
  <div><label for="top_p">Top-p (0: off)</label><input id="top_p" type="number" min="0" max="1" step="0.05"></div>
 </div><div class="hint">Empty fields take the model's defaults (shown greyed).</div></fieldset>
 <p><button id="generate" type="submit">Generate</button></p>
</form>
<progress id="progress" max="1" value="0" aria-label="generation progress"></progress>
<div id="status" role="status" aria-live="polite"></div>
<canvas id="wave" role="img" aria-label="waveform of the latest result: none yet"></canvas>
<audio id="player" controls aria-label="latest result"></audio>
<div class="row"><a id="download" download="musicgen.wav" hidden>Download (WAV, normalised as the CLI writes it)</a>
 <span id="seed-shown"></span><button id="reuse-seed" class="plain" type="button" hidden>Reuse this seed</button></div>
</section>
<section aria-labelledby="results-h"><h2 id="results-h">This visit's results</h2>
<p id="results-empty" class="hint">Nothing yet: results of this visit are listed here to compare and download.</p>
<ol id="results" aria-labelledby="results-h"></ol></section>
<section aria-labelledby="stems-h"><h2 id="stems-h">Stems</h2>
<p class="hint" id="stems-about">Upload a song to split it into drums, bass, other and vocals (Demucs).</p>
<div class="row"><label for="stems-file" style="margin:0">Song</label><input id="stems-file" type="file" accept="audio/*">
 <button id="stems-go" type="button">Separate</button></div>
<div id="stems-status" role="status" aria-live="polite"></div>
<div id="stems-out"></div></section>
<section aria-labelledby="facts-h"><h2 id="facts-h">Model</h2><dl id="facts"></dl></section>
</main>
<script>
'use strict';
const $ = id => document.getElementById(id);
let facts = null, runs = 0;
const settings = ['guidance', 'temperature', 'top_k', 'top_p'];

// A server started with --api-key answers 401 without 'Authorization: Bearer KEY': every call of the page
// goes through api(), which sends the key typed above. sessionStorage keeps it for this tab only.
const KEY_ITEM = 'musicgen-onnx-api-key';
$('api-key').value = sessionStorage.getItem(KEY_ITEM) || '';
if (sessionStorage.getItem(KEY_ITEM)) $('key-box').open = true;
function api(path, init = {}) {
  const key = $('api-key').value.trim(), headers = new Headers(init.headers || {});
  if (key) headers.set('Authorization', 'Bearer ' + key);
  return fetch(path, {...init, headers});
}
async function errorOf(resp) {
  const text = resp.status === 401 ? 'this server needs its API key: enter it under "API key" above' : null;
  try { return text || (await resp.json()).error; } catch (e) { return text || `HTTP ${resp.status}`; }
}
$('api-key').addEventListener('change', () => {
  const key = $('api-key').value.trim();
  if (key) sessionStorage.setItem(KEY_ITEM, key); else sessionStorage.removeItem(KEY_ITEM);
  loadFacts(); loadStems();
});

async function loadFacts() {
  const r = await api('/v1/model');
  if (!r.ok) { facts = null; $('model').textContent = 'model facts: ' + await errorOf(r); return; }
  const f = await r.json();
  facts = f;
  $('facts').replaceChildren();
  $('model').textContent =
    `${f.checkpoint || 'model'}: ${f.sample_rate} Hz, ${f.channels} channel(s), up to ${f.limits.max_duration_s} s`;
  $('duration').max = f.limits.max_duration_s;
  for (const k of settings) if (f.defaults[k] !== undefined && f.defaults[k] !== null) $(k).placeholder = f.defaults[k];
  if (f.codebook_size) $('top_k').max = f.codebook_size;
  if (!f.melody) { $('melody').disabled = true; $('melody-note').textContent = 'this model is text-only'; }
  const rows = [['checkpoint', f.checkpoint], ['family', f.family], ['melody conditioning', f.melody ? 'yes' : 'no'],
    ['audio', `${f.sample_rate} Hz, ${f.channels} channel(s), ${f.frame_rate} frames/s`],
    ['window', `${f.window_s} s`], ['codebooks', `${f.codebooks} x ${f.codebook_size}`],
    ['precision', f.precision], ['kv cache', f.kv_cache], ['providers', (f.providers || []).join(', ')],
    ['continuation', f.can_continue ? 'yes' : 'no'],
    ['defaults', Object.entries(f.defaults).map(([k, v]) => `${k} ${v}`).join(', ')],
    ['limits', `${f.limits.max_duration_s} s per clip, batches of ${f.limits.max_batch}`]];
  for (const [k, v] of rows) {
    if (v === undefined || v === null) continue;
    const dt = document.createElement('dt'), dd = document.createElement('dd');
    dt.textContent = k; dd.textContent = String(v); $('facts').append(dt, dd);
  }
}
async function loadStems() {
  const r = await api('/v1/stems');
  const ok = r.ok;
  $('stems-go').disabled = $('stems-file').disabled = !ok;
  if (ok) {
    const s = await r.json();
    $('stems-about').textContent = `Upload a song (up to ${s.max_duration_s} s) to split it into ` +
      `${s.sources.join(', ')} (Demucs, ${s.sample_rate} Hz).`;
  } else {
    $('stems-about').textContent = await errorOf(r);
  }
}
loadFacts(); loadStems();

// The browser's own decoder; a mono mix for the picture.
async function decode(blob) {
  const ctx = new OfflineAudioContext(1, 1, 44100);
  const buf = await ctx.decodeAudioData(await blob.arrayBuffer());
  const mono = new Float32Array(buf.length);
  for (let c = 0; c < buf.numberOfChannels; c++) {
    const ch = buf.getChannelData(c);
    for (let i = 0; i < ch.length; i++) mono[i] += ch[i] / buf.numberOfChannels;
  }
  return {mono, seconds: buf.duration};
}

// Min/max per pixel column, with a centre line: a waveform readable at any length.
function drawWave(canvas, mono, label) {
  const w = canvas.width = Math.max(1, Math.round(canvas.clientWidth * devicePixelRatio));
  const h = canvas.height = Math.max(1, Math.round(canvas.clientHeight * devicePixelRatio));
  const g = canvas.getContext('2d');
  g.fillStyle = '#f0f2f7'; g.fillRect(0, 0, w, h);
  g.fillStyle = '#c5cbe0'; g.fillRect(0, Math.floor(h / 2), w, 1);
  let peak = 1e-9;
  for (let i = 0; i < mono.length; i++) peak = Math.max(peak, Math.abs(mono[i]));
  const scale = (h / 2 - 2) / Math.max(peak, 0.05), per = mono.length / w;
  g.fillStyle = getComputedStyle(document.body).getPropertyValue('--wave') || '#3355cc';
  for (let x = 0; x < w; x++) {
    let lo = 0, hi = 0;
    for (let i = Math.floor(x * per); i < Math.min(mono.length, Math.floor((x + 1) * per) + 1); i++) {
      if (mono[i] < lo) lo = mono[i]; if (mono[i] > hi) hi = mono[i];
    }
    g.fillRect(x, h / 2 - hi * scale, 1, Math.max(1, (hi - lo) * scale));
  }
  canvas.setAttribute('aria-label', label);
}

// The model's own chroma of the melody (POST /v1/chroma): one cell per frame on the winning pitch class.
function drawChroma(canvas, c) {
  const w = canvas.width = Math.max(1, Math.round(canvas.clientWidth * devicePixelRatio));
  const h = canvas.height = Math.max(1, Math.round(canvas.clientHeight * devicePixelRatio));
  const g = canvas.getContext('2d'), n = c.notes.length, left = 28 * devicePixelRatio, rowH = h / n;
  g.fillStyle = '#f0f2f7'; g.fillRect(0, 0, w, h);
  g.fillStyle = '#5b6475'; g.font = `${Math.round(rowH * 0.8)}px system-ui, sans-serif`; g.textBaseline = 'middle';
  c.notes.forEach((name, i) => g.fillText(name, 3, h - (i + 0.5) * rowH));
  const colW = (w - left) / Math.max(1, c.bins.length);
  g.fillStyle = '#cc5533';
  c.bins.forEach((b, t) => g.fillRect(left + t * colW, h - (b + 1) * rowH, Math.max(1, colW), rowH));
  const counts = c.notes.map((_, i) => c.bins.filter(b => b === i).length);
  const top = c.notes.map((name, i) => [name, counts[i]]).filter(x => x[1]).sort((a, b) => b[1] - a[1]).slice(0, 3);
  canvas.setAttribute('aria-label', `melody chroma over its first ${c.seconds.toFixed(1)} s: mostly ` +
    top.map(([name, k]) => `${name} (${Math.round(100 * k / c.bins.length)}%)`).join(', '));
}

$('melody').addEventListener('change', async () => {
  const file = $('melody').files[0], canvas = $('melody-wave'), chroma = $('melody-chroma');
  if (!file) { canvas.hidden = chroma.hidden = true; $('melody-note').textContent = ''; return; }
  canvas.hidden = false;
  let note;
  try {
    const {mono, seconds} = await decode(file);
    drawWave(canvas, mono, `melody waveform: ${file.name}, ${seconds.toFixed(2)} s`);
    note = `${file.name}: ${seconds.toFixed(2)} s`;
  } catch (e) {
    canvas.hidden = true;
    note = `${file.name}: the browser cannot decode it (the server may)`;
  }
  $('melody-note').textContent = note;
  const form = new FormData(); form.append('melody', file);
  const resp = await api('/v1/chroma', {method: 'POST', body: form});
  if (!resp.ok) { chroma.hidden = true; $('melody-note').textContent = `${note}; ${await errorOf(resp)}`; return; }
  const c = await resp.json();
  chroma.hidden = false;
  drawChroma(chroma, c);
  $('melody-note').textContent = `${note}; its chroma (the pitch class the model follows, frame by frame` +
    (c.from_stems ? ', here from the full mix: generation takes it from the vocals and other stems' : '') + ')';
});

// The streamed bytes as a WAV file: the stream's header says 'length unknown', here the sizes are known.
function streamedWav(chunks, size) {
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) { bytes.set(c, at); at += c.length; }
  const view = new DataView(bytes.buffer);
  view.setUint32(4, size - 8, true); view.setUint32(40, size - 44, true);
  return new Blob([bytes], {type: 'audio/wav'});
}

function fieldsOf() {
  const fields = {prompt: $('prompt').value, duration: parseFloat($('duration').value), stream: true};
  for (const k of [...settings, 'seed']) {
    const v = $(k).value.trim();
    if (v !== '') fields[k] = (k === 'top_k' || k === 'seed') ? parseInt(v, 10) : parseFloat(v);
  }
  return fields;
}

function reuse(seed) {
  $('seed').value = seed; $('seed').focus();
  $('status').textContent = `seed ${seed} set: generate again for the same audio (same prompt and settings)`;
}

function addResult(url, mono, seconds, fields, seed) {
  runs += 1;
  $('results-empty').hidden = true;
  const li = document.createElement('li'), title = document.createElement('div');
  const extra = settings.filter(k => fields[k] !== undefined).map(k => `${k} ${fields[k]}`).join(', ');
  title.textContent = `"${fields.prompt}" - ${seconds.toFixed(2)} s, seed ${seed}` + (extra ? `, ${extra}` : '')
    + (fields.melody ? `, melody ${fields.melody}` : '');
  const canvas = document.createElement('canvas'); canvas.className = 'small'; canvas.setAttribute('role', 'img');
  const audio = document.createElement('audio'); audio.controls = true; audio.src = url;
  audio.setAttribute('aria-label', `result ${runs}`);
  const row = document.createElement('div'); row.className = 'row';
  const a = document.createElement('a'); a.href = url; a.download = `musicgen-${runs}-seed${seed}.wav`;
  a.textContent = 'Download'; a.setAttribute('aria-label', `download result ${runs}`);
  const b = document.createElement('button'); b.type = 'button'; b.className = 'plain reuse';
  b.textContent = `Reuse seed ${seed}`; b.addEventListener('click', () => reuse(seed));
  row.append(a, b); li.append(title, canvas, audio, row);
  $('results').prepend(li);
  drawWave(canvas, mono, `waveform of result ${runs}`);
}

$('form').addEventListener('submit', async ev => {
  ev.preventDefault();
  const fields = fieldsOf(), status = $('status'), button = $('generate');
  if (!facts) { status.textContent = 'the model facts have not loaded: ' + $('model').textContent; return; }
  if (!(fields.duration > 0)) { status.textContent = 'duration: enter a number of seconds'; $('duration').focus(); return; }
  button.disabled = true; $('progress').value = 0; status.textContent = 'queued...';
  const hop = facts.sample_rate / facts.frame_rate;
  const expected = 44 + Math.floor(fields.duration * facts.frame_rate) * hop * facts.channels * 2;
  let init;
  const melody = $('melody').files[0];
  if (melody) {
    const form = new FormData();
    for (const [k, v] of Object.entries(fields)) form.append(k, String(v));
    form.append('melody', melody);
    fields.melody = melody.name;
    init = {method: 'POST', body: form};
  } else {
    init = {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(fields)};
  }
  const t0 = performance.now();
  try {
    const resp = await api('/v1/generate', init);
    if (!resp.ok) { status.textContent = 'error: ' + await errorOf(resp); return; }
    const reader = resp.body.getReader();
    let got = 0, first = null;
    const chunks = [];
    for (;;) {
      const {done, value} = await reader.read();
      if (done) break;
      got += value.length; chunks.push(value);
      if (first === null && got > 44) first = (performance.now() - t0) / 1000;
      $('progress').value = Math.min(got / expected, 1);
      status.textContent = `generating... ${Math.round(100 * Math.min(got / expected, 1))}%`;
    }
    const seed = resp.headers.get('X-Seed'), id = resp.headers.get('X-Result-Id');
    const kept = await api('/v1/results/' + encodeURIComponent(id));
    let blob, note = '';
    if (kept.ok) {
      blob = await kept.blob();
    } else if (got >= expected) {  // complete, but kept elsewhere (serve --ray: another replica answered)
      blob = streamedWav(chunks, got);
      note = '; the stream as sent, not normalised: ' + await errorOf(kept);
    } else {  // the stream ended by an error: the server kept nothing
      status.textContent = `error: the stream ended early (${got} of ${expected} bytes); ` + await errorOf(kept);
      return;
    }
    const url = URL.createObjectURL(blob);
    $('player').src = url; $('download').href = url; $('download').download = `musicgen-seed${seed}.wav`;
    $('download').hidden = false; $('progress').value = 1;
    $('seed-shown').textContent = `seed ${seed}`; $('reuse-seed').hidden = false;
    $('reuse-seed').onclick = () => reuse(seed);
    const {mono, seconds} = await decode(blob);
    drawWave($('wave'), mono, `waveform of the latest result: ${seconds.toFixed(2)} s, seed ${seed}`);
    addResult(url, mono, seconds, fields, seed);
    status.textContent = `done: ${seconds.toFixed(2)} s of audio in ${((performance.now() - t0) / 1000).toFixed(2)} s`
      + ` (first audio after ${first === null ? '-' : first.toFixed(2)} s, seed ${seed})` + note;
  } catch (e) {
    status.textContent = 'error: ' + e;
  } finally {
    button.disabled = false;
  }
});

$('stems-go').addEventListener('click', async () => {
  const file = $('stems-file').files[0], status = $('stems-status'), out = $('stems-out');
  if (!file) { status.textContent = 'choose a song first'; $('stems-file').focus(); return; }
  $('stems-go').disabled = true; status.textContent = 'separating...'; out.replaceChildren();
  const form = new FormData(); form.append('audio', file);
  const t0 = performance.now();
  try {
    const resp = await api('/v1/stems', {method: 'POST', body: form});
    if (!resp.ok) { status.textContent = 'error: ' + await errorOf(resp); return; }
    const got = await resp.json();
    for (const name of got.sources) {
      const bytes = Uint8Array.from(atob(got.stems[name]), c => c.charCodeAt(0));
      const blob = new Blob([bytes], {type: 'audio/wav'}), url = URL.createObjectURL(blob);
      const fig = document.createElement('figure'), cap = document.createElement('figcaption');
      cap.textContent = name;
      const canvas = document.createElement('canvas'); canvas.className = 'small'; canvas.setAttribute('role', 'img');
      const audio = document.createElement('audio'); audio.controls = true; audio.src = url;
      audio.className = 'stem'; audio.setAttribute('aria-label', `${name} stem`);
      const a = document.createElement('a'); a.href = url; a.textContent = `Download ${name}`;
      a.download = `${file.name.replace(/\\.[^.]*$/, '')}-${name}.wav`;
      fig.append(cap, canvas, audio, a); out.append(fig);
      const {mono} = await decode(blob);
      drawWave(canvas, mono, `${name} stem waveform`);
    }
    status.textContent = `done: ${got.sources.length} stems of ${got.seconds.toFixed(2)} s in ` +
      `${((performance.now() - t0) / 1000).toFixed(2)} s`;
  } catch (e) {
    status.textContent = 'error: ' + e;
  } finally {
    $('stems-go').disabled = false;
  }
});
</script></body></html>
"""
