#!/usr/bin/env bash
# Resolve the Apache Kafka broker jars (ci/kafka/pom.xml) into .tools/kafka/libs.
# Idempotent: skipped when .tools/kafka/.stamp holds the hash of the current pom.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
POM=ci/kafka/pom.xml
LIBS=.tools/kafka/libs
STAMP=.tools/kafka/.stamp
HASH="$(sha256sum "$POM" | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]] && compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null; then
    echo "kafka: jars up to date ($LIBS)"
    exit 0
fi
command -v mvn >/dev/null || { echo "kafka: mvn not found (install Maven)" >&2; exit 1; }
command -v java >/dev/null || { echo "kafka: java not found (install Java 17+)" >&2; exit 1; }
echo "kafka: resolving broker jars with Maven (first run downloads ~100 MB)"
rm -rf "$LIBS"
mkdir -p "$LIBS" .tools/m2
mvn -q -B -f "$POM" dependency:copy-dependencies \
    -DoutputDirectory="$ROOT/$LIBS" -Dmaven.repo.local="$ROOT/.tools/m2"
compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null || { echo "kafka: kafka_2.13 jar missing" >&2; exit 1; }
echo "$HASH" > "$STAMP"
echo "kafka: $(ls "$LIBS" | wc -l) jars in $LIBS"
