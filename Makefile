# berth — build, test, run. `make test` is the single test command (README);
# `make check` is the fast tier for the edit loop.

GO      ?= go
BIN     := bin/berth
GOFILES  = $(shell find . -name '*.go' -not -path './compat/node_modules/*' -not -path './.git/*')
# Each fuzz target's run (a duration, or Nx for N executions); FUZZFLAGS go
# to go test, e.g. FUZZFLAGS=-parallel=1 on a shared machine; FUZZ_TARGETS
# and FUZZ_PKGS (regexps on target names and package directories) pick
# targets.
FUZZTIME     ?= 5m
FUZZFLAGS    ?=
FUZZ_TARGETS ?= .
FUZZ_PKGS    ?= .

# pipefail: a test run piped through testreport fails when go test does.
SHELL       := /bin/bash
.SHELLFLAGS := -o pipefail -ec

# Every test run goes through testreport: plain go test's output, then each
# skipped test with its reason (a package whose PostgreSQL tests skipped
# would otherwise show "ok" like one that ran them).
TESTREPORT = $(GO) run ./internal/testreport

.PHONY: all build test check fmt-check vet tidy-check gotest gotest-memory gotest-fast raw-flows compat fuzz run clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/berth

# The full suite, which CI runs (.ci/run): gofmt, vet, go.mod tidiness, the
# Go unit/e2e tests with the race detector, the memory budgets without it,
# the raw mosquitto and curl flows, and the official Azure Node SDK
# compatibility suite. PostgreSQL, NATS and mosquitto are required here: a
# test that misses one fails (BERTH_REQUIRE_SERVICES=1) instead of skipping.
test: fmt-check vet tidy-check gotest gotest-memory build raw-flows compat

# The fast tier for the edit loop (a few minutes): gofmt, vet, go.mod
# tidiness, the Go unit and e2e tests once, without -race; no raw or Node
# flows. A missing service skips its tests and says so.
check: fmt-check vet tidy-check gotest-fast

fmt-check:
	@files="$$(gofmt -l $(GOFILES))"; \
	if [ -n "$$files" ]; then echo "gofmt: these files need gofmt -w:"; echo "$$files"; exit 1; fi; \
	echo "gofmt: ok"

vet:
	$(GO) vet ./...

tidy-check:
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }
	@echo "go mod tidy: ok"

gotest:
	BERTH_REQUIRE_SERVICES=1 $(GO) test -race -count=1 -json ./... | $(TESTREPORT)

# The idle-connection memory budgets: -race inflates memory, so under it
# they skip, and they are measured here.
gotest-memory:
	BERTH_REQUIRE_SERVICES=1 $(GO) test -count=1 -json -run '^TestIdle.*Memory$$' ./frontend/mqtt/ ./frontend/amqp/ | $(TESTREPORT)

gotest-fast:
	$(GO) test -count=1 -json ./... | $(TESTREPORT)

raw-flows: build
	BERTH_BIN=$(CURDIR)/$(BIN) bash scripts/raw-mqtt-flow.sh
	BERTH_BIN=$(CURDIR)/$(BIN) bash scripts/raw-https-flow.sh

compat: build
	cd compat && npm ci --no-audit --no-fund && BERTH_BIN=../$(BIN) node --test

# Every fuzz target in the repository, one after the other, FUZZTIME each
# (FUZZTIME_<Target>=… overrides one); docs/fuzzing.md records a full run.
fuzz:
	FUZZTIME='$(FUZZTIME)' FUZZFLAGS='$(FUZZFLAGS)' FUZZ_TARGETS='$(FUZZ_TARGETS)' FUZZ_PKGS='$(FUZZ_PKGS)' bash scripts/fuzz.sh

# make run ARGS='--https-addr …' passes flags to berth serve.
run: build
	./$(BIN) serve $(ARGS)

clean:
	rm -rf bin compat/node_modules
