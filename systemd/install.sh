#!/usr/bin/env bash
# install.sh - install llm-ws-gateway as a systemd service (Debian 12 and alike).
#
#   systemd/install.sh [install] [--wheelhouse DIR] [--voice]   install, or upgrade in place
#                                                     (--voice: with Vosk, for [stt] provider = "vosk")
#   systemd/install.sh rollback                       switch back to the previous release
#   systemd/install.sh uninstall                      remove program and units, keep config and state
#   systemd/install.sh wheelhouse DIR                 build wheels for an offline install
#
# What goes where:
#   /opt/gateway/releases/<UTC time>/   one virtualenv per install (the last 3 are kept)
#   /opt/gateway/current                symlink to the release in use (the units run it)
#   /etc/gateway/gateway.toml           configuration: written once from gateway.example.toml, never overwritten
#   /etc/gateway/api_key                the provider's API key, mode 0600, empty until you fill it in
#   /etc/systemd/system/gateway.service, gateway-ws.socket, gateway-http.socket,
#                                       gateway@.service (instances of a cluster)
#   /var/lib/gateway/                   state (conversations.db), made by systemd (StateDirectory=)
#
# Environment:
#   DESTDIR         write everything under this root instead of / (staging, tests); the
#                   virtualenv then refers to its path under DESTDIR, so boot such a root
#                   only after running the installer inside it
#   INSTALL_PYTHON  interpreter for the virtualenv (default /usr/bin/python3, >= 3.11; it
#                   must not live under /home or /root, which the service cannot see)
#   GATEWAY_SITE    with a new config: allow the browser origin https://$GATEWAY_SITE
#   KEEP_RELEASES   releases kept in /opt/gateway/releases (default 3)
#
# Idempotent: run it again to upgrade (a new release; config and key untouched). It
# restarts nothing: after an upgrade, `systemctl restart gateway` (see docs/operations.md).
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DESTDIR=${DESTDIR:-}
DESTDIR=${DESTDIR%/}
PREFIX=/opt/gateway
ETC=/etc/gateway
UNITDIR=/etc/systemd/system
UNITS=(gateway.service gateway-ws.socket gateway-http.socket gateway@.service)
PY=${INSTALL_PYTHON:-/usr/bin/python3}
KEEP=${KEEP_RELEASES:-3}
PACKAGE=llm-ws-gateway
EXTRAS=uvloop  # the optional dependencies installed (--voice adds Vosk)

PARTIAL=""   # a release being built: removed if the script stops before it is done
TMP=""
cleanup() {
  [ -z "$PARTIAL" ] || rm -rf "$DESTDIR$PARTIAL"
  [ -z "$TMP" ] || rm -rf "$TMP"
}
trap cleanup EXIT

say() { printf '%s\n' "$*"; }
step() { printf '==> %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

need_root() {
  if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
    die "run as root (sudo $0 ...), or set DESTDIR to stage into a directory"
  fi
}

systemd_running() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; }

check_python() {
  command -v "$PY" >/dev/null 2>&1 || die "no $PY: apt-get install python3 python3-venv (or set INSTALL_PYTHON)"
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PY is Python $("$PY" -c 'import platform; print(platform.python_version())'); the gateway needs >= 3.11"
  "$PY" -c 'import ensurepip, venv' 2>/dev/null \
    || die "$PY cannot create virtualenvs: apt-get install python3-venv"
  local real
  real=$(readlink -f "$(command -v "$PY")")
  case "$real" in
    /home/* | /root/*) die "$PY is $real: ProtectHome=yes hides /home and /root from the service; use a system Python (INSTALL_PYTHON=/usr/bin/python3)" ;;
  esac
}

# Build one release: a fresh virtualenv at its final path (scripts embed it).
new_release() {
  local wheelhouse=$1 stamp rel
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  rel=$PREFIX/releases/$stamp
  local n=1
  while [ -e "$DESTDIR$rel" ]; do rel=$PREFIX/releases/$stamp.$n; n=$((n + 1)); done
  RELEASE=$rel
  step "virtualenv $DESTDIR$rel (Python $("$PY" -c 'import platform; print(platform.python_version())'))"
  mkdir -p "$DESTDIR$PREFIX/releases"
  # On failure, leave no half-built release behind (and `current` as it was).
  PARTIAL=$rel
  "$PY" -m venv "$DESTDIR$rel"
  local pip=("$DESTDIR$rel/bin/python" -m pip --disable-pip-version-check --no-input --quiet)
  if [ -n "$wheelhouse" ]; then
    step "install $PACKAGE from the wheelhouse $wheelhouse (offline)"
    "${pip[@]}" install --no-index --find-links "$wheelhouse" "${PACKAGE}[$EXTRAS]"
  else
    step "install $PACKAGE from $SRC"
    "${pip[@]}" install "${SRC}[$EXTRAS]"
  fi
  install -d -m 0755 "$DESTDIR$rel/share/doc/$PACKAGE"
  install -m 0644 "$SRC/docs/operations.md" "$SRC/Caddyfile" "$SRC/gateway.example.toml" \
    "$DESTDIR$rel/share/doc/$PACKAGE/"
  local version commit=""
  version=$("$DESTDIR$rel/bin/gateway" --version)
  commit=$(git -C "$SRC" rev-parse --short HEAD 2>/dev/null || true)
  printf '%s\nsource %s%s\ninstalled %s\n' "$version" "$SRC" "${commit:+ ($commit)}" "$(date -u +%FT%TZ)" \
    > "$DESTDIR$rel/RELEASE"
  # The new release must accept the config the running one uses.
  if [ -f "$DESTDIR$ETC/gateway.toml" ]; then
    env -i PATH=/usr/bin:/bin "$DESTDIR$rel/bin/gateway" check-config --config "$DESTDIR$ETC/gateway.toml" >/dev/null \
      || die "$version refuses $ETC/gateway.toml (message above); fix it and run install.sh again"
  fi
  PARTIAL=""
  say "    $version"
}

# Point `current` at a release, atomically (rename over the old link).
switch_to() {
  local rel=$1
  ln -sfn "releases/${rel##*/}" "$DESTDIR$PREFIX/current.new"
  mv -Tf "$DESTDIR$PREFIX/current.new" "$DESTDIR$PREFIX/current"
  step "$PREFIX/current -> releases/${rel##*/}"
}

current_release() { readlink "$DESTDIR$PREFIX/current" 2>/dev/null | sed 's#.*/##'; }

# Release names (UTC times), oldest first.
releases() {
  local r
  for r in "$DESTDIR$PREFIX"/releases/*/; do
    [ -d "$r" ] && basename "$r"
  done | sort
}

prune_releases() {
  local current all
  current=$(current_release)
  mapfile -t all < <(releases | sort -r)
  local i=0 r
  for r in "${all[@]}"; do
    i=$((i + 1))
    if [ "$i" -gt "$KEEP" ] && [ "$r" != "$current" ]; then
      rm -rf "$DESTDIR$PREFIX/releases/$r"
      say "    removed old release $r"
    fi
  done
}

install_config() {
  install -d -m 0755 "$DESTDIR$ETC"
  if [ -e "$DESTDIR$ETC/gateway.toml" ]; then
    say "    $ETC/gateway.toml exists: kept as it is"
  else
    {
      printf '# %s: the gateway'"'"'s configuration (written by systemd/install.sh).\n' "$ETC/gateway.toml"
      printf '# Under systemd the listen addresses are those of gateway-ws.socket and\n'
      printf '# gateway-http.socket; ws_addr/http_addr below are not used.\n'
      printf '# Check edits with: %s/current/bin/gateway check-config --config %s/gateway.toml\n' "$PREFIX" "$ETC"
      printf '# then apply them with: systemctl reload gateway\n\n'
      if [ -n "${GATEWAY_SITE:-}" ]; then
        sed "s|^# allowed_origins = .*|allowed_origins = [\"https://$GATEWAY_SITE\"]|" "$SRC/gateway.example.toml"
      else
        cat "$SRC/gateway.example.toml"
      fi
    } > "$DESTDIR$ETC/gateway.toml.new"
    chmod 0644 "$DESTDIR$ETC/gateway.toml.new"
    mv "$DESTDIR$ETC/gateway.toml.new" "$DESTDIR$ETC/gateway.toml"
    step "wrote $ETC/gateway.toml from gateway.example.toml"
  fi
  if [ -e "$DESTDIR$ETC/api_key" ]; then
    say "    $ETC/api_key exists: kept as it is"
  else
    (umask 077 && : > "$DESTDIR$ETC/api_key")
    chmod 0600 "$DESTDIR$ETC/api_key"
    step "created an empty $ETC/api_key (mode 0600, read by systemd only)"
  fi
}

install_units() {
  install -d -m 0755 "$DESTDIR$UNITDIR"
  local u
  for u in "${UNITS[@]}"; do
    install -m 0644 "$SRC/systemd/$u" "$DESTDIR$UNITDIR/$u"
  done
  step "units: ${UNITS[*]} in $UNITDIR"
  if systemd_running; then
    systemctl daemon-reload
    step "systemctl daemon-reload"
  fi
}

next_steps() {
  local site=${GATEWAY_SITE:-chat.example.com}
  cat <<EOF

Installed. Next steps:
  1. Configuration: $ETC/gateway.toml (every key is documented in it). For browsers
     behind Caddy set, under [server]:  allowed_origins = ["https://$site"]
     A real provider: [provider] name, upstream_url, model; the key goes in
     $ETC/api_key (mode 0600, systemd hands it over), without echoing it:
       read -rsp 'API key: ' k && printf '%s\n' "\$k" > $ETC/api_key; unset k
     Check:  $PREFIX/current/bin/gateway check-config --config $ETC/gateway.toml
  2. Start:  systemctl enable --now gateway
     Look:   systemctl status gateway;  journalctl -u gateway -f
  3. HTTPS:  apt-get install caddy
             install -m 644 $PREFIX/current/share/doc/$PACKAGE/Caddyfile /etc/caddy/Caddyfile
     then    systemctl edit caddy  ->  [Service]
                                       Environment=GATEWAY_SITE=$site
                                       Environment=GATEWAY_TLS=you@example.com
             systemctl restart caddy   and open https://$site/
     (Without a domain: leave GATEWAY_SITE unset for https://localhost with Caddy's own CA.)
Upgrade: run this installer again, then systemctl restart gateway. Rollback: $0 rollback.
Operations guide: $PREFIX/current/share/doc/$PACKAGE/operations.md
EOF
}

cmd_install() {
  local wheelhouse=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --wheelhouse) [ $# -ge 2 ] || usage 2; wheelhouse=$(cd "$2" && pwd); shift 2 ;;
      --voice) EXTRAS=uvloop,voice; shift ;;
      -h | --help) usage 0 ;;
      *) say "unknown option: $1" >&2; usage 2 ;;
    esac
  done
  need_root
  check_python
  install_config
  new_release "$wheelhouse"
  switch_to "$RELEASE"
  prune_releases
  install_units
  if systemd_running && systemctl is-active --quiet gateway.service; then
    say ""
    say "The gateway is running the previous release: systemctl restart gateway (drains, clients resume)."
  fi
  next_steps
}

cmd_rollback() {
  need_root
  local current previous
  current=$(current_release)
  [ -n "$current" ] || die "nothing installed in $DESTDIR$PREFIX"
  previous=$(releases | awk -v c="$current" '$0 < c' | tail -n 1)
  [ -n "$previous" ] || die "no release older than $current in $PREFIX/releases"
  switch_to "$PREFIX/releases/$previous"
  say "    $(head -n 1 "$DESTDIR$PREFIX/releases/$previous/RELEASE" 2>/dev/null || echo "$previous")"
  say "Now: systemctl restart gateway"
}

cmd_uninstall() {
  need_root
  local u
  if systemd_running; then
    systemctl disable --now "${UNITS[@]}" 2>/dev/null || true
  fi
  for u in "${UNITS[@]}"; do
    rm -f "$DESTDIR$UNITDIR/$u"
  done
  step "removed the units from $UNITDIR"
  if systemd_running; then
    systemctl daemon-reload
    systemctl reset-failed gateway.service 2>/dev/null || true
  fi
  rm -rf "$DESTDIR$PREFIX"
  step "removed $PREFIX"
  cat <<EOF
Kept: $ETC/ (configuration and API key), /var/lib/gateway/ (conversations) and
any drop-ins made with systemctl edit ($UNITDIR/gateway*.d/).
Remove them too, if you mean it:
  rm -rf $ETC /var/lib/gateway /var/lib/private/gateway $UNITDIR/gateway*.d
EOF
}

cmd_wheelhouse() {
  [ $# -eq 1 ] || usage 2
  local dir=$1
  check_python
  mkdir -p "$dir"
  TMP=$(mktemp -d)
  step "building wheels for $PACKAGE and its dependencies into $dir"
  "$PY" -m venv "$TMP/venv"
  "$TMP/venv/bin/python" -m pip --disable-pip-version-check --no-input --quiet wheel --wheel-dir "$dir" "${SRC}[uvloop,voice]"
  local wheels=("$dir"/*.whl)
  say "    ${#wheels[@]} wheels. On the server: systemd/install.sh install --wheelhouse $dir"
}

main() {
  local cmd=${1:-install}
  case "$cmd" in
    install) shift || true; cmd_install "$@" ;;
    --wheelhouse) cmd_install "$@" ;;
    rollback) shift; cmd_rollback "$@" ;;
    uninstall) shift; cmd_uninstall "$@" ;;
    wheelhouse) shift; cmd_wheelhouse "$@" ;;
    -h | --help | help) usage 0 ;;
    *) say "unknown command: $cmd" >&2; usage 2 ;;
  esac
}

main "$@"
