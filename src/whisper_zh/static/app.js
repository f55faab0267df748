// whisper-zh web page: upload or record audio, stream the transcript from /v1/audio/transcriptions (SSE),
// copy it or download it as txt/srt/vtt. Plain browser JavaScript: no build step, no CDN.
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
  $("file-name").textContent = file ? `${file.name} (${(file.size / 1024).toFixed(0)} KB)` : "no file chosen";
  $("transcribe").disabled = !file || state.busy;
}

function resetOutput() {
  $("transcript").replaceChildren();
  state.formats = null;
  state.text = "";
  for (const id of ["copy", "download-txt", "download-srt", "download-vtt"]) $(id).disabled = true;
}

function addSegment(seg) {
  const li = document.createElement("li");
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = `${clock(seg.start)} → ${clock(seg.end)}`;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = seg.text;
  li.append(time, text);
  $("transcript").append(li);
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
    case "transcript.text.done":
      state.formats = ev.formats;
      state.text = ev.text;
      progress.value = 1;
      progress.hidden = true;
      if (!$("transcript").children.length) setState("done", "Done: no speech found. 未检测到语音");
      else setState("done", `Done: ${ev.duration.toFixed(1)} s transcribed. 完成`);
      for (const id of ["copy", "download-txt", "download-srt", "download-vtt"]) $(id).disabled = false;
      break;
    case "error":
      throw new Error(ev.error && ev.error.message ? ev.error.message : "transcription failed");
    default:
      break;  // transcript.text.delta: the segment event carries the same text with its times
  }
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

async function init() {
  $("file").addEventListener("change", (e) => chooseFile(e.target.files[0] || null));
  $("transcribe").addEventListener("click", transcribe);
  $("record").addEventListener("click", toggleRecording);
  $("copy").addEventListener("click", copyText);
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
