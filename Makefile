# pgml-operator — see README.md. Everything a target needs, it installs itself.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO   ?= cargo
VENV    := .venv
PY      := $(CURDIR)/$(VENV)/bin/python
SANDBOX := PYTHONPATH=$(CURDIR)/tests/testbed $(PY) -m sandbox

.PHONY: help deps build crds crds-check lint unit test bench chaos fuzz images sandbox-up sandbox-down dev clean

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

deps: ## install Debian packages, the Python venv (moto) and build the Kubernetes control plane
	@scripts/deps.sh >/dev/null

build: ## build the operator, the agent and the tools
	$(CARGO) build --workspace --bins

crds: ## regenerate crds/, the chart's copy and docs/reference/crds.md from the Rust types
	$(CARGO) run -q -p pgml-api --bin crdgen -- crds
	$(CARGO) run -q -p pgml-api --bin crdgen -- --docs docs/reference/crds.md
	@if [ -d charts/pgml-operator/crds ]; then cp crds/*.yaml charts/pgml-operator/crds/; fi

crds-check: ## fail when crds/, the chart's copy or the CRD reference is not what the Rust types generate
	@tmp=$$(mktemp -d) && $(CARGO) run -q -p pgml-api --bin crdgen -- $$tmp >/dev/null && \
	  $(CARGO) run -q -p pgml-api --bin crdgen -- --docs $$tmp/crds.md >/dev/null && \
	  stale=0; \
	  diff -ru -x crds.md crds $$tmp || stale=1; \
	  diff -u docs/reference/crds.md $$tmp/crds.md || stale=1; \
	  if [ -d charts/pgml-operator/crds ]; then diff -ru -x crds.md charts/pgml-operator/crds $$tmp || stale=1; fi; \
	  rm -rf $$tmp; \
	  if [ $$stale -ne 0 ]; then echo "crds/, charts/pgml-operator/crds/ or docs/reference/crds.md is stale: run 'make crds' and commit" >&2; exit 1; fi

.PHONY: chart-lint deploy-check
chart-lint: ## helm lint --strict the chart (default values; ServiceMonitor + bundled ZFS tools; one namespace + NetworkPolicies)
	@helm=$$(bash tests/testbed/helm/build.sh --print) && \
	  $$helm lint --strict charts/pgml-operator && \
	  $$helm lint --strict charts/pgml-operator --set metrics.serviceMonitor.enabled=true --set agent.zfs.tools=bundled && \
	  $$helm lint --strict charts/pgml-operator --set operator.watchNamespace=databases --set networkPolicy.enabled=true

deploy-check: ## fail when deploy/base, deploy/overlays/single-namespace or charts/pgml-operator/crds is not what the chart and crds/ give
	@tmp=$$(mktemp -d) && scripts/gen-deploy.sh $$tmp && \
	  stale=0; \
	  diff -ru deploy/base $$tmp/base || stale=1; \
	  diff -ru deploy/overlays/single-namespace $$tmp/overlays/single-namespace || stale=1; \
	  rm -rf $$tmp; \
	  if [ $$stale -ne 0 ]; then echo "deploy/base or deploy/overlays/single-namespace is stale: run scripts/gen-deploy.sh and commit" >&2; exit 1; fi
	@if ! diff -ru crds charts/pgml-operator/crds; then echo "charts/pgml-operator/crds is stale: run: cp crds/*.yaml charts/pgml-operator/crds/" >&2; exit 1; fi

lint: ## rustfmt and clippy -D warnings (the workspace and the fuzz targets)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	rustfmt --edition 2024 --check fuzz/fuzz_targets/*.rs
	$(CARGO) clippy -q --manifest-path fuzz/Cargo.toml --bins -- -D warnings

unit: ## unit tests only (no sandbox needed)
	$(CARGO) test --workspace --lib --bins

test: ## everything: unit tests and the tests against the sandbox (installs what is missing)
	@scripts/test.sh

bench: ## benchmarks on the sandbox (results: bench/results/*.json, *.md); PGML_BENCH=name runs one
	@scripts/bench.sh

chaos: ## kills, apiserver restarts and EC2 faults through the pool/snapshot flow; invariants (results: bench/results/chaos.*)
	@scripts/chaos.sh

fuzz: ## cargo-fuzz targets (ZFS parsers, spec validation, cron), PGML_FUZZ_SECONDS each (default 300)
	@scripts/fuzz.sh

images: ## container images without a registry (Debian packages, buildah): ~/.cache/pgml-operator/images/out/*.tar
	@scripts/images.sh

sandbox-up: deps build ## start the sandbox detached (.sandbox/kubeconfig, .sandbox/env)
	@$(SANDBOX) up --k8s-bin "$$(scripts/deps.sh 2>/dev/null | tail -n1)" --python $(PY)

sandbox-down: ## stop the sandbox
	@if [ -x $(PY) ]; then $(SANDBOX) down; fi

dev: deps build ## the sandbox with the operator and agents running, examples applied; Ctrl-C ends it
	@scripts/dev.sh

clean: sandbox-down
	rm -rf target $(VENV)
