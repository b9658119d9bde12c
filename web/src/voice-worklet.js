// The microphone's processor for voice input, in the AudioWorkletGlobalScope: mono input
// at the context's rate (sampleRate, 44.1 or 48 kHz usually) resampled to the gateway's
// rate (16 kHz) through a windowed-sinc low-pass (so what is above the new Nyquist does
// not alias into speech), as 16-bit little-endian PCM, posted to the main thread in
// chunks (~100 ms) with their RMS level. build.mjs emits it as its own hashed asset: the
// page's CSP (script-src 'self') refuses a blob: or data: module.
//
// Messages from the main thread: "flush" posts what is held (a last, shorter chunk) and
// then {end: true}; "stop" ends the processor.

const HALF = 8; // the kernel's half-width, in samples of the slower of the two rates
const RES = 256; // kernel table steps per input sample (linearly interpolated)
const PASS = 0.92; // the cutoff, as a fraction of the lower Nyquist frequency

class VoiceCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    const rate = o.rate > 0 ? o.rate : 16000;
    this.chunk = Math.max(1, Math.floor(o.chunk > 0 ? o.chunk : rate / 10)); // samples per message
    this.step = sampleRate / rate; // input samples per output sample
    // Cutoff in cycles per input sample; a wider kernel when the rate goes down.
    const fc = (0.5 * PASS) / Math.max(1, this.step);
    this.width = Math.ceil(HALF * Math.max(1, this.step)); // in input samples
    this.kernel = new Float32Array(this.width * RES + 2);
    for (let i = 0; i < this.kernel.length; i++) {
      const d = i / RES;
      if (d >= this.width) break;
      const x = 2 * fc * d;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      const w = 0.42 + 0.5 * Math.cos((Math.PI * d) / this.width) + 0.08 * Math.cos((2 * Math.PI * d) / this.width); // Blackman
      this.kernel[i] = sinc * w;
    }
    // Input history: `width` zeros first, so the first output sample sits on input 0.
    this.x = new Float32Array(4096);
    this.len = this.width;
    this.t = this.width; // where the next output sample is, in this.x
    this.fresh();
    this.running = true;
    this.port.onmessage = (ev) => {
      if (ev.data === "flush") {
        this.post();
        this.port.postMessage({ end: true });
      } else if (ev.data === "stop") {
        this.running = false;
      }
    };
  }

  fresh() {
    this.out = new ArrayBuffer(this.chunk * 2);
    this.view = new DataView(this.out);
    this.n = 0;
    this.energy = 0;
  }

  /** Post the samples held (a whole chunk, or fewer on a flush), transferred. */
  post() {
    if (!this.n) return;
    const pcm = this.n === this.chunk ? this.out : this.out.slice(0, this.n * 2);
    const rms = Math.sqrt(this.energy / this.n);
    this.port.postMessage({ pcm, rms }, [pcm]);
    this.fresh();
  }

  tap(d) {
    const p = Math.abs(d) * RES;
    const i = Math.floor(p);
    const k = this.kernel;
    return k[i] + (k[i + 1] - k[i]) * (p - i);
  }

  process(inputs) {
    if (!this.running) return false;
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true; // nothing connected (yet, or any more)
    if (this.len + channel.length > this.x.length) {
      const bigger = new Float32Array(this.x.length * 2);
      bigger.set(this.x.subarray(0, this.len));
      this.x = bigger;
    }
    this.x.set(channel, this.len);
    this.len += channel.length;
    const x = this.x;
    const w = this.width;
    while (this.t + w < this.len) {
      const t = this.t;
      const lo = Math.max(0, Math.ceil(t - w));
      const hi = Math.min(this.len - 1, Math.floor(t + w));
      let sum = 0;
      let norm = 0;
      for (let k = lo; k <= hi; k++) {
        const h = this.tap(k - t);
        sum += x[k] * h;
        norm += h;
      }
      let s = norm > 0 ? sum / norm : 0; // unity gain at every phase
      s = s > 1 ? 1 : s < -1 ? -1 : s;
      this.energy += s * s;
      this.view.setInt16(this.n * 2, Math.round(s < 0 ? s * 0x8000 : s * 0x7fff), true);
      if (++this.n === this.chunk) this.post();
      this.t += this.step;
    }
    // Keep only what the next output samples still read.
    const drop = Math.floor(this.t) - w;
    if (drop > 0) {
      x.copyWithin(0, drop, this.len);
      this.len -= drop;
      this.t -= drop;
    }
    return true;
  }
}

registerProcessor("voice-capture", VoiceCapture);
