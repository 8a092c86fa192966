# Falcon: the targets the README and CI use.
CARGO ?= cargo

.PHONY: help run build test lint fmt bench bench-model bench-http bench-log train-model predict

help: ## List targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

run: ## Run one worker on :8000 with embedded defaults (shipped model, in-process cache)
	$(CARGO) run --release --locked -p falcon-cli -- serve

build: ## Release build of the `falcon` binary (target/release/falcon)
	$(CARGO) build --release --locked -p falcon-cli

test: ## The whole test suite (installs redis-server first if missing)
	./scripts/ensure-test-deps.sh
	$(CARGO) test --workspace --locked

lint: ## Formatting and clippy, warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

bench: bench-model bench-http bench-log ## All benchmarks

bench-model: ## criterion: prediction latency of the shipped model
	$(CARGO) bench --locked -p falcon-model --bench predict

bench-http: ## Load test of a release worker: /healthz vs /infer (same and unique text)
	./scripts/bench-http.sh

bench-log: ## Request-log writer throughput into a scratch database on the local Postgres
	./scripts/bench-log.sh

train-model: ## Retrain models/classifier.json from data/vader (deterministic)
	$(CARGO) run --release --locked -p falcon-cli -- train

predict: ## Classify TEXT from the shell: make predict TEXT="what a day"
	$(CARGO) run --release --locked -q -p falcon-cli -- predict "$(TEXT)"
