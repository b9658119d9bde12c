// The user's conversations: the gateway's list (`conversations` frames) is the truth,
// and a copy is kept in this browser (localStorage) so the list shows without a
// connection. A rename or delete made offline waits here (`renamed`, `deleted`) until
// the next connection sends it.

const LIST_KEY = "gateway.conversations.v1";
const DELETED_KEY = "gateway.deleted.v1";
const CURRENT_KEY = "gateway.current.v1";
const SUBJECT_KEY = "gateway.subject.v1"; // whose list this browser keeps
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
    this.deleted = new Set(); // ids deleted here, not yet on the gateway
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
    try {
      const gone = JSON.parse(read(DELETED_KEY) || "[]");
      this.deleted = new Set(Array.isArray(gone) ? gone.filter(isConversationId) : []);
    } catch {
      this.deleted = new Set();
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
    write(DELETED_KEY, this.deleted.size ? JSON.stringify([...this.deleted]) : null);
    this.emit();
  }

  /**
   * The gateway's list: its first page replaces the list (``append``: a later page
   * extends it). The current conversation stays even if the gateway has not stored it
   * yet; a rename made offline keeps its title until it is sent.
   */
  fromGateway(items, { append = false } = {}) {
    const fresh = items
      .filter((c) => c && isConversationId(c.id) && !this.deleted.has(c.id))
      .map((c) => {
        const mine = this.get(c.id);
        const pending = mine && mine.renamed;
        return {
          id: c.id,
          title: pending ? mine.title : typeof c.title === "string" ? c.title : "",
          renamed: !!pending,
          updated: Number.isFinite(c.updated_at) ? Math.round(c.updated_at * 1000) : 0,
        };
      });
    const ids = new Set(fresh.map((c) => c.id));
    const kept = this.items.filter((c) => !ids.has(c.id) && (append || c.id === this.current));
    this.items = [...kept, ...fresh];
    this.save();
  }

  /** The gateway took the new title: nothing waits any more. */
  renamedOnGateway(id, title) {
    const item = this.get(id);
    if (!item) return;
    item.title = title;
    item.renamed = false;
    this.save();
  }

  deletedOnGateway(id) {
    this.deleted.delete(id);
    this.save();
  }

  /**
   * The gateway says who this is: a list kept for someone else (another person signed
   * in on this browser) is dropped, with what they left waiting, before anything is sent.
   */
  forSubject(subject) {
    if (typeof subject !== "string" || read(SUBJECT_KEY) === subject) return;
    const first = read(SUBJECT_KEY) === null;
    write(SUBJECT_KEY, subject);
    if (first) return; // the first sign-in here: the list is theirs (kept from before subjects)
    this.items = [];
    this.deleted = new Set();
    this.setCurrent(null);
    this.save();
  }

  /** Renames and deletes made while offline, to send now. */
  get pending() {
    return { renames: this.items.filter((c) => c.renamed), deletes: [...this.deleted] };
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

  /** Forget ``id``; ``sync``: the person deleted it here, so the gateway deletes it too. */
  remove(id, { sync = false } = {}) {
    this.items = this.items.filter((c) => c.id !== id);
    if (sync) this.deleted.add(id);
    if (this.current === id) this.setCurrent(null);
    this.save();
  }
}
