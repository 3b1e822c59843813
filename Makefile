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
# Linters (make lint). staticcheck rather than golangci-lint with staticcheck,
# unused and revive: staticcheck has the unused check (U1000) itself and, with
# all its checks on, the doc-comment and naming checks that revive's defaults
# would add; it is a much smaller install than golangci-lint, whose build
# carries every linter it wraps, and staticcheck.conf is its whole config.
STATICCHECK_VERSION := v0.8.2
GOVULNCHECK_VERSION := v1.9.0
# govulncheck's database, built locally: vuln.go.dev is not reachable from
# the machines this project builds and tests on, only the Go module proxy is.
# golang.org/x/vulndb carries every Go vulnerability report as OSV JSON in
# data/osv, and its cmd/indexdb writes them out in the database layout that
# govulncheck reads with -db file://DIR (index/db.json, index/modules.json,
# index/vulns.json, ID/<id>.json). This pins the snapshot of 2026-11-05 (the
# date in the pseudo-version); to refresh, set VULNDB_VERSION to what
#   go list -m golang.org/x/vulndb@latest
# prints and run make lint, which builds the database of that version.
VULNDB_VERSION := v0.0.0-20261105234957-e22db6528018
VULNDB := $(BIN)/vulndb-$(VULNDB_VERSION)

# Packages whose code runs goroutines: tested with the race detector.
RACE_PKGS := ./coordinator/... ./agent/... ./cli/... ./demo/demoapp/... ./internal/gossip/... ./internal/testkit/ ./internal/testkit/testcluster/...
# End-to-end packages: real binaries, several processes each; run one
# package at a time so they do not compete for the two cores.
E2E_PKGS := ./test/e2e/... ./test/faults/...
# Fuzz budgets are counts of executions, not durations: Go 1.26's
# fuzz coordinator can fail a target with a bare "context deadline exceeded"
# when a -fuzztime deadline races a busy worker (golang/go#75804, fixed in Go
# 1.27); a count has no deadline to race, and is as thorough on a slow machine.
FUZZTIME ?= 200000x
FUZZTIME_SHORT ?= 5000x
FUZZMINIMIZE ?= 2000x
FUZZMINIMIZE_SHORT ?= 200x

.PHONY: all build test unit e2e race fuzz fuzz-short lint vet fmt-check staticcheck vulncheck tidy-check proto proto-check tools deps cgroup2 demo bench clean

all: build

$(BIN)/buf:
	GOBIN=$(BIN) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(BIN)/protoc-gen-go:
	GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(BIN)/protoc-gen-go-grpc:
	GOBIN=$(BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

$(BIN)/staticcheck:
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
$(BIN)/govulncheck:
	GOBIN=$(BIN) $(GO) install golang.org/x/vuln/cmd/govulncheck@$(GOVULNCHECK_VERSION)
$(BIN)/indexdb:
	GOBIN=$(BIN) $(GO) install golang.org/x/vulndb/cmd/indexdb@$(VULNDB_VERSION)

# The module's directory comes from go mod download (it lives in GOMODCACHE);
# the database is written aside and moved in place so that an interrupted
# build is not taken for a finished one.
$(VULNDB)/index/db.json: | $(BIN)/indexdb
	@json=$$($(GO) mod download -json golang.org/x/vulndb@$(VULNDB_VERSION)) || { echo "$$json"; exit 1; }; \
	osv=$$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p' <<<"$$json")/data/osv; \
	n=$$(ls "$$osv" 2>/dev/null | grep -c '\.json$$'); \
	if [ "$$n" -eq 0 ]; then echo "golang.org/x/vulndb@$(VULNDB_VERSION): no OSV reports in $$osv"; exit 1; fi; \
	echo "indexdb -vulns $$osv -out $(VULNDB) ($$n reports)"; \
	rm -rf $(VULNDB).tmp && $(BIN)/indexdb -vulns "$$osv" -out $(VULNDB).tmp && \
	rm -rf $(VULNDB) && mv $(VULNDB).tmp $(VULNDB)

tools: $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc

# Test servers and tools from Debian's packages, as package=what-it-installs
# (a command, or a file pattern): a real Prometheus for the PromQL rules;
# chromium, the browser the dashboard's test drives headless
# (test/e2e/dashboard_test.go; with CI=true a missing chromium fails that
# test); qemu, a kernel and a static busybox for the virtual machine that
# runs the agent's cgroup tests on cgroup v2 (test/cgroup2).
DEBIAN_TEST_PACKAGES := prometheus=prometheus chromium=chromium \
	qemu-system-x86=qemu-system-x86_64 linux-image-amd64=/boot/vmlinuz-* busybox-static=busybox
deps:
	@missing=; for pc in $(DEBIAN_TEST_PACKAGES); do p=$${pc%%=*}; c=$${pc#*=}; \
	  case $$c in /*) ls $$c >/dev/null 2>&1 || missing="$$missing $$p";; \
	    *) command -v $$c >/dev/null 2>&1 || missing="$$missing $$p";; esac; \
	  [ "$$p" != busybox-static ] || dpkg -s busybox-static >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  echo "installing Debian's packages:$$missing"; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@prometheus --version 2>&1 | head -n 1
	@chromium --version 2>/dev/null | head -n 1

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

staticcheck: $(BIN)/staticcheck
	staticcheck ./...

# Reachable vulnerabilities in the standard library that only a newer Go
# fixes: the machines this project builds on have go1.26.8; go1.26.9 fixes
# all of these but GO-2026-6809 (crypto/x509), which go1.26.10 fixes.
# Upgrading Go is the fix. go1.26.10 is on the module proxy as the module
# golang.org/toolchain, but these machines set GOTOOLCHAIN=local (in
# GOROOT/go.env), so a toolchain line in go.mod would not fetch it: moving
# every build to it is a decision of its own. Until then these are named on
# every run but do not fail it, and make vulncheck names those that a newer
# Go has cleared, to be removed here.
VULNCHECK_NEEDS_NEWER_GO := \
	GO-2026-6599 GO-2026-6600 GO-2026-6603 GO-2026-6604 GO-2026-6605 \
	GO-2026-6607 GO-2026-6608 GO-2026-6610 GO-2026-6611 GO-2026-6612 \
	GO-2026-6613 GO-2026-6617 GO-2026-6809

# govulncheck reports the vulnerabilities whose code this module reaches
# (exit status 3 when there are any); each one fails make lint but those
# listed above.
vulncheck: $(BIN)/govulncheck $(VULNDB)/index/db.json
	@echo "govulncheck -db file://$(VULNDB) ./..."
	@out=$$(govulncheck -db file://$(VULNDB) ./... 2>&1); rc=$$?; \
	found=$$(sed -n 's/^Vulnerability #[0-9]*: \(GO-[0-9-]*\)$$/\1/p' <<<"$$out" | sort -u); \
	if [ $$rc -ne 0 ] && [ $$rc -ne 3 -o -z "$$found" ]; then echo "$$out"; exit 1; fi; \
	known=$$(printf '%s\n' $(VULNCHECK_NEEDS_NEWER_GO) | sort -u); \
	new=$$(comm -23 <(echo "$$found") <(echo "$$known") | xargs); \
	gone=$$(comm -13 <(echo "$$found") <(echo "$$known") | xargs); \
	if [ -n "$$new" ]; then echo "$$out"; echo; echo "govulncheck: reachable: $$new"; exit 1; fi; \
	if [ -n "$$found" ]; then echo "govulncheck: reachable, fixed only by a newer Go (VULNCHECK_NEEDS_NEWER_GO): $$(xargs <<<"$$found")"; fi; \
	if [ -n "$$gone" ]; then echo "govulncheck: no longer found, remove from VULNCHECK_NEEDS_NEWER_GO: $$gone"; fi

# Fails when go.mod or go.sum is not what go mod tidy makes of them.
tidy-check:
	@$(GO) mod tidy -diff || (echo "go.mod/go.sum are not tidy: run 'go mod tidy' and commit" && exit 1)

lint: fmt-check tidy-check vet staticcheck vulncheck

# Everything CI checks.
test: proto-check lint build deps unit cgroup2 e2e race fuzz-short

# The Prometheus tests need prometheus/promtool: with this set their absence
# fails them.
unit: export FLEETWAVE_REQUIRE_PROMETHEUS = 1
unit:
	$(GO) test -count=1 -timeout 20m $$($(GO) list ./... | grep -v -e /test/e2e -e /test/faults -e /test/cgroup2)

# The agent's cgroup tests on cgroup v2, in a virtual machine (software
# emulation: a few minutes; test/cgroup2). Missing tools fail it here.
cgroup2: deps
	FLEETWAVE_REQUIRE_CGROUP2=1 $(GO) test -count=1 -timeout 30m -v ./test/cgroup2

race:
	$(GO) test -count=1 -race -timeout 20m $(RACE_PKGS)

# Coverage-guided runs of every fuzz target: short ones in make test
# (fuzz-short), longer with make fuzz (FUZZTIME=2000000x make fuzz for more).
FUZZ_TARGETS := \
	FuzzUnpackEntries:./agent/install FuzzUnpack:./agent/install FuzzUnpackResources:./agent/install \
	FuzzParse:./internal/spec FuzzParse:./agent/analysis \
	FuzzVerify:./internal/signing FuzzVerifyRollback:./internal/signing FuzzSignCSR:./internal/tlsutil FuzzIdentityURI:./internal/tlsutil \
	FuzzValidateAgentMessages:./coordinator FuzzJudge:./coordinator/judge
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
	  echo "fuzz $${t%%:*} in $${t#*:} for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$${t%%:*}$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) "$${t#*:}"; \
	done

fuzz-short:
	$(MAKE) fuzz FUZZTIME=$(FUZZTIME_SHORT) FUZZMINIMIZE=$(FUZZMINIMIZE_SHORT)

# Files tests save (the dashboard test's screenshots) go to
# $(E2E_ARTIFACTS)/_artifacts/ (t.ArtifactDir; the test logs the path).
E2E_ARTIFACTS ?= $(CURDIR)/.test-artifacts
e2e: deps
	mkdir -p $(E2E_ARTIFACTS)
	FLEETWAVE_REQUIRE_PROMETHEUS=1 $(GO) test -count=1 -p 1 -timeout 30m -artifacts -outputdir $(E2E_ARTIFACTS) $(E2E_PKGS)

demo:
	$(GO) run ./demo

# Benchmarks print numbers (docs/BENCHMARKS.md); the fleet simulator's scale
# table runs the real coordinator binary against N simulated agents
# (FLEETWAVE_SIM_HOSTS=1000 make bench for a quick one); then the lead time
# of a small fleet of real agents (6 hosts, python's http.server) against
# Nomad's rolling update (test/e2e TestLeadTimeSmallFleet, FLEETWAVE_BENCH=1),
# and one real agent's own footprint over 205 deploys (TestAgentFootprint).
FLEETWAVE_SIM_HOSTS ?= 1000,5000,10000
# The spread harness: hosts/coordinators (FLEETWAVE_SIM_SPREAD= make bench to skip it).
FLEETWAVE_SIM_SPREAD ?= 10000/1,20000/2
# The artifact-spread harness: fleet sizes, each without and with
# peer-to-peer (FLEETWAVE_SIM_ARTIFACT= make bench to skip it).
FLEETWAVE_SIM_ARTIFACT ?= 1000,5000
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./coordinator/... ./agent/... ./internal/grpcwindow
	FLEETWAVE_SIM_HOSTS=$(FLEETWAVE_SIM_HOSTS) $(GO) test -count=1 -run '^TestScale$$' -v -timeout 60m ./internal/testkit/sim
	FLEETWAVE_BENCH=1 $(GO) test -count=1 -run '^(TestLeadTimeSmallFleet|TestAgentFootprint)$$' -v -timeout 30m ./test/e2e
	FLEETWAVE_SIM_SPREAD=$(FLEETWAVE_SIM_SPREAD) $(GO) test -count=1 -run '^TestScaleCoordinators$$' -v -timeout 60m ./internal/testkit/sim
	FLEETWAVE_SIM_ARTIFACT=$(FLEETWAVE_SIM_ARTIFACT) $(GO) test -count=1 -run '^TestArtifactSpread$$' -v -timeout 60m ./internal/testkit/sim

clean:
	rm -rf $(BIN) .proto-check .test-artifacts
