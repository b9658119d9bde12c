// The credential the page sends in its first `hello`, by the gateway's [auth] mode
// (told in /config.json; docs/protocol.md "Authentication"):
//
//   none    a random key of this browser, kept in local storage: its own anon: subject
//   tokens  a token the person types once, kept in session storage (this tab only)
//   jwt     a token fetched from [auth] token_url with the page's cookies, renewed
//   proxy   nothing: the reverse proxy signed the person in
//
// A credential never goes into a URL.

const ANON_KEY = "gateway.anonKey";
const TOKEN_KEY = "gateway.token";
const RENEW_MARGIN_S = 30; // a cached JWT this close to its exp is fetched again

function randomKey() {
  const bytes = new Uint8Array(32);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function storage(kind) {
  try {
    return kind === "local" ? window.localStorage : window.sessionStorage;
  } catch {
    return null; // storage disabled: the credential lives as long as the page
  }
}

/** A JWT's exp (epoch seconds), read without checking it (the gateway does), or null. */
export function jwtExpiry(token) {
  try {
    const body = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(body)).exp;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

export class Credential {
  /**
   * @param {{mode?: string, token_url?: string} | null} auth from /config.json
   * @param {(error: object | null) => Promise<string | null>} ask shows the sign-in dialog (error: why it asks again)
   */
  constructor(auth, ask) {
    this.mode = auth && typeof auth.mode === "string" ? auth.mode : "none";
    this.tokenUrl = auth && typeof auth.token_url === "string" ? auth.token_url : "";
    this.ask = ask;
    this.memory = null; // when storage is unavailable, and the JWT in use
  }

  /** Whether the person signs in on this page (a token dialog). */
  get asks() {
    return this.mode === "tokens";
  }

  /** The credential for the next connection's `hello`, or null (proxy; or not signed in). */
  async get(error = null) {
    if (this.mode === "none") return this.anonKey();
    if (this.mode === "tokens") return this.token(error);
    if (this.mode === "jwt") return this.jwt();
    return null;
  }

  anonKey() {
    const store = storage("local");
    let key = (store && store.getItem(ANON_KEY)) || this.memory;
    if (!key) {
      key = randomKey();
      if (store) store.setItem(ANON_KEY, key);
    }
    this.memory = key;
    return key;
  }

  async token(error) {
    const store = storage("session");
    const kept = (store && store.getItem(TOKEN_KEY)) || this.memory;
    if (kept && !error) return kept;
    const typed = await this.ask(error);
    if (!typed) return null;
    this.memory = typed;
    if (store) store.setItem(TOKEN_KEY, typed);
    return typed;
  }

  async jwt() {
    const exp = this.memory ? jwtExpiry(this.memory) : null;
    if (this.memory && (exp === null || exp - Date.now() / 1000 > RENEW_MARGIN_S)) return this.memory;
    return this.renew();
  }

  /** A fresh JWT from token_url (JSON {token} or the token as text), or null. */
  async renew() {
    if (!this.tokenUrl) return null;
    try {
      const r = await fetch(this.tokenUrl, { credentials: "include", cache: "no-store" });
      if (!r.ok) return null;
      const text = (await r.text()).trim();
      let token = text;
      if (text.startsWith("{")) token = JSON.parse(text).token;
      this.memory = typeof token === "string" && token ? token : null;
    } catch {
      this.memory = null;
    }
    return this.memory;
  }

  /** The credential was refused: forget it, so the next `get` asks or fetches anew. */
  forget() {
    if (this.mode === "tokens") {
      const store = storage("session");
      if (store) store.removeItem(TOKEN_KEY);
    }
    if (this.mode !== "none") this.memory = null;
  }
}
