// One WebSocket to the gateway at a time, reopened with exponential backoff and jitter.
// Frames are JSON objects; the owner gets them through callbacks, each tagged with the
// socket's generation so late events from a replaced socket are never mixed in.

const PING_MS = 25_000;
const SILENCE_MS = 2 * PING_MS + 10_000; // no frame at all for this long: the link is dead
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 20_000;
const RESTART_DELAY_MS = 300; // after close 1001 or 1012 the server is restarting: try soon

export class Socket {
  /**
   * @param {string} url ws(s):// URL of /chat
   * @param {{open: Function, frame: Function, close: Function, waiting: Function}} on
   */
  constructor(url, on) {
    this.url = url;
    this.on = on;
    this.ws = null;
    this.gen = 0;
    this.failures = 0; // consecutive connections that never became healthy
    this.retryTimer = 0;
    this.pingTimer = 0;
    this.pings = 0;
    this.lastRx = 0;
    this.retryAt = 0;
    this.stopped = false;
  }

  get open() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = 0;
    this.retryAt = 0;
    this.detach();
    this.stopped = false;
    const gen = ++this.gen;
    let ws;
    try {
      ws = new WebSocket(this.url, ["chat.v1"]);
    } catch (err) {
      this.stopped = true;
      this.on.close({ gen, code: 0, reason: String(err && err.message ? err.message : err), fatal: true });
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (gen !== this.gen) return;
      this.lastRx = Date.now();
      this.startPing();
      this.on.open(gen);
    };
    ws.onmessage = (ev) => {
      if (gen !== this.gen) return;
      this.lastRx = Date.now();
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (frame && typeof frame === "object" && typeof frame.type === "string") this.on.frame(frame, gen);
    };
    ws.onclose = (ev) => {
      if (gen !== this.gen) return;
      this.lost(ev.code, ev.reason);
    };
  }

  /** The connection works (a `ready` arrived): the next failure starts the backoff afresh. */
  healthy() {
    this.failures = 0;
  }

  send(frame) {
    if (!this.open) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /** A binary frame (an ArrayBuffer: voice input's audio). */
  sendBinary(data) {
    if (!this.open) return false;
    this.ws.send(data);
    return true;
  }

  /** Drop the current socket without reporting its close. */
  detach(code = 1000, reason = "") {
    const ws = this.ws;
    this.ws = null;
    this.gen++;
    this.stopPing();
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      try {
        ws.close(code, reason);
      } catch {
        /* already closing */
      }
    }
  }

  /** Give up until connect() is called again (auth refused, or the page is going away). */
  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = 0;
    this.retryAt = 0;
    this.detach();
  }

  lost(code, reason) {
    const gen = this.gen;
    this.detach();
    const fatal = code === 1008; // refused by policy (auth): retrying cannot help
    if (fatal) this.stopped = true;
    const restart = code === 1001 || code === 1012; // going away, service restart (another instance takes over)
    const delay = fatal ? 0 : this.schedule(restart);
    this.on.close({ gen, code, reason: reason || "", fatal, delay, failures: this.failures });
  }

  schedule(restart) {
    clearTimeout(this.retryTimer);
    // Equal jitter: half the window fixed, half random, so a restarted gateway is not
    // hit by every page at the same instant.
    const base = restart
      ? RESTART_DELAY_MS
      : Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(this.failures, 10));
    const delay = Math.round(base / 2 + Math.random() * (base / 2));
    this.failures++;
    this.retryAt = Date.now() + delay;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = 0;
      if (navigator.onLine === false) {
        this.retryAt = 0;
        this.on.waiting(); // the "online" event calls connect()
        return;
      }
      this.connect();
    }, delay);
    return delay;
  }

  /** A retry is pending or a socket is opening/open. */
  get active() {
    return !this.stopped && (!!this.ws || !!this.retryTimer);
  }

  startPing() {
    this.stopPing();
    this.pingTimer = setInterval(() => {
      if (!this.open) return;
      if (Date.now() - this.lastRx > SILENCE_MS) {
        this.lost(4000, "silent"); // no answer from the gateway
        return;
      }
      this.send({ type: "ping", id: `p${++this.pings}` });
    }, PING_MS);
  }

  stopPing() {
    clearInterval(this.pingTimer);
    this.pingTimer = 0;
  }
}
