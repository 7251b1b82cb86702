# berth — build, test, run. `make test` is the single test command (README).

GO      ?= go
BIN     := bin/berth
GOFILES  = $(shell find . -name '*.go' -not -path './compat/node_modules/*' -not -path './.git/*')

.PHONY: all build test fmt-check vet gotest raw-flows compat run clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/berth

# gofmt check + vet + Go unit/e2e tests with the race detector + the raw
# mosquitto and curl flows + the official Azure Node SDK compatibility suite.
test: fmt-check vet gotest build raw-flows compat

fmt-check:
	@files="$$(gofmt -l $(GOFILES))"; \
	if [ -n "$$files" ]; then echo "gofmt: these files need gofmt -w:"; echo "$$files"; exit 1; fi; \
	echo "gofmt: ok"

vet:
	$(GO) vet ./...

gotest:
	$(GO) test -race -count=1 ./...

raw-flows: build
	BERTH_BIN=$(CURDIR)/$(BIN) bash scripts/raw-mqtt-flow.sh
	BERTH_BIN=$(CURDIR)/$(BIN) bash scripts/raw-https-flow.sh

compat: build
	cd compat && npm ci --no-audit --no-fund && BERTH_BIN=../$(BIN) node --test

run: build
	./$(BIN) serve

clean:
	rm -rf bin compat/node_modules
