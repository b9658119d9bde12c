"""The chat page's message catalogues (web/src/i18n/*.js), read without Node, and a lint
over the page's sources: every text the page shows comes from a catalogue.

A catalogue is ``export default { "key": "text {name}", "key2": { one: "…", other: "…" } }``
with one entry per line; English (en.js) is the reference.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "web" / "src"
I18N = SRC / "i18n"
PLACEHOLDER = re.compile(r"\{(\w+)\}")
# CLDR's plural categories for cardinals, of the languages with a catalogue. A new
# language's file must add its row here (Intl.PluralRules(tag).resolvedOptions()).
PLURALS = {"en": {"one", "other"}, "zh-CN": {"other"}}

Text = str | dict[str, str]


def read_catalogue(path: Path) -> dict[str, Text]:
    """A catalogue file as a dict: its object literal made JSON (comments out, bare plural
    keys quoted, trailing commas dropped)."""
    source = path.read_text(encoding="utf-8")
    m = re.search(r"^export default (\{.*\});\s*$", source, re.S | re.M)
    assert m, f"{path.name}: not `export default {{ … }};`"
    body = "\n".join(line for line in m.group(1).splitlines() if not line.strip().startswith("//"))
    body = re.sub(r"([{,]\s*)(zero|one|two|few|many|other)\s*:", r'\1"\2":', body)
    body = re.sub(r",(\s*[}\]])", r"\1", body)
    pairs = json.loads(body, object_pairs_hook=list)
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"{path.name}: a key twice: {sorted({k for k in keys if keys.count(k) > 1})}"
    out: dict[str, Text] = {}
    for key, value in pairs:
        out[key] = dict(value) if isinstance(value, list) else value
    return out


def catalogues() -> dict[str, dict[str, Text]]:
    return {p.stem: read_catalogue(p) for p in sorted(I18N.glob("*.js"))}


def placeholders(text: Text) -> set[str]:
    forms = text.values() if isinstance(text, dict) else [text]
    return {name for form in forms for name in PLACEHOLDER.findall(form)}


def test_english_is_the_reference_and_chinese_is_there() -> None:
    found = catalogues()
    assert {"en", "zh-CN"} <= set(found)
    assert len(found["en"]) > 100
    for tag, cat in found.items():
        assert isinstance(cat.get("language.name"), str) and cat["language.name"], f"{tag}: its own name"
    assert found["zh-CN"]["language.name"] == "简体中文"


@pytest.mark.parametrize("tag", sorted(p.stem for p in I18N.glob("*.js") if p.stem != "en"))
def test_a_catalogue_has_exactly_the_english_keys_and_placeholders(tag: str) -> None:
    en, cat = read_catalogue(I18N / "en.js"), read_catalogue(I18N / f"{tag}.js")
    assert sorted(set(en) - set(cat)) == [], f"{tag}: missing"
    assert sorted(set(cat) - set(en)) == [], f"{tag}: not in en.js"
    for key, text in en.items():
        assert placeholders(cat[key]) == placeholders(text), f"{tag}: {key} has {cat[key]!r}, en.js {text!r}"
        assert isinstance(cat[key], dict) == isinstance(text, dict), f"{tag}: {key}: plural in one, not the other"
        forms = cat[key].values() if isinstance(cat[key], dict) else [cat[key]]
        assert all(isinstance(f, str) and f.strip() for f in forms), f"{tag}: {key} is empty"


@pytest.mark.parametrize("tag", sorted(p.stem for p in I18N.glob("*.js")))
def test_plurals_have_the_categories_of_their_language(tag: str) -> None:
    assert tag in PLURALS, f"{tag}: add its plural categories to PLURALS"
    plural = {k: v for k, v in read_catalogue(I18N / f"{tag}.js").items() if isinstance(v, dict)}
    assert plural, "the reference has plurals: every language has them"
    for key, forms in plural.items():
        assert set(forms) == PLURALS[tag], f"{tag}: {key} has {sorted(forms)}, the language needs {sorted(PLURALS[tag])}"
        assert "count" in placeholders(forms), f"{tag}: {key}: a plural is chosen by {{count}}"


def test_every_protocol_error_code_has_the_page_s_own_words() -> None:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    table = doc[doc.index("## 4. Errors"):doc.index("### Upstream failures")]
    codes = set(re.findall(r"^\| `(\w+)` \|", table, re.M))
    assert len(codes) >= 14, codes
    en = read_catalogue(I18N / "en.js")
    assert sorted(c for c in codes if f"error.{c}" not in en) == []
    app = (SRC / "app.js").read_text()
    listed = set(re.findall(r'"(\w+)"', app[app.index("const ERROR_CODES"):app.index("]);", app.index("const ERROR_CODES"))]))
    assert listed == codes, "app.js's ERROR_CODES are the protocol's"


# ------------------------------------------------------------------------------ the lint


@dataclass
class Literal:
    line: int
    text: str  # a template's static parts joined by "{}"
    before: str  # the source just before it (what it is assigned or passed to)


BEFORE = 400  # how much source a literal keeps before it: enough for the statement it is in
_REGEX_AFTER = set("(,=:[!&|?{};+-*%<>~^")
_REGEX_WORDS = {"return", "typeof", "case", "of", "in", "do", "else", "void", "delete", "new", "instanceof", "yield", "await"}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0"}


class _Scanner:
    """JavaScript string and template literals, comments and regular expressions skipped."""

    def __init__(self, source: str) -> None:
        self.s = source
        self.i = 0
        self.found: list[Literal] = []

    def line(self, at: int) -> int:
        return self.s.count("\n", 0, at) + 1

    def scan(self, in_template: bool = False) -> None:
        s, depth, last = self.s, 0, ""
        while self.i < len(s):
            c = s[self.i]
            if c.isspace():
                self.i += 1
            elif s.startswith("//", self.i):
                end = s.find("\n", self.i)
                self.i = len(s) if end == -1 else end
            elif s.startswith("/*", self.i):
                self.i = s.index("*/", self.i) + 2
            elif c in "'\"":
                self.string(c)
                last = "str"
            elif c == "`":
                self.template()
                last = "str"
            elif c == "/" and (last in _REGEX_AFTER or last in _REGEX_WORDS or last == ""):
                self.regex()
                last = "re"
            elif c.isalnum() or c in "_$":
                m = re.compile(r"[\w$]+").match(s, self.i)
                assert m
                last = m.group()
                self.i = m.end()
            else:
                if c == "{":
                    depth += 1
                elif c == "}":
                    if in_template and depth == 0:
                        self.i += 1
                        return
                    depth -= 1
                last = c
                self.i += 1

    def string(self, quote: str) -> None:
        start, s, out = self.i, self.s, []
        self.i += 1
        while s[self.i] != quote:
            if s[self.i] == "\\":
                out.append(self.escape())
            else:
                out.append(s[self.i])
                self.i += 1
        self.i += 1
        self.found.append(Literal(self.line(start), "".join(out), s[max(0, start - BEFORE):start]))

    def escape(self) -> str:
        s = self.s
        nxt = s[self.i + 1]
        if nxt == "u":
            m = re.compile(r"u\{([0-9a-fA-F]+)\}|u([0-9a-fA-F]{4})").match(s, self.i + 1)
            assert m
            self.i = m.end()
            return chr(int(m.group(1) or m.group(2), 16))
        self.i += 2
        return _ESCAPES.get(nxt, nxt)

    def template(self) -> None:
        start, s, out = self.i, self.s, []
        self.i += 1
        while s[self.i] != "`":
            if s[self.i] == "\\":
                out.append(self.escape())
            elif s.startswith("${", self.i):
                self.i += 2
                self.scan(in_template=True)
                out.append("{}")
            else:
                out.append(s[self.i])
                self.i += 1
        self.i += 1
        self.found.append(Literal(self.line(start), "".join(out), s[max(0, start - BEFORE):start]))

    def regex(self) -> None:
        s, in_class = self.s, False
        self.i += 1
        while True:
            c = s[self.i]
            if c == "\\":
                self.i += 2
                continue
            if c == "[":
                in_class = True
            elif c == "]":
                in_class = False
            elif c == "/" and not in_class:
                break
            self.i += 1
        self.i += 1
        while self.i < len(s) and s[self.i].isalpha():
            self.i += 1


def js_literals(source: str) -> list[Literal]:
    scanner = _Scanner(source)
    scanner.scan()
    return scanner.found


CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")
KEY_NAMES = {"Enter", "Escape", "Tab", "Home", "End", "ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight"}
ALLOWED = {"noopener noreferrer"}  # a link's rel
# SVG path data: a moveto and its numbers first, then commands and numbers ("M5 12h14").
SVG_PATH = re.compile(r"[Mm]\s*-?[\d.]+[MmLlHhVvCcSsQqTtAaZz0-9.,\s-]*")
# Where a literal becomes text on the page, whatever it looks like: what follows one of
# these in the same statement, outside any call made there (see in_sink).
SINKS = re.compile(
    r"\.(textContent|innerText|innerHTML|title|placeholder|label|alt|ariaLabel)\s*=(?!=)"
    r"|setAttribute\(\s*[\"'](aria-(label|description|roledescription|valuetext|placeholder)"
    r"|title|placeholder|alt|label)[\"']\s*,"
    r"|\bel\(\s*[\"'][^\"']*[\"']\s*,[^,()]*,"
    r"|\.(append|prepend|replaceChildren|after|before)\("
    r"|\b(announce|confirm|alert|prompt)\("
)
_STRINGS = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|`(?:[^`\\]|\\.)*`')


def _outside_calls(between: str) -> bool:
    """``between`` (source from a sink to a literal) stays in one statement and leaves the
    literal outside any call opened in it (grouping parentheses and arrays do not count)."""
    between = _STRINGS.sub('""', between)
    if ";" in between:
        return False
    calls: list[bool] = []
    for i, c in enumerate(between):
        if c in "([":
            calls.append(c == "(" and re.search(r"[\w$)\]]\s*$", between[:i]) is not None)
        elif c in ")]":
            if not calls:
                return False  # the sink's own call closed before the literal
            calls.pop()
    return not any(calls)


def in_sink(before: str) -> bool:
    """Whether a literal after ``before`` is shown by a sink: any part of what is assigned
    (both arms of a ternary, an array joined) or passed, but not an argument of a call made
    there (``b.title = t("key")``)."""
    return any(_outside_calls(before[m.end():]) for m in SINKS.finditer(before))


def page_sources(root: Path = SRC, ext: str = "js") -> list[Path]:
    """The page's source files under ``root``, at any depth, but the catalogues."""
    return sorted(p for p in root.rglob(f"*.{ext}") if root / "i18n" not in p.parents)


def css_classes() -> set[str]:
    """Class names: the stylesheets', and those the page's code selects (``.retry``)."""
    css = "".join(p.read_text() for p in page_sources(ext="css"))
    js = "".join(p.read_text() for p in page_sources())
    return set(re.findall(r"\.([a-zA-Z][\w-]*)", css)) | set(re.findall(r"[\"'`\w]\.([a-z][\w-]*)[\"'`]", js))


def code_token(token: str, classes: set[str]) -> bool:
    """A token of code, not of prose: a CSS class, a hyphenated name, a placeholder, a
    selector (``#id``, ``.class``, ``[attr="…"]``), a key or property path (``status.live``),
    an identifier in camelCase. Punctuation alone does not make one: ``Error:`` is prose."""
    return (
        token in classes
        or token == "{}"
        or re.fullmatch(r"[a-z0-9]+(-([a-z0-9]+|\{\}))+", token) is not None
        or re.match(r"[#.\[]", token) is not None
        or re.fullmatch(r"[a-z]+(\.\w+)+", token) is not None
        or re.fullmatch(r"[a-z]+([A-Z0-9][a-z0-9]*)+", token) is not None
    )


def user_visible(lit: Literal, classes: set[str]) -> str | None:
    """Why ``lit`` looks like text for people (None: it looks like code)."""
    text = re.sub(r"<[^<>]*>", "", lit.text)  # markup is code; what it encloses is not
    if CJK.search(text):
        return "Chinese text"
    if not re.search(r"[A-Za-z]", text):
        return None
    if in_sink(lit.before):
        return "shown on the page"
    if text in ALLOWED or SVG_PATH.fullmatch(text) or re.search(r"matchMedia\(\s*$", lit.before):
        return None
    if text != text.strip():
        return "a piece of a sentence"
    tokens = text.split()
    if len(tokens) > 1:
        return None if all(code_token(t, classes) for t in tokens) else "words"
    if re.fullmatch(r"[A-Z][a-z]+", text) and text not in KEY_NAMES:
        return "a word"
    if re.search(r"[A-Za-z][.…!?]$", text) and not re.fullmatch(r"[\w-]+\.[a-z]{2,4}", text):
        return "a sentence"
    return None


def lint_js(source: str) -> list[str]:
    classes = css_classes()
    out = []
    for lit in js_literals(source):
        why = user_visible(lit, classes)
        if why:
            out.append(f"line {lit.line}: {lit.text!r} ({why})")
    return out


def _css_unescape(text: str) -> str:
    text = re.sub(r"\\([0-9a-fA-F]{1,6})\s?", lambda m: chr(int(m.group(1), 16)), text)
    return re.sub(r"\\(.)", r"\1", text)


def lint_css(source: str) -> list[str]:
    """Text in a stylesheet's ``content:`` (generated content is read out and shown)."""
    source = re.sub(r"/\*.*?\*/", lambda m: re.sub(r"[^\n]", " ", m.group()), source, flags=re.S)
    out = []
    for m in re.finditer(r"(?<![\w-])content\s*:([^;}]*)", source):
        for q in _STRINGS.finditer(m.group(1)):
            text = _css_unescape(q.group()[1:-1])
            if re.search(r"[A-Za-z]", text) or CJK.search(text):
                out.append(f"line {source.count(chr(10), 0, m.start()) + 1}: content {text!r}")
    return out


PRODUCT_TITLE = "LLM Gateway"  # <title> before the page names itself (the catalogue's app.name)
SHOWN_ATTRS = {"aria-label", "aria-description", "title", "placeholder", "alt", "label", "value"}


class _HtmlLint(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.found: list[str] = []
        self.keys: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in {"meta", "link", "img", "input", "br", "hr", "path", "circle", "rect"}:
            self.stack.append(tag)
        for name, value in attrs:
            if name.startswith("data-i18n") and name != "data-i18n-args" and value:
                self.keys.add(value)
            if name in SHOWN_ATTRS and value and re.search(r"[A-Za-z]|" + CJK.pattern, value):
                self.found.append(f"<{tag} {name}={value!r}> at line {self.getpos()[0]}")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        if tag in self.stack:
            while self.stack.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        text = data.strip()
        where = self.stack[-1] if self.stack else ""
        if not text or where in {"script", "style"} or (where == "title" and text == PRODUCT_TITLE):
            return
        if re.search(r"[A-Za-z]|" + CJK.pattern, text):
            self.found.append(f"text {text!r} in <{where}> at line {self.getpos()[0]}")


def lint_html(source: str) -> tuple[list[str], set[str]]:
    parser = _HtmlLint()
    parser.feed(source)
    return parser.found, parser.keys


def test_the_lint_catches_texts_in_code_and_markup() -> None:
    assert lint_js('button.textContent = "Send";')
    assert lint_js('b.setAttribute("aria-label", "close");')
    assert lint_js('banner(`Retrying in ${secs} s.`);')
    assert lint_js('const label = live ? "Thinking…" : "";')
    assert lint_js("const t = 'about ' + n;")
    assert lint_js('note.append(el("span", "note-text", "done"));')
    assert lint_js('x.title = "重试";')
    assert lint_js('announce("saved");')
    # A sink comes first: words that happen to be SVG path letters are shown all the same …
    assert lint_js('button.textContent = "Chat";')
    assert lint_js('x.title = "Last";')
    # … punctuation does not make a sentence code …
    assert lint_js('banner(`Error: ${code}.`);')
    assert lint_js('const m = "Retry (failed).";')
    # … every part of what a sink is given counts, not only what follows it at once …
    assert len(lint_js('x.textContent = ok ? "copied" : "failed";')) == 2
    assert lint_js('x.setAttribute("aria-label", busy ? t("a.b") : "wait");')
    assert lint_js('note.append(icon("retry"), ok ? "done" : "");')
    # … and stylesheets' generated content is text too.
    assert lint_css('.x::after { content: "New"; }')
    assert lint_css(".x::before { content: '\\201C' 'Quote'; }")
    assert lint_css('.x::after { content: "新"; }')
    assert lint_html('<button aria-label="Close"></button>')[0]
    assert lint_html("<p>Your conversations appear here.</p>")[0]
    assert lint_html('<input placeholder="Search">')[0]
    # … and leaves code alone.
    assert not lint_js(
        'const a = el("div", "msg msg-user"); if (ev.key === "Escape") x.dataset.testid = "send";'
        ' q(`[data-conversation-id="${id}"] .conv-open`); t("status.live"); const r = /Mac|iPhone/.test(s) ? "a/b" : 1 / 2;'
        ' // "Not a literal": a comment\n/* "Nor this" */ send({ type: "reply.start", id: `c${n}` });'
        ' b.title = t("status.title", { state: "live" }); x.textContent = ok ? t("code.copied") : "";'
        ' path.setAttribute("d", "M5 12h14"); const icons = { a: ["M20 11a8 8 0 1 0-2.3 5.7", "M4 7h16"] };'
        ' matchMedia("(max-width: 800px)"); x.className = `hljs language-${lang}`; el("span", "msg-note", t("k.v"));'
    )
    assert not lint_css('.a::after { content: ""; } .b::before { content: "\\2022" "\\201C" "·"; justify-content: center; }')
    keyed = '<button data-i18n-aria-label="banner.dismiss"><span data-i18n="conversations.new"></span></button>'
    assert lint_html(keyed) == ([], {"banner.dismiss", "conversations.new"})


def test_the_lint_reads_every_source_but_the_catalogues(tmp_path: Path) -> None:
    for name in ["app.js", "parts/deep/widget.js", "i18n/en.js", "i18n/zh-CN.js", "styles/main.css"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    assert page_sources(tmp_path) == [tmp_path / "app.js", tmp_path / "parts/deep/widget.js"]
    assert page_sources(tmp_path, "css") == [tmp_path / "styles/main.css"]
    assert SRC / "icons.js" in page_sources() and not [p for p in page_sources() if I18N in p.parents]


def _rel(p: Path) -> str:
    return str(p.relative_to(SRC))


@pytest.mark.parametrize("path", page_sources(), ids=_rel)
def test_no_text_for_people_in_the_page_s_code(path: Path) -> None:
    assert lint_js(path.read_text(encoding="utf-8")) == [], f"{_rel(path)}: put these in web/src/i18n/en.js (and every catalogue)"


@pytest.mark.parametrize("path", page_sources(ext="css"), ids=_rel)
def test_no_text_for_people_in_the_page_s_styles(path: Path) -> None:
    assert lint_css(path.read_text(encoding="utf-8")) == [], f"{_rel(path)}: generated content with text; put it in the markup, keyed"


def test_no_text_for_people_in_index_html() -> None:
    found, keys = lint_html((SRC / "index.html").read_text(encoding="utf-8"))
    assert found == [], "give these elements data-i18n keys (data-i18n, data-i18n-aria-label, -title, -placeholder)"
    assert len(keys) > 30


def test_the_keys_the_page_uses_exist_and_every_key_is_used() -> None:
    en = read_catalogue(I18N / "en.js")
    spaces = {k.split(".")[0] for k in en}
    literals = {lit.text for p in page_sources() for lit in js_literals(p.read_text(encoding="utf-8"))}
    _, html_keys = lint_html((SRC / "index.html").read_text(encoding="utf-8"))
    # A literal shaped like a key in one of the catalogue's namespaces is a key; a template
    # like `error.{}` names every key under it.
    used = {x for x in literals | html_keys if x in en or (re.fullmatch(r"[a-z]+(\.[\w]+)+", x) and x.split(".")[0] in spaces)}
    prefixes = {x[:-3] for x in literals if re.fullmatch(r"[a-z]+\.\{\}", x)}
    assert prefixes == {"status", "error"}, prefixes
    assert sorted(used - set(en)) == [], "used by the page, missing from en.js"
    unused = [k for k in en if k not in used and k.split(".")[0] not in prefixes]
    assert unused == [], "in en.js, never used by the page"
