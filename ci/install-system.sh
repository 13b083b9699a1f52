#!/usr/bin/env bash
# System prerequisites of the native stack and the tests, the one place that installs them:
#   Java 17+ (Kafka 4 broker), Maven (resolves the Kafka jars), Go (builds Toxiproxy and
#   GoFlow2), Prometheus with promtool (alert-rule tests, the stack's optional Prometheus).
# Run by `make setup` (ci/setup.sh) and so by `.ci/run`. What is missing is installed with
# apt when we are root; otherwise the one command that would install it is printed and the
# script fails, so nothing half-installed goes unnoticed.
set -euo pipefail

java_major() { java -version 2>&1 | sed -nE 's/.*version "([0-9]+).*/\1/p' | head -1 || true; }

missing=()
if ! command -v java >/dev/null || (( $(java_major || echo 0) < 17 )); then
    missing+=(openjdk-17-jre-headless)
fi
command -v mvn >/dev/null || missing+=(maven)
command -v go >/dev/null || missing+=(golang-go)
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    missing+=(prometheus)  # Debian's package ships both binaries; it starts no service here
fi

if (( ${#missing[@]} == 0 )); then
    echo "system: java $(java_major), maven, $(go env GOVERSION 2>/dev/null || echo go)," \
         "prometheus $(prometheus --version 2>&1 | sed -nE 's/^prometheus, version ([^ ]+).*/\1/p')"
    exit 0
fi

command="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    echo "system: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    exit 0
fi
echo "system: missing ${missing[*]}; install them with:" >&2
echo "    sudo sh -c '$command'" >&2
exit 1
