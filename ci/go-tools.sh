# Shared by the `go install` scripts (sourced, not run): project-local Go caches under
# .tools so nothing leaks outside the project, and a stamp file per tool so re-runs are
# instant. Expects ROOT to be set to the project root.
BIN="$ROOT/.tools/bin"

# stamp_matches TOOL BINARY VERSION: the binary exists and its stamp names VERSION.
stamp_matches() {
    local stamp="$BIN/.$1.stamp"
    [[ -x "$BIN/$2" && -f "$stamp" && "$(cat "$stamp")" == "$3" ]]
}

write_stamp() { echo "$2" > "$BIN/.$1.stamp"; }

# go_minor: the minor version of the local Go (26 for go1.26.8); fails without Go.
go_minor() {
    command -v go >/dev/null || { echo "$1: go not found (install Go >= 1.23)" >&2; return 1; }
    go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/'
}

# go_env: install into .tools/bin with the local toolchain and project-local caches.
go_env() {
    mkdir -p "$BIN" "$ROOT/.tools/go" "$ROOT/.tools/go-cache"
    export GOPATH="$ROOT/.tools/go"
    export GOMODCACHE="$ROOT/.tools/go/pkg/mod"
    export GOCACHE="$ROOT/.tools/go-cache"
    export GOBIN="$BIN"
    export GOFLAGS="-modcacherw"
    export CGO_ENABLED=0
    export GOTOOLCHAIN=local
}
