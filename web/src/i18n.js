// The page's texts in the reader's language. Each file in i18n/ is one language's
// catalogue, named by its tag (en.js, zh-CN.js; build.mjs bundles them all, so adding a
// language is adding a file); English is the reference and the fallback.
//
// The language: the one chosen with the page's switch (kept in localStorage), else the
// first of navigator.languages that a catalogue matches (by tag, then by its language
// alone: any zh* is zh-CN), else English. Numbers, plurals, dates and relative times go
// through Intl. Elements carry their keys (data-i18n, data-i18n-aria-label,
// data-i18n-title, data-i18n-placeholder, data-i18n-args), so a change of language
// relabels the DOM in place. Texts only ever reach textContent and attributes.

import catalogues from "i18n:catalogues";

const STORE_KEY = "gateway.language.v1";
const FALLBACK = "en";
const ATTRS = { "aria-label": "i18nAriaLabel", title: "i18nTitle", placeholder: "i18nPlaceholder" };
const KEYED = "[data-i18n],[data-i18n-aria-label],[data-i18n-title],[data-i18n-placeholder]";

let lang = FALLBACK;
let cat = catalogues[FALLBACK];
const fmt = {};
const listeners = new Set();

function stored() {
  try {
    return localStorage.getItem(STORE_KEY);
  } catch {
    return null;
  }
}

/** The catalogue for a BCP 47 tag: by the whole tag, else by its first subtag. */
export function match(tag) {
  if (typeof tag !== "string" || !tag) return null;
  const codes = Object.keys(catalogues);
  const low = tag.toLowerCase();
  const exact = codes.find((c) => c.toLowerCase() === low);
  if (exact) return exact;
  const base = low.split("-")[0];
  return codes.find((c) => c.toLowerCase().split("-")[0] === base) || null;
}

function preferred() {
  const chosen = match(stored());
  if (chosen) return chosen;
  const tags = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language];
  for (const tag of tags) {
    const found = match(tag);
    if (found) return found;
  }
  return FALLBACK;
}

/** The languages offered: [{code, name}], each named in itself. */
export function languages() {
  return Object.keys(catalogues).map((code) => ({ code, name: catalogues[code]["language.name"] }));
}

export const language = () => lang;

function use(code) {
  lang = code;
  cat = catalogues[code];
  fmt.number = new Intl.NumberFormat(code);
  fmt.plural = new Intl.PluralRules(code);
  fmt.relative = new Intl.RelativeTimeFormat(code, { numeric: "auto" });
  fmt.seconds = new Intl.RelativeTimeFormat(code, { numeric: "always" });
  fmt.date = new Intl.DateTimeFormat(code, { dateStyle: "medium", timeStyle: "short" });
  fmt.day = new Intl.DateTimeFormat(code, { dateStyle: "medium" });
  document.documentElement.lang = code;
}

/** Switch to ``code`` (remembered unless ``save`` is false) and relabel the page. */
export function setLanguage(code, { save = true } = {}) {
  const found = match(code) || FALLBACK;
  if (save) {
    try {
      localStorage.setItem(STORE_KEY, found);
    } catch {
      /* storage disabled: the choice lasts as long as the page */
    }
  }
  if (found === lang && document.documentElement.lang === found) return;
  use(found);
  translate(document);
  for (const fn of listeners) fn(found);
}

export function onLanguage(fn) {
  listeners.add(fn);
}

/** The text of ``key``; ``params`` fill its {names} (numbers formatted), ``count`` picks the plural. */
export function t(key, params = {}) {
  let text = Object.hasOwn(cat, key) ? cat[key] : catalogues[FALLBACK][key];
  if (text === undefined) return key;
  if (typeof text === "object") text = text[fmt.plural.select(Number(params.count) || 0)] || text.other;
  return text.replace(/\{(\w+)\}/g, (all, name) => {
    if (!Object.hasOwn(params, name)) return all;
    const v = params[name];
    return typeof v === "number" ? fmt.number.format(v) : String(v);
  });
}

export const formatNumber = (n, options) => (options ? new Intl.NumberFormat(lang, options) : fmt.number).format(n);

/** A countdown: "in 5 seconds", "5秒钟后"; from 60 s on in minutes (rounded up: never
 * sooner than it is), "in 2 minutes", "2分钟后". */
export const inTime = (s) => (s >= 60 ? fmt.seconds.format(Math.ceil(s / 60), "minute") : fmt.seconds.format(s, "second"));

/** A date and time ("Dec 7, 2026, 9:30 AM", "2026年12月7日 09:30"). */
export const formatDate = (ms) => fmt.date.format(new Date(ms));

// A unit, its seconds, and how many of it (rounded) make the next unit.
const UNITS = [["minute", 60, 60], ["hour", 3600, 24], ["day", 86400, Infinity]];

/** How long ago ``ms`` was: "2 minutes ago", "2分钟前", "yesterday"; a date after a week.
 * The unit is chosen after rounding: 59.6 minutes is "1 hour ago", not "60 minutes ago". */
export function ago(ms, now = Date.now()) {
  const s = Math.round((now - ms) / 1000);
  if (s >= 7 * 86400) return fmt.day.format(new Date(ms));
  if (s < 60) return fmt.relative.format(0, "second");
  let i = 0;
  while (Math.round(s / UNITS[i][1]) >= UNITS[i][2]) i++;
  return fmt.relative.format(-Math.round(s / UNITS[i][1]), UNITS[i][0]);
}

/**
 * Label ``node`` with keys: ``text`` (its textContent), ``aria`` (aria-label), ``title``,
 * ``placeholder``; ``params`` fill them all (undefined: the node's own stay). Kept on the
 * node, so it follows the language.
 */
export function tr(node, { text, aria, title, placeholder } = {}, params = undefined) {
  if (text) node.dataset.i18n = text;
  if (aria) node.dataset.i18nAriaLabel = aria;
  if (title) node.dataset.i18nTitle = title;
  if (placeholder) node.dataset.i18nPlaceholder = placeholder;
  if (params) node.dataset.i18nArgs = JSON.stringify(params);
  else if (params === null) delete node.dataset.i18nArgs;
  apply(node);
  return node;
}

function apply(node) {
  let params = {};
  if (node.dataset.i18nArgs) {
    try {
      params = JSON.parse(node.dataset.i18nArgs);
    } catch {
      params = {};
    }
  }
  if (node.dataset.i18n) {
    const text = t(node.dataset.i18n, params);
    if (node.textContent !== text) node.textContent = text;
  }
  for (const [attr, prop] of Object.entries(ATTRS)) {
    if (node.dataset[prop]) node.setAttribute(attr, t(node.dataset[prop], params));
  }
}

/** Relabel every keyed element in ``root`` (a document, or an element not in it). */
export function translate(root) {
  if (root.nodeType === 1 && root.matches(KEYED)) apply(root);
  for (const node of root.querySelectorAll(KEYED)) apply(node);
}

use(preferred());
window.addEventListener("storage", (ev) => {
  if (ev.key === STORE_KEY && match(ev.newValue)) setLanguage(ev.newValue, { save: false }); // chosen in another tab
});
