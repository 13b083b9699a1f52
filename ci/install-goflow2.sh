#!/usr/bin/env bash
# Build the pinned GoFlow2 v2 collector with `go install` into .tools/bin/goflow2.
# GOPATH, GOCACHE and GOMODCACHE live under .tools so nothing leaks outside the project.
# Idempotent: skipped when the binary exists and .tools/bin/.goflow2.stamp names the version.
# Used by tests/test_goflow2.py (a real GoFlow2 feeding the outlet through Kafka).
set -euo pipefail
GOFLOW2_VERSION="v2.2.6"         # its go.mod: go 1.23.0 (built with GOTOOLCHAIN=local)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source ci/go-tools.sh
if stamp_matches goflow2 goflow2 "$GOFLOW2_VERSION"; then
    echo "goflow2: $GOFLOW2_VERSION up to date ($BIN/goflow2)"
    exit 0
fi
GO_MINOR="$(go_minor goflow2)"
if [[ "$GO_MINOR" =~ ^[0-9]+$ ]] && (( GO_MINOR < 23 )); then
    echo "goflow2: $(go env GOVERSION) is older than go1.23 (needed by $GOFLOW2_VERSION)" >&2
    exit 1
fi
go_env
echo "goflow2: go install github.com/netsampler/goflow2/v2/cmd/goflow2@$GOFLOW2_VERSION"
go install "github.com/netsampler/goflow2/v2/cmd/goflow2@$GOFLOW2_VERSION"
write_stamp goflow2 "$GOFLOW2_VERSION"
echo "goflow2: $GOFLOW2_VERSION installed ($BIN/goflow2)"
