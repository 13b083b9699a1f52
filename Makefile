# Flow outlet: developer entry points. `make setup` runs automatically before every target.
SHELL := /bin/bash
export PATH := $(HOME)/.local/bin:$(PATH)
UV ?= uv
STACK_DIR ?= .stack
PYTEST_ARGS ?=
SETUP_STAMP := .tools/.setup.stamp
SETUP_INPUTS := pyproject.toml harness/pyproject.toml uv.lock ci/setup.sh ci/install-kafka.sh ci/install-toxiproxy.sh \
	ci/install-goflow2.sh ci/go-tools.sh ci/kafka/pom.xml

.PHONY: setup up down status test test-all lint demo bench-outlet bench-dualwrite bench-codec chaos \
	chaos-all

# Idempotent; the stamp makes it instant when nothing changed. A missing venv or missing
# tools invalidate the stamp.
setup:
	@if [ ! -x .venv/bin/python ] || [ ! -x .tools/bin/toxiproxy-server ] \
	    || ! compgen -G '.tools/kafka/libs/kafka_2.13-*.jar' >/dev/null; then \
	    rm -f $(SETUP_STAMP); fi
	@$(MAKE) --no-print-directory $(SETUP_STAMP)

$(SETUP_STAMP): $(SETUP_INPUTS)
	bash ci/setup.sh
	@mkdir -p $(dir $@) && touch $@

up: setup
	$(UV) run chaos stack up --dir $(STACK_DIR)

down: setup
	$(UV) run chaos stack down --dir $(STACK_DIR)

status: setup
	$(UV) run chaos stack status --dir $(STACK_DIR)

# The CI suite (README): unit tests, the native stack, the outlet, dual-write, spool and a
# representative chaos set. `make test-all` adds the slow tests (every chaos scenario, load).
test: setup
	$(UV) run pytest -m "not slow" $(PYTEST_ARGS)

test-all: setup
	$(UV) run pytest $(PYTEST_ARGS)

# The main job: stack up, schema, realistic flows for ~1 minute, dual-write, report, stack down.
DEMO_ARGS ?=
demo: setup
	$(UV) run python -m loadtest.demo --stack-dir $(STACK_DIR) $(DEMO_ARGS)

# Benchmarks print numbers (they are not timed tests): backlog drain of 2M flows.
BENCH_ARGS ?=
bench-outlet: setup
	$(UV) run python -m loadtest.bench outlet --stack-dir $(STACK_DIR) $(BENCH_ARGS)

bench-dualwrite: setup
	$(UV) run python -m loadtest.bench dualwrite --rounds 2 --stack-dir $(STACK_DIR) $(BENCH_ARGS)

# The codec alone (in-process, no stack): clean and 1%-garbage batches, isolation bound.
# `make bench-codec BENCH_ARGS="--baseline main"` runs main's codec alongside.
bench-codec: setup
	$(UV) run python -m loadtest.bench codec $(BENCH_ARGS)

lint: setup
	$(UV) run ruff check . && $(UV) run mypy outlet orchestrator flowgen teststack chaos loadtest

# Chaos harness (docs/chaos.md): `make chaos SCENARIO=azure-partition [TIME_SCALE=2]`,
# `make chaos-all`. Reuses a healthy stack in $(STACK_DIR) or starts one (and stops it after).
SCENARIO ?=
TIME_SCALE ?= 1
CHAOS_ARGS ?=

chaos: setup
	@if [ -z "$(SCENARIO)" ]; then echo "usage: make chaos SCENARIO=name (see scenarios/)"; \
	    ls scenarios | sed 's/\.yaml$$//'; exit 2; fi
	$(UV) run chaos run $(SCENARIO) --time-scale $(TIME_SCALE) --stack-dir $(STACK_DIR) $(CHAOS_ARGS)

chaos-all: setup
	$(UV) run chaos run --all --time-scale $(TIME_SCALE) --stack-dir $(STACK_DIR) $(CHAOS_ARGS)

# Load tests (docs/loadtest.md): `make load PROFILE=steady [SCALE=2] [RATE=0.5]` replays a
# profile (loadtest/profiles/) with Locust against the stack, the outlet in dual-write;
# `make capacity` steps the offered rate up, shows scale-out and the dual-write overhead;
# `make bench-overhead-load` runs the overhead part alone. Reports in reports/load|capacity/.
PROFILE ?=
SCALE ?= 1
RATE ?= 1
LOAD_ARGS ?=
CAPACITY_ARGS ?=

.PHONY: load capacity bench-overhead-load

load: setup
	@if [ -z "$(PROFILE)" ]; then echo "usage: make load PROFILE=name [SCALE=x] [RATE=y]"; \
	    $(UV) run python -m loadtest.run --list; exit 2; fi
	$(UV) run python -m loadtest.run $(PROFILE) --time-scale $(SCALE) --rate-scale $(RATE) \
	    --stack-dir $(STACK_DIR) $(LOAD_ARGS)

capacity: setup
	$(UV) run python -m loadtest.capacity --stack-dir $(STACK_DIR) $(CAPACITY_ARGS)

bench-overhead-load: setup
	$(UV) run python -m loadtest.capacity --only overhead --stack-dir $(STACK_DIR) \
	    --report-dir reports/capacity/overhead-only $(CAPACITY_ARGS)

# Regenerate outlet/pb/flow_pb2.py(i) from outlet/pb/flow.proto (grpcio-tools' protoc).
.PHONY: proto
proto: setup
	$(UV) run python -m grpc_tools.protoc -Ioutlet/pb --python_out=outlet/pb --pyi_out=outlet/pb \
	    outlet/pb/flow.proto
