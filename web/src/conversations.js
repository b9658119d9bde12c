// The user's conversations, kept in this browser only (localStorage).
// The gateway knows conversations by id; titles come from its `ready` frames and are
// stored here so the list needs no connection. Rename and delete are local: delete
// only forgets the id.

const LIST_KEY = "gateway.conversations.v1";
const CURRENT_KEY = "gateway.current.v1";
const LEGACY_KEY = "gateway.conversation"; // the v1 page's single id
const MAX_ITEMS = 200;
const ID = /^[\w-]{1,128}$/;

export const isConversationId = (id) => typeof id === "string" && ID.test(id);

/** A user message as the gateway titles it: whitespace collapsed, cut to 80 characters. */
export function titleFrom(text) {
  const t = String(text).split(/\s+/).filter(Boolean).join(" ");
  return t.length > 80 ? `${t.slice(0, 79)}…` : t;
}

function read(key) {
  try {
    return localStorage.getItem(key);
  } catch {
    return null; // storage disabled: the page still works, it just forgets
  }
}

function write(key, value) {
  try {
    if (value == null) localStorage.removeItem(key);
    else localStorage.setItem(key, value);
  } catch {
    /* storage full or disabled */
  }
}

export class Conversations {
  constructor() {
    this.items = [];
    this.listeners = new Set();
    this.reload();
    const legacy = read(LEGACY_KEY);
    if (isConversationId(legacy)) {
      this.touch(legacy, {});
      if (!this.current) this.setCurrent(legacy);
      write(LEGACY_KEY, null);
    }
    window.addEventListener("storage", (ev) => {
      if (ev.key === LIST_KEY || ev.key === null) {
        this.reload();
        this.emit();
      }
    });
  }

  reload() {
    let items = [];
    try {
      const parsed = JSON.parse(read(LIST_KEY) || "[]");
      if (Array.isArray(parsed)) items = parsed;
    } catch {
      items = [];
    }
    this.items = items
      .filter((c) => c && isConversationId(c.id))
      .map((c) => ({
        id: c.id,
        title: typeof c.title === "string" ? c.title : "",
        renamed: c.renamed === true,
        updated: Number.isFinite(c.updated) ? c.updated : 0,
      }));
  }

  get current() {
    const id = read(CURRENT_KEY);
    return isConversationId(id) ? id : null;
  }

  setCurrent(id) {
    write(CURRENT_KEY, isConversationId(id) ? id : null);
  }

  onChange(fn) {
    this.listeners.add(fn);
  }

  emit() {
    for (const fn of this.listeners) fn(this.items);
  }

  save() {
    this.items.sort((a, b) => b.updated - a.updated);
    if (this.items.length > MAX_ITEMS) this.items.length = MAX_ITEMS;
    write(LIST_KEY, JSON.stringify(this.items));
    this.emit();
  }

  get(id) {
    return this.items.find((c) => c.id === id) || null;
  }

  /**
   * Add ``id`` (or update it). ``title`` is the gateway's title: it never overwrites a
   * local rename. ``bump`` moves it to the top (new activity).
   */
  touch(id, { title, bump = false } = {}) {
    if (!isConversationId(id)) return;
    let item = this.get(id);
    if (!item) {
      item = { id, title: "", renamed: false, updated: Date.now() };
      this.items.push(item);
    }
    if (typeof title === "string" && title && !item.renamed) item.title = title;
    if (bump) item.updated = Date.now();
    this.save();
  }

  rename(id, title) {
    const item = this.get(id);
    if (!item) return;
    const t = titleFrom(title);
    item.title = t;
    item.renamed = t !== "";
    this.save();
  }

  remove(id) {
    this.items = this.items.filter((c) => c.id !== id);
    if (this.current === id) this.setCurrent(null);
    this.save();
  }
}
