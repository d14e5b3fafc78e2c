# resilient-operator: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(CURDIR)/target

.PHONY: help demo test test-unit bench lint fmt crd list-types cluster cluster-down cluster-status build install-plugin

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

demo: ## local 3-zone cluster + operator + example app + a zone outage, and what survived
	e2e/demo.sh

test: ## every test: unit, integration and end-to-end against the local cluster (started and stopped here)
	e2e/test.sh

bench: ## every benchmark scenario (~60 min): docs/benchmarks.md, bench/results.json; QUICK=1: ~4 min, bench/out/quick/; ALLOC=glibc, musl or mimalloc: memory only, bench/out/alloc-*/ (the full run measures the musl build, as the image)
	QUICK=$(QUICK) ALLOC=$(ALLOC) bench/run.sh

test-unit: ## unit and property tests only (no cluster)
	$(CARGO) test --locked --lib

lint: ## rustfmt and clippy, as CI runs them
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt

crd: ## regenerate crds/ from the Rust types (and its copies in config/crd and the Helm chart)
	$(CARGO) run --locked -q -- crd > crds/resilientapps.resilient.dev.yaml
	cp crds/resilientapps.resilient.dev.yaml config/crd/
	cp crds/resilientapps.resilient.dev.yaml charts/resilient-operator/crds/

list-types: ## regenerate src/controller/diff/list_types.json from the local cluster's OpenAPI schema (run `make cluster` first)
	RESILIENT_WRITE_LIST_TYPES=1 $(CARGO) test --locked --test ownership list_types_match_the_live_schema || true
	$(CARGO) test --locked --test ownership list_types_match_the_live_schema

build: ## build the operator (debug)
	$(CARGO) build --locked

PLUGIN_DIR ?= $(HOME)/.local/bin
install-plugin: ## the kubectl plugin: release build copied to ~/.local/bin/kubectl-resilient (PLUGIN_DIR=...)
	$(CARGO) build --locked --release --bin resilient-operator
	install -D -m 0755 $(CARGO_TARGET_DIR)/release/resilient-operator $(PLUGIN_DIR)/kubectl-resilient
	@echo "kubectl resilient status   # with $(PLUGIN_DIR) on PATH"

cluster: ## start the local 3-zone control plane (builds it on first use)
	e2e/cluster.sh up

cluster-down: ## stop the local control plane
	e2e/cluster.sh down

cluster-status: ## what runs, versions, nodes by zone
	e2e/cluster.sh status
