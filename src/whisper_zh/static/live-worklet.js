// whisper-zh live mode: an AudioWorklet that turns microphone audio into 16-bit PCM chunks (about 100 ms each,
// mono, at the AudioContext's own rate; the server resamples) and posts them to the page, which sends them over
// the WebSocket. Plain JavaScript, no build step.
"use strict";

class PcmChunker extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.size = options.processorOptions.chunk;
    this.buffer = new Int16Array(this.size);
    this.fill = 0;
  }

  process(inputs) {
    const channels = inputs[0] || [];
    if (!channels.length) return true;
    const frames = channels[0].length;
    for (let i = 0; i < frames; i++) {
      let sample = 0;
      for (const channel of channels) sample += channel[i];  // mix down to mono
      sample = Math.max(-1, Math.min(1, sample / channels.length));
      this.buffer[this.fill++] = sample < 0 ? sample * 32768 : sample * 32767;
      if (this.fill === this.size) {
        this.port.postMessage(this.buffer.buffer, [this.buffer.buffer]);
        this.buffer = new Int16Array(this.size);
        this.fill = 0;
      }
    }
    return true;
  }
}

registerProcessor("pcm-chunker", PcmChunker);
