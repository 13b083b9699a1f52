#!/usr/bin/env bash
# One-shot, idempotent project setup: the system prerequisites (ci/install-system.sh: Java,
# Maven, Go, Prometheus), uv, the locked Python environment (.venv), the Apache Kafka broker
# jars, the Toxiproxy server and GoFlow2 under .tools/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash ci/install-system.sh
if ! command -v uv >/dev/null 2>&1; then
    echo "setup: installing uv"
    python3 -m pip install --quiet uv 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages uv
    export PATH="$HOME/.local/bin:$PATH"
fi
echo "setup: uv sync --frozen"
uv sync --frozen
bash ci/install-kafka.sh
bash ci/install-toxiproxy.sh
bash ci/install-goflow2.sh
echo "setup: done"
