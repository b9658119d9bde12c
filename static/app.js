// LLM Gateway chat page: vanilla ES module, no dependencies, CSP-safe.
// Model text is only ever put into the DOM through createElement/textContent.

const STORE_KEY = "gateway.conversation";
const PING_MS = 25000;
const BACKOFF_MIN = 500;
const BACKOFF_MAX = 15000;
const CANCEL_GRACE_MS = 5000;

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), model: $("model"), newChat: $("new-chat"),
  banner: $("banner"), bannerText: $("banner-text"), bannerAction: $("banner-action"), bannerClose: $("banner-close"),
  log: $("log"), messages: $("messages"), form: $("composer-form"), input: $("composer"),
  send: $("send"), stop: $("stop"),
};

const S = {
  url: "", ws: null, status: "", ready: false, attempt: 0, timer: 0, pingTimer: 0, pings: 0,
  lastRx: 0, halted: false, conv: load(), connBanner: false, bannerRun: null,
  active: null, // the entry whose reply is awaited or streaming
  resuming: null, // the entry followed through 'resume' after ready.streaming
  byId: new Map(), // client message id -> entry
  byReply: new Map(), // reply_id -> entry
  dirty: new Set(), raf: 0,
};

// small helpers

function load() {
  try { return localStorage.getItem(STORE_KEY) || null; } catch { return null; }
}

function save(id) {
  S.conv = id || null;
  try {
    if (id) localStorage.setItem(STORE_KEY, id);
    else localStorage.removeItem(STORE_KEY);
  } catch { /* storage disabled */ }
}

function el(tag, cls, text) {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text != null) n.textContent = text;
  return n;
}

function newId() {
  const b = new Uint8Array(12);
  crypto.getRandomValues(b); // works outside secure contexts, unlike randomUUID
  return "m-" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

const nearBottom = () => ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 80;
const scrollToBottom = () => { ui.log.scrollTop = ui.log.scrollHeight; };

// header, banner, composer state

function setStatus(s) {
  S.status = s;
  ui.status.textContent = s;
  ui.status.dataset.state = s;
  syncComposer();
}

function setModel(model, provider) {
  if (typeof model !== "string" || !model) return;
  ui.model.textContent = model;
  ui.model.title = provider ? `${model} via ${provider}` : model;
}

function banner(text, action, conn = false) {
  S.connBanner = !!text && conn;
  ui.banner.hidden = !text;
  ui.bannerText.textContent = text || "";
  ui.bannerAction.hidden = !action;
  S.bannerRun = action ? action.run : null;
  if (action) ui.bannerAction.textContent = action.label;
}

function syncComposer() {
  const busy = !!S.active;
  const focused = document.activeElement;
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
  ui.stop.disabled = busy && !!S.active.stopping;
  ui.send.disabled = !(S.ready && S.status === "live");
  if (busy && focused === ui.send) ui.stop.focus();
  else if (!busy && focused === ui.stop) ui.input.focus();
}

function autosize() {
  const t = ui.input;
  t.style.height = "auto"; // CSSOM, allowed by the CSP
  t.style.height = Math.min(t.scrollHeight, 200) + "px";
}

// connection

function wsUrl(v) {
  if (typeof v === "string" && v) {
    try {
      const u = new URL(v, location.href);
      if (u.protocol === "http:") u.protocol = "ws:";
      else if (u.protocol === "https:") u.protocol = "wss:";
      if (u.protocol === "ws:" || u.protocol === "wss:") return u.href;
    } catch { /* fall through */ }
  }
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/chat`;
}

function sendFrame(m) {
  const ws = S.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  ws.send(JSON.stringify(m));
  return true;
}

function sendHello() {
  const m = { type: "hello" };
  if (S.conv) m.conversation_id = S.conv;
  sendFrame(m);
}

function connect() {
  clearTimeout(S.timer);
  S.timer = 0;
  if (S.halted) return;
  let ws;
  try {
    ws = new WebSocket(S.url, ["chat.v1"]);
  } catch (err) {
    S.halted = true;
    setStatus("offline");
    banner(`Cannot connect: ${err && err.message ? err.message : err}`, { label: "Retry", run: retryNow });
    return;
  }
  S.ws = ws;
  S.ready = false;
  setStatus(S.attempt ? "reconnecting" : "connecting");
  ws.onopen = () => {
    if (ws !== S.ws) return;
    S.lastRx = Date.now();
    sendHello();
    startPing();
  };
  ws.onmessage = (ev) => {
    if (ws !== S.ws) return;
    S.lastRx = Date.now();
    let m;
    try { m = JSON.parse(ev.data); } catch { return; }
    const h = m && Object.hasOwn(HANDLERS, m.type) && HANDLERS[m.type]; // pong, unknown: ignored
    if (h) h(m);
  };
  ws.onclose = (ev) => { if (ws === S.ws) onClose(ev.code, ev.reason); };
}

function detach(code = 1000, reason = "") {
  const ws = S.ws;
  S.ws = null;
  S.ready = false;
  stopPing();
  if (ws) try { ws.close(code, reason); } catch { /* already closed */ }
}

function onClose(code, reason) {
  detach();
  if (S.active) fail(S.active, "Connection lost before the reply finished.");
  if (code === 1008) {
    S.halted = true;
    setStatus("offline");
    banner(`The server refused the connection${reason ? `: ${reason}` : " (policy)."}`, { label: "Retry", run: retryNow });
    return;
  }
  if (code === 1001) S.attempt = 0; // server restarting: reconnect quietly
  else if (code === 1009) banner("The last message was too large for the server. Reconnecting…", null, true);
  else if (code === 1011) banner("The server hit an internal error. Reconnecting…", null, true);
  else if (code === 1013) banner("The server is overloaded. Reconnecting…", null, true);
  schedule();
}

function schedule() {
  if (S.halted) return;
  clearTimeout(S.timer);
  if (navigator.onLine === false) { setStatus("offline"); return; } // "online" event resumes
  setStatus("reconnecting");
  const base = Math.min(BACKOFF_MAX, BACKOFF_MIN * 2 ** S.attempt);
  S.attempt = Math.min(S.attempt + 1, 10);
  S.timer = setTimeout(connect, base / 2 + Math.random() * (base / 2));
}

function retryNow() {
  S.halted = false;
  S.attempt = 0;
  banner("");
  detach();
  connect();
}

function startPing() {
  stopPing();
  S.pingTimer = setInterval(() => {
    if (!S.ws || S.ws.readyState !== WebSocket.OPEN) return;
    if (Date.now() - S.lastRx > 2 * PING_MS + 5000) { onClose(4000, "ping timeout"); return; }
    sendFrame({ type: "ping", id: `ping-${++S.pings}` });
  }, PING_MS);
}

function stopPing() {
  clearInterval(S.pingTimer);
  S.pingTimer = 0;
}

// protocol


function onReady(m) {
  S.ready = true;
  S.attempt = 0;
  if (typeof m.conversation_id === "string" && m.conversation_id) save(m.conversation_id);
  setModel(m.model, m.provider);
  document.title = typeof m.title === "string" && m.title ? `${m.title} · LLM Gateway` : "LLM Gateway";
  const max = m.limits && m.limits.max_content_chars;
  if (Number.isInteger(max) && max > 0) ui.input.maxLength = max;
  clearMessages();
  for (const h of Array.isArray(m.history) ? m.history : []) {
    if (!h || typeof h.content !== "string") continue;
    if (h.role === "user") addUser(h.content, h.id);
    else if (h.role === "assistant") {
      const e = addAssistant();
      if (h.id != null) setReplyId(e, String(h.id));
      e.text = h.content;
      finish(e, h.finish_reason || "stop");
    }
  }
  const live = m.streaming; // a reply of this conversation is still being written: follow it
  if (live && typeof live.reply_id === "string") {
    S.active = S.resuming = addAssistant();
    setReplyId(S.active, live.reply_id);
    sendFrame({ type: "resume", reply_id: live.reply_id, after_seq: 0 });
  }
  scrollToBottom();
  if (S.connBanner) banner("");
  setStatus("live");
}

const HANDLERS = { ready: onReady, "reply.start": onStart, "reply.delta": onDelta, "reply.done": onDone, error: onError };

function setReplyId(e, id) {
  e.replyId = id;
  e.el.dataset.replyId = id;
  S.byReply.set(id, e);
}

function onStart(m) {
  if (typeof m.reply_id !== "string") return;
  let e = S.byId.get(m.id);
  if (!e) {
    e = addAssistant();
    if (!S.active) S.active = e;
  }
  setReplyId(e, m.reply_id);
  if (typeof m.conversation_id === "string" && m.conversation_id) save(m.conversation_id);
  if (e.cancelWanted) sendFrame({ type: "cancel", reply_id: m.reply_id });
  syncComposer();
}

function onDelta(m) {
  const e = S.byReply.get(m.reply_id);
  if (!e || e.state !== "streaming" || typeof m.text !== "string") return;
  if (typeof m.seq === "number") {
    if (m.seq <= e.seq) return; // duplicate
    e.seq = m.seq;
  }
  e.text += m.text;
  queueRender(e);
}

function onDone(m) {
  const e = S.byReply.get(m.reply_id);
  if (e) finish(e, m.finish_reason, m.usage);
}

function onError(m) {
  const code = typeof m.code === "string" ? m.code : "error";
  let text = typeof m.message === "string" && m.message ? m.message : `Error: ${code.replace(/_/g, " ")}.`;
  if (code === "rate_limited" && Number(m.retry_after) > 0) text += ` (retry in ${Math.ceil(Number(m.retry_after))} s)`;
  if (code === "not_found" && !S.ready) { // stored conversation is gone: start fresh
    if (ui.messages.firstChild) banner("The server no longer has this conversation, so a new one was started.");
    save(null);
    clearMessages();
    sendHello();
    return;
  }
  const e = (m.reply_id && S.byReply.get(m.reply_id)) || (m.id && S.byId.get(m.id)) ||
    (code === "resume_unavailable" && S.resuming) || null;
  if (!e) { banner(text); return; }
  if (e.state === "streaming") fail(e, text, m.retryable === true);
  else note(e, text, "error");
}

// messages

function clearMessages() {
  S.byId.clear();
  S.byReply.clear();
  S.dirty.clear();
  S.active = S.resuming = null;
  ui.messages.replaceChildren();
  syncComposer();
}

function addUser(text, id) {
  const n = el("article", "msg", text);
  n.dataset.role = "user";
  if (id != null) n.dataset.id = String(id);
  n.setAttribute("aria-label", "You");
  ui.messages.append(n);
  return n;
}

function addAssistant() {
  const n = el("article", "msg");
  n.dataset.role = "assistant";
  n.dataset.state = "streaming";
  n.setAttribute("aria-label", "Assistant");
  n.setAttribute("aria-busy", "true");
  const body = el("div", "msg-body md");
  n.append(body);
  ui.messages.append(n);
  return { el: n, body, noteEl: null, text: "", replyId: null, content: "", state: "streaming", seq: -Infinity };
}

function note(e, text, kind, retry) {
  if (!e.noteEl) {
    e.noteEl = el("p", "msg-note");
    e.el.append(e.noteEl);
  }
  e.noteEl.className = `msg-note${kind ? ` ${kind}` : ""}`;
  e.noteEl.replaceChildren(text);
  if (retry && e.content) {
    const b = el("button", "btn small", "Retry");
    b.type = "button";
    b.addEventListener("click", () => { if (!S.active && S.ready) sendMessage(e.content); });
    e.noteEl.append(" ", b);
  }
}

function queueRender(e) {
  S.dirty.add(e);
  if (!S.raf) S.raf = requestAnimationFrame(flushRender);
}

function flushRender() {
  S.raf = 0;
  const stick = nearBottom();
  for (const e of S.dirty) e.body.replaceChildren(renderMarkdown(e.text));
  S.dirty.clear();
  if (stick) scrollToBottom();
}

// Final render of an entry and end of its stream.
function settle(e) {
  const stick = nearBottom();
  S.dirty.delete(e);
  e.body.replaceChildren(renderMarkdown(e.text));
  e.el.removeAttribute("aria-busy");
  e.el.dataset.state = e.state;
  if (S.active === e) S.active = null;
  if (S.resuming === e) S.resuming = null;
  syncComposer();
  if (stick) scrollToBottom();
}

function finish(e, reason = "stop", usage) {
  if (usage && typeof usage === "object") e.el.dataset.usage = JSON.stringify(usage);
  if (e.state !== "streaming") return;
  if (reason === "cancelled") { e.state = "cancelled"; note(e, "stopped", "stopped"); }
  else if (reason === "error") { e.state = "error"; note(e, "The reply failed.", "error"); }
  else {
    e.state = "done";
    if (reason === "length") note(e, "Reply cut off: length limit reached.");
  }
  settle(e);
}

function fail(e, text, retry = false) {
  e.state = "error";
  note(e, text, "error", retry);
  settle(e);
}

function sendMessage(text) {
  const id = newId();
  if (!S.ready || S.active || !sendFrame({ type: "message", id, content: text })) return false;
  if (!S.connBanner) banner("");
  addUser(text, id);
  const e = addAssistant();
  e.content = text;
  S.byId.set(id, e);
  S.active = e;
  syncComposer();
  scrollToBottom();
  return true;
}

function submit() {
  const text = ui.input.value.replace(/^\s*\n/, "").replace(/\s+$/, "");
  if (!text || S.active) return;
  if (sendMessage(text)) {
    ui.input.value = "";
    autosize();
  }
}

function stop() {
  const e = S.active;
  if (!e || e.stopping) return;
  e.stopping = true;
  if (e.replyId) {
    sendFrame({ type: "cancel", reply_id: e.replyId });
    syncComposer();
    setTimeout(() => { if (e.state === "streaming") finish(e, "cancelled"); }, CANCEL_GRACE_MS);
  } else {
    e.cancelWanted = true; // cancel as soon as reply.start names the reply
    finish(e, "cancelled");
  }
}

function newChat() {
  if (S.active && S.active.replyId) sendFrame({ type: "cancel", reply_id: S.active.replyId });
  save(null);
  clearMessages();
  detach(1000, "new chat");
  retryNow();
  ui.input.focus();
}

// Markdown (safe subset, DOM only)

const RE = {
  fence: /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/,
  heading: /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/,
  hr: /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/,
  quote: /^ {0,3}> ?(.*)$/,
  item: /^( *)([-*+]|\d{1,9}[.)])(?:[ \t]+(.*))?$/,
  rule: /^ {0,3}\|?\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)*\|?\s*$/,
};

const lead = (s) => s.length - s.trimStart().length;

function renderMarkdown(src) {
  const frag = document.createDocumentFragment();
  blocks(frag, src.replace(/\r\n?/g, "\n").replace(/\t/g, "    ").split("\n"));
  return frag;
}

function blocks(parent, lines) {
  let i = 0;
  let para = null;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (!line.trim()) { para = null; i++; continue; }
    if ((m = RE.fence.exec(line))) {
      const fence = m[1];
      const body = [];
      const ind = lead(line);
      for (i++; i < lines.length; i++) {
        const t = lines[i].trim();
        if (t[0] === fence[0] && t.length >= fence.length && /^(`+|~+)$/.test(t)) { i++; break; }
        body.push(lines[i].slice(Math.min(ind, lead(lines[i]))));
      }
      parent.append(codeBlock(m[2], body.join("\n")));
      para = null;
      continue;
    }
    const isTable = line.includes("|") && RE.rule.test(lines[i + 1] || "") && lines[i + 1].includes("|");
    if (para && (isTable || RE.heading.test(line) || RE.hr.test(line) || RE.quote.test(line) || RE.item.test(line))) para = null;
    if (para) {
      para.append(el("br"));
      inline(para, line.trim());
      i++;
      continue;
    }
    if ((m = RE.heading.exec(line))) {
      const h = el(`h${Math.min(6, m[1].length + 2)}`);
      inline(h, m[2]);
      parent.append(h);
      i++;
    } else if (RE.hr.test(line)) {
      parent.append(el("hr"));
      i++;
    } else if (RE.quote.test(line)) {
      const q = [];
      while (i < lines.length && (m = RE.quote.exec(lines[i]))) { q.push(m[1]); i++; }
      const bq = el("blockquote");
      blocks(bq, q);
      parent.append(bq);
    } else if (RE.item.test(line)) {
      i = list(parent, lines, i);
    } else if (isTable) {
      i = table(parent, lines, i);
    } else {
      para = el("p");
      inline(para, line.trim());
      parent.append(para);
      i++;
    }
  }
}

const kind = (m) => (/\d/.test(m[2]) ? m[2].slice(-1) : m[2]);
const sameList = (m, base, k) => m && m[1].length <= base + 1 && kind(m) === k;

function list(parent, lines, i) {
  const head = RE.item.exec(lines[i]);
  const base = head[1].length;
  const ordered = /\d/.test(head[2]);
  const k = kind(head);
  const box = el(ordered ? "ol" : "ul");
  const start = parseInt(head[2], 10);
  if (ordered && start !== 1) box.start = start;
  parent.append(box);
  while (i < lines.length) {
    const m = RE.item.exec(lines[i]);
    if (!sameList(m, base, k)) break;
    const width = m[1].length + m[2].length + 1;
    const body = [m[3] || ""];
    for (i++; i < lines.length; i++) {
      const line = lines[i];
      if (!line.trim()) {
        let j = i + 1;
        while (j < lines.length && !lines[j].trim()) j++;
        if (j < lines.length && lead(lines[j]) >= width) { for (; i < j; i++) body.push(""); i--; continue; }
        break;
      }
      const ind = lead(line);
      if (ind >= Math.min(width, base + 2)) { body.push(line.slice(Math.min(ind, width))); continue; }
      if (RE.item.test(line) || RE.fence.test(line) || RE.heading.test(line) || RE.quote.test(line) || RE.hr.test(line)) break;
      body.push(line); // lazy continuation
    }
    const li = el("li");
    blocks(li, body);
    box.append(li);
    let j = i;
    while (j < lines.length && !lines[j].trim()) j++;
    if (j === i) continue;
    if (!sameList(RE.item.exec(lines[j] || ""), base, k)) break;
    i = j;
  }
  return i;
}

const cells = (line) => line.trim().replace(/^\|/, "").replace(/(?<!\\)\|$/, "").split(/(?<!\\)\|/).map((c) => c.trim());

function table(parent, lines, i) {
  const align = cells(lines[i + 1]).map((c) => (c.endsWith(":") ? (c.startsWith(":") ? "center" : "right") : ""));
  const wrap = el("div", "table-wrap");
  const t = el("table");
  const row = (line, tag) => {
    const tr = el("tr");
    cells(line).slice(0, align.length).forEach((c, k) => {
      const td = el(tag, align[k] ? `align-${align[k]}` : null);
      inline(td, c);
      tr.append(td);
    });
    return tr;
  };
  t.append(el("thead"), el("tbody"));
  t.tHead.append(row(lines[i], "th"));
  for (i += 2; i < lines.length && lines[i].includes("|") && lines[i].trim(); i++) t.tBodies[0].append(row(lines[i], "td"));
  wrap.append(t);
  parent.append(wrap);
  return i;
}

function codeBlock(lang, text) {
  const wrap = el("div", "code-block");
  const head = el("div", "code-head");
  const safeLang = /^[\w+#.-]{1,32}$/.test(lang) ? lang : "";
  head.append(el("span", "code-lang", safeLang || "code"));
  const btn = el("button", "copy", "Copy");
  btn.type = "button";
  head.append(btn);
  const pre = el("pre");
  pre.tabIndex = 0; // scrollable region reachable by keyboard
  pre.append(el("code", safeLang ? `language-${safeLang}` : null, text));
  wrap.append(head, pre);
  return wrap;
}

function link(href) {
  let u;
  try { u = new URL(href); } catch { return null; }
  if (u.protocol !== "http:" && u.protocol !== "https:") return null;
  const a = el("a");
  a.href = u.href;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  return a;
}

const WORD = /[\p{L}\p{N}]/u;

// Index of the delimiter d closing a run whose content starts at `start` (non-empty), or -1.
function closeAt(s, d, start) {
  const c = d[0];
  for (let j = s.indexOf(d, start + 1); j !== -1; j = s.indexOf(d, j + 1)) {
    if (/\s/.test(s[j - 1])) continue;
    if (d.length === 1 && (s[j + 1] === c || s[j - 1] === c)) continue;
    if (d.length === 2 && s[j + 2] === c && s[j + 3] !== c) continue;
    if (c === "_" && WORD.test(s[j + d.length] || "")) continue;
    return j;
  }
  return -1;
}

function inline(parent, s) {
  let buf = "";
  let i = 0;
  const flush = () => {
    if (buf) parent.append(buf);
    buf = "";
  };
  const out = (node) => {
    flush();
    parent.append(node);
  };
  while (i < s.length) {
    const c = s[i];
    let m;
    if (c === "\\" && /[!-/:-@[-`{-~]/.test(s[i + 1] || "")) {
      buf += s[i + 1];
      i += 2;
    } else if (c === "`") {
      let n = 1;
      while (s[i + n] === "`") n++;
      const tick = "`".repeat(n);
      const j = s.indexOf(tick, i + n);
      if (j === -1) { buf += tick; i += n; continue; }
      let t = s.slice(i + n, j);
      if (t.length > 2 && t[0] === " " && t[t.length - 1] === " " && t.trim()) t = t.slice(1, -1);
      out(el("code", null, t));
      i = j + n;
    } else if (c === "*" || c === "_") {
      const d = s[i + 1] === c ? c + c : c;
      const next = s[i + d.length] || " ";
      const j = /\s/.test(next) || (c === "_" && WORD.test(s[i - 1] || "")) ? -1 : closeAt(s, d, i + d.length);
      if (j === -1) { buf += d; i += d.length; continue; }
      const node = el(d.length === 2 ? "strong" : "em");
      inline(node, s.slice(i + d.length, j));
      out(node);
      i = j + d.length;
    } else if (c === "[" && (m = /^\[([^\]\n]+)\]\(<?((?:[^\s()<>]|\([^\s()<>]*\))+)>?(?: +"[^"]*")?\)/.exec(s.slice(i)))) {
      const a = link(m[2]);
      if (a) { inline(a, m[1]); out(a); } else { flush(); inline(parent, m[1]); } // non-http link: label only
      i += m[0].length;
    } else if (c === "<" && (m = /^<(https?:\/\/[^\s<>]+)>/i.exec(s.slice(i, i + 2048)))) {
      const a = link(m[1]);
      if (a) { a.textContent = m[1]; out(a); } else buf += m[0];
      i += m[0].length;
    } else if ((c === "h" || c === "H") && !WORD.test(s[i - 1] || "") && (m = /^https?:\/\/[^\s<>"'`]+/i.exec(s.slice(i, i + 2048)))) {
      let url = m[0];
      const count = (ch) => url.split(ch).length - 1;
      while (/[.,:;!?'"*_\]]$/.test(url) || (url.endsWith(")") && count("(") < count(")"))) url = url.slice(0, -1);
      const a = link(url);
      if (a) { a.textContent = url; out(a); } else buf += url;
      i += url.length;
    } else {
      buf += c;
      i++;
    }
  }
  flush();
}

// copy buttons

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch { /* not a secure context or denied: fall back */ }
  const prev = document.activeElement;
  const ta = el("textarea", "clip");
  ta.value = text;
  document.body.append(ta);
  ta.select();
  let ok = false;
  try { ok = document.execCommand("copy"); } catch { /* unsupported */ }
  ta.remove();
  prev?.focus?.();
  return ok;
}

ui.messages.addEventListener("click", async (ev) => {
  const btn = ev.target instanceof Element ? ev.target.closest("button.copy") : null;
  const code = btn && btn.closest(".code-block").querySelector("code");
  if (!code) return;
  const ok = await copyText(code.textContent);
  btn.textContent = ok ? "Copied" : "Copy failed";
  setTimeout(() => { btn.textContent = "Copy"; }, 1500);
});

// wiring

ui.form.addEventListener("submit", (ev) => { ev.preventDefault(); submit(); });
ui.input.addEventListener("input", autosize);
ui.input.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
    ev.preventDefault();
    submit();
  } else if (ev.key === "Escape" && S.active) {
    ev.preventDefault();
    stop();
  }
});
ui.stop.addEventListener("click", stop);
ui.newChat.addEventListener("click", newChat);
ui.bannerClose.addEventListener("click", () => banner(""));
ui.bannerAction.addEventListener("click", () => { if (S.bannerRun) S.bannerRun(); });

window.addEventListener("online", () => { if (!S.ws && !S.halted) connect(); });
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && !S.ws && !S.halted) connect();
});
window.addEventListener("pagehide", () => {
  clearTimeout(S.timer);
  detach(1000, "page closed");
});
window.addEventListener("pageshow", (ev) => { if (ev.persisted) retryNow(); });

async function init() {
  setStatus("connecting");
  let cfg = null;
  try {
    const r = await fetch("config.json", { cache: "no-store", headers: { accept: "application/json" } });
    if (r.ok) cfg = await r.json();
  } catch { cfg = null; }
  if (cfg && typeof cfg === "object") setModel(cfg.model, cfg.provider);
  S.url = wsUrl(cfg && typeof cfg === "object" ? cfg.ws_url : null);
  connect();
}

init();
