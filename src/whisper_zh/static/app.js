// whisper-zh web page: upload or record audio, stream the transcript from /v1/audio/transcriptions (SSE), or
// transcribe the microphone live over /v1/realtime (WebSocket); copy the transcript or download it as txt/srt/vtt.
// The audio plays beside its transcript: the segment being heard is highlighted, and clicking a segment seeks to
// it. With "Speakers" ticked the server labels who spoke when, and each speaker gets a colour.
// Plain browser JavaScript: no build step, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: "whisper-1", file: null, formats: null, text: "", recorder: null, busy: false };

function setState(name, message) {
  document.body.dataset.state = name;
  if (message !== undefined) $("status").textContent = message;
}

function clock(seconds) {
  const ms = Math.max(0, Math.round(seconds * 1000));
  const h = Math.floor(ms / 3600000), m = Math.floor(ms / 60000) % 60, s = Math.floor(ms / 1000) % 60;
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return (h ? pad(h) + ":" : "") + pad(m) + ":" + pad(s) + "." + pad(ms % 1000, 3);
}

function chooseFile(file) {
  state.file = file;
  const player = $("player");
  if (player.src) URL.revokeObjectURL(player.src);
  if (file) player.src = URL.createObjectURL(file);
  else player.removeAttribute("src");
  player.hidden = !file;
  $("file-name").textContent = file ? `${file.name} (${(file.size / 1024).toFixed(0)} KB)` : "no file chosen";
  $("transcribe").disabled = !file || state.busy;
}

function resetOutput() {
  $("transcript").replaceChildren();
  state.formats = null;
  state.text = "";
  for (const id of ["copy", "download-txt", "download-srt", "download-vtt"]) $(id).disabled = true;
}

function addSegment(seg, speakers) {
  const li = document.createElement("li");
  li.dataset.start = seg.start;
  li.dataset.end = seg.end;
  li.title = "Play from here 从这里播放";
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = `${clock(seg.start)} → ${clock(seg.end)}`;
  li.append(time);
  if (seg.speaker && speakers) {
    const index = speakers.indexOf(seg.speaker);
    li.dataset.speaker = seg.speaker;
    li.classList.add(`speaker-${index % 8}`);
    const who = document.createElement("span");
    who.className = "speaker";
    who.textContent = seg.speaker.replace("SPEAKER_", "Speaker ");
    li.append(who);
  }
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = seg.text;
  li.append(text);
  $("transcript").append(li);
}

// Clicking a segment plays the audio from its start; while the audio plays, the segment being heard is marked.
function seekTo(event) {
  const li = event.target.closest("#transcript li[data-start]");
  const player = $("player");
  if (!li || !player.src) return;
  player.currentTime = Number(li.dataset.start);
  player.play().catch(() => { /* autoplay refused: the position is still set */ });
  highlight();
}

function highlight() {
  const now = $("player").currentTime;
  for (const li of $("transcript").children) {
    const on = li.dataset.start !== undefined && now >= Number(li.dataset.start) && now < Number(li.dataset.end);
    li.classList.toggle("playing", on);
    if (on) li.setAttribute("aria-current", "true");
    else li.removeAttribute("aria-current");
  }
}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function transcribe() {
  if (!state.file || state.busy) return;
  state.busy = true;
  $("transcribe").disabled = true;
  resetOutput();
  const progress = $("progress");
  progress.hidden = false;
  progress.removeAttribute("value");  // indeterminate while uploading and queued
  setState("uploading", "Uploading… 上传中");
  const form = new FormData();
  form.append("file", state.file, state.file.name);
  form.append("model", state.model);
  form.append("response_format", "json");
  form.append("stream", "true");
  form.append("script", $("script").value);
  if ($("diarize").checked) form.append("diarize", "true");
  try {
    const response = await fetch("/v1/audio/transcriptions", { method: "POST", body: form, headers: authHeaders() });
    if (!response.ok) {
      let message = `HTTP ${response.status}`;
      try { message = (await response.json()).error.message || message; } catch (_) { /* not JSON */ }
      if (response.status === 401) $("key-row").hidden = false;
      throw new Error(message);
    }
    await readEvents(response.body.getReader());
  } catch (err) {
    progress.hidden = true;
    setState("error", `Error 错误: ${err.message}`);
  } finally {
    state.busy = false;
    $("transcribe").disabled = !state.file;
  }
}

async function readEvents(reader) {
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (value) buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data) handleEvent(JSON.parse(data));
    }
    if (done) break;
  }
  if (document.body.dataset.state !== "done" && document.body.dataset.state !== "error") {
    throw new Error("the server closed the connection before the transcript was complete");
  }
}

function handleEvent(ev) {
  const progress = $("progress");
  switch (ev.type) {
    case "transcript.queued":
      setState("queued", `Queued: ${ev.duration.toFixed(1)} s of audio… 排队中`);
      break;
    case "transcript.progress":
      progress.value = ev.fraction;
      setState("decoding", `Transcribing… ${Math.round(ev.fraction * 100)}% 识别中`);
      break;
    case "transcript.segment":
      addSegment(ev.segment);
      setState("decoding", "Transcribing… 识别中");
      break;
    case "transcript.speakers":  // the whole recording diarized: the segments again, each with its speaker
      $("transcript").replaceChildren();
      for (const seg of ev.segments) addSegment(seg, ev.speakers);
      break;
    case "transcript.text.done":
      state.formats = ev.formats;
      state.text = ev.text;
      progress.value = 1;
      progress.hidden = true;
      if (!$("transcript").children.length) setState("done", "Done: no speech found. 未检测到语音");
      else setState("done", `Done: ${ev.duration.toFixed(1)} s transcribed. 完成` + speakerCount());
      for (const id of ["copy", "download-txt", "download-srt", "download-vtt"]) $(id).disabled = false;
      break;
    case "error":
      throw new Error(ev.error && ev.error.message ? ev.error.message : "transcription failed");
    default:
      break;  // transcript.text.delta: the segment event carries the same text with its times
  }
}

function speakerCount() {
  const found = new Set([...$("transcript").children].map((li) => li.dataset.speaker).filter(Boolean));
  return found.size ? ` · ${found.size} speaker${found.size > 1 ? "s" : ""} ${found.size} 位说话人` : "";
}

async function copyText() {
  const text = state.formats ? state.formats.txt : state.text;
  try {
    await navigator.clipboard.writeText(text);
  } catch (_) {  // no clipboard permission (e.g. plain http on a LAN address): select-and-copy fallback
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  $("status").textContent = "Copied to the clipboard. 已复制";
}

function download(format) {
  if (!state.formats) return;
  const base = (state.file ? state.file.name : "transcript").replace(/\.[^.]+$/, "");
  const type = format === "vtt" ? "text/vtt" : "text/plain";
  const url = URL.createObjectURL(new Blob([state.formats[format]], { type: `${type};charset=utf-8` }));
  const a = document.createElement("a");
  a.href = url;
  a.download = `${base}.${format}`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

async function toggleRecording() {
  const button = $("record");
  if (live.ws) return;
  if (state.recorder) {
    state.recorder.stop();
    return;
  }
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    setState("error", "Recording needs a secure page (https or http://127.0.0.1) and a browser with MediaRecorder.");
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    setState("error", `Microphone unavailable 无法使用麦克风: ${err.message}`);
    return;
  }
  const type = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm"].find((t) =>
    MediaRecorder.isTypeSupported(t));
  const recorder = new MediaRecorder(stream, type ? { mimeType: type } : undefined);
  const chunks = [];
  const started = Date.now();
  const timer = setInterval(() => {
    $("record-time").textContent = `recording ${((Date.now() - started) / 1000).toFixed(1)} s`;
  }, 200);
  recorder.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
  recorder.onstop = () => {
    clearInterval(timer);
    stream.getTracks().forEach((t) => t.stop());
    state.recorder = null;
    button.setAttribute("aria-pressed", "false");
    button.textContent = "● Record 录音";
    const mime = recorder.mimeType || "audio/webm";
    const ext = mime.includes("ogg") ? "ogg" : "webm";
    const blob = new Blob(chunks, { type: mime });
    $("record-time").textContent = `recorded ${((Date.now() - started) / 1000).toFixed(1)} s`;
    chooseFile(new File([blob], `recording.${ext}`, { type: mime }));
    transcribe();
  };
  state.recorder = recorder;
  recorder.start(250);
  button.setAttribute("aria-pressed", "true");
  button.textContent = "■ Stop 停止";
  setState("recording", "Recording… press Stop to transcribe. 录音中");
}

// -- live mode: microphone -> AudioWorklet (PCM16 chunks) -> /v1/realtime; committed text stays, the grey partial
// text after it may still change. Events follow OpenAI's realtime transcription events (see the README).
const live = { ws: null, audio: null, items: new Map(), finished: false, opened: false, timer: null };
const LIVE_FATAL = ["max_streams_reached", "server_busy", "unsupported", "idle_timeout", "server_shutting_down"];

function liveUrl(rate) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = new URLSearchParams({ sample_rate: String(Math.round(rate)), script: $("script").value });
  return `${scheme}//${location.host}/v1/realtime?${query}`;
}

async function startLive() {
  if (state.busy || state.recorder) return;
  if (!navigator.mediaDevices || !window.AudioWorkletNode) {
    setState("error", "Live mode needs a secure page (https or http://127.0.0.1) and a browser with AudioWorklet.");
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true } });
  } catch (err) {
    setState("error", `Microphone unavailable 无法使用麦克风: ${err.message}`);
    return;
  }
  const context = new AudioContext();
  let node;
  try {
    await context.audioWorklet.addModule("/static/live-worklet.js");
    node = new AudioWorkletNode(context, "pcm-chunker",
      { processorOptions: { chunk: Math.round(context.sampleRate / 10) } });
  } catch (err) {
    stream.getTracks().forEach((t) => t.stop());
    context.close();
    setState("error", `Live mode could not start its audio worklet: ${err.message}`);
    return;
  }
  context.createMediaStreamSource(stream).connect(node);
  node.connect(context.destination);  // keeps the worklet pulled; it outputs silence
  const key = $("api-key").value.trim();
  const ws = new WebSocket(liveUrl(context.sampleRate), ["realtime", ...(key ? [`openai-insecure-api-key.${key}`] : [])]);
  ws.binaryType = "arraybuffer";
  Object.assign(live, { ws, audio: { stream, context, node }, items: new Map(), finished: false, opened: false });
  node.port.onmessage = (e) => { if (ws.readyState === WebSocket.OPEN) ws.send(e.data); };
  ws.onmessage = (e) => handleLiveEvent(JSON.parse(e.data));
  ws.onclose = (e) => endLive(e);
  state.file = null;
  state.busy = true;
  resetOutput();
  for (const id of ["transcribe", "record"]) $(id).disabled = true;
  $("live").setAttribute("aria-pressed", "true");
  $("live").textContent = "■ Stop 停止";
  const started = Date.now();
  live.timer = setInterval(() => {
    $("live-time").textContent = `live ${((Date.now() - started) / 1000).toFixed(1)} s`;
  }, 200);
  setState("connecting", "Connecting… 连接中");
}

function stopLiveAudio() {
  if (!live.audio) return;
  live.audio.stream.getTracks().forEach((t) => t.stop());
  live.audio.node.disconnect();
  live.audio.context.close();
  live.audio = null;
  clearInterval(live.timer);
}

function stopLive() {
  stopLiveAudio();
  $("live").disabled = true;
  if (live.ws && live.ws.readyState === WebSocket.OPEN) {
    live.ws.send(JSON.stringify({ type: "transcription_session.finish" }));
    setState("finishing", "Finishing the last words… 正在完成");
  }
}

function endLive(event) {
  stopLiveAudio();
  live.ws = null;
  state.busy = false;
  for (const id of ["record", "live"]) $(id).disabled = false;
  $("transcribe").disabled = !state.file;
  $("live").setAttribute("aria-pressed", "false");
  $("live").textContent = "◉ Live 实时转写";
  if (live.finished || document.body.dataset.state === "error") return;
  if (!live.opened) {
    $("key-row").hidden = false;
    setState("error", "Could not open the live connection (is an API key needed?). 无法连接");
  } else {
    setState("error", `The live connection closed (${event.reason || "code " + event.code}). 连接已断开`);
  }
}

function liveItem(id) {
  let item = live.items.get(id);
  if (!item) {
    const li = document.createElement("li");
    const time = document.createElement("span");
    time.className = "time";
    time.textContent = "…";
    const text = document.createElement("span");
    text.className = "text";
    const committed = document.createElement("span");
    committed.className = "committed";
    const partial = document.createElement("span");
    partial.className = "partial";
    text.append(committed, partial);
    li.append(time, text);
    $("transcript").append(li);
    item = { li, time, committed, partial };
    live.items.set(id, item);
  }
  return item;
}

function handleLiveEvent(ev) {
  switch (ev.type) {
    case "transcription_session.created":
      live.opened = true;
      setState("live", "Listening: speak now. 正在聆听");
      break;
    case "input_audio_buffer.speech_started":
      liveItem(ev.item_id);
      break;
    case "conversation.item.input_audio_transcription.partial":
      liveItem(ev.item_id).partial.textContent = ev.text;
      break;
    case "conversation.item.input_audio_transcription.delta":
      liveItem(ev.item_id).committed.textContent += ev.delta;
      break;
    case "conversation.item.input_audio_transcription.completed": {
      const item = liveItem(ev.item_id);
      item.committed.textContent = ev.transcript;
      item.partial.textContent = "";
      if (ev.transcript) item.time.textContent = `${clock(ev.start)} → ${clock(ev.end)}`;
      else { item.li.remove(); live.items.delete(ev.item_id); }
      break;
    }
    case "transcription_session.finished":
      live.finished = true;
      state.formats = ev.formats;
      state.text = ev.text;
      for (const id of ["copy", "download-txt", "download-srt", "download-vtt"]) $(id).disabled = false;
      setState("done", ev.text ? `Done: ${ev.duration.toFixed(1)} s transcribed live. 完成` : "Done: no speech found.");
      break;
    case "error":
      if (LIVE_FATAL.includes(ev.error.code)) setState("error", `Error 错误: ${ev.error.message}`);
      else $("status").textContent = `Warning: ${ev.error.message}`;
      break;
    default:
      break;  // speech_stopped, committed: the completed event that follows carries what the page shows
  }
}

async function init() {
  $("file").addEventListener("change", (e) => chooseFile(e.target.files[0] || null));
  $("transcribe").addEventListener("click", transcribe);
  $("record").addEventListener("click", toggleRecording);
  $("live").addEventListener("click", () => (live.ws ? stopLive() : startLive()));
  $("copy").addEventListener("click", copyText);
  $("transcript").addEventListener("click", seekTo);
  $("player").addEventListener("timeupdate", highlight);
  $("player").addEventListener("seeked", highlight);
  for (const f of ["txt", "srt", "vtt"]) $(`download-${f}`).addEventListener("click", () => download(f));
  try {
    const health = await (await fetch("/health")).json();
    state.model = health.model;
    $("model-name").textContent = health.model;
    if (health.auth_required) $("key-row").hidden = false;
  } catch (_) {
    $("model-name").textContent = "unavailable";
  }
}

init();
