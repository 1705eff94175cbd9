# cartstream: the two commands a newcomer needs are `make demo` and `make test`.
.DEFAULT_GOAL := help
.PHONY: help up down status clean build bootstrap demo test lint unit replay dashboards

help: ## show the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

up: ## start the local stack (Kafka, schema registry, Cassandra, Prometheus), installing what is missing
	@bash scripts/stack.sh up

down: ## stop the demo's services and the local stack
	@bash scripts/services.sh stop
	@bash scripts/stack.sh down

status: ## show the local stack's health
	@bash scripts/stack.sh status

clean: ## stop the stack and delete its data (keeps downloads)
	@bash scripts/stack.sh clean

build: ## build every cartstream binary
	@cargo build --workspace --bins

bootstrap: up build ## create topics, register schemas, create CQL tables
	@./target/debug/cartstream-admin bootstrap
	@./target/debug/cartstream-scylla-sink migrate

demo: ## run the pipeline end to end on the local stack and show where to look
	@bash scripts/demo.sh

replay: build ## rebuild all derived state from the topics as a new generation: make replay GEN=g2
	@bash scripts/replay.sh generation $(or $(GEN),g2)

dashboards: ## regenerate grafana/dashboards/*.json from grafana/dashboards.py
	@python3 grafana/dashboards.py

lint: ## rustfmt and clippy, warnings are errors
	@cargo fmt --all -- --check
	@cargo clippy --workspace --all-targets -- -D warnings

unit: ## the tests that need no running stack
	@cargo test --workspace --lib --bins

test: ## every test: lint, unit, property and integration tests against the real local stack
	@bash scripts/test.sh
