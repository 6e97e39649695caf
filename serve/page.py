"""The web page at ``/``: one self-contained HTML file (no external scripts, fonts or styles).

It asks for ``stream=true`` so it can show progress as the audio arrives (bytes received against the
bytes the duration implies), then fixes the streamed WAV's unknown sizes so the <audio> element and the
download get an ordinary WAV file.
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>musicgen-onnx</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#222}
 label{display:block;margin:.8rem 0 .2rem} input[type=text]{width:100%;padding:.4rem}
 button{margin-top:1rem;padding:.5rem 1.2rem} progress{width:100%;margin-top:1rem}
 #status{margin-top:.5rem;min-height:1.2rem} audio{width:100%;margin-top:1rem}
</style></head><body>
<h1>musicgen-onnx</h1>
<p id="model"></p>
<form id="form">
 <label for="prompt">Prompt</label><input id="prompt" type="text" maxlength="4096" value="lofi chill beat with piano">
 <label for="duration">Duration (seconds)</label><input id="duration" type="number" min="0.1" step="0.1" value="5">
 <label for="melody">Melody (optional)</label><input id="melody" type="file" accept="audio/*">
 <button id="generate" type="submit">Generate</button>
</form>
<progress id="progress" max="1" value="0"></progress>
<div id="status"></div>
<audio id="player" controls></audio>
<p><a id="download" download="musicgen.wav" hidden>Download</a></p>
<script>
let facts = null;
fetch('/v1/model').then(r => r.json()).then(f => {
  facts = f;
  document.getElementById('model').textContent =
    `${f.checkpoint || 'model'}: ${f.sample_rate} Hz, ${f.channels} channel(s), up to ${f.limits.max_duration_s} s`;
  document.getElementById('duration').max = f.limits.max_duration_s;
  if (!f.melody) document.getElementById('melody').disabled = true;
});
const $ = id => document.getElementById(id);
$('form').addEventListener('submit', async ev => {
  ev.preventDefault();
  const duration = parseFloat($('duration').value), status = $('status'), button = $('generate');
  button.disabled = true; $('progress').value = 0; status.textContent = 'queued...';
  const hop = facts.sample_rate / facts.frame_rate;
  const expected = 44 + Math.floor(duration * facts.frame_rate) * hop * facts.channels * 2;
  let init;
  const melody = $('melody').files[0];
  if (melody) {
    const form = new FormData();
    form.append('prompt', $('prompt').value); form.append('duration', String(duration));
    form.append('stream', 'true'); form.append('melody', melody);
    init = {method: 'POST', body: form};
  } else {
    init = {method: 'POST', headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({prompt: $('prompt').value, duration: duration, stream: true})};
  }
  const t0 = performance.now();
  try {
    const resp = await fetch('/v1/generate', init);
    if (!resp.ok) { status.textContent = 'error: ' + (await resp.json()).error; return; }
    const reader = resp.body.getReader(), parts = [];
    let got = 0, first = null;
    for (;;) {
      const {done, value} = await reader.read();
      if (done) break;
      parts.push(value); got += value.length;
      if (first === null && got > 44) first = (performance.now() - t0) / 1000;
      $('progress').value = Math.min(got / expected, 1);
      status.textContent = `generating... ${Math.round(100 * Math.min(got / expected, 1))}%`;
    }
    const wav = new Uint8Array(got); let at = 0;
    for (const p of parts) { wav.set(p, at); at += p.length; }
    const view = new DataView(wav.buffer);
    view.setUint32(4, got - 8, true); view.setUint32(40, got - 44, true);  // sizes now known
    const url = URL.createObjectURL(new Blob([wav], {type: 'audio/wav'}));
    $('player').src = url; $('download').href = url; $('download').hidden = false;
    $('progress').value = 1;
    const seconds = (got - 44) / (facts.channels * 2 * facts.sample_rate);
    status.textContent = `done: ${seconds.toFixed(2)} s of audio in ${((performance.now() - t0) / 1000).toFixed(2)} s`
      + ` (first audio after ${first === null ? '-' : first.toFixed(2)} s, seed ${resp.headers.get('X-Seed')})`;
  } catch (e) {
    status.textContent = 'error: ' + e;
  } finally {
    button.disabled = false;
  }
});
</script></body></html>
"""
