#!/usr/bin/env bash
# Build the pinned GoFlow2 v2 collector with `go install` into .tools/bin/goflow2.
# GOPATH, GOCACHE and GOMODCACHE live under .tools so nothing leaks outside the project.
# Idempotent: skipped when the binary exists and .tools/bin/.goflow2.stamp names the version.
# Used by tests/test_goflow2.py (a real GoFlow2 feeding the outlet through Kafka).
set -euo pipefail
GOFLOW2_VERSION="v2.2.6"         # its go.mod: go 1.23.0 (built with GOTOOLCHAIN=local)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/.tools/bin"
STAMP="$BIN/.goflow2.stamp"
if [[ -x "$BIN/goflow2" && -f "$STAMP" && "$(cat "$STAMP")" == "$GOFLOW2_VERSION" ]]; then
    echo "goflow2: $GOFLOW2_VERSION up to date ($BIN/goflow2)"
    exit 0
fi
command -v go >/dev/null || { echo "goflow2: go not found (install Go >= 1.23)" >&2; exit 1; }
GO_MINOR="$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')"
if [[ "$GO_MINOR" =~ ^[0-9]+$ ]] && (( GO_MINOR < 23 )); then
    echo "goflow2: $(go env GOVERSION) is older than go1.23 (needed by $GOFLOW2_VERSION)" >&2
    exit 1
fi
mkdir -p "$BIN" "$ROOT/.tools/go" "$ROOT/.tools/go-cache"
export GOPATH="$ROOT/.tools/go"
export GOMODCACHE="$ROOT/.tools/go/pkg/mod"
export GOCACHE="$ROOT/.tools/go-cache"
export GOBIN="$BIN"
export GOFLAGS="-modcacherw"
export CGO_ENABLED=0
export GOTOOLCHAIN=local
echo "goflow2: go install github.com/netsampler/goflow2/v2/cmd/goflow2@$GOFLOW2_VERSION"
go install "github.com/netsampler/goflow2/v2/cmd/goflow2@$GOFLOW2_VERSION"
echo "$GOFLOW2_VERSION" > "$STAMP"
echo "goflow2: $GOFLOW2_VERSION installed ($BIN/goflow2)"
