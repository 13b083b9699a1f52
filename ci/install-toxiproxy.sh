#!/usr/bin/env bash
# Build the pinned Shopify Toxiproxy server with `go install` into .tools/bin/toxiproxy-server.
# GOPATH, GOCACHE and GOMODCACHE live under .tools so nothing leaks outside the project.
# Idempotent: skipped when the binary exists and .tools/bin/.toxiproxy.stamp names the version.
set -euo pipefail
TOXIPROXY_VERSION="v2.12.0"      # needs Go >= 1.23 (its go.mod)
TOXIPROXY_FALLBACK="v2.5.0"      # builds with Go 1.17+ (e.g. Debian 12's golang-go 1.19)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/.tools/bin"
STAMP="$BIN/.toxiproxy.stamp"
if [[ -x "$BIN/toxiproxy-server" && -f "$STAMP" && "$(cat "$STAMP")" == "$TOXIPROXY_VERSION" ]]; then
    echo "toxiproxy: $TOXIPROXY_VERSION up to date ($BIN/toxiproxy-server)"
    exit 0
fi
command -v go >/dev/null || { echo "toxiproxy: go not found (install Go)" >&2; exit 1; }
GO_MINOR="$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')"
if [[ "$GO_MINOR" =~ ^[0-9]+$ ]] && (( GO_MINOR < 23 )); then
    echo "toxiproxy: $(go env GOVERSION) is older than go1.23: building $TOXIPROXY_FALLBACK instead" >&2
    TOXIPROXY_VERSION="$TOXIPROXY_FALLBACK"
    if [[ -x "$BIN/toxiproxy-server" && -f "$STAMP" && "$(cat "$STAMP")" == "$TOXIPROXY_VERSION" ]]; then
        exit 0
    fi
fi
mkdir -p "$BIN" "$ROOT/.tools/go" "$ROOT/.tools/go-cache"
export GOPATH="$ROOT/.tools/go"
export GOMODCACHE="$ROOT/.tools/go/pkg/mod"
export GOCACHE="$ROOT/.tools/go-cache"
export GOBIN="$BIN"
export GOFLAGS="-modcacherw"
export CGO_ENABLED=0
export GOTOOLCHAIN=local
echo "toxiproxy: go install github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION"
go install "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION"
mv -f "$BIN/server" "$BIN/toxiproxy-server"
echo "$TOXIPROXY_VERSION" > "$STAMP"
"$BIN/toxiproxy-server" -version || true
