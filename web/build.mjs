// Builds the chat page into ../static (committed; the gateway serves it, no Node needed):
//
//   static/index.html               from src/index.html, naming the hashed assets
//   static/assets/app-<hash>.js     src/main.js, the catalogues (src/i18n/) and the libraries, bundled and minified
//   static/assets/app-<hash>.css    the styles
//   static/assets/voice-worklet-<hash>.js  the microphone's AudioWorklet processor (src/voice-worklet.js),
//                                   a file of its own: audioWorklet.addModule() needs a URL, and the
//                                   CSP (script-src 'self') refuses blob: and data: ones
//   static/favicon.svg
//   static/licenses/                each bundled library's license + README.txt
//
// Same inputs (sources + package-lock.json) give the same bytes and the same hashes.
// Run: `cd web && npm ci && node build.mjs` (what `make page` does).

import { build } from "esbuild";
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const ROOT = dirname(fileURLToPath(import.meta.url));
const SRC = join(ROOT, "src");
const OUT = resolve(ROOT, "..", "static");
const ASSETS = join(OUT, "assets");
const LICENSES = join(OUT, "licenses");
const BUDGET_GZIP = 200 * 1024; // first load, compressed

function clean() {
  // static/ is entirely build output: start from nothing so no stale asset survives.
  rmSync(OUT, { recursive: true, force: true });
  mkdirSync(ASSETS, { recursive: true });
  mkdirSync(LICENSES, { recursive: true });
}

// `import catalogues from "i18n:catalogues"`: every src/i18n/<tag>.js, by tag, so adding
// a language is adding its file.
const catalogues = {
  name: "catalogues",
  setup(b) {
    const dir = join(SRC, "i18n");
    b.onResolve({ filter: /^i18n:catalogues$/ }, () => ({ path: "all", namespace: "catalogues" }));
    b.onLoad({ filter: /.*/, namespace: "catalogues" }, () => {
      const files = readdirSync(dir).filter((f) => /^[a-z]{2,3}(-[A-Za-z0-9]+)*\.js$/.test(f)).sort();
      if (!files.includes("en.js")) throw new Error("src/i18n/en.js (the reference catalogue) is missing");
      const imports = files.map((f, i) => `import c${i} from "./${f}";`);
      const entries = files.map((f, i) => `${JSON.stringify(f.slice(0, -3))}: c${i}`);
      return { contents: `${imports.join("\n")}\nexport default { ${entries.join(", ")} };\n`, resolveDir: dir, loader: "js", watchDirs: [dir] };
    });
  },
};

// The esbuild options every build here shares.
const COMMON = {
  absWorkingDir: ROOT,
  outdir: ASSETS,
  entryNames: "[name]-[hash]",
  bundle: true,
  minify: true,
  format: "esm",
  target: ["es2020", "chrome100", "firefox100", "safari15"],
  charset: "utf8",
  legalComments: "none", // the licenses are in static/licenses/, linked from the banner
  sourcemap: false,
  metafile: true,
  logLevel: "warning",
};

// Scripts the page loads by URL rather than imports (an AudioWorklet module): each
// src/<name>.js is built on its own as assets/<name>-<hash>.js, and
// `import file from "asset:<name>"` gives the page that file's name (beside app-<hash>.js).
const SEPARATE = ["voice-worklet"];

async function separateAssets() {
  const result = await build({
    ...COMMON,
    entryPoints: Object.fromEntries(SEPARATE.map((name) => [name, `src/${name}.js`])),
    banner: { js: "/*! LLM Gateway chat page: voice input. */" },
  });
  const files = {};
  for (const [file, info] of Object.entries(result.metafile.outputs)) {
    const name = SEPARATE.find((n) => info.entryPoint === `src/${n}.js`);
    if (name) files[name] = file.split("/").pop();
  }
  for (const name of SEPARATE) if (!files[name]) throw new Error(`esbuild produced no ${name} asset`);
  return files;
}

function assetNames(files) {
  return {
    name: "asset-names",
    setup(b) {
      b.onResolve({ filter: /^asset:/ }, (args) => {
        const name = args.path.slice("asset:".length);
        if (!files[name]) return { errors: [{ text: `no separate asset named ${name} (see SEPARATE in build.mjs)` }] };
        return { path: name, namespace: "asset-names" };
      });
      b.onLoad({ filter: /.*/, namespace: "asset-names" }, (args) => ({
        contents: `export default ${JSON.stringify(files[args.path])};\n`,
        loader: "js",
      }));
    },
  };
}

async function bundle(separate) {
  const result = await build({
    ...COMMON,
    plugins: [catalogues, assetNames(separate)],
    entryPoints: { app: "src/main.js" },
    assetNames: "[name]-[hash]",
    banner: {
      js: "/*! LLM Gateway chat page. Bundled libraries and their licenses: licenses/README.txt */",
      css: "/*! LLM Gateway chat page. Licenses: licenses/README.txt */",
    },
  });
  let js = "";
  let css = "";
  for (const [file, info] of Object.entries(result.metafile.outputs)) {
    if (info.entryPoint === "src/main.js") {
      js = file;
      css = info.cssBundle || "";
    }
  }
  if (!js || !css) throw new Error("esbuild produced no JS or CSS bundle");
  const rel = (file) => relative(OUT, resolve(ROOT, file)).split(sep).join("/");
  return { js: rel(js), css: rel(css), inputs: Object.keys(result.metafile.inputs), separate: Object.values(separate).map((f) => `assets/${f}`) };
}

function writePage({ js, css }) {
  const template = readFileSync(join(SRC, "index.html"), "utf8");
  const html = template.replace("{{CSS}}", css).replace("{{JS}}", js);
  if (html.includes("{{")) throw new Error("index.html: unreplaced placeholder");
  writeFileSync(join(OUT, "index.html"), html);
  copyFileSync(join(SRC, "favicon.svg"), join(OUT, "favicon.svg"));
}

/** The npm packages whose files went into the bundle, from esbuild's metafile. */
function bundledPackages(inputs) {
  const dirs = new Set();
  for (const input of inputs) {
    const parts = input.split("/");
    const at = parts.lastIndexOf("node_modules");
    if (at === -1) continue;
    const scoped = parts[at + 1].startsWith("@");
    dirs.add(parts.slice(0, at + (scoped ? 3 : 2)).join("/"));
  }
  return [...dirs].map((dir) => {
    const pkg = JSON.parse(readFileSync(join(ROOT, dir, "package.json"), "utf8"));
    const files = readdirSync(join(ROOT, dir))
      .filter((f) => /^(licen[cs]e|copying|notice)/i.test(f))
      .sort();
    if (!files.length) throw new Error(`${pkg.name}: no license file found in ${dir}`);
    return { name: pkg.name, version: pkg.version, license: pkg.license || "see file", homepage: pkg.homepage || "", dir, files };
  }).sort((a, b) => a.name.localeCompare(b.name));
}

function writeLicenses(packages) {
  const rows = [];
  for (const p of packages) {
    const file = `${p.name.replace(/^@/, "").replace(/\//g, "__")}.txt`;
    const text = p.files
      .map((f) => {
        const body = readFileSync(join(ROOT, p.dir, f), "utf8").replace(/\r\n/g, "\n").trimEnd();
        return p.files.length > 1 ? `==> ${f} <==\n\n${body}\n` : `${body}\n`;
      })
      .join("\n");
    writeFileSync(join(LICENSES, file), `${p.name} ${p.version} (${p.license})\n\n${text}`);
    rows.push([p.name, p.version, p.license, file]);
  }
  const width = (i) => Math.max(...rows.map((r) => r[i].length), ["library", "version", "license", "file"][i].length);
  const line = (r) => r.map((c, i) => (i < r.length - 1 ? c.padEnd(width(i)) : c)).join("  ");
  const readme = [
    "Third-party code bundled into this page (static/assets/app-*.js and app-*.css).",
    "Generated by web/build.mjs from web/package-lock.json; refresh with scripts/refresh-vendor.sh.",
    "The page's own code is part of llm-ws-gateway (Apache-2.0).",
    "",
    line(["library", "version", "license", "file"]),
    ...rows.map(line),
    "",
  ].join("\n");
  writeFileSync(join(LICENSES, "README.txt"), readme);
}

function report({ js, css, separate }) {
  const files = ["index.html", css, js, "favicon.svg"];
  let raw = 0;
  let gz = 0;
  console.log("first load (what a browser fetches, besides /config.json):");
  for (const f of files) {
    const bytes = readFileSync(join(OUT, f));
    const z = gzipSync(bytes, { level: 9 }).length;
    raw += bytes.length;
    gz += z;
    console.log(`  ${f.padEnd(34)} ${String(bytes.length).padStart(8)} B  gzip -9 ${String(z).padStart(7)} B`);
  }
  console.log(`  ${"total".padEnd(34)} ${String(raw).padStart(8)} B  gzip -9 ${String(gz).padStart(7)} B (budget ${BUDGET_GZIP} B)`);
  if (gz > BUDGET_GZIP) throw new Error(`page weight ${gz} B gzip is over the ${BUDGET_GZIP} B budget`);
  for (const f of separate) {
    const bytes = readFileSync(join(OUT, f));
    console.log(`loaded when used: ${f} ${bytes.length} B, gzip -9 ${gzipSync(bytes, { level: 9 }).length} B`);
  }
}

if (!existsSync(join(ROOT, "node_modules"))) {
  console.error("web/node_modules is missing: run `npm ci` in web/ first");
  process.exit(1);
}
clean();
const out = await bundle(await separateAssets());
writePage(out);
const packages = bundledPackages(out.inputs);
writeLicenses(packages);
console.log(`built ${relative(process.cwd(), OUT) || "."}: ${out.js}, ${out.css}`);
console.log(`bundled: ${packages.map((p) => `${p.name}@${p.version}`).join(", ")}`);
report(out);
