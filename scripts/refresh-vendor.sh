#!/usr/bin/env bash
# Refresh the chat page's third-party libraries and rebuild static/.
#
#   scripts/refresh-vendor.sh            newest versions the ranges in web/package.json allow (npm update)
#   scripts/refresh-vendor.sh --latest   newest published versions, new majors included; read their
#                                        changelogs, run the page tests, then commit
#
# Vendored code is only ever changed this way, never by hand: the versions are pinned in
# web/package-lock.json, `npm ci` installs exactly those, and web/build.mjs bundles them
# into static/assets/ and copies their licenses to static/licenses/. The script prints
# which packages changed, the new page weight and the files changed under static/.
set -euo pipefail
cd "$(dirname "$0")/../web"

mode=${1:-}
case "$mode" in
  "" | --latest) ;;
  -h | --help) sed -n '2,11p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--latest]" >&2; exit 2 ;;
esac

versions() {
  node -e '
    const lock = require("./package-lock.json");
    const seen = new Set();
    for (const [path, info] of Object.entries(lock.packages || {})) {
      if (!path) continue;
      seen.add(`${path.replace(/^.*node_modules\//, "")} ${info.version}`);
    }
    console.log([...seen].sort().join("\n"));
  '
}

before=$(versions)
if [ "$mode" = --latest ]; then
  deps=$(node -p 'Object.keys(require("./package.json").dependencies || {}).map((d) => d + "@latest").join(" ")')
  dev=$(node -p 'Object.keys(require("./package.json").devDependencies || {}).map((d) => d + "@latest").join(" ")')
  # shellcheck disable=SC2086  # word splitting intended: one argument per package
  [ -z "$deps" ] || npm install --save $deps
  # the build tool stays pinned exactly: a new esbuild may change the output bytes
  # shellcheck disable=SC2086
  [ -z "$dev" ] || npm install --save-dev --save-exact $dev
else
  npm update
fi
npm ci
node build.mjs
after=$(versions)

echo
if [ "$before" = "$after" ]; then
  echo "No package version changed."
else
  echo "Package versions (- before, + after):"
  diff <(printf '%s\n' "$before") <(printf '%s\n' "$after") | grep '^[<>]' | sed 's/^</  -/; s/^>/  +/' || true
fi
echo
echo "Known vulnerabilities in the bundled (non-dev) packages:"
npm audit --omit=dev || true
if command -v git >/dev/null 2>&1 && git -C .. rev-parse --git-dir >/dev/null 2>&1; then
  echo
  echo "Changed files (review, run the page tests, then commit):"
  git -C .. status --short -- web/package.json web/package-lock.json static/
fi
