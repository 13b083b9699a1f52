#!/usr/bin/env bash
# Build the pinned Shopify Toxiproxy server with `go install` into .tools/bin/toxiproxy-server.
# GOPATH, GOCACHE and GOMODCACHE live under .tools so nothing leaks outside the project.
# Idempotent: skipped when the binary exists and .tools/bin/.toxiproxy.stamp names the version.
set -euo pipefail
TOXIPROXY_VERSION="v2.12.0"      # needs Go >= 1.23 (its go.mod)
TOXIPROXY_FALLBACK="v2.5.0"      # builds with Go 1.17+ (e.g. Debian 12's golang-go 1.19)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source ci/go-tools.sh
if stamp_matches toxiproxy toxiproxy-server "$TOXIPROXY_VERSION"; then
    echo "toxiproxy: $TOXIPROXY_VERSION up to date ($BIN/toxiproxy-server)"
    exit 0
fi
GO_MINOR="$(go_minor toxiproxy)"
if [[ "$GO_MINOR" =~ ^[0-9]+$ ]] && (( GO_MINOR < 23 )); then
    echo "toxiproxy: $(go env GOVERSION) is older than go1.23: building $TOXIPROXY_FALLBACK instead" >&2
    TOXIPROXY_VERSION="$TOXIPROXY_FALLBACK"
    if stamp_matches toxiproxy toxiproxy-server "$TOXIPROXY_VERSION"; then
        exit 0
    fi
fi
go_env
echo "toxiproxy: go install github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION"
go install "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION"
mv -f "$BIN/server" "$BIN/toxiproxy-server"
write_stamp toxiproxy "$TOXIPROXY_VERSION"
"$BIN/toxiproxy-server" -version || true
