# Flow outlet: developer entry points. `make setup` runs automatically before every target.
SHELL := /bin/bash
export PATH := $(HOME)/.local/bin:$(PATH)
UV ?= uv
STACK_DIR ?= .stack
MULTI_DC_STACK_DIR ?= .stack-multi-dc
# `make up TOPOLOGY=multi-dc`: datacenters a and b (Kafka + local ClickHouse each) and a
# central ClickHouse, in $(MULTI_DC_STACK_DIR) (docs/chaos.md).
TOPOLOGY ?= single-dc
TOPOLOGY_DIR = $(if $(filter multi-dc,$(TOPOLOGY)),$(MULTI_DC_STACK_DIR),$(STACK_DIR))
PYTEST_ARGS ?=
SETUP_STAMP := .tools/.setup.stamp
SETUP_INPUTS := pyproject.toml harness/pyproject.toml uv.lock ci/setup.sh ci/install-system.sh ci/install-kafka.sh ci/install-toxiproxy.sh \
	ci/install-goflow2.sh ci/go-tools.sh ci/kafka/pom.xml

.PHONY: setup up down status test test-all lint demo bench-outlet bench-dualwrite bench-ledger \
	bench-codec chaos chaos-all load capacity bench-overhead-load results

# Idempotent; the stamp makes it instant when nothing changed. A missing venv, missing
# tools or missing system prerequisites (ci/install-system.sh) invalidate the stamp.
setup:
	@if [ ! -x .venv/bin/python ] || [ ! -x .tools/bin/toxiproxy-server ] \
	    || ! compgen -G '.tools/kafka/libs/kafka_2.13-*.jar' >/dev/null \
	    || ! (for t in java mvn go prometheus promtool; do command -v $$t >/dev/null || exit 1; done); then \
	    rm -f $(SETUP_STAMP); fi
	@$(MAKE) --no-print-directory $(SETUP_STAMP)

$(SETUP_STAMP): $(SETUP_INPUTS)
	bash ci/setup.sh
	@mkdir -p $(dir $@) && touch $@

# SECURE=1 adds Kafka's SASL_SSL/SSL/SASL_PLAINTEXT listeners and ClickHouse mTLS ports
# (docs/security.md; single-dc only); the tests start them only when a `secure` test is selected.
SECURE ?=
# `make up PROMETHEUS=1` adds Prometheus with the shipped alert rules (docs/operations.md).
PROMETHEUS ?=
up: setup
	$(UV) run chaos stack up --topology $(TOPOLOGY) --dir $(TOPOLOGY_DIR) \
	    $(if $(SECURE),--secure) $(if $(PROMETHEUS),--with-prometheus)

down: setup
	$(UV) run chaos stack down --dir $(TOPOLOGY_DIR)

status: setup
	$(UV) run chaos stack status --dir $(TOPOLOGY_DIR)

# The CI suite (README): unit tests, the native stack, the outlet, dual-write, spool and a
# representative chaos set. `make test-all` adds the slow tests (every chaos scenario, load).
test: setup
	$(UV) run pytest -m "not slow" $(PYTEST_ARGS)

test-all: setup
	$(UV) run pytest $(PYTEST_ARGS)

# Harness targets are thin wrappers around `chaos run` and `loadtest run|capacity|bench|demo`
# (docs/chaos.md, docs/loadtest.md); their variables are named like the flags:
#   TIME_SCALE=F  multiplies every duration of a run (0.1 = a ten times shorter smoke run,
#                 4 = four times longer); rates are kept
#   YES=1         start a run estimated to last more than an hour without asking
#   JSON=FILE     also write the verdict as JSON to FILE (JSON=- prints it on stdout)
TIME_SCALE ?= 1
YES ?=
JSON ?=
JSON_FLAG = $(if $(JSON),--json $(JSON))
HARNESS_FLAGS = --stack-dir $(STACK_DIR) --time-scale $(TIME_SCALE) $(if $(YES),--yes) $(JSON_FLAG)

# The main job: stack up, schema, realistic flows for ~1 minute, dual-write, report, stack down.
# `make demo TOPOLOGY=multi-dc`: an orchestrator per site and an outlet per datacenter on the
# multi-dc stack, central rolled out live halfway (docs/deployment.md).
DEMO_ARGS ?=
demo: setup
	$(UV) run loadtest demo --stack-dir $(TOPOLOGY_DIR) --topology $(TOPOLOGY) $(DEMO_ARGS)

# Benchmarks print numbers (they are not timed tests): backlog drain of 2M flows.
BENCH_ARGS ?=
bench-outlet: setup
	$(UV) run loadtest bench outlet --stack-dir $(STACK_DIR) $(JSON_FLAG) $(BENCH_ARGS)

bench-dualwrite: setup
	$(UV) run loadtest bench dualwrite --rounds 2 --stack-dir $(STACK_DIR) $(JSON_FLAG) \
	    $(BENCH_ARGS)

# The cost of the cross-process ledger (issue 12): this outlet against BASELINE (default:
# main before issue 12), a 2M-flow backlog drain alternated twice and a 2000 flows/s stream.
BASELINE ?=
bench-ledger: setup
	$(UV) run loadtest bench ledger --rounds 2 --stack-dir $(STACK_DIR) \
	    $(if $(BASELINE),--baseline $(BASELINE)) $(JSON_FLAG) $(BENCH_ARGS)

# The codec alone (in-process, no stack): clean and 1%-garbage batches, isolation bound.
# `make bench-codec BENCH_ARGS="--baseline main"` runs main's codec alongside.
bench-codec: setup
	$(UV) run loadtest bench codec $(BENCH_ARGS)

# The result summaries the README's "Measured" table points to (docs/results/*.json, one per
# benchmark or scenario: docs/results/README.md), regenerated on this machine now: the
# benchmarks, capacity's scale-out, the CI chaos set at half the calibrated capacity and
# the test count (~12 min).
RESULTS_DIR ?= docs/results
RESULTS_FLAGS = --stack-dir $(STACK_DIR) --summary-dir $(RESULTS_DIR)
results: setup
	$(UV) run loadtest bench outlet $(RESULTS_FLAGS)
	$(UV) run loadtest bench dualwrite --rounds 2 $(RESULTS_FLAGS)
	$(UV) run loadtest bench codec --summary-dir $(RESULTS_DIR)
	$(UV) run loadtest capacity --only scaleout --report-dir reports/results/capacity \
	    $(RESULTS_FLAGS)
	-$(UV) run chaos run outlet-crash --time-scale 0.5 --rate-fraction 0.5 \
	    --reports-dir reports/results $(RESULTS_FLAGS)
	-$(UV) run chaos run azure-partition kafka-restart kafka-partition --rate-fraction 0.5 \
	    --reports-dir reports/results $(RESULTS_FLAGS)
	$(UV) run python -m teststack.summary --summary-dir $(RESULTS_DIR)

lint: setup
	$(UV) run ruff check . && $(UV) run mypy outlet orchestrator flowgen teststack chaos loadtest

# Chaos harness (docs/chaos.md): `make chaos SCENARIO=azure-partition [TIME_SCALE=2]`,
# `make chaos-all`. Reuses a healthy stack in $(STACK_DIR) (multi-dc scenarios: in
# $(MULTI_DC_STACK_DIR)) or starts one, and stops it after; one stack at a time.
SCENARIO ?=
CHAOS_ARGS ?=

chaos: setup
	@if [ -z "$(SCENARIO)" ]; then echo "usage: make chaos SCENARIO=name [TIME_SCALE=F]" \
	    "(see scenarios/)"; ls scenarios | sed 's/\.yaml$$//'; exit 2; fi
	$(UV) run chaos run $(SCENARIO) $(HARNESS_FLAGS) --multi-dc-stack-dir $(MULTI_DC_STACK_DIR) \
	    $(CHAOS_ARGS)

chaos-all: setup
	$(UV) run chaos run --all $(HARNESS_FLAGS) --multi-dc-stack-dir $(MULTI_DC_STACK_DIR) \
	    $(CHAOS_ARGS)

# Load tests (docs/loadtest.md): `make load PROFILE=steady [TIME_SCALE=0.5] [RATE_SCALE=0.5]`
# replays a profile (loadtest/profiles/) with Locust against the stack, the outlet in
# dual-write; `make capacity` steps the offered rate up, shows scale-out and the dual-write
# overhead; `make bench-overhead-load` runs the overhead part alone. Reports in
# reports/load/PROFILE/ and reports/capacity/.
PROFILE ?=
RATE_SCALE ?= 1
LOAD_ARGS ?=
CAPACITY_ARGS ?=

load: setup
	@if [ -n "$(SCALE)$(RATE)" ]; then echo "make load: SCALE and RATE are now TIME_SCALE and" \
	    "RATE_SCALE, named like the flags; TIME_SCALE multiplies durations (0.1 = ten times" \
	    "shorter)" >&2; exit 2; fi
	@if [ -z "$(PROFILE)" ]; then echo "usage: make load PROFILE=name [TIME_SCALE=F]" \
	    "[RATE_SCALE=F]"; $(UV) run loadtest run --list; exit 2; fi
	$(UV) run loadtest run $(PROFILE) --rate-scale $(RATE_SCALE) $(HARNESS_FLAGS) $(LOAD_ARGS)

capacity: setup
	$(UV) run loadtest capacity $(HARNESS_FLAGS) $(CAPACITY_ARGS)

bench-overhead-load: setup
	$(UV) run loadtest capacity --only overhead --report-dir reports/capacity/overhead-only \
	    $(HARNESS_FLAGS) $(CAPACITY_ARGS)

# Regenerate outlet/pb/flow_pb2.py(i) from outlet/pb/flow.proto (grpcio-tools' protoc).
.PHONY: proto
proto: setup
	$(UV) run python -m grpc_tools.protoc -Ioutlet/pb --python_out=outlet/pb --pyi_out=outlet/pb \
	    outlet/pb/flow.proto
