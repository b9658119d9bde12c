// Markdown → sanitised DOM.
//
// Two independent barriers keep model output from executing:
//   1. markdown-it runs with raw HTML off: any `<tag>` in the text comes out escaped,
//      and links/images pass only http(s) and mailto URLs (validateLink).
//   2. DOMPurify then sanitises that HTML with a short allow-list of tags and
//      attributes (no style, no event handlers, no img, no button, no form) before
//      anything reaches the live DOM.
// The code-block header (language + Copy) and table wrappers are added after
// sanitising, with createElement, so the allow-list stays minimal; their labels carry
// i18n keys (data-* attributes, which DOMPurify never lets model output set).

import MarkdownIt from "markdown-it";
import DOMPurify from "dompurify";
import hljs from "highlight.js/lib/core";
import bash from "highlight.js/lib/languages/bash";
import c from "highlight.js/lib/languages/c";
import cpp from "highlight.js/lib/languages/cpp";
import css from "highlight.js/lib/languages/css";
import diff from "highlight.js/lib/languages/diff";
import go from "highlight.js/lib/languages/go";
import java from "highlight.js/lib/languages/java";
import javascript from "highlight.js/lib/languages/javascript";
import json from "highlight.js/lib/languages/json";
import plaintext from "highlight.js/lib/languages/plaintext";
import python from "highlight.js/lib/languages/python";
import rust from "highlight.js/lib/languages/rust";
import sql from "highlight.js/lib/languages/sql";
import typescript from "highlight.js/lib/languages/typescript";
import xml from "highlight.js/lib/languages/xml";
import yaml from "highlight.js/lib/languages/yaml";
import { tr } from "./i18n.js";

const LANGUAGES = { bash, c, cpp, css, diff, go, java, javascript, json, plaintext, python, rust, sql, typescript, xml, yaml };
for (const [name, language] of Object.entries(LANGUAGES)) hljs.registerLanguage(name, language);
hljs.registerAliases(["sh", "shell", "zsh", "console", "shellsession"], { languageName: "bash" });
hljs.registerAliases(["text", "txt", "plain", "output"], { languageName: "plaintext" });
hljs.registerAliases(["jsonc", "json5"], { languageName: "json" });

const SAFE_URL = /^(?:https?:|mailto:)/i;
const LANG_NAME = /^[\w+#.-]{1,32}$/;

// Highlighting is the costly part of a render. While a reply streams, every block but
// the last one is unchanged between frames, so results are cached (small LRU).
const HL_CACHE_MAX = 64;
const hlCache = new Map();

function highlight(code, language) {
  const key = `${language}\u0000${code}`;
  let html = hlCache.get(key);
  if (html === undefined) {
    html = hljs.highlight(code, { language, ignoreIllegals: true }).value;
    if (hlCache.size >= HL_CACHE_MAX) hlCache.delete(hlCache.keys().next().value);
  } else {
    hlCache.delete(key);
  }
  hlCache.set(key, html);
  return html;
}

const md = new MarkdownIt({ html: false, linkify: true, typographer: false, breaks: false });
md.linkify.set({ fuzzyLink: false });
md.validateLink = (url) => SAFE_URL.test(url.trim());

md.renderer.rules.fence = (tokens, idx) => {
  const token = tokens[idx];
  const info = token.info ? md.utils.unescapeAll(token.info).trim() : "";
  const word = info.split(/\s+/)[0].toLowerCase();
  const lang = LANG_NAME.test(word) ? word : "";
  const known = lang && hljs.getLanguage(lang) ? lang : "plaintext";
  const cls = `hljs language-${lang || "plaintext"}`;
  return `<pre><code class="${md.utils.escapeHtml(cls)}">${highlight(token.content, known)}</code></pre>\n`;
};

// Images never load (the page's CSP allows none from elsewhere, and they could track
// the reader): an image becomes a link to it, labelled with its alt text.
md.renderer.rules.image = (tokens, idx, options, env, self) => {
  const token = tokens[idx];
  const src = token.attrGet("src") || "";
  const alt = self.renderInlineAsText(token.children || [], options, env) || src;
  if (!SAFE_URL.test(src)) return md.utils.escapeHtml(alt);
  return `<a href="${md.utils.escapeHtml(src)}">${md.utils.escapeHtml(alt)}</a>`;
};

// Table alignment arrives as style="text-align:…", which the CSP (style-src 'self')
// would refuse: turn it into a class.
md.core.ruler.push("align_classes", (state) => {
  for (const token of state.tokens) {
    if (token.type !== "th_open" && token.type !== "td_open") continue;
    const style = token.attrGet("style");
    if (!style) continue;
    token.attrs = token.attrs.filter(([name]) => name !== "style");
    const m = /text-align:\s*(left|center|right)/.exec(style);
    if (m) token.attrJoin("class", `align-${m[1]}`);
  }
});

const PURIFY = {
  ALLOWED_TAGS: [
    "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
    "li", "ol", "p", "pre", "s", "span", "strong", "sub", "sup", "table", "tbody", "td",
    "th", "thead", "tr", "ul",
  ],
  ALLOWED_ATTR: ["href", "title", "class", "start"],
  ALLOWED_URI_REGEXP: SAFE_URL,
  ALLOW_DATA_ATTR: false,
  ALLOW_ARIA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.nodeName !== "A") return;
  const href = node.getAttribute("href");
  if (href && SAFE_URL.test(href)) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  } else {
    node.removeAttribute("href");
  }
});

/** ``html`` from markdown-it, sanitised, with code-block headers and table wrappers. */
function sanitize(html) {
  const frag = DOMPurify.sanitize(html, PURIFY);
  decorate(frag);
  return frag;
}

/**
 * A container showing Markdown that keeps changing (a streaming reply).
 *
 * Each render parses the whole text (cheap) but renders it block by block: the leading
 * top-level blocks whose HTML did not change keep their DOM nodes, and only the blocks
 * from the first change on are sanitised and replaced. While a reply streams that is
 * its last block or two, so the cost of a frame does not grow with the reply, and
 * selection, focus and "Copied" states in earlier blocks survive.
 */
export class MarkdownView {
  constructor(container) {
    this.el = container;
    this.blocks = []; // [{html, nodes}]
  }

  render(text) {
    const env = {};
    const tokens = md.parse(text, env);
    const htmls = [];
    let start = 0;
    let level = 0;
    for (let i = 0; i < tokens.length; i++) {
      level += tokens[i].nesting;
      if (level === 0) {
        htmls.push(md.renderer.render(tokens.slice(start, i + 1), md.options, env));
        start = i + 1;
      }
    }
    let keep = 0;
    while (keep < htmls.length && keep < this.blocks.length && this.blocks[keep].html === htmls[keep]) keep++;
    for (const block of this.blocks.splice(keep)) for (const node of block.nodes) node.remove();
    for (let i = keep; i < htmls.length; i++) {
      const frag = sanitize(htmls[i]);
      this.blocks.push({ html: htmls[i], nodes: Array.from(frag.childNodes) });
      this.el.append(frag);
    }
  }
}

function decorate(root) {
  for (const pre of root.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    const m = code ? /(?:^|\s)language-([\w+#.-]{1,32})/.exec(code.className) : null;
    const lang = m ? m[1] : "text";
    const block = document.createElement("div");
    block.className = "code-block";
    const head = document.createElement("div");
    head.className = "code-head";
    const plain = lang === "plaintext" || lang === "text";
    const label = document.createElement("span");
    label.className = "code-lang";
    if (plain) tr(label, { text: "code.plain" });
    else label.textContent = lang;
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy";
    copy.dataset.action = "copy-code";
    tr(copy, { text: "code.copy", aria: plain ? "code.copyPlain" : "code.copyLabel" }, plain ? null : { lang });
    head.append(label, copy);
    pre.replaceWith(block);
    pre.tabIndex = 0; // a scrollable region must be reachable by keyboard
    block.append(head, pre);
  }
  for (const table of root.querySelectorAll("table")) {
    const wrap = document.createElement("div");
    wrap.className = "table-wrap";
    wrap.tabIndex = 0;
    table.replaceWith(wrap);
    wrap.append(table);
  }
}
