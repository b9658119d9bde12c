// The chat page: protocol chat.v1 (docs/protocol.md) over one WebSocket, the
// conversation view, the sidebar of local conversations and the composer.
//
// Model text reaches the DOM only through MarkdownView (markdown-it without raw HTML,
// then DOMPurify); user text only through textContent. The page's own texts come from
// the catalogues (i18n.js): a message to show is {key, params}, rendered when painted,
// so a change of language repaints it.

import { Conversations, isConversationId, titleFrom } from "./conversations.js";
import { icon } from "./icons.js";
import { ago, formatDate, formatNumber, inTime, language, languages, onLanguage, setLanguage, t, tr, translate } from "./i18n.js";
import { MarkdownView } from "./markdown.js";
import { Recorder, unsupported as voiceUnsupported } from "./recorder.js";
import { Credential, jwtExpiry } from "./signin.js";
import { Socket } from "./socket.js";

const ANNOUNCE_MAX = 600;
const OFFLINE_AFTER = 4; // consecutive failed connections before the status says offline
const CONN_BANNER_AFTER = 2; // … and before a banner explains it
const MOBILE = window.matchMedia("(max-width: 800px)");
const ERROR_CODES = new Set([
  "bad_request", "unauthorized", "forbidden", "not_found", "too_large", "busy", "rate_limited", "budget_exceeded",
  "upstream_error", "upstream_timeout", "upstream_unavailable", "resume_unavailable", "overloaded", "internal",
]);

const $ = (id) => document.getElementById(id);
const ui = {
  app: $("app"),
  sidebar: $("sidebar"),
  sidebarToggle: $("sidebar-toggle"),
  sidebarClose: $("sidebar-close"),
  scrim: $("scrim"),
  main: $("main"),
  newChat: $("new-chat"),
  convList: $("conversations"),
  convEmpty: $("conversations-empty"),
  convSearch: $("conv-search"),
  convMore: $("conv-more"),
  modelInfo: $("model-info"),
  modelPick: $("model-pick"),
  modelPicker: $("model-picker"),
  who: $("who"),
  signin: $("signin"),
  signinForm: $("signin-form"),
  signinToken: $("signin-token"),
  signinError: $("signin-error"),
  title: $("title"),
  status: $("status"),
  statusText: $("status-text"),
  banner: $("banner"),
  bannerText: $("banner-text"),
  bannerSaid: $("banner-said"),
  language: $("language"),
  bannerAction: $("banner-action"),
  bannerClose: $("banner-close"),
  log: $("log"),
  empty: $("empty"),
  emptyModel: $("empty-model"),
  messages: $("messages"),
  older: $("older"),
  menuWrap: $("conv-menu-wrap"),
  menuButton: $("conv-menu-button"),
  menu: $("conv-menu"),
  settings: $("settings"),
  settingsForm: $("settings-form"),
  settingsPrompt: $("settings-prompt"),
  settingsError: $("settings-error"),
  settingsSave: $("settings-save"),
  settingsCancel: $("settings-cancel"),
  form: $("composer-form"),
  input: $("composer"),
  send: $("send"),
  stop: $("stop"),
  voice: $("voice"),
  voiceBar: $("voice-bar"),
  voiceLive: $("voice-live"),
  voiceLevel: $("voice-level"),
  voiceTime: $("voice-time"),
  voiceNote: $("voice-note"),
  announcer: $("announcer"),
};

/** One assistant reply, by reply_id; outlives views and sockets. */
class Reply {
  constructor(id, conv) {
    this.id = id; // null until reply.start names it
    this.conv = conv;
    this.text = "";
    this.seq = 0; // last reply.delta or reply.reasoning seq received (the resume point)
    this.state = "streaming"; // streaming | done | error | cancelled
    this.finish = "";
    this.error = null; // {text, code, raw, retryable, retryAt, unsent?, content?}
    this.gen = 0; // socket generation that receives it live
    this.entry = null; // its view entry while shown
    this.stopping = false;
    this.cancelWanted = false;
    this.reasoning = ""; // the model's thinking (reply.reasoning), apart from the answer
    this.thinkingSince = 0; // when the first reasoning arrived here (0: none live)
    this.thoughtFor = 0; // seconds it thought before the answer began (0: unknown)
    this.model = null; // the model that answers (reply.start), then answered (reply.done)
    this.fallbackFrom = null;
    this.usage = null;
    this.msgId = id; // the stored message it writes: its own id, or the reply it continues
    this.parentId = null; // the message it answers
    this.siblings = null; // the ids of its versions (null: the only one)
    this.sibIndex = 0;
    this.fresh = false; // a continuation showing the old text until its first frame replaces it
    this.after = ""; // "sync": check the branch's versions once it ends
  }
}

const convs = new Conversations();

const S = {
  socket: null,
  cred: null, // the Credential of the gateway's auth mode
  token: null, // what the next connection's first hello carries
  refusals: 0, // consecutive sign-ins the gateway refused
  renewing: false, // a JWT is being fetched for a refresh
  listedGen: 0, // the socket generation that has asked for the list
  listNext: null, // the cursor of the list's next page
  listMore: false, // the list asked for is a later page
  search: "", // the sidebar's search
  found: null, // the gateway's results for it (null: not yet)
  searchTimer: 0,
  status: "",
  live: false, // a `ready` arrived on the current socket
  conv: null, // the conversation shown
  target: null, // the conversation to open on (re)connect; null = a new one
  helloFor: undefined, // conversation id of the hello awaiting its ready (null = new)
  listOnReady: false, // add the conversation to the list even if it is empty (deep link)
  limits: null,
  replies: new Map(), // reply_id -> Reply
  entries: [], // the view, in order
  pending: new Map(), // client frame id -> {kind, ...}
  resuming: new Set(), // reply ids resumed on the current socket
  dirty: new Set(),
  raf: 0,
  nextRenderAt: 0,
  interactive: false,
  bannerRun: null,
  bannerKind: "",
  banner: null, // {msg, action, saidIn?}: what the banner shows (saidIn: the language its countdown was said in)
  bannerTimer: 0,
  countdown: 0,
  renaming: null,
  hist: new Map(), // history requests in flight on this socket: id -> {conv, kind}
  moreHistory: false, // older messages exist on the gateway
  models: [], // ready.models: [{id, label, default?, reasoning?}]
  provider: "", // ready.provider
  model: null, // the open conversation's model (its picker's value)
  picked: null, // {conv, id}: a model the person picked, not yet confirmed by a reply.start
  systemPrompt: "", // the open conversation's own instructions (ready.system_prompt)
  maxChars: 0, // ready.limits.max_content_chars
  settingsReq: null, // the id of the settings frame awaiting its answer
  selecting: null, // the id of the select awaiting its branch
  editing: null, // the user entry whose editor is open
  anchor: null, // {req, id, prev, top, focus}: keeps the reader's place across a branch switch
};

// The dictation (voice input, below).
const V = {
  offer: null, // ready.voice, checked: {rate, chunk (samples per frame), maxSeconds}; null: no voice input
  state: "idle", // idle | opening (the microphone) | recording | finishing (the last audio and voice.stop, then the final)
  id: null, // the dictation's frame id ("voice:…")
  gen: 0, // the socket generation it runs on
  rec: null, // its Recorder while the microphone is open (let go before voice.stop is sent)
  text: "", // the dictated text as last written into the box (the last partial, then the final)
  start: 0, // where the dictation's text sits in the box's value: [start, end), with the space before it
  end: 0,
  owned: false, // the person edited inside that text: it is theirs, never rewritten (see voiceEdited)
  value: "", // the box's value as last seen by the dictation (its own writes and the person's edits)
  since: 0, // when it started listening (ms)
  limit: 0, // its max_seconds
  level: 0, // the microphone's level, 0..1
  tick: 0, // the time's timer
  wait: 0, // the final's timer
  note: null, // a message shown above the box after a dictation
};

// ---------------------------------------------------------------------------- helpers

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text != null) node.textContent = text;
  return node;
}

function newId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return `c${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

const nearBottom = () => ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 96;
const scrollToBottom = () => {
  ui.log.scrollTop = ui.log.scrollHeight;
};

/** The composer takes focus where a keyboard is at hand (not on touch: no keyboard pops up). */
function focusComposer() {
  if (window.matchMedia("(pointer: fine)").matches) ui.input.focus();
}

function announce(text) {
  ui.announcer.textContent = "";
  requestAnimationFrame(() => {
    ui.announcer.textContent = text.length > ANNOUNCE_MAX ? `${text.slice(0, ANNOUNCE_MAX)}…` : text;
  });
}

function plainText(body) {
  const copy = body.cloneNode(true);
  for (const n of copy.querySelectorAll(".code-head")) n.remove();
  return copy.textContent.replace(/\s+/g, " ").trim();
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    /* not a secure context, or refused: fall back */
  }
  const ta = el("textarea", "clip");
  ta.value = text;
  ta.setAttribute("readonly", "");
  const prev = document.activeElement;
  document.body.append(ta);
  ta.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch {
    ok = false;
  }
  ta.remove();
  if (prev && prev.focus) prev.focus();
  return ok;
}

/** A button says it worked for a moment (a code block's Copy shows ``key`` meanwhile). */
function flash(button, key) {
  const copy = button.classList.contains("copy");
  button.classList.add("done");
  if (copy) tr(button, { text: key });
  clearTimeout(button.flashTimer);
  button.flashTimer = setTimeout(() => {
    button.classList.remove("done");
    if (copy) tr(button, { text: "code.copy" });
  }, 1500);
}

/** The text of a message {key, params, until?, then?}. Params that are messages are said
 * first, {date} ones formatted; ``until`` counts down {when} and {seconds}, and once it is
 * past the message ``then`` is said instead. */
function say(m) {
  const params = {};
  for (const [k, v] of Object.entries(m.params || {})) {
    params[k] = v && typeof v === "object" ? (v.key ? say(v) : formatDate(v.date)) : v;
  }
  if (m.until) {
    const secs = Math.ceil((m.until - Date.now()) / 1000);
    if (secs <= 0 && m.then) return say(m.then);
    params.seconds = Math.max(secs, 0);
    params.when = inTime(params.seconds);
  }
  return t(m.key, params);
}

const said = new Map(); // element -> the message it shows (repainted with the language)

/** Show ``msg`` in ``node`` (null: empty and hidden). */
function show(node, msg) {
  if (msg) said.set(node, msg);
  else said.delete(node);
  node.textContent = msg ? say(msg) : "";
  node.hidden = !msg;
}

// ---------------------------------------------------------------------------- status, banner

function setStatus(status) {
  if (S.status === status) return;
  S.status = status;
  ui.status.dataset.state = status;
  paintStatus();
  syncUI();
}

function paintStatus() {
  const text = t(`status.${S.status}`);
  ui.statusText.textContent = text;
  ui.status.title = t("status.title", { state: text });
}

/** Show ``msg`` (a message, see say; null: hide) in the banner; ``action`` = {label (a key),
 * run}; ``kind`` "conn" clears on ready. */
function banner(msg, action = null, kind = "") {
  S.bannerKind = msg ? kind : "";
  S.banner = msg ? { msg, action } : null;
  S.bannerRun = action ? action.run : null;
  paintBanner();
}

function paintBanner() {
  clearTimeout(S.bannerTimer);
  const b = S.banner;
  ui.banner.hidden = !b;
  const text = b ? say(b.msg) : "";
  const left = b && b.msg.until ? b.msg.until - Date.now() : 0;
  // The banner is an alert: any change in it is said again. A countdown ticks in an
  // aria-hidden copy; the spoken one is written once, and again only when more than its
  // number changes (another message, another language); once it ends, the text is plain.
  ui.bannerText.textContent = text;
  if (left > 0) {
    ui.bannerText.setAttribute("aria-hidden", "true");
    if (b.saidIn !== language()) ui.bannerSaid.textContent = text;
    b.saidIn = language();
  } else {
    ui.bannerText.removeAttribute("aria-hidden");
    ui.bannerSaid.textContent = "";
  }
  ui.bannerAction.hidden = !(b && b.action);
  if (b && b.action) ui.bannerAction.textContent = t(b.action.label);
  if (left > 0) S.bannerTimer = setTimeout(paintBanner, left % 1000 || 1000); // a countdown: each second
}

// ---------------------------------------------------------------------------- view entries

/** An icon button named by the key ``name``. */
function actButton(action, name, iconName, testid = action) {
  const b = el("button", "act");
  b.type = "button";
  b.dataset.action = action;
  if (testid) b.dataset.testid = testid;
  tr(b, { aria: name, title: name });
  b.append(icon(iconName));
  return b;
}

/** A small button with a visible label (keys; ``name``: its accessible name when it differs). */
function textButton(action, label, iconName, title, name = null) {
  const b = el("button", `btn small ${action}`);
  b.type = "button";
  b.dataset.action = action;
  b.dataset.testid = action;
  tr(b, { title, aria: name });
  b.append(icon(iconName), tr(el("span"), { text: label }));
  return b;
}

/** "‹ 2/3 ›": the versions of a message (hidden while it has none). */
function makeVersions() {
  const group = el("div", "versions");
  group.setAttribute("role", "group");
  group.dataset.testid = "versions";
  group.hidden = true;
  const prev = actButton("prev-version", "versions.prev", "prev");
  const count = el("span", "versions-count");
  count.dataset.testid = "version-count";
  count.setAttribute("aria-hidden", "true"); // the group's name says it
  const next = actButton("next-version", "versions.next", "next");
  group.append(prev, count, next);
  return { el: group, prev, count, next };
}

function makeUser(id, text) {
  const node = el("article", "msg msg-user");
  node.dataset.role = "user";
  if (id) node.dataset.messageId = id;
  tr(node, { aria: "message.you" });
  const bubble = el("div", "bubble", text);
  const actions = el("div", "msg-actions user-actions");
  const versions = makeVersions();
  const edit = actButton("edit", "message.edit", "edit");
  const del = actButton("delete-version", "message.deleteVersion", "trash");
  actions.append(versions.el, edit, del);
  node.append(bubble, actions);
  return {
    kind: "user", key: `u:${id}`, id, text, el: node, bubble, actions, versions, edit, del,
    stored: false, // the gateway has it (history, or its reply started)
    parentId: null,
    siblings: null,
    sibIndex: 0,
  };
}

function makeAssistant(reply) {
  const node = el("article", "msg msg-assistant");
  node.dataset.role = "assistant";
  tr(node, { aria: "message.assistant" });
  const thinking = el("details", "thinking");
  thinking.dataset.testid = "thinking";
  thinking.hidden = true;
  const summary = el("summary", "thinking-summary");
  const thought = el("div", "thinking-body");
  thought.tabIndex = 0; // it scrolls: keyboard users can too
  thought.setAttribute("role", "region");
  tr(thought, { aria: "message.thoughts" });
  thinking.append(summary, thought);
  const body = el("div", "msg-body md");
  const note = el("div", "msg-note");
  note.hidden = true;
  const meta = el("div", "msg-meta");
  meta.dataset.testid = "reply-meta";
  meta.hidden = true;
  const actions = el("div", "msg-actions");
  const versions = makeVersions();
  const copy = actButton("copy-reply", "message.copy", "copy", null);
  const del = actButton("delete-version", "message.deleteVersion", "trash");
  const more = textButton("continue", "message.continue", "continue", "message.continueTitle");
  more.hidden = true;
  actions.append(more, versions.el, copy, del);
  node.append(thinking, body, note, meta, actions);
  const entry = {
    kind: "assistant",
    key: reply.msgId ? `a:${reply.msgId}` : `p:${newId()}`,
    reply,
    el: node,
    body,
    view: new MarkdownView(body),
    note,
    meta,
    thinking,
    summary,
    thought,
    actions,
    versions,
    copy,
    del,
    more,
    shown: null,
    shownThought: null,
  };
  reply.entry = entry;
  return entry;
}

/** The stored message an entry shows (null: not stored yet). */
function msgIdOf(e) {
  return e.kind === "user" ? (e.stored ? e.id : null) : e.reply.msgId;
}

/** Entries that show stored, ended messages: what a history page lists. */
function storedEntries() {
  return S.entries.filter((e) => (e.kind === "user" ? e.stored : !!e.reply.msgId && e.reply.state !== "streaming" && !(e.reply.error && e.reply.error.unsent)));
}

function lastStoredId() {
  const shown = storedEntries();
  return shown.length ? msgIdOf(shown[shown.length - 1]) : null;
}

function paint(e) {
  translate(e.el); // its labels, in the language now (it may have been out of the document when it changed)
  if (e.reply) renderEntry(e);
  else renderUser(e);
}

function mount(entries) {
  for (const e of S.entries) if (e.reply && e.reply.entry === e && !entries.includes(e)) e.reply.entry = null;
  S.entries = entries;
  for (const e of entries) {
    if (!e.reply) continue;
    e.reply.entry = e;
    if (e.reply.id) S.replies.set(e.reply.id, e.reply);
  }
  if (S.editing && !entries.includes(S.editing)) S.editing = null;
  // Forget ended replies no longer shown; streaming ones may be shown again.
  for (const [id, r] of S.replies) if (!r.entry && r.state !== "streaming") S.replies.delete(id);
  ui.messages.replaceChildren(...entries.map((e) => e.el));
  for (const e of entries) paint(e);
  syncUI();
}

function prepend(entries) {
  S.entries.unshift(...entries);
  ui.messages.prepend(...entries.map((e) => e.el));
  for (const e of entries) paint(e);
}

function append(...entries) {
  for (const e of entries) {
    S.entries.push(e);
    ui.messages.append(e.el);
    paint(e);
  }
}

function replaceEntry(old, entry) {
  const i = S.entries.indexOf(old);
  if (i === -1) {
    append(entry);
    return;
  }
  S.entries[i] = entry;
  if (old.reply && old.reply.entry === old) old.reply.entry = null;
  const hadFocus = old.el.contains(document.activeElement);
  old.el.replaceWith(entry.el);
  paint(entry);
  if (hadFocus) focusComposer();
}

/** The entry showing the stored message ``id``. */
function entryOfMessage(id) {
  return S.entries.find((e) => msgIdOf(e) === id) || null;
}

function lastEntry() {
  return S.entries.length ? S.entries[S.entries.length - 1] : null;
}

function lastAssistant() {
  for (let i = S.entries.length - 1; i >= 0; i--) if (S.entries[i].kind === "assistant") return S.entries[i];
  return null;
}

/** The reply streaming (or about to) in the shown conversation, if any: shown, or
 * followed in a branch not shown (the gateway allows one at a time either way). */
function activeReply() {
  for (const e of S.entries) if (e.reply && e.reply.state === "streaming") return e.reply;
  const gen = S.socket ? S.socket.gen : -1;
  for (const r of S.replies.values()) if (r.state === "streaming" && r.id && r.conv === S.conv && r.gen === gen) return r;
  return null;
}

// ---------------------------------------------------------------------------- rendering

function queueRender(entry) {
  S.dirty.add(entry);
  if (!S.raf) S.raf = requestAnimationFrame(flushRender);
}

// At most one render per frame, and only of the streaming message(s). When a render
// gets costly (a very long reply) frames are skipped in proportion, so the page stays
// responsive instead of falling behind.
function flushRender(now) {
  S.raf = 0;
  if (now < S.nextRenderAt) {
    S.raf = requestAnimationFrame(flushRender);
    return;
  }
  const stick = nearBottom();
  const t0 = performance.now();
  for (const e of S.dirty) renderBody(e);
  S.dirty.clear();
  S.nextRenderAt = now + Math.min(250, 2 * (performance.now() - t0));
  if (stick) scrollToBottom();
}

function renderBody(entry) {
  renderThinking(entry);
  const text = entry.reply.text;
  if (entry.shown === text) return;
  entry.shown = text;
  entry.view.render(text);
}

// The model's thinking: open while it streams ("Thinking…"), folded once the answer
// starts ("Thought for N s"), expandable later. Plain text only.
function renderThinking(entry) {
  const r = entry.reply;
  entry.thinking.hidden = !r.reasoning;
  if (!r.reasoning) return;
  const live = r.state === "streaming" && !r.text;
  const shown = entry.shownThought || "";
  if (shown !== r.reasoning) {
    const box = entry.thought;
    const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 24;
    if (shown && r.reasoning.startsWith(shown)) box.append(r.reasoning.slice(shown.length)); // only what is new
    else box.textContent = r.reasoning;
    entry.shownThought = r.reasoning;
    if (live && atEnd) box.scrollTop = box.scrollHeight;
  }
  const label = live ? t("message.thinking") : r.thoughtFor ? t("message.thoughtFor", { seconds: r.thoughtFor }) : t("message.thoughts");
  if (entry.summary.textContent !== label) entry.summary.textContent = label;
  if (entry.thinking.dataset.live !== String(live)) {
    entry.thinking.dataset.live = String(live);
    entry.thinking.open = live; // folds when the answer begins; the reader may open it again
  }
}

function modelLabel(id) {
  const found = S.models.find((m) => m.id === id);
  return found ? found.label : id;
}

// Under a reply: which model answered (and a fallback note), and what it used.
function renderMeta(entry) {
  const r = entry.reply;
  const parts = [];
  if (r.model && r.fallbackFrom) parts.push(t("meta.fallback", { model: modelLabel(r.fallbackFrom), fallback: modelLabel(r.model) }));
  else if (r.model && S.models.length > 1) parts.push(modelLabel(r.model));
  const u = r.usage;
  if (u && Number.isInteger(u.total_tokens) && r.state !== "streaming") {
    let tokens = t(u.estimated ? "meta.tokensAbout" : "meta.tokens", { count: u.total_tokens });
    if (Number.isInteger(u.reasoning_tokens) && u.reasoning_tokens > 0) tokens = t("meta.thinking", { tokens, count: u.reasoning_tokens });
    parts.push(tokens);
    if (typeof u.cost === "number") {
      const digits = u.cost < 0.01 ? 6 : 4;
      parts.push(t("meta.cost", { cost: formatNumber(u.cost, { minimumFractionDigits: digits, maximumFractionDigits: digits }) }));
    }
  }
  const text = parts.join(" · ");
  entry.meta.hidden = !text;
  if (entry.meta.textContent !== text) entry.meta.textContent = text;
  if (u && Number.isInteger(u.prompt_tokens)) {
    const counts = { prompt: u.prompt_tokens, completion: Number(u.completion_tokens) || 0, cached: u.cached_tokens };
    entry.meta.title = t(Number.isInteger(u.cached_tokens) ? "meta.usageCached" : "meta.usage", counts);
  }
}

function renderEntry(entry) {
  const r = entry.reply;
  const node = entry.el;
  S.dirty.delete(entry);
  renderBody(entry);
  node.dataset.state = r.state;
  if (r.id) node.dataset.replyId = r.id;
  if (r.msgId) {
    node.dataset.messageId = r.msgId;
    entry.key = `a:${r.msgId}`;
  }
  if (r.state === "streaming") node.setAttribute("aria-busy", "true");
  else node.removeAttribute("aria-busy");
  entry.copy.hidden = !r.text;
  entry.del.hidden = !r.siblings || !r.msgId;
  entry.more.hidden = !offersContinue(entry, activeReply());
  entry.more.disabled = !canSend();
  renderVersions(entry);
  renderNote(entry);
  renderMeta(entry);
}

function renderUser(entry) {
  entry.edit.hidden = !entry.stored;
  entry.del.hidden = !entry.stored || !entry.siblings;
  renderVersions(entry);
}

/** The switcher: which version this is, of how many. */
function renderVersions(entry) {
  const src = entry.kind === "user" ? entry : entry.reply;
  const v = entry.versions;
  const n = src.siblings ? src.siblings.length : 0;
  v.el.hidden = n < 2;
  if (n < 2) return;
  const i = Math.min(Math.max(src.sibIndex, 0), n - 1);
  v.count.textContent = t("versions.count", { index: i + 1, count: n });
  v.el.setAttribute("aria-label", t("versions.label", { index: i + 1, count: n }));
  const off = !S.live || !!S.selecting; // one select at a time: its branch comes first
  v.prev.disabled = i === 0 || off;
  v.next.disabled = i === n - 1 || off;
}

/** A history item's place in the tree, onto an entry (user) or a Reply. */
function setBranchInfo(target, h) {
  target.parentId = typeof h.parent_id === "string" && h.parent_id ? h.parent_id : null;
  const siblings = Array.isArray(h.siblings) ? h.siblings.filter((x) => typeof x === "string") : [];
  target.siblings = siblings.length > 1 ? siblings : null;
  const at = Number.isInteger(h.sibling_index) ? h.sibling_index : siblings.indexOf(h.id);
  target.sibIndex = target.siblings ? Math.max(0, at) : 0;
}

/** A new version of a message: its siblings are the old one's, then itself. */
function addVersion(target, old, oldId, id) {
  const siblings = old && old.siblings ? old.siblings.slice() : [oldId];
  if (!siblings.includes(id)) siblings.push(id);
  target.siblings = siblings;
  target.sibIndex = siblings.indexOf(id);
}

/** Continue is offered on the last entry only (the gateway continues the last reply of a
 * branch), while no reply streams. */
function offersContinue(entry, active) {
  return entry === lastEntry() && continuable(entry.reply) && !active;
}

/** Cut short (length, error, cancelled), stored and not streaming: it can be continued. */
function continuable(r) {
  return !!r.msgId && !!r.text && r.state !== "streaming" && !(r.error && r.error.unsent) &&
    (r.finish === "length" || r.finish === "error" || r.finish === "cancelled" || r.state === "error" || r.state === "cancelled");
}

function renderNote(entry) {
  const r = entry.reply;
  const note = entry.note;
  note.replaceChildren();
  note.className = "msg-note";
  let text = null;
  if (r.state === "cancelled") {
    text = { key: "message.stopped" };
    note.classList.add("muted");
  } else if (r.state === "error") {
    text = (r.error && r.error.text) || { key: "message.failed" };
    note.classList.add("error");
  } else if (r.state === "done" && r.finish === "length") {
    text = { key: "message.cutOff" };
    note.classList.add("muted");
  }
  note.hidden = !text;
  if (!text) return;
  note.append(el("span", "note-text", say(text)));
  if (r.state === "error" && entry === lastAssistant() && (!r.error || r.error.retryable !== false)) {
    const retry = el("button", "btn small retry");
    retry.type = "button";
    retry.dataset.action = "retry";
    retry.dataset.testid = "retry";
    note.append(retry);
    paintRetry(entry, retry);
  }
}

function paintRetry(entry, button) {
  const r = entry.reply;
  const wait = r.error && r.error.retryAt ? Math.ceil((r.error.retryAt - Date.now()) / 1000) : 0;
  button.replaceChildren(icon("retry"), wait > 0 ? t("message.retryIn", { when: inTime(wait) }) : t("message.retry"));
  button.disabled = wait > 0 || !canSend(true);
  clearTimeout(S.countdown);
  if (wait > 0) {
    const tick = (r.error.retryAt - Date.now()) % 1000 || 1000; // on the second boundary
    S.countdown = setTimeout(() => button.isConnected && paintRetry(entry, button), tick);
  }
}

// ---------------------------------------------------------------------------- composer, buttons

function canSend(ignoreBusy = false) {
  return S.live && S.status === "live" && (ignoreBusy || !activeReply()) && !hasPendingRequest() && !S.selecting;
}

/** A regenerate or continue sent, its reply not started yet. */
function hasPendingRequest() {
  for (const p of S.pending.values()) if (p.kind === "regenerate" || p.kind === "continue") return true;
  return false;
}

const regenerateButton = actButton("regenerate", "message.regenerate", "regenerate");
const answerButton = textButton("answer", "message.answer", "continue", "message.answerTitle", "message.answerTitle");

/** Put ``button`` among ``entry``'s actions (null: take it away). */
function placeButton(button, entry, focused) {
  if (entry) {
    if (button.parentNode !== entry.actions) entry.actions.insertBefore(button, entry.del);
    button.disabled = !canSend();
  } else if (button.parentNode) {
    if (button === focused) focusComposer();
    button.remove();
  }
}

function syncUI() {
  const active = activeReply();
  const focused = document.activeElement;
  ui.send.hidden = !!active;
  ui.stop.hidden = !active;
  ui.stop.disabled = !active || active.stopping || !S.live;
  const sendable = S.live && S.status === "live";
  ui.send.disabled = !sendable || !!S.selecting || V.state !== "idle"; // the dictated text is still coming
  if (sendable && !S.interactive) {
    S.interactive = true;
    performance.mark("chat:interactive");
  }
  if (active && focused === ui.send) ui.stop.focus();
  else if (!active && focused === ui.stop) ui.input.focus();

  ui.empty.hidden = S.entries.length > 0 || !S.conv;
  // Regenerate lives on the last entry once it is a reply that has ended (unless Retry is
  // offered there); a stored message left without reply (a crash) is offered Answer.
  const end = lastEntry();
  const reply = end && end.kind === "assistant" && end.reply.msgId && end.reply.state !== "streaming" && !end.note.querySelector(".retry");
  placeButton(regenerateButton, reply ? end : null, focused);
  placeButton(answerButton, end && end.kind === "user" && end.stored && !active ? end : null, focused);
  const last = lastAssistant();
  for (const b of ui.messages.querySelectorAll("button.retry")) {
    const entry = S.entries.find((e) => e.note === b.parentNode);
    if (!entry) continue;
    if (entry !== last) renderNote(entry); // Retry is offered on the last reply only
    else b.disabled = !canSend(true) || (entry.reply.error && entry.reply.error.retryAt > Date.now());
  }
  paintActions(active);
  ui.older.hidden = !S.conv || !S.moreHistory;
  ui.older.disabled = !S.live || asking("older");
  ui.menuButton.disabled = !S.conv;
  if (!ui.menu.hidden) paintMenu();
  ui.settingsSave.disabled = !S.live || S.settingsReq !== null;
  paintVoice();
}

/** What the message buttons allow now: versions switch any time, the rest waits for the reply. */
function paintActions(active) {
  const ok = canSend();
  for (const e of S.entries) {
    e.del.disabled = !ok;
    if (e.kind === "user") e.edit.disabled = !S.live;
    else {
      e.more.hidden = !offersContinue(e, active);
      e.more.disabled = !ok;
    }
    if (!e.versions.el.hidden) renderVersions(e);
  }
  if (S.editing && S.editing.editor) S.editing.editor.save.disabled = !ok || !S.editing.editor.input.value.trim();
}

function autosize() {
  const t = ui.input;
  t.style.height = "auto"; // CSSOM: allowed by the CSP, unlike style attributes in markup
  t.style.height = `${Math.min(t.scrollHeight, 240)}px`;
}

function setTitle() {
  const item = S.conv ? convs.get(S.conv) : null;
  ui.title.textContent = item && item.title ? item.title : t("conversations.new");
  document.title = item && item.title ? t("app.pageTitle", { title: item.title, app: t("app.name") }) : t("app.name");
}

// ---------------------------------------------------------------------------- sending

function sendMessage(text) {
  if (!canSend()) return false;
  const id = newId();
  const frame = { type: "message", id, content: text, conversation_id: S.conv };
  const after = lastStoredId();
  if (after) frame.parent_id = after; // the branch shown here, whatever another tab selected
  const picked = pickedModel();
  if (picked) frame.model = picked; // otherwise the gateway's own choice for the conversation
  if (!S.socket.send(frame)) return false;
  const reply = new Reply(null, S.conv);
  const user = makeUser(id, text);
  user.parentId = after;
  const entry = makeAssistant(reply);
  S.pending.set(id, { kind: "message", id, content: text, user, entry, conv: S.conv });
  append(user, entry);
  const item = convs.get(S.conv);
  convs.touch(S.conv, { title: item && item.title ? undefined : titleFrom(text), bump: true });
  if (S.bannerKind !== "conn") banner(null);
  syncUI();
  scrollToBottom();
  return true;
}

function submit() {
  const text = ui.input.value;
  if (!text.trim() || activeReply() || V.state !== "idle") return;
  if (sendMessage(text)) {
    ui.input.value = "";
    autosize();
    if (V.note) voiceNote(null);
  }
}

function stop() {
  const r = activeReply();
  if (!r || r.stopping) return;
  r.stopping = true;
  if (r.id) S.socket.send({ type: "cancel", reply_id: r.id });
  else r.cancelWanted = true; // sent as soon as reply.start names the reply
  syncUI();
}

/** A new version of the last reply shown, or (``reply_id`` absent: the branch's last
 * message) the first reply to a stored message left unanswered. */
function regenerate() {
  const last = lastEntry();
  const replaces = last && last.kind === "assistant" ? last.reply.msgId : null;
  if (!last || !(replaces || (last.kind === "user" && last.stored)) || !canSend()) return;
  const id = newId();
  const frame = { type: "regenerate", id };
  if (replaces) frame.reply_id = replaces;
  const picked = pickedModel();
  if (picked) frame.model = picked;
  if (!S.socket.send(frame)) return;
  S.pending.set(id, { kind: "regenerate", id, replaces, conv: S.conv });
  syncUI();
}

/** More of a reply cut short: the stream replaces its bubble's text (it starts with it). */
function continueReply(entry) {
  const r = entry.reply;
  if (!offersContinue(entry, activeReply()) || !canSend()) return;
  const id = newId();
  if (!S.socket.send({ type: "continue", id, reply_id: r.msgId })) return;
  S.pending.set(id, { kind: "continue", id, target: r.msgId, conv: S.conv });
  syncUI();
}

// ---------------------------------------------------------------------------- editing, versions

const MAC = /Mac|iPhone|iPad/.test(navigator.platform || "");

/** A key pressed for an input method (picking a candidate, cancelling a composition), not for the page. */
const composing = (ev) => ev.isComposing || ev.keyCode === 229;

/** Open the inline editor on a user message (``text``: what to start with). */
function startEdit(entry, text = entry.text) {
  if (S.editing && S.editing !== entry) closeEdit(S.editing, false);
  if (entry.editor) {
    entry.editor.input.focus();
    return;
  }
  S.editing = entry;
  const form = el("form", "edit-form");
  form.dataset.testid = "editor";
  form.noValidate = true;
  const input = el("textarea", "edit-input");
  input.value = text;
  input.rows = 2;
  tr(input, { aria: "edit.label" });
  input.dataset.testid = "edit-input";
  if (ui.input.maxLength > 0) input.maxLength = ui.input.maxLength;
  const hintId = `edit-hint-${newId()}`;
  input.setAttribute("aria-describedby", hintId);
  const bar = el("div", "edit-bar");
  const hint = tr(el("span", "edit-hint"), { text: MAC ? "edit.hintMac" : "edit.hint" });
  hint.id = hintId;
  const cancel = tr(el("button", "btn small"), { text: "common.cancel" });
  cancel.type = "button";
  cancel.dataset.testid = "edit-cancel";
  const save = tr(el("button", "btn small primary"), { text: "edit.save" });
  save.type = "submit";
  save.dataset.testid = "edit-save";
  bar.append(hint, cancel, save);
  form.append(input, bar);
  entry.editor = { form, input, save };
  entry.el.classList.add("editing");
  entry.el.append(form);
  const fit = () => {
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight + 2, 320)}px`;
    save.disabled = !canSend() || !input.value.trim();
  };
  input.addEventListener("input", fit);
  input.addEventListener("keydown", (ev) => {
    if (composing(ev)) return;
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      form.requestSubmit();
    }
  });
  // Escape, from the box or the buttons.
  form.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && !composing(ev)) {
      ev.preventDefault();
      ev.stopPropagation();
      closeEdit(entry, true);
    }
  });
  cancel.addEventListener("click", () => closeEdit(entry, true));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    saveEdit(entry, input.value);
  });
  fit();
  input.focus();
  input.setSelectionRange(input.value.length, input.value.length);
}

function closeEdit(entry, refocus) {
  if (!entry.editor) return;
  entry.editor.form.remove();
  entry.editor = null;
  entry.el.classList.remove("editing");
  if (S.editing === entry) S.editing = null;
  if (refocus && entry.el.isConnected) entry.edit.focus();
}

/** Send the edit: the view drops the old version and what followed it, and shows the new one answered. */
function saveEdit(entry, text) {
  if (!text.trim() || !canSend() || !entry.stored) return;
  const i = S.entries.indexOf(entry);
  if (i === -1) return;
  const id = newId();
  const frame = { type: "edit", id, message_id: entry.id, content: text };
  const picked = pickedModel();
  if (picked) frame.model = picked;
  if (!S.socket.send(frame)) return;
  closeEdit(entry, false);
  const user = makeUser(id, text);
  user.parentId = entry.parentId;
  addVersion(user, entry, entry.id, id);
  const reply = new Reply(null, S.conv);
  const answer = makeAssistant(reply);
  const kept = S.entries.slice(0, i);
  S.pending.set(id, { kind: "edit", id, content: text, user, entry: answer, conv: S.conv, was: S.entries.slice(), edited: entry });
  mount([...kept, user, answer]);
  if (S.bannerKind !== "conn") banner(null);
  scrollToBottom();
  focusComposer();
}

/** An edit the gateway refused: the old branch comes back, and the editor with the text. */
function editRefused(p, info) {
  mount(p.was);
  banner(errorBanner(info));
  if (p.edited && S.entries.includes(p.edited)) startEdit(p.edited, p.content);
}

/** Show another version of a message (``step``: -1 previous, +1 next). */
function selectVersion(entry, step, button) {
  const src = entry.kind === "user" ? entry : entry.reply;
  if (!src.siblings || !S.live || S.selecting) return;
  const target = src.siblings[src.sibIndex + step];
  if (!target) return;
  const id = `select:${newId()}`;
  if (!S.socket.send({ type: "select", message_id: target, id })) return;
  const i = S.entries.indexOf(entry);
  const prev = i > 0 ? msgIdOf(S.entries[i - 1]) : null;
  S.anchor = { req: id, id: target, prev, top: entry.el.getBoundingClientRect().top, focus: button.dataset.action };
  S.selecting = id;
  syncUI();
}

/** "Delete this version?" in place of the message's buttons; Cancel is focused. */
function askDeleteVersion(entry, button) {
  if (entry.el.querySelector(".confirm")) return;
  const box = el("div", "confirm");
  box.setAttribute("role", "group");
  tr(box, { aria: "confirm.label" });
  box.dataset.testid = "confirm-delete";
  const text = tr(el("span", "confirm-text"), { text: entry.kind === "user" ? "confirm.user" : "confirm.assistant" });
  text.id = `confirm-${newId()}`;
  box.setAttribute("aria-describedby", text.id);
  const yes = tr(el("button", "btn small danger"), { text: "confirm.delete" });
  yes.type = "button";
  yes.dataset.testid = "confirm-delete-yes";
  const no = tr(el("button", "btn small"), { text: "common.cancel" });
  no.type = "button";
  no.dataset.testid = "confirm-delete-no";
  box.append(text, yes, no);
  entry.actions.hidden = true;
  entry.actions.after(box);
  const close = (refocus) => {
    box.remove();
    entry.actions.hidden = false;
    if (refocus && button.isConnected) button.focus();
  };
  no.addEventListener("click", () => close(true));
  box.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") {
      ev.preventDefault();
      ev.stopPropagation();
      close(true);
    }
  });
  yes.addEventListener("click", () => {
    const msg = msgIdOf(entry);
    if (!msg || !canSend()) return;
    const id = `delbranch:${newId()}`;
    if (!S.socket.send({ type: "delete_branch", message_id: msg, id })) return;
    const i = S.entries.indexOf(entry);
    const prev = i > 0 ? msgIdOf(S.entries[i - 1]) : null;
    S.anchor = { req: id, id: null, prev, top: entry.el.getBoundingClientRect().top, focus: "", said: "versions.deleted" };
    close(false);
    focusComposer();
  });
  no.focus();
}

function retry(entry) {
  const r = entry.reply;
  if (r.error && r.error.unsent) {
    // The gateway never stored this message: drop it and send it again.
    if (!canSend(true)) return;
    const i = S.entries.indexOf(entry);
    const user = S.entries[i - 1];
    for (const e of [entry, user]) {
      if (!e) continue;
      e.el.remove();
      S.entries.splice(S.entries.indexOf(e), 1);
    }
    sendMessage(r.error.content);
    return;
  }
  regenerate(); // a stored reply failed: replace it with a new one
}

// ---------------------------------------------------------------------------- conversations

function helloFrame(conv) {
  return conv ? { type: "hello", conversation_id: conv } : { type: "hello" };
}

/** Open ``conv`` (null: a new conversation) on the current socket, or on the next one. */
function open(conv, { list = false } = {}) {
  S.target = conv;
  S.listOnReady = list;
  if (list && conv) convs.touch(conv, {});
  if (S.socket && S.socket.open) {
    S.live = false;
    S.helloFor = conv;
    S.socket.send(helloFrame(conv));
    syncUI();
  }
}

function newChat() {
  closeSidebarIfMobile();
  open(null);
  ui.input.focus();
}

function setHash(conv) {
  const want = conv ? `#/c/${conv}` : "#/";
  if (location.hash !== want) history.replaceState(null, "", want);
}

function routeTarget() {
  const m = /^#\/c\/([^/?#]+)$/.exec(location.hash);
  if (!m) return undefined;
  const id = decodeURIComponent(m[1]);
  return isConversationId(id) ? id : undefined;
}

/** The list shown: the search's results (the gateway's, or the cached titles' offline), or every conversation. */
function shownConversations() {
  if (!S.search) return convs.items;
  if (S.found) return S.found.map((c) => ({ id: c.id, title: typeof c.title === "string" ? c.title : "" }));
  const needle = S.search.toLowerCase();
  return convs.items.filter((c) => c.title.toLowerCase().includes(needle));
}

function renderSidebar() {
  if (S.renaming) return;
  const items = shownConversations();
  ui.convEmpty.hidden = items.length > 0;
  ui.convEmpty.textContent = t(S.search ? "conversations.noMatch" : "conversations.empty");
  ui.convMore.hidden = !!S.search || !S.listNext;
  const nodes = items.map((c) => {
    const li = el("li", "conv");
    li.dataset.testid = "conversation";
    li.dataset.conversationId = c.id;
    const name = c.title || t("conversations.untitled");
    const a = el("a", "conv-open", name);
    a.href = `#/c/${c.id}`;
    a.title = c.updated ? t("conversations.lastActive", { title: c.title || c.id, when: ago(c.updated) }) : c.title || c.id;
    if (c.id === S.conv) {
      a.setAttribute("aria-current", "page");
      li.classList.add("current");
    }
    const actions = el("div", "conv-actions");
    for (const [action, aria, title, iconName] of [
      ["rename", "conversations.renameNamed", "conversations.rename", "edit"],
      ["delete", "conversations.deleteNamed", "conversations.delete", "trash"],
    ]) {
      const b = el("button", "icon-btn small");
      b.type = "button";
      b.dataset.action = action;
      b.setAttribute("aria-label", t(aria, { title: name }));
      b.title = t(title);
      b.append(icon(iconName));
      actions.append(b);
    }
    li.append(a, actions);
    return li;
  });
  ui.convList.replaceChildren(...nodes);
  setTitle();
}

function startRename(li) {
  const id = li.dataset.conversationId;
  const item = convs.get(id);
  if (!item) return;
  S.renaming = id;
  const input = el("input", "conv-rename");
  input.type = "text";
  input.value = item.title;
  input.maxLength = 80;
  tr(input, { aria: "conversations.name" });
  li.querySelector(".conv-open").replaceWith(input);
  input.focus();
  input.select();
  let done = false;
  const finish = (save, refocus) => {
    if (done) return;
    done = true;
    S.renaming = null;
    if (save && input.value.trim() && input.value.trim() !== item.title) {
      convs.rename(id, input.value);
      sendPending();
    } else renderSidebar();
    const again = ui.convList.querySelector(`[data-conversation-id="${CSS.escape(id)}"] .conv-open`);
    if (refocus && again) again.focus();
  };
  input.addEventListener("keydown", (ev) => {
    if (composing(ev)) return;
    if (ev.key === "Enter") {
      ev.preventDefault();
      finish(true, true);
    } else if (ev.key === "Escape") {
      ev.preventDefault();
      ev.stopPropagation();
      finish(false, true);
    }
  });
  input.addEventListener("blur", () => finish(true, false));
}

function removeConversation(id) {
  const wasCurrent = id === S.conv;
  const ids = convs.items.map((c) => c.id);
  const next = ids[ids.indexOf(id) + 1] || ids[ids.indexOf(id) - 1];
  const hadFocus = ui.convList.contains(document.activeElement);
  convs.remove(id, { sync: true });
  sendPending();
  if (wasCurrent) open(null);
  if (hadFocus) {
    // Keep keyboard users in the list: focus the neighbour, or New chat.
    const link = next && ui.convList.querySelector(`[data-conversation-id="${CSS.escape(next)}"] .conv-open`);
    (link || ui.newChat).focus();
  }
}

/** Send the renames and deletes made here that the gateway has not had yet. */
function sendPending() {
  if (!S.socket || !S.live) return;
  const { renames, deletes } = convs.pending;
  for (const c of renames) S.socket.send({ type: "rename", id: `rename:${c.id}`, conversation_id: c.id, title: c.title });
  for (const id of deletes) S.socket.send({ type: "delete", id: `delete:${id}`, conversation_id: id });
}

/** Ask the gateway for the list: its first page, a later one (``more``), or a search. */
function listConversations({ more = false } = {}) {
  if (!S.socket || !S.live) return;
  const frame = { type: "conversations", limit: 50 };
  if (S.search) frame.query = S.search;
  else if (more && S.listNext) frame.before = S.listNext;
  S.listMore = more && !S.search;
  S.socket.send(frame);
}

function onConversations(m) {
  const items = Array.isArray(m.items) ? m.items : [];
  if (typeof m.query === "string" && m.query) {
    if (m.query !== S.search) return; // an answer to an older search
    S.found = items.filter((c) => c && isConversationId(c.id));
    renderSidebar();
    return;
  }
  S.listNext = typeof m.next === "string" ? m.next : null;
  convs.fromGateway(items, { append: S.listMore });
  ui.convMore.hidden = !S.listNext;
}

function onSearch() {
  const query = ui.convSearch.value.split(/\s+/).filter(Boolean).join(" ");
  clearTimeout(S.searchTimer);
  S.searchTimer = setTimeout(() => {
    S.search = query;
    S.found = null;
    if (query) listConversations();
    renderSidebar();
  }, 250);
}

function toggleSidebar(force) {
  if (MOBILE.matches) {
    const opening = force ?? !ui.app.classList.contains("sidebar-open");
    ui.app.classList.toggle("sidebar-open", opening);
    ui.scrim.hidden = !opening;
    ui.sidebarToggle.setAttribute("aria-expanded", String(opening));
    ui.main.inert = opening; // the drawer is modal: Tab stays in it
    if (opening) ui.newChat.focus();
    else if (ui.sidebar.contains(document.activeElement)) ui.sidebarToggle.focus();
  } else {
    const collapsed = force === undefined ? !ui.app.classList.contains("sidebar-collapsed") : !force;
    ui.app.classList.toggle("sidebar-collapsed", collapsed);
    ui.sidebarToggle.setAttribute("aria-expanded", String(!collapsed));
  }
}

function closeSidebarIfMobile() {
  if (MOBILE.matches && ui.app.classList.contains("sidebar-open")) toggleSidebar(false);
}

function syncSidebarMode() {
  ui.app.classList.remove("sidebar-open");
  ui.scrim.hidden = true;
  ui.main.inert = false;
  const expanded = MOBILE.matches ? false : !ui.app.classList.contains("sidebar-collapsed");
  ui.sidebarToggle.setAttribute("aria-expanded", String(expanded));
}

// ---------------------------------------------------------------------------- menu, settings, export

function menuItems() {
  return [...ui.menu.querySelectorAll("button[data-menu]")].filter((b) => !b.disabled);
}

function paintMenu() {
  const stored = S.entries.some((e) => msgIdOf(e));
  for (const b of ui.menu.querySelectorAll("button[data-menu]")) {
    b.disabled = !S.live || (b.dataset.menu !== "settings" && !stored);
  }
}

function openMenu(at = 0) {
  paintMenu();
  ui.menu.hidden = false;
  ui.menuButton.setAttribute("aria-expanded", "true");
  const items = menuItems();
  if (items.length) items[at < 0 ? items.length - 1 : at].focus();
}

function closeMenu(refocus) {
  if (ui.menu.hidden) return;
  ui.menu.hidden = true;
  ui.menuButton.setAttribute("aria-expanded", "false");
  if (refocus) ui.menuButton.focus();
}

function openSettings() {
  if (!S.live || !S.conv) return;
  ui.settingsPrompt.value = S.systemPrompt;
  show(ui.settingsError, null);
  S.settingsReq = null;
  syncUI();
  ui.settings.showModal();
  ui.settingsPrompt.focus();
}

function saveSettings() {
  if (!S.live || S.settingsReq) return;
  const id = `settings:${newId()}`;
  if (!S.socket.send({ type: "settings", system_prompt: ui.settingsPrompt.value, id })) return;
  S.settingsReq = id;
  show(ui.settingsError, null);
  syncUI();
}

function settingsRefused(info) {
  S.settingsReq = null;
  show(ui.settingsError, info.code === "too_large" && S.maxChars ? { key: "settings.tooLong", params: { count: S.maxChars } } : info.text);
  syncUI();
}

function onSettings(m) {
  if (m.conversation_id !== S.conv) return;
  S.systemPrompt = typeof m.system_prompt === "string" ? m.system_prompt : "";
  if (S.conv) convs.touch(S.conv, {}); // stored now, even before its first message
  if (typeof m.id === "string" && m.id === S.settingsReq) {
    S.settingsReq = null;
    if (ui.settings.open) ui.settings.close();
    announce(t(S.systemPrompt ? "settings.saved" : "settings.removed"));
  }
  syncUI();
}

function exportConversation(format, scope) {
  if (!S.live) return;
  S.socket.send({ type: "export", format, scope, id: `export:${newId()}` });
}

/** The gateway's file: downloaded as is (a Blob behind an <a download>). */
function onExport(m) {
  if (typeof m.content !== "string") return;
  const name = typeof m.filename === "string" && m.filename ? m.filename : "conversation.txt";
  const type = typeof m.media_type === "string" && m.media_type ? m.media_type : "text/plain";
  const url = URL.createObjectURL(new Blob([m.content], { type: `${type};charset=utf-8` }));
  const a = el("a");
  a.href = url;
  a.download = name;
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  announce(t("export.done", { name }));
}

function onBranch(m) {
  if (S.selecting === m.id) S.selecting = null;
  if (m.conversation_id !== S.conv) {
    syncUI();
    return;
  }
  const anchor = S.anchor && S.anchor.req === m.id ? S.anchor : null;
  if (anchor) S.anchor = null;
  const items = Array.isArray(m.messages) ? m.messages : [];
  const streaming = m.streaming && typeof m.streaming === "object" ? m.streaming : null;
  showBranch(items, m.has_more === true, streaming, anchor);
  if (anchor && anchor.said) announce(t(anchor.said));
}

// ---------------------------------------------------------------------------- protocol

function onOpen() {
  S.live = false;
  S.resuming.clear();
  S.hist.clear();
  S.selecting = null; // its answer went with the old socket
  S.anchor = null;
  if (S.settingsReq) {
    S.settingsReq = null;
    show(ui.settingsError, { key: "settings.dropped" });
  }
  S.helloFor = S.target;
  const hello = helloFrame(S.target);
  if (S.token) hello.token = S.token; // the first frame signs in (never the URL)
  S.socket.send(hello);
}

function onClose({ code, reason, fatal, delay, failures }) {
  S.live = false;
  if (V.state !== "idle") voiceDropped(); // its audio went with the socket: what was recognised stays in the box
  for (const r of S.replies.values()) r.stopping = false;
  if (fatal && code === 1008 && S.cred.mode !== "none" && S.cred.mode !== "proxy" && S.refusals < 2) {
    // Refused or expired credential: sign in again (ask, or fetch a new JWT), then resume.
    S.refusals++;
    S.cred.forget();
    setStatus("connecting");
    signIn(S.cred.asks ? { key: "signin.refused" } : null).then(() => syncUI());
    syncUI();
    return;
  }
  if (reason) console.debug("close", code, reason); // the gateway's words, in English: the page says its own
  if (fatal) {
    setStatus("offline");
    const action = { label: S.cred && S.cred.mode !== "none" ? "signin.submit" : "conn.tryAgain", run: () => signIn(null) };
    banner({ key: code === 1008 ? "conn.refused" : "conn.failed" }, action, "conn");
    syncUI();
    return;
  }
  const offline = navigator.onLine === false || failures >= OFFLINE_AFTER;
  setStatus(offline ? "offline" : "reconnecting");
  const until = Date.now() + delay;
  if (code === 1013) banner({ key: busyKey(reason), until, then: { key: "conn.reconnecting" } }, null, "conn");
  else if (code === 1009) banner({ key: "conn.tooLarge" }, null, "conn");
  else if (code === 1011) banner({ key: "conn.internal" }, null, "conn");
  else if (code !== 1001 && code !== 1012 && failures >= CONN_BANNER_AFTER) {
    banner({ key: "conn.unreachable", until, then: { key: "conn.retrying" } }, { label: "conn.retryNow", run: reconnectNow }, "conn");
  }
  syncUI();
}

/** Which "try again later" (1013) it is, told by the close reason (docs/protocol.md §5). */
function busyKey(reason) {
  if (/too many connections/.test(reason)) return "conn.tooMany";
  if (/full/.test(reason)) return "conn.full";
  if (/slow/.test(reason)) return "conn.slow";
  return "conn.busy";
}

function reconnectNow() {
  banner(null);
  setStatus("connecting");
  S.socket.connect();
}

/** Get the credential of the gateway's auth mode (asking the person if it needs one), then connect. */
async function signIn(error) {
  S.token = await S.cred.get(error);
  if (!S.token && S.cred.mode !== "none" && S.cred.mode !== "proxy") {
    setStatus("offline");
    banner({ key: S.cred.asks ? "signin.needed" : "signin.noToken" }, { label: "signin.submit", run: () => signIn(null) }, "conn");
    return;
  }
  reconnectNow();
}

/** The sign-in dialog (tokens mode), ``error`` a message or null: resolves with the typed
 * token, or null if dismissed. */
function askToken(error) {
  return new Promise((resolve) => {
    show(ui.signinError, error || null);
    ui.signinToken.value = "";
    const done = (value) => {
      ui.signinForm.onsubmit = null;
      ui.signin.onclose = null;
      if (ui.signin.open) ui.signin.close();
      resolve(value);
    };
    ui.signinForm.onsubmit = (ev) => {
      ev.preventDefault();
      const token = ui.signinToken.value.trim();
      if (token) done(token);
    };
    ui.signin.onclose = () => done(null);
    ui.signin.showModal();
    ui.signinToken.focus();
  });
}

/** The credential expires soon: renew it on this socket (jwt), without a reconnect. A
 * token that would not expire later is not sent: the socket then closes (1008) at the
 * expiry, and the page signs in anew. */
async function onExpiring(m) {
  if (S.cred.mode !== "jwt" || S.renewing) return;
  S.renewing = true;
  const gen = S.socket.gen;
  try {
    const token = await S.cred.renew();
    const later = token && (!Number.isFinite(m.expires_at) || (jwtExpiry(token) || 0) > m.expires_at);
    if (later && gen === S.socket.gen && S.socket.send({ type: "refresh", token })) S.token = token;
  } finally {
    S.renewing = false;
  }
}

const HANDLERS = {
  ready: onReady,
  "reply.start": onStart,
  "reply.delta": onDelta,
  "reply.reasoning": onReasoning,
  "reply.done": onDone,
  error: onError,
  history: onHistory,
  branch: onBranch,
  settings: onSettings,
  export: onExport,
  conversations: onConversations,
  renamed: (m) => typeof m.conversation_id === "string" && convs.renamedOnGateway(m.conversation_id, m.title),
  deleted: (m) => typeof m.conversation_id === "string" && convs.deletedOnGateway(m.conversation_id),
  "auth.expiring": onExpiring,
  "auth.refreshed": () => {},
  "voice.started": onVoiceStarted,
  "voice.partial": onVoicePartial,
  "voice.final": onVoiceFinal,
  pong: () => {},
};

function onFrame(frame) {
  const handler = Object.hasOwn(HANDLERS, frame.type) ? HANDLERS[frame.type] : null;
  if (handler) handler(frame); // unknown types are ignored, as the protocol asks
}

function stateOf(finish) {
  if (finish === "cancelled") return "cancelled";
  if (finish === "error") return "error";
  return "done";
}

/** History items → view entries, reusing ``old``'s (key → entry) that did not change. */
function entriesFrom(items, conv, old, skip) {
  const next = [];
  for (const h of items) {
    if (!h || typeof h.id !== "string" || typeof h.content !== "string") continue;
    if (h.role === "user") {
      next.push(storedUser(h, old.get(`u:${h.id}`)));
    } else if (h.role === "assistant" && h.id !== skip && h.finish_reason) {
      let r = replyOfMessage(h.id);
      if (!r) {
        r = new Reply(h.id, conv);
        S.replies.set(h.id, r);
      }
      if (r.state === "streaming" || r.text !== h.content || r.finish !== h.finish_reason) {
        r.text = h.content;
        r.state = stateOf(h.finish_reason);
        r.finish = h.finish_reason;
        r.fresh = false;
        if (r.state !== "error") r.error = null;
      }
      fromHistory(r, h);
      next.push(assistantEntry(r, old.get(`a:${h.id}`)));
    }
  }
  return next;
}

/** The stored user message ``h``'s entry: ``e`` (one shown already) if its text is the same, else a new one. */
function storedUser(h, e) {
  const u = e && e.text === h.content ? e : makeUser(h.id, h.content);
  u.stored = true;
  setBranchInfo(u, h);
  return u;
}

/** ``r``'s entry: ``e`` (one shown already) if it shows ``r``, else a new one. */
function assistantEntry(r, e) {
  return e && e.reply === r ? e : makeAssistant(r);
}

/** The Reply writing the stored message ``id`` (a continuation's stream id differs). */
function replyOfMessage(id) {
  const r = S.replies.get(id);
  if (r) return r;
  for (const x of S.replies.values()) if (x.msgId === id) return x;
  return null;
}

/** Where a streaming reply goes in ``next``: at the end, if the message it answers ends
 * what is shown (a continuation too: the history leaves the continued reply out, and only
 * the last reply of a branch is continued); -1: it streams in a branch not shown. */
function placeOf(next, r) {
  if (!r.parentId) return next.length; // a gateway that does not say
  return next.length && msgIdOf(next[next.length - 1]) === r.parentId ? next.length : -1;
}

/** ``streaming`` (of ready or branch): follow that reply, and show it if its branch is shown. */
function attachStreaming(next, s, conv, old) {
  const live = s.reply_id;
  let r = S.replies.get(live);
  const following = r && r.state === "streaming" && r.gen === S.socket.gen;
  if (!r) {
    r = new Reply(live, conv);
    S.replies.set(live, r);
  }
  if (typeof s.parent_id === "string" && s.parent_id) r.parentId = s.parent_id;
  if (typeof s.continues === "string" && s.continues) r.msgId = s.continues;
  if (!following) {
    if (r.state !== "streaming") {
      r.state = "streaming";
      r.text = "";
      r.reasoning = "";
      r.seq = 0;
    }
    // The replay starts after r.seq: what is held stays. From 0 it is the whole text again
    // (a continuation still showing the old text clears it at its first frame).
    if (r.seq === 0 && !r.fresh) {
      r.text = "";
      r.reasoning = "";
    }
    r.gen = S.socket.gen;
    S.resuming.add(live);
    S.socket.send({ type: "resume", reply_id: live, after_seq: r.seq });
  }
  const at = placeOf(next, r);
  if (at === -1) return;
  r.after = "sync"; // picked up mid-stream: its versions are learnt once it ends
  next.splice(at, 0, assistantEntry(r, old.get(`a:${r.msgId}`)));
}

/** Replies this socket follows in the shown conversation, shown where their branch is. */
function attachFollowed(next, old) {
  for (const r of S.replies.values()) {
    if (r.state !== "streaming" || !r.id || r.conv !== S.conv || r.gen !== S.socket.gen || next.some((e) => e.reply === r)) continue;
    const at = placeOf(next, r);
    if (at === -1) continue;
    next.splice(at, 0, assistantEntry(r, old.get(`a:${r.msgId}`)));
  }
}

/** Messages shown here that the gateway does not have (yet): sent and waiting, or unsent. */
function localTail(next) {
  const out = [];
  for (let i = 0; i < S.entries.length; i++) {
    const e = S.entries[i];
    if (e.kind !== "assistant" || e.reply.msgId || next.includes(e)) continue;
    const u = S.entries[i - 1];
    if (u && u.kind === "user" && !u.stored && !next.includes(u)) out.push(u);
    out.push(e);
  }
  return out;
}

/** Show a branch the gateway sent (branch event, a refreshed page): replace the view. */
function showBranch(items, hasMore, streaming, anchor) {
  const old = new Map(S.entries.map((e) => [e.key, e]));
  const live = streaming && typeof streaming.reply_id === "string" ? streaming : null;
  const next = entriesFrom(items, S.conv, old, live ? live.reply_id : null);
  if (live) attachStreaming(next, live, S.conv, old);
  attachFollowed(next, old);
  next.push(...localTail(next));
  const stick = !anchor && nearBottom();
  const top = ui.log.scrollTop;
  S.moreHistory = hasMore;
  mount(next);
  if (anchor) restoreAnchor(anchor);
  else if (stick) scrollToBottom();
  else ui.log.scrollTop = top;
}

/** After a branch switch: the message switched to stays where the reader saw it. */
function restoreAnchor(anchor) {
  let target = anchor.id ? S.entries.find((e) => msgIdOf(e) === anchor.id) : null;
  if (!target && anchor.prev) {
    const i = S.entries.findIndex((e) => msgIdOf(e) === anchor.prev);
    if (i !== -1) target = S.entries[i + 1] || S.entries[i];
  }
  if (!target) {
    scrollToBottom();
    return;
  }
  ui.log.scrollTop += target.el.getBoundingClientRect().top - anchor.top;
  if (anchor.focus) {
    const want = target.el.querySelector(`button[data-action="${anchor.focus}"]`);
    const other = target.el.querySelector(`button[data-action="${anchor.focus === "prev-version" ? "next-version" : "prev-version"}"]`);
    const b = want && !want.disabled ? want : other && !other.disabled ? other : null;
    if (b) b.focus();
    const src = target.kind === "user" ? target : target.reply;
    if (src.siblings) announce(t("versions.showing", { index: src.sibIndex + 1, count: src.siblings.length }));
  }
}

function onReady(m) {
  if (typeof m.conversation_id !== "string") return;
  const conv = m.conversation_id;
  const switching = conv !== S.conv && S.conv !== null; // null: the view was carried over (not_found)
  S.helloFor = undefined;
  S.live = true;
  S.refusals = 0;
  S.socket.healthy();
  showWho(m);
  convs.forSubject(m.subject);
  if (S.listedGen !== S.socket.gen) {
    S.listedGen = S.socket.gen; // once per connection: the list follows the person across devices
    sendPending();
    listConversations();
  }
  S.conv = conv;
  S.target = conv;
  convs.setCurrent(conv);
  setHash(conv);
  showModels(m);
  voiceOffer(m);
  S.systemPrompt = typeof m.system_prompt === "string" ? m.system_prompt : "";
  const max = m.limits && m.limits.max_content_chars;
  if (Number.isInteger(max) && max > 0) {
    ui.input.maxLength = max;
    ui.settingsPrompt.maxLength = max;
    S.maxChars = max;
  }
  if (switching && ui.settings.open) ui.settings.close();

  const history = Array.isArray(m.history) ? m.history : [];
  const title = typeof m.title === "string" ? m.title : "";
  if (history.length || title || S.listOnReady || convs.get(conv)) convs.touch(conv, { title });
  S.listOnReady = false;

  // Rebuild the view from the history, reusing the entries that did not change.
  const old = new Map((switching ? [] : S.entries).map((e) => [e.key, e]));
  const streaming = m.streaming && typeof m.streaming.reply_id === "string" ? m.streaming : null;
  const live = streaming ? streaming.reply_id : null;
  const next = entriesFrom(history, conv, old, live);
  const inHistory = new Set(history.filter((h) => h && typeof h.id === "string").map((h) => h.id));
  // Replies followed on an earlier socket that are not streaming any more: their end is in the history.
  for (const [id, r] of S.replies) if (r.state === "streaming" && r.id && id !== live && r.gen !== S.socket.gen) S.replies.delete(id);
  if (streaming) attachStreaming(next, streaming, conv, old);
  // Messages sent but never acknowledged (the socket dropped first): the history says
  // whether the gateway stored them.
  for (const [id, p] of S.pending) {
    S.pending.delete(id);
    if (p.kind === "edit" && !inHistory.has(id) && p.conv === conv) banner({ key: "edit.dropped" });
    if (p.kind !== "message") continue;
    if (inHistory.has(id) || p.conv !== conv) continue;
    p.entry.reply.state = "error";
    p.entry.reply.error = { text: { key: "message.unsent" }, retryable: true, unsent: true, content: p.content };
    next.push(p.user, p.entry);
  }
  // Unsent messages shown with an error stay at the end until they are retried.
  if (!switching) {
    for (const e of S.entries) {
      if (e.kind === "assistant" && e.reply.error && e.reply.error.unsent && !next.includes(e)) {
        const i = S.entries.indexOf(e);
        if (S.entries[i - 1] && S.entries[i - 1].kind === "user" && !next.includes(S.entries[i - 1])) next.push(S.entries[i - 1]);
        next.push(e);
      }
    }
  }
  const stick = switching || nearBottom();
  S.moreHistory = false;
  const first = history.find((h) => h && typeof h.id === "string");
  if (first) askHistory("probe", { before: first.id, limit: 1 }); // are there older messages? (ready does not say)
  mount(next);
  if (stick) scrollToBottom();
  if (S.bannerKind === "conn") banner(null);
  renderSidebar();
  setStatus("live");
  syncUI();
}

function showModels(m) {
  const models = Array.isArray(m.models) ? m.models.filter((x) => x && typeof x.id === "string") : [];
  S.models = models.map((x) => ({ id: x.id, label: typeof x.label === "string" && x.label ? x.label : x.id }));
  S.provider = typeof m.provider === "string" ? m.provider : "";
  ui.modelPick.hidden = S.models.length < 2;
  const options = S.models.map((x) => {
    const o = el("option", "", x.label);
    o.value = x.id;
    return o;
  });
  ui.modelPicker.replaceChildren(...options);
  const stored = typeof m.model === "string" && m.model ? m.model : null;
  if (S.picked && S.picked.conv !== m.conversation_id) S.picked = null;
  showModel(pickedModel() || stored); // a pick not sent yet outlives a reconnect
}

/** The model the person picked for this conversation, if it is still offered. */
function pickedModel() {
  const p = S.picked;
  return p && p.conv === S.conv && S.models.some((x) => x.id === p.id) ? p.id : null;
}

function showModel(id) {
  S.model = id;
  if (!id) return;
  if (ui.modelPicker.value !== id) ui.modelPicker.value = id;
  const text = `${modelLabel(id)}${S.provider ? ` · ${S.provider}` : ""}`;
  ui.modelInfo.textContent = text;
  ui.emptyModel.textContent = text;
}

function pickModel() {
  const id = ui.modelPicker.value;
  if (!S.models.some((x) => x.id === id)) return;
  S.picked = { conv: S.conv, id }; // sent with the next message or regenerate; the gateway then keeps it
  showModel(id);
}

/** Ask for a history page (``kind`` says what it is for); its answer or error echoes the id. */
function askHistory(kind, frame) {
  if (!S.socket || !S.live || !S.conv) return;
  const id = `history:${newId()}`;
  if (S.socket.send({ type: "history", id, ...frame })) S.hist.set(id, { conv: S.conv, kind });
}

/** A history request of ``kind`` is in flight. */
function asking(kind) {
  for (const q of S.hist.values()) if (q.kind === kind) return true;
  return false;
}

/** Check the newest messages against the view: their versions (after an edit or a
 * regenerate), and where a new message went (another tab may have shown another
 * branch meanwhile). A branch that changed elsewhere is then fetched whole. */
function syncBranch() {
  askHistory("sync", { limit: 2 });
}

function refreshBranch() {
  askHistory("refresh", { limit: 50 });
}

function loadOlder() {
  const first = S.entries.find((e) => msgIdOf(e));
  if (!first || !S.live || asking("older")) return;
  askHistory("older", { before: msgIdOf(first), limit: 50 });
  syncUI();
}

/** A page that matches the tail of the view: update the versions in place. */
function updateInPlace(items, hasMore) {
  const valid = items.filter((h) => h && typeof h.id === "string");
  const shown = storedEntries();
  if (!valid.length) return shown.length === 0;
  const k = shown.findIndex((e) => msgIdOf(e) === valid[0].id);
  if (k === -1 || shown.length - k !== valid.length) return false;
  if (!valid.every((h, i) => msgIdOf(shown[k + i]) === h.id)) return false;
  // What comes before the page must be what the view shows before it.
  if (k > 0 && (!hasMore || (typeof valid[0].parent_id === "string" && valid[0].parent_id !== msgIdOf(shown[k - 1])))) return false;
  valid.forEach((h, i) => {
    const e = shown[k + i];
    setBranchInfo(e.kind === "user" ? e : e.reply, h);
    paint(e);
  });
  syncUI();
  return true;
}

function onHistory(m) {
  const req = typeof m.id === "string" ? S.hist.get(m.id) : undefined;
  if (req) S.hist.delete(m.id);
  if (!req || req.conv !== S.conv || m.conversation_id !== S.conv) {
    syncUI();
    return;
  }
  const messages = Array.isArray(m.messages) ? m.messages : [];
  if (req.kind === "probe") {
    S.moreHistory = messages.length > 0;
    syncUI();
    return;
  }
  if (req.kind === "sync") {
    if (!updateInPlace(messages, m.has_more === true)) refreshBranch();
    return;
  }
  if (req.kind === "refresh") {
    showBranch(messages, m.has_more === true, null, null);
    return;
  }
  S.moreHistory = m.has_more === true;
  const known = new Set(S.entries.map((e) => e.key));
  const entries = [];
  for (const h of messages) {
    if (!h || typeof h.id !== "string" || typeof h.content !== "string") continue;
    if (h.role === "user" && !known.has(`u:${h.id}`)) {
      entries.push(storedUser(h));
    } else if (h.role === "assistant" && h.finish_reason && !known.has(`a:${h.id}`)) {
      const r = new Reply(h.id, S.conv);
      r.text = h.content;
      r.state = stateOf(h.finish_reason);
      r.finish = h.finish_reason;
      fromHistory(r, h);
      S.replies.set(h.id, r);
      entries.push(makeAssistant(r));
    }
  }
  const height = ui.log.scrollHeight;
  prepend(entries);
  ui.log.scrollTop += ui.log.scrollHeight - height; // keep what the reader was looking at in place
  syncUI();
}

function fromHistory(r, h) {
  r.reasoning = typeof h.reasoning === "string" ? h.reasoning : "";
  if (typeof h.model === "string") r.model = h.model;
  setBranchInfo(r, h);
}

function onStart(m) {
  if (typeof m.reply_id !== "string") return;
  const conv = typeof m.conversation_id === "string" ? m.conversation_id : S.conv;
  const p = typeof m.id === "string" ? S.pending.get(m.id) : undefined;
  const parent = typeof m.parent_id === "string" && m.parent_id ? m.parent_id : null;
  const continues = typeof m.continues === "string" && m.continues ? m.continues : null;
  let reply;
  let atEnd = true;
  if (p && (p.kind === "message" || p.kind === "edit")) {
    S.pending.delete(m.id);
    reply = p.entry.reply;
    reply.id = m.reply_id;
    reply.msgId = m.reply_id;
    reply.conv = conv;
    reply.parentId = parent || p.id;
    p.user.stored = true;
    if (p.user.el.isConnected) renderUser(p.user);
    if (p.kind === "edit") reply.after = "sync"; // the new version's switcher: checked once it ends
    else if (conv === S.conv) syncBranch(); // stored where the view says?
  } else {
    if (S.replies.has(m.reply_id)) return;
    if (p) S.pending.delete(m.id);
    reply = new Reply(m.reply_id, conv);
    reply.parentId = parent;
    const replaces = typeof m.replaces === "string" ? m.replaces : p && p.kind === "regenerate" ? p.replaces : null;
    if (continues) {
      // Its stream starts with the stored text: it takes the old bubble's place, and the
      // old text stays up until the first delta replaces it.
      reply.msgId = continues;
      const old = conv === S.conv ? entryOfMessage(continues) : null;
      if (old) {
        const was = old.reply;
        reply.text = was.text;
        reply.reasoning = was.reasoning;
        reply.thoughtFor = was.thoughtFor;
        reply.fresh = true;
        reply.siblings = was.siblings;
        reply.sibIndex = was.sibIndex;
        reply.parentId = parent || was.parentId;
        atEnd = old === S.entries[S.entries.length - 1];
        replaceEntry(old, makeAssistant(reply));
        S.replies.delete(was.id);
      } // else: it streams in a branch not shown; followed, not drawn
    } else if (conv === S.conv) {
      const old = replaces ? entryOfMessage(replaces) : null;
      if (old) {
        // A new version of the reply, beside the old one: shown in its place.
        addVersion(reply, old.reply, replaces, m.reply_id);
        reply.after = "sync";
        replaceEntry(old, makeAssistant(reply));
        S.replies.delete(old.reply.id);
      } else if (!replaces && typeof m.content === "string" && follows(m) === lastStoredId()) {
        // Another tab's message after what is shown here: shown at once (a short page then
        // says its versions).
        const user = makeUser(m.id, m.content);
        user.stored = true;
        append(user, makeAssistant(reply));
        syncBranch();
      } else if (!replaces && typeof m.content !== "string" && (!parent || lastStoredId() === parent)) {
        append(makeAssistant(reply)); // the first reply to a message left unanswered
      } else {
        // The branch changed elsewhere (another tab's edit, select or regenerate): fetch
        // it; the reply is shown with it, and its versions are learnt once it ends.
        reply.after = "sync";
        refreshBranch();
      }
      const item = convs.get(conv);
      if (typeof m.content === "string" && (!item || !item.title)) convs.touch(conv, { title: titleFrom(m.content) });
    }
  }
  reply.gen = S.socket.gen;
  if (typeof m.model === "string") reply.model = m.model;
  reply.fallbackFrom = typeof m.fallback_from === "string" ? m.fallback_from : null;
  const asked = reply.fallbackFrom || m.model;
  if (conv === S.conv && typeof asked === "string" && S.models.some((x) => x.id === asked)) {
    if (S.picked && S.picked.id === asked) S.picked = null; // confirmed: the gateway keeps it now
    if (!S.picked) showModel(asked); // another tab's choice sticks here too
  }
  S.replies.set(m.reply_id, reply);
  if (reply.entry) renderEntry(reply.entry);
  if (reply.cancelWanted) S.socket.send({ type: "cancel", reply_id: m.reply_id });
  syncUI();
  if (reply.entry && conv === S.conv && atEnd) scrollToBottom();
}

/** The message another tab's new message follows (null: it is a first message). */
function follows(m) {
  return typeof m.message_parent_id === "string" && m.message_parent_id ? m.message_parent_id : null;
}

/** A continuation's first frame: its text starts over (with the stored text). */
function restart(r) {
  if (!r.fresh) return;
  r.fresh = false;
  r.text = "";
  r.reasoning = "";
}

function onDelta(m) {
  const r = S.replies.get(m.reply_id);
  if (!r || r.state !== "streaming" || typeof m.text !== "string") return;
  if (typeof m.seq === "number") {
    if (m.seq <= r.seq) return; // already have it
    r.seq = m.seq;
  }
  restart(r);
  if (r.thinkingSince && !r.thoughtFor && !r.text) r.thoughtFor = Math.max(1, Math.round((Date.now() - r.thinkingSince) / 1000));
  r.text += m.text;
  if (r.entry) queueRender(r.entry);
}

function onReasoning(m) {
  const r = S.replies.get(m.reply_id);
  if (!r || r.state !== "streaming" || typeof m.text !== "string") return;
  if (typeof m.seq === "number") {
    if (m.seq <= r.seq) return; // already have it
    r.seq = m.seq; // one sequence with the text: the resume point either way
  }
  restart(r);
  if (!r.thinkingSince && !S.resuming.has(r.id) && r.msgId === r.id) r.thinkingSince = Date.now(); // timed only when seen from its start
  r.reasoning += m.text;
  if (r.entry) queueRender(r.entry);
}

function onDone(m) {
  const r = S.replies.get(m.reply_id);
  if (!r) return;
  S.resuming.delete(r.id);
  const wasStreaming = r.state === "streaming";
  r.state = stateOf(m.finish_reason);
  r.finish = typeof m.finish_reason === "string" ? m.finish_reason : "stop";
  r.stopping = false;
  if (typeof m.model === "string") r.model = m.model;
  r.fallbackFrom = typeof m.fallback_from === "string" ? m.fallback_from : null;
  r.usage = m.usage && typeof m.usage === "object" ? m.usage : null;
  if (r.state === "error" && !r.error) r.error = { text: { key: "message.failed" }, retryable: true };
  if (r.after === "sync" && r.conv === S.conv) syncBranch(); // the versions as the gateway has them now
  r.after = "";
  if (!r.entry) {
    syncUI(); // a reply of a branch not shown: the composer is free again
    return;
  }
  const stick = nearBottom();
  renderEntry(r.entry);
  syncUI();
  if (stick) scrollToBottom();
  if (wasStreaming) {
    if (r.state === "done") announce(r.text ? t("announce.done", { text: plainText(r.entry.body) }) : t("announce.thoughtsOnly"));
    else if (r.state === "cancelled") announce(t("announce.stopped"));
    else announce(t("announce.failed", { message: say(r.error.text) }));
  }
}

/** The view shows only messages the gateway never stored: each one's reply never started. */
function onlyUnstored() {
  return S.entries.length > 0 && S.entries.every((e, i) => {
    const a = e.kind === "user" ? S.entries[i + 1] : e;
    return a && a.kind === "assistant" && !a.reply.id;
  });
}

/** An error frame: the page's own words for its code (``text``, a message); the gateway's
 * English ``message`` (``raw``) only tells cases apart, and goes to the console. */
function errorInfo(m) {
  const code = typeof m.code === "string" ? m.code : "error";
  const raw = typeof m.message === "string" ? m.message : "";
  if (raw) console.debug("error", code, raw);
  const after = Number(m.retry_after);
  return {
    code,
    raw,
    text: errorText(code, m),
    retryable: m.retryable !== false,
    retryAt: after > 0 ? Date.now() + after * 1000 : 0,
  };
}

function errorText(code, m) {
  if (code === "too_large" && S.maxChars) return { key: "error.tooLargeMax", params: { count: S.maxChars } };
  if (code === "budget_exceeded" && Number.isFinite(m.resets_at)) return { key: "error.budgetResets", params: { time: { date: m.resets_at * 1000 } } };
  return ERROR_CODES.has(code) ? { key: `error.${code}` } : { key: "error.unknown", params: { code } };
}

// Errors whose words end "try again in a moment": counting down, they say when instead.
const RETRY_WHEN = { rate_limited: "error.rateLimitedWhen", overloaded: "error.overloadedWhen" };

/** ``text`` (a message) with ``info``'s ``retry_after`` counted down: in ``whenKey``'s own
 * words if it has them, else ``text`` then "try again in N seconds". */
function retryMessage(text, info, whenKey) {
  if (!info.retryAt) return text;
  const msg = whenKey ? { key: whenKey } : { key: "error.retryWhen", params: { message: text } };
  return { ...msg, until: info.retryAt, then: text };
}

/** An error for the banner: with its ``retry_after`` counted down. */
function errorBanner(info) {
  return retryMessage(info.text, info, info.text.key === `error.${info.code}` && RETRY_WHEN[info.code]);
}

function onError(m) {
  const info = errorInfo(m);
  if (typeof m.id === "string" && m.id.startsWith("voice:")) {
    if (m.id === V.id) voiceRefused(info); // else about a dictation already ended here
    return;
  }
  // About a reply: its reply.done (finish_reason "error") follows and shows it.
  if (typeof m.reply_id === "string" && S.replies.has(m.reply_id)) {
    S.replies.get(m.reply_id).error = info;
    return;
  }
  if (typeof m.id === "string" && /^(rename|delete):/.test(m.id)) {
    // Not on the gateway (any more): nothing waits, and the list will say what there is.
    const id = m.id.slice(m.id.indexOf(":") + 1);
    if (m.id.startsWith("delete:")) convs.deletedOnGateway(id);
    else convs.renamedOnGateway(id, (convs.get(id) || { title: "" }).title);
    return;
  }
  if (typeof m.id === "string" && /^(settings|export|select|delbranch|history):/.test(m.id)) {
    if (m.id === S.settingsReq) {
      settingsRefused(info);
      return;
    }
    if (S.anchor && S.anchor.req === m.id) S.anchor = null;
    if (S.selecting === m.id) S.selecting = null;
    S.hist.delete(m.id);
    syncUI();
    banner(errorBanner(info));
    return;
  }
  const p = typeof m.id === "string" ? S.pending.get(m.id) : undefined;
  if (info.code === "bad_request" && /^no model /.test(info.raw)) {
    S.picked = null; // the gateway's models changed (a reload): ask for them again
    if (S.live) S.socket.send(helloFrame(S.conv));
  }
  if (p) {
    S.pending.delete(m.id);
    if (p.kind === "message") {
      const r = p.entry.reply;
      r.state = "error";
      r.error = { ...info, unsent: true, content: p.content };
      if (info.code === "too_large") r.error.retryable = false;
      if (r.entry) renderEntry(r.entry);
      p.user.el.classList.add("unsent");
    } else if (p.kind === "edit") {
      editRefused(p, info);
    } else {
      banner(/no reply to regenerate/.test(info.raw) ? { key: "error.noReply" } : errorBanner(info));
    }
    syncUI();
    return;
  }
  if (info.code === "not_found" && S.helloFor !== undefined) {
    const gone = S.helloFor;
    S.helloFor = undefined;
    // A new chat whose messages the gateway never stored (refused, or sent as the socket
    // dropped) never existed there: they go on, unsent, in the fresh chat opened instead.
    const carry = gone && gone === S.conv && onlyUnstored() ? S.entries : [];
    for (const [id, p] of S.pending) {
      if (p.kind !== "message" || !carry.includes(p.entry)) continue;
      S.pending.delete(id);
      p.entry.reply.state = "error";
      p.entry.reply.error = { text: { key: "message.unsent" }, retryable: true, unsent: true, content: p.content };
      p.user.el.classList.add("unsent");
    }
    if (carry.length) convs.remove(gone);
    else if (gone && convs.get(gone)) {
      convs.remove(gone);
      banner({ key: "conversations.gone" });
    }
    S.conv = null;
    mount(carry);
    open(null);
    return;
  }
  if (info.code === "resume_unavailable") {
    // The reply ended too long ago: its stored text is in the history; ask again.
    for (const id of S.resuming) {
      const r = S.replies.get(id);
      if (r && r.state === "streaming") {
        r.state = "error";
        r.error = { text: { key: "error.resume_unavailable" }, retryable: true };
        if (r.entry) renderEntry(r.entry);
      }
    }
    S.resuming.clear();
    if (S.socket.open && S.conv) {
      S.helloFor = S.conv;
      S.socket.send(helloFrame(S.conv));
    }
    syncUI();
    return;
  }
  if (info.code === "bad_request" && /already receives/.test(info.raw)) return;
  if (info.code === "unauthorized" || info.code === "forbidden") return; // the 1008 close that follows says it
  banner(errorBanner(info));
}

// ---------------------------------------------------------------------------- voice input

// Dictation into the message box (ready.voice, docs/protocol.md): the microphone's PCM goes
// out as binary frames between voice.start and voice.stop; voice.partial shows the text so
// far after what the box held, voice.final replaces it. Nothing is sent as a message: the
// person edits and sends. One dictation at a time (the gateway allows one per connection).

const VOICE_CHUNK_S = 0.1; // seconds of audio per binary frame
const VOICE_FINAL_WAIT_MS = 90_000; // after voice.stop, how long the final may take (a safety net: the gateway answers, or errs)
// Why the microphone could not start (recorder.js), in the page's words.
const VOICE_PROBLEMS = {
  denied: "dictation.denied", noMic: "dictation.noMic", micBusy: "dictation.micBusy", noWorklet: "dictation.noWorklet",
  unsupported: "dictation.unsupported", insecure: "dictation.insecure", failed: "dictation.failed",
};
// The gateway's error codes about a dictation.
const VOICE_ERRORS = {
  bad_request: "dictation.bad_request", busy: "dictation.busy", overloaded: "dictation.overloaded", too_large: "dictation.too_large",
  rate_limited: "dictation.rate_limited", upstream_error: "dictation.upstream_error", upstream_timeout: "dictation.upstream_timeout",
  upstream_unavailable: "dictation.upstream_unavailable",
};
const VOICE_WHEN = { overloaded: "dictation.overloadedWhen", rate_limited: "dictation.rateLimitedWhen" };
// Scripts written without spaces between words (Chinese, Japanese): no space is put between such text and a dictation.
const NO_SPACE = /[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]/;

/** ready.voice: show the microphone button, or (absent) take it away. */
function voiceOffer(m) {
  const v = m.voice && typeof m.voice === "object" ? m.voice : null;
  if (!v) {
    V.offer = null;
    if (V.state !== "idle") {
      // Voice input turned off (a reload of the gateway's config): the dictation this socket
      // still carries is stopped there too, and the person is told why it ended.
      // (a recorder still held: voice.stop not sent yet)
      if (V.rec && V.state !== "opening" && S.socket.gen === V.gen) S.socket.send({ type: "voice.stop", id: V.id });
      endVoice();
      voiceNote({ key: "dictation.off" });
    }
    syncUI();
    return;
  }
  const rate = Number.isInteger(v.sample_rate) && v.sample_rate >= 8000 && v.sample_rate <= 48000 ? v.sample_rate : 16000;
  const maxBytes = Number.isInteger(v.max_frame_bytes) && v.max_frame_bytes >= 2 ? v.max_frame_bytes : 32768;
  // Whole 16-bit samples, never more than a frame may carry.
  const chunk = Math.max(1, Math.min(Math.round(rate * VOICE_CHUNK_S), Math.floor(maxBytes / 2)));
  V.offer = { rate, chunk, maxSeconds: Number(v.max_seconds) > 0 ? Number(v.max_seconds) : 0 };
  syncUI();
}

async function startVoice() {
  if (V.state !== "idle" || !V.offer || !S.live || !S.socket.open) return;
  if (S.bannerKind === "voice") banner(null);
  V.note = null;
  const why = voiceUnsupported();
  if (why) {
    voiceProblem(VOICE_PROBLEMS[why]);
    return;
  }
  const offer = V.offer;
  const id = `voice:${newId()}`;
  const rec = new Recorder({
    rate: offer.rate,
    chunk: offer.chunk,
    data: (pcm, rms) => voiceData(id, pcm, rms),
    ended: () => V.id === id && stopVoice(), // the microphone went away: what was said is transcribed
  });
  const before = ui.input.value;
  Object.assign(V, {
    state: "opening", id, gen: S.socket.gen, rec, text: "", start: before.length, end: before.length,
    owned: false, value: before, since: 0, limit: offer.maxSeconds, level: 0,
  });
  syncUI();
  try {
    await rec.start(); // the AudioContext is made before its first await: within this click
  } catch (err) {
    if (V.id !== id) return; // stopped, or the socket closed, while the browser asked
    endVoice();
    console.debug("voice", err && err.cause ? err.cause : err);
    voiceProblem(VOICE_PROBLEMS[err && err.reason] || "dictation.failed");
    return;
  }
  if (V.id !== id) {
    rec.close();
    return;
  }
  if (S.socket.gen !== V.gen || !S.socket.send({ type: "voice.start", id, sample_rate: offer.rate })) {
    voiceDropped();
    return;
  }
  // The audio follows at once (a refused start's audio is dropped by the gateway).
  V.state = "recording";
  V.since = Date.now();
  syncUI();
  announce(t("dictation.listening"));
}

/** A chunk of PCM from the microphone: one binary frame. */
function voiceData(id, pcm, rms) {
  if (id !== V.id || (V.state !== "recording" && V.state !== "finishing")) return; // after voice.stop, the recorder is closed
  if (S.socket.gen !== V.gen || !S.socket.sendBinary(pcm)) return; // closed: onClose ends it
  // The level in dB, -60..0 dBFS as 0..1: quick to rise, slower to fall.
  const level = rms > 0 ? Math.min(1, Math.max(0, (20 * Math.log10(rms) + 60) / 60)) : 0;
  V.level = level > V.level ? level : V.level * 0.6 + level * 0.4;
  paintLevel();
}

/** Stop listening (the button again, Escape, the microphone gone): the last audio, then
 * voice.stop; the final text comes next. While the microphone is still opening, it is
 * simply let go (nothing was sent). */
async function stopVoice() {
  if (V.state === "opening") {
    endVoice();
    return;
  }
  if (V.state !== "recording") return;
  const id = V.id;
  V.state = "finishing";
  syncUI();
  await V.rec.stop(); // hands over the samples the worklet still held
  if (V.id !== id) return; // ended meanwhile: a final (the time limit), an error, a closed socket
  V.rec = null;
  if (S.socket.gen !== V.gen || !S.socket.send({ type: "voice.stop", id })) {
    voiceDropped();
    return;
  }
  V.wait = setTimeout(() => {
    if (V.id !== id) return;
    // Given up: the gateway may still be making this final, and refuses the next dictation
    // as busy until it has; the note says to wait a little (and "busy" says the same).
    endVoice();
    voiceNote({ key: "dictation.noFinal" });
  }, VOICE_FINAL_WAIT_MS);
}

/** The dictation is over, whatever ended it: the microphone is let go, the box stays as it is. */
function endVoice() {
  clearTimeout(V.tick);
  clearTimeout(V.wait);
  if (V.rec) V.rec.close();
  Object.assign(V, { state: "idle", id: null, rec: null, level: 0 });
  syncUI();
}

/** The socket went (or the page did): the dictation ends; what was recognised stays in the box. */
function voiceDropped(kept = "dictation.dropped", empty = "dictation.droppedEmpty") {
  const key = V.text ? kept : empty; // nothing to keep: the microphone was still opening, or nothing was recognised yet
  endVoice();
  voiceNote({ key });
}

/** The microphone could not start: said in the banner, like the page's other errors. */
function voiceProblem(key) {
  banner({ key }, null, "voice");
  syncUI();
}

/** The gateway refused or ended the dictation (an error frame with its id): no final follows. */
function voiceRefused(info) {
  endVoice();
  const key = VOICE_ERRORS[info.code];
  const text = key ? { key } : { key: "dictation.unknown", params: { code: info.code } };
  banner(retryMessage(text, info, VOICE_WHEN[info.code]), null, "voice");
}

function onVoiceStarted(m) {
  if (m.id !== V.id || V.state === "idle") return;
  if (Number(m.max_seconds) > 0) V.limit = Number(m.max_seconds);
  syncUI();
}

function onVoicePartial(m) {
  if (m.id !== V.id || V.state === "idle" || typeof m.text !== "string") return;
  writeDictation(m.text.trim());
}

function onVoiceFinal(m) {
  if (m.id !== V.id || V.state === "idle") return;
  const text = typeof m.text === "string" ? m.text.trim() : "";
  writeDictation(text); // the caret follows the text if it was in it; elsewhere, it stays where the person put it
  const lost = document.activeElement === ui.voice || document.activeElement === document.body || !document.activeElement;
  const end = V.end;
  endVoice();
  if (m.reason === "max_seconds") voiceNote({ key: "dictation.limit" });
  else if (!text) voiceNote({ key: "dictation.empty" });
  else announce(t("dictation.done"));
  // Back to the box (never sent by itself), the caret after the dictated text.
  if (lost) {
    ui.input.focus();
    ui.input.setSelectionRange(end, end);
  }
}

/** ``base`` then ``text``, a space between them unless one is already there, or both sides are written without spaces. */
function joinDictation(base, text) {
  if (!base || !text || /\s$/.test(base) || /^\s/.test(text)) return base + text;
  return NO_SPACE.test(base.slice(-1)) && NO_SPACE.test(text[0]) ? base + text : `${base} ${text}`;
}

/**
 * The person changed the box during a dictation (an input event, or found before a write):
 * where the change is, by the longest common head and tail of the old and new values, moves
 * the dictated span [V.start, V.end). Before the span (or at its start): the span shifts.
 * After it (or at its end): that text is a tail the dictation keeps. Inside it: the person
 * owns that text now (V.owned), and it is never rewritten; see writeDictation.
 */
function voiceEdited() {
  const now = ui.input.value;
  const old = V.value;
  if (now === old) return;
  V.value = now;
  const most = Math.min(old.length, now.length);
  let head = 0;
  while (head < most && old[head] === now[head]) head++;
  let tail = 0;
  while (tail < most - head && old[old.length - 1 - tail] === now[now.length - 1 - tail]) tail++;
  const oldEnd = old.length - tail; // the change: old [head, oldEnd) became now [head, newEnd)
  const newEnd = now.length - tail;
  const shift = now.length - old.length;
  if (oldEnd <= V.start) {
    V.start += shift;
    V.end += shift;
  } else if (head >= V.end) {
    // a tail after the span: nothing moves
  } else {
    V.owned = true;
    V.start = Math.min(V.start, head);
    V.end = oldEnd >= V.end ? newEnd : V.end + shift;
  }
}

/**
 * The box: ``text`` (the whole text recognised so far) replaces the dictation's span, with
 * the caret and the undo history kept (setRangeText "preserve"); the caret moves with the text
 * only if it was in it (or at its end). Once the person has edited inside the span, the text
 * there is theirs: it is never rewritten, and only what the recogniser adds after what it had
 * written (a later partial or the final that extends it) is put at the span's end; a revision
 * of the words they may have corrected is left out. The least surprising: nothing they typed
 * changes under their hands, and words said after their edit are not lost.
 */
function writeDictation(text) {
  const box = ui.input;
  voiceEdited(); // a change no input event told of
  let [from, to, piece] = [V.start, V.end, ""];
  if (!V.owned) {
    const before = box.value.slice(0, from);
    piece = joinDictation(before, text).slice(before.length);
  } else if (text.length > V.text.length && text.startsWith(V.text) && V.end > V.start) {
    from = to = V.end;
    piece = text.slice(V.text.length);
  } else {
    return;
  }
  V.text = text;
  // The caret in the rewritten text, or at its end (at its start only while it is empty): it
  // follows the text. Owned, only the end is written to: a caret there follows, others stay.
  const caret = box.selectionStart === box.selectionEnd ? box.selectionStart : -1;
  const follow = V.owned ? caret === to : caret >= 0 && (caret > from || from === to) && caret >= from && caret <= to;
  if (box.value.slice(from, to) !== piece) box.setRangeText(piece, from, to, "preserve");
  V.end = from + piece.length;
  V.value = box.value;
  if (follow) box.setSelectionRange(V.end, V.end);
  autosize();
  if (follow && V.end === box.value.length) box.scrollTop = box.scrollHeight;
}

/** A note above the box after a dictation (null: none), said by the live region too. */
function voiceNote(msg) {
  V.note = msg;
  syncUI();
  if (msg) announce(say(msg));
}

const clock = (s) => `${Math.floor(s / 60)}:${String(Math.floor(s % 60)).padStart(2, "0")}`;

/** The microphone is open (or opening) for a dictation: the button and Escape stop it. */
const listening = () => V.state === "opening" || V.state === "recording";

/** The microphone button and the line above the box. */
function paintVoice() {
  const on = listening();
  ui.voice.hidden = !V.offer && V.state === "idle";
  ui.voice.setAttribute("aria-pressed", String(on));
  ui.voice.dataset.state = V.state; // a test hook
  tr(ui.voice, { title: on ? "dictation.stopTitle" : "dictation.title" });
  ui.voice.disabled = V.state === "idle" && !(S.live && S.status === "live");
  if (V.state === "finishing") ui.voice.setAttribute("aria-disabled", "true"); // focusable still: the focus stays on it
  else ui.voice.removeAttribute("aria-disabled");
  ui.voiceLive.hidden = V.state !== "recording";
  const status = V.state === "opening" ? { key: "dictation.opening" } : V.state === "finishing" ? { key: "dictation.finishing" } : V.state === "idle" ? V.note : null;
  show(ui.voiceNote, status);
  ui.voiceBar.hidden = ui.voiceLive.hidden && ui.voiceNote.hidden;
  paintLevel();
  paintVoiceTime();
}

function paintLevel() {
  ui.voiceLevel.style.transform = `scaleX(${V.state === "recording" ? V.level.toFixed(3) : 0})`; // CSSOM: allowed by the CSP
}

/** How long it has listened, of how long it may; the last 10 s counted down. */
function paintVoiceTime() {
  clearTimeout(V.tick);
  if (V.state !== "recording") return;
  const ms = Date.now() - V.since;
  const elapsed = Math.floor(ms / 1000);
  const left = V.limit ? Math.max(0, Math.ceil(V.limit - ms / 1000)) : Infinity;
  const ending = left <= 10;
  let text = clock(elapsed);
  if (ending) text = t("dictation.left", { count: left });
  else if (V.limit) text = t("dictation.time", { elapsed: clock(elapsed), limit: clock(V.limit) });
  if (ui.voiceTime.textContent !== text) ui.voiceTime.textContent = text;
  ui.voiceTime.classList.toggle("ending", ending);
  V.tick = setTimeout(paintVoiceTime, 1000 - (ms % 1000));
}

// ---------------------------------------------------------------------------- events

ui.form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  submit();
});
ui.input.addEventListener("input", () => {
  if (V.state !== "idle") voiceEdited(); // where the dictated text is now
  autosize();
});
ui.input.addEventListener("keydown", (ev) => {
  if (composing(ev)) return;
  if (ev.key === "Enter" && !ev.shiftKey && !ev.altKey) {
    ev.preventDefault();
    submit();
  } else if (ev.key === "Escape" && listening()) {
    ev.preventDefault();
    stopVoice();
  } else if (ev.key === "Escape" && activeReply()) {
    ev.preventDefault();
    stop();
  }
});
ui.stop.addEventListener("click", stop);
ui.modelPicker.addEventListener("change", pickModel);
ui.older.addEventListener("click", loadOlder);
ui.newChat.addEventListener("click", newChat);
ui.sidebarToggle.addEventListener("click", () => toggleSidebar());
ui.sidebarClose.addEventListener("click", () => toggleSidebar(false));
ui.scrim.addEventListener("click", () => toggleSidebar(false));
ui.bannerClose.addEventListener("click", () => banner(null));
ui.bannerAction.addEventListener("click", () => S.bannerRun && S.bannerRun());
MOBILE.addEventListener("change", syncSidebarMode);
document.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape" && listening() && !ev.defaultPrevented && !composing(ev) && !document.querySelector("dialog[open]")) {
    ev.preventDefault();
    stopVoice(); // wherever the focus is (the microphone button, most often)
    return;
  }
  if (ev.key === "Escape" && ui.app.classList.contains("sidebar-open")) toggleSidebar(false);
});
// The box keeps the focus (and its caret) when the microphone button is clicked.
ui.voice.addEventListener("mousedown", (ev) => ev.preventDefault());
ui.voice.addEventListener("click", () => (V.state === "idle" ? startVoice() : stopVoice()));

ui.messages.addEventListener("click", async (ev) => {
  const button = ev.target instanceof Element ? ev.target.closest("button[data-action]") : null;
  if (!button) return;
  const article = button.closest("article");
  const entry = S.entries.find((e) => e.el === article);
  const action = button.dataset.action;
  if (action === "copy-code") {
    const code = button.closest(".code-block").querySelector("code");
    if (code) flash(button, (await copyText(code.textContent)) ? "code.copied" : "code.copyFailed");
  } else if (action === "copy-reply" && entry) {
    if (await copyText(entry.reply.text)) flash(button, "code.copied");
  } else if (action === "regenerate" || action === "answer") {
    regenerate();
  } else if (action === "retry" && entry) {
    retry(entry);
  } else if (action === "continue" && entry) {
    continueReply(entry);
  } else if (action === "edit" && entry) {
    startEdit(entry);
  } else if ((action === "prev-version" || action === "next-version") && entry) {
    selectVersion(entry, action === "prev-version" ? -1 : 1, button);
  } else if (action === "delete-version" && entry) {
    askDeleteVersion(entry, button);
  }
});

// The conversation menu: settings and export. A menu button: arrows move, Esc closes.
ui.menuButton.addEventListener("click", () => (ui.menu.hidden ? openMenu() : closeMenu(true)));
ui.menuButton.addEventListener("keydown", (ev) => {
  if ((ev.key === "ArrowDown" || ev.key === "ArrowUp") && ui.menu.hidden) {
    ev.preventDefault();
    openMenu(ev.key === "ArrowUp" ? -1 : 0);
  }
});
ui.menu.addEventListener("keydown", (ev) => {
  const items = menuItems();
  const i = items.indexOf(document.activeElement);
  let to = -2;
  if (ev.key === "ArrowDown") to = (i + 1) % items.length;
  else if (ev.key === "ArrowUp") to = (i - 1 + items.length) % items.length;
  else if (ev.key === "Home") to = 0;
  else if (ev.key === "End") to = items.length - 1;
  else if (ev.key === "Escape") {
    ev.preventDefault();
    ev.stopPropagation();
    closeMenu(true);
    return;
  } else if (ev.key === "Tab") {
    closeMenu(false);
    return;
  }
  if (to !== -2 && items.length) {
    ev.preventDefault();
    items[to].focus();
  }
});
ui.menu.addEventListener("click", (ev) => {
  const item = ev.target instanceof Element ? ev.target.closest("button[data-menu]") : null;
  if (!item || item.disabled) return;
  const what = item.dataset.menu;
  if (what === "settings") {
    closeMenu(false);
    openSettings();
    return;
  }
  closeMenu(true);
  if (what === "export-md") exportConversation("markdown", "branch");
  else if (what === "export-json") exportConversation("json", "branch");
  else if (what === "export-tree") exportConversation("json", "tree");
});
document.addEventListener("pointerdown", (ev) => {
  if (!ui.menu.hidden && !(ev.target instanceof Node && ui.menuWrap.contains(ev.target))) closeMenu(false);
});
ui.settingsForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  saveSettings();
});
ui.settingsCancel.addEventListener("click", () => ui.settings.close());
ui.settingsPrompt.addEventListener("input", () => show(ui.settingsError, null));
ui.settings.addEventListener("close", () => {
  S.settingsReq = null;
  if (ui.menuButton.isConnected) ui.menuButton.focus();
});

ui.convSearch.addEventListener("input", onSearch);
ui.convMore.addEventListener("click", () => listConversations({ more: true }));

ui.convList.addEventListener("click", (ev) => {
  const target = ev.target instanceof Element ? ev.target : null;
  const li = target && target.closest("li[data-conversation-id]");
  if (!li) return;
  const button = target.closest("button[data-action]");
  if (button && button.dataset.action === "rename") startRename(li);
  else if (button && button.dataset.action === "delete") removeConversation(li.dataset.conversationId);
  else if (target.closest("a.conv-open")) {
    ev.preventDefault();
    const id = li.dataset.conversationId;
    setHash(id);
    closeSidebarIfMobile();
    if (id !== S.conv || !S.live) open(id);
  }
});

convs.onChange(renderSidebar);

window.addEventListener("hashchange", () => {
  const id = routeTarget();
  if (id && id !== S.conv) open(id, { list: true });
});
window.addEventListener("online", () => {
  if (S.socket && !S.socket.open) reconnectNow();
});
window.addEventListener("offline", () => setStatus("offline"));
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && S.socket && !S.socket.open && !S.socket.stopped && S.socket.retryAt) {
    S.socket.connect(); // back to the page: do not wait out the backoff
  }
});
window.addEventListener("pagehide", () => {
  // The microphone and the dictation go with the page (its socket stops here, so no onClose
  // ends it): a page restored from the back/forward cache comes back idle, and says why.
  if (V.state !== "idle") voiceDropped("dictation.away", "dictation.awayEmpty");
  if (S.socket) S.socket.stop();
});
window.addEventListener("pageshow", (ev) => {
  if (ev.persisted && S.socket) reconnectNow();
});

function wsUrl(configured) {
  if (typeof configured === "string" && configured) {
    try {
      const u = new URL(configured, location.href);
      if (u.protocol === "http:") u.protocol = "ws:";
      else if (u.protocol === "https:") u.protocol = "wss:";
      if (u.protocol === "ws:" || u.protocol === "wss:") return u.href;
    } catch {
      /* fall back to same origin */
    }
  }
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/chat`;
}

/** Who the page is signed in as (not shown for the anonymous modes). */
function showWho(m) {
  const named = typeof m.subject === "string" && !/^anon(ymous)?(:|$)/.test(m.subject);
  ui.who.hidden = !named;
  if (named) tr(ui.who, { text: "who" }, { name: typeof m.name === "string" && m.name ? m.name : m.subject });
}

/** The language switch: each language named in itself. */
function showLanguages() {
  const options = languages().map(({ code, name }) => {
    const o = el("option", "", name);
    o.value = code;
    o.lang = code;
    return o;
  });
  ui.language.replaceChildren(...options);
  ui.language.value = language();
}

/** The language changed (here or in another tab): every text the page wrote is written
 * again; the conversation (messages, a streaming reply, the composer) is left as it is. */
function relabel() {
  ui.language.value = language();
  translate(regenerateButton);
  translate(answerButton);
  paintStatus();
  paintBanner();
  for (const [node, msg] of said) node.textContent = say(msg);
  renderSidebar();
  setTitle();
  for (const e of S.entries) paint(e);
  syncUI();
}

export async function start() {
  translate(document);
  showLanguages();
  ui.language.addEventListener("change", () => setLanguage(ui.language.value));
  onLanguage(relabel);
  setStatus("connecting");
  syncSidebarMode();
  const linked = routeTarget();
  if (linked) {
    S.target = linked;
    S.listOnReady = true; // listed by its ready, not before: an unused chat that is gone never was
  } else {
    S.target = convs.current;
  }
  renderSidebar();
  let cfg = null;
  try {
    const r = await fetch("config.json"); // preloaded by index.html; served no-cache
    if (r.ok) cfg = await r.json();
  } catch {
    cfg = null;
  }
  if (cfg && typeof cfg.model === "string" && cfg.model) ui.modelInfo.textContent = cfg.model;
  S.socket = new Socket(wsUrl(cfg && typeof cfg === "object" ? cfg.ws_url : null), {
    open: onOpen,
    frame: onFrame,
    close: onClose,
    waiting: () => setStatus("offline"),
  });
  S.cred = new Credential(cfg && typeof cfg === "object" ? cfg.auth : null, askToken);
  await signIn(null);
  focusComposer();
}
