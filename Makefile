# Fleetwave. `make demo` shows a release rolling across a local fleet;
# `make test` is what CI runs. Tools are installed into ./bin at pinned
# versions from the Go module proxy; nothing else is needed but Go.

SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
export PATH := $(BIN):$(PATH)

BUF_VERSION := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.5.1

# Packages whose code runs goroutines: tested with the race detector.
RACE_PKGS := ./coordinator/... ./agent/... ./internal/cli/... ./internal/demoapp/... ./internal/gossip/... ./internal/testcluster/...
# End-to-end packages: real binaries, several processes each; run one
# package at a time so they do not compete for the two cores.
E2E_PKGS := ./internal/e2e/... ./internal/faults/...
FUZZTIME ?= 2m
FUZZTIME_SHORT ?= 8s

.PHONY: all build test unit e2e race fuzz fuzz-short lint vet fmt-check proto proto-check tools deps demo bench clean

all: build

$(BIN)/buf:
	GOBIN=$(BIN) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(BIN)/protoc-gen-go:
	GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(BIN)/protoc-gen-go-grpc:
	GOBIN=$(BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

tools: $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc

# Test servers from Debian's packages: a real Prometheus for the PromQL rules.
deps:
	@command -v prometheus >/dev/null 2>&1 || { \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  echo "installing Debian's prometheus package"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@prometheus --version 2>&1 | head -n 1

build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./cmd/...

proto: tools
	buf lint
	buf generate

# Fails when the committed generated code differs from what buf generates.
proto-check: tools
	buf lint
	rm -rf .proto-check && mkdir -p .proto-check
	buf generate --output .proto-check
	diff -r -x '*.proto' -x 'doc.go' proto .proto-check/proto || (echo "generated code in proto/ is stale: run 'make proto' and commit" && rm -rf .proto-check && exit 1)
	rm -rf .proto-check

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

lint: fmt-check vet

# Everything CI checks.
test: proto-check lint build deps unit e2e race fuzz-short

# The Prometheus tests need prometheus/promtool: with this set their absence
# fails them.
unit: export FLEETWAVE_REQUIRE_PROMETHEUS = 1
unit:
	$(GO) test -count=1 -timeout 20m $$($(GO) list ./... | grep -v -e /internal/e2e -e /internal/faults)

race:
	$(GO) test -count=1 -race -timeout 20m $(RACE_PKGS)

# Coverage-guided runs of every fuzz target: short ones in make test
# (fuzz-short), longer with make fuzz (FUZZTIME=10m make fuzz for more).
FUZZ_TARGETS := \
	FuzzUnpackEntries:./agent/install FuzzUnpack:./agent/install \
	FuzzParse:./internal/spec FuzzParse:./agent/analysis \
	FuzzVerify:./internal/signing FuzzSignCSR:./internal/tlsutil FuzzIdentityURI:./internal/tlsutil \
	FuzzValidateAgentMessages:./coordinator
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
	  echo "fuzz $${t%%:*} in $${t#*:} for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$${t%%:*}$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 5s "$${t#*:}"; \
	done

fuzz-short:
	$(MAKE) fuzz FUZZTIME=$(FUZZTIME_SHORT)

e2e: deps
	FLEETWAVE_REQUIRE_PROMETHEUS=1 $(GO) test -count=1 -p 1 -timeout 30m $(E2E_PKGS)

demo:
	$(GO) run ./internal/demo

# Benchmarks print numbers (docs/BENCHMARKS.md); the fleet simulator's scale
# table runs the real coordinator binary against N simulated agents
# (FLEETWAVE_SIM_HOSTS=1000 make bench for a quick one).
FLEETWAVE_SIM_HOSTS ?= 1000,5000,10000
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./coordinator/... ./agent/...
	FLEETWAVE_SIM_HOSTS=$(FLEETWAVE_SIM_HOSTS) $(GO) test -count=1 -run '^TestScale$$' -v -timeout 60m ./internal/sim

clean:
	rm -rf $(BIN) .proto-check
