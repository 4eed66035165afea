# modelgate developer tasks. CI runs `make test` (see .ci/run) on a fresh Debian
# machine, so `deps` must install everything beyond the Rust toolchain.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

CARGO  ?= cargo
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.requirements-installed
DEMO_ARGS ?=

.PHONY: deps system-deps build demo test fmt clippy fuzz-smoke

# Install missing Debian packages and the Python test venv (quick when done).
deps: system-deps $(STAMP)

# Install missing Debian packages: cmake (for pingora's zlib-ng), python3-venv.
system-deps:
	@PYTHON=$(PYTHON) scripts/system-deps.sh

# The venv for tests/openai_sdk_check.py; redone when requirements change.
$(STAMP): tests/requirements.txt | system-deps
	@test -x $(VENV)/bin/pip || $(PYTHON) -m venv --clear $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -r tests/requirements.txt
	@touch $@

# Release build of target/release/modelgate.
build: system-deps
	$(CARGO) build --release

# Run the gateway in front of the built-in demo model (foreground; Ctrl-C stops).
demo: deps build
	./target/release/modelgate demo $(DEMO_ARGS)

# Everything CI checks: formatting, lints, all tests (the integration tests run
# the OpenAI SDK check with $MODELGATE_PYTHON), doc tests.
test: export MODELGATE_PYTHON := $(CURDIR)/$(VENV)/bin/python
test: deps
	@PYTHON=$(PYTHON) scripts/system-deps.sh redis-server chromium # tests/policy.rs, tests/approval.rs
	@command -v node >/dev/null && command -v npm >/dev/null || PYTHON=$(PYTHON) scripts/system-deps.sh nodejs npm
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error # playwright-core drives Debian's chromium
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	scripts/check-monitoring.sh # the Grafana dashboard and Prometheus rules (promtool)
	$(CARGO) test --all-targets
	scripts/check-deploy.sh # Dockerfile (hadolint), kustomize + Kubernetes schemas, modelgate -t on the manifests' config
	$(CARGO) test --doc
	$(MAKE) fuzz-smoke

# A short run of each cargo-fuzz target (fuzz/). Stable Rust with
# RUSTC_BOOTSTRAP=1 stands in for nightly's sanitizer flags.
FUZZ_SECONDS ?= 20
fuzz-smoke:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	cd fuzz && for t in codecs masker; do \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -O $$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=4096 || exit 1; \
	done

# Format the code in place.
fmt:
	$(CARGO) fmt --all

# Lint like CI does.
clippy: system-deps
	$(CARGO) clippy --all-targets -- -D warnings
