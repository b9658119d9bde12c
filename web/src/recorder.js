// The microphone for voice input: getUserMedia → AudioContext → an AudioWorkletNode
// (voice-worklet.js, a hashed asset of its own) that hands back 16-bit little-endian mono
// PCM at the asked rate, in chunks, with their level. Nothing here knows the protocol.

import workletFile from "asset:voice-worklet";

const WORKLET = new URL(workletFile, import.meta.url).href; // beside app-<hash>.js
const FLUSH_MS = 500; // how long stop() waits for the worklet's last samples

/** Why voice input cannot work in this browser at all (null: it may). */
export function unsupported() {
  if (!window.isSecureContext) return "insecure";
  if (!navigator.mediaDevices || typeof navigator.mediaDevices.getUserMedia !== "function") return "unsupported";
  if (typeof window.AudioContext !== "function" || typeof window.AudioWorkletNode !== "function") return "noWorklet";
  return null;
}

/** A failure to start, by ``reason``: denied | noMic | micBusy | noWorklet | failed. */
export class RecorderError extends Error {
  constructor(reason, cause) {
    super(reason);
    this.reason = reason;
    this.cause = cause;
  }
}

function reasonOf(err) {
  const name = err && err.name;
  if (name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError") return "denied";
  if (name === "NotFoundError" || name === "OverconstrainedError" || name === "DevicesNotFoundError") return "noMic";
  if (name === "NotReadableError" || name === "AbortError" || name === "TrackStartError") return "micBusy";
  return "failed";
}

export class Recorder {
  /**
   * @param {{rate: number, chunk: number, data: (pcm: ArrayBuffer, rms: number) => void, ended: () => void}} options
   *   ``rate``: the PCM's sample rate; ``chunk``: samples per chunk; ``data`` gets each
   *   chunk and its RMS level (0..1); ``ended`` is called when the microphone goes away by itself.
   */
  constructor({ rate, chunk, data, ended }) {
    this.rate = rate;
    this.chunk = chunk;
    this.data = data;
    this.ended = ended;
    this.ctx = null;
    this.stream = null;
    this.source = null;
    this.node = null;
    this.closed = false;
    this.flushed = null;
  }

  /** Open the microphone and the processor. Call it from the click (or key) that asks for
   * it: the AudioContext is made, and asked to resume, before the first await, within that
   * user activation (autoplay rules allow it only there); the resume is awaited later.
   * Chunks flow from the moment it resolves, never before. Rejects with a RecorderError. */
  async start() {
    try {
      this.ctx = new AudioContext({ latencyHint: "interactive" });
    } catch (err) {
      throw new RecorderError("noWorklet", err);
    }
    const resumed = this.ctx.resume().then(
      () => null,
      (err) => err,
    );
    if (!this.ctx.audioWorklet) {
      this.close();
      throw new RecorderError("noWorklet");
    }
    const module = this.ctx.audioWorklet.addModule(WORKLET).then(
      () => null,
      (err) => new RecorderError("noWorklet", err),
    );
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
      });
    } catch (err) {
      this.close();
      throw new RecorderError(reasonOf(err), err);
    }
    if (this.closed) {
      for (const track of this.stream.getTracks()) track.stop(); // closed while the browser asked
      throw new RecorderError("cancelled");
    }
    const failed = await module;
    if (failed) {
      this.close();
      throw failed;
    }
    if (this.closed) throw new RecorderError("cancelled");
    try {
      const stalled = await resumed;
      if (this.closed) throw new RecorderError("cancelled");
      if (stalled) throw stalled;
      this.node = new AudioWorkletNode(this.ctx, "voice-capture", {
        numberOfInputs: 1,
        numberOfOutputs: 1,
        outputChannelCount: [1],
        channelCount: 1,
        channelCountMode: "explicit", // the graph mixes the input down to mono
        channelInterpretation: "speakers",
        processorOptions: { rate: this.rate, chunk: this.chunk },
      });
      this.node.port.onmessage = (ev) => this.onMessage(ev.data);
      this.source = this.ctx.createMediaStreamSource(this.stream);
    } catch (err) {
      this.close();
      throw err instanceof RecorderError ? err : new RecorderError("failed", err);
    }
    for (const track of this.stream.getAudioTracks()) {
      track.addEventListener("ended", () => !this.closed && this.ended());
    }
    // Last, and synchronously: the first chunk comes after the caller's next step.
    this.source.connect(this.node);
    this.node.connect(this.ctx.destination); // it outputs silence; connected, it is pulled on every engine
  }

  onMessage(m) {
    if (!m || typeof m !== "object") return;
    if (m.pcm instanceof ArrayBuffer && m.pcm.byteLength) this.data(m.pcm, Number(m.rms) || 0);
    if (m.end && this.flushed) this.flushed();
  }

  /** Stop listening: the samples still held are handed over (``data``), then everything is released. */
  async stop() {
    if (this.closed) return;
    if (this.node && this.source) {
      this.source.disconnect();
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, FLUSH_MS); // a suspended context never answers
        this.flushed = () => {
          clearTimeout(timer);
          resolve();
        };
        this.node.port.postMessage("flush");
      });
    }
    this.close();
  }

  /** Release the microphone and the audio graph at once (nothing more is handed over). */
  close() {
    if (this.closed) return;
    this.closed = true;
    this.flushed = null;
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    if (this.node) {
      this.node.port.onmessage = null;
      this.node.port.postMessage("stop");
      this.node.disconnect();
    }
    if (this.source) this.source.disconnect();
    if (this.ctx && this.ctx.state !== "closed") this.ctx.close().catch(() => {});
  }
}
