# lazypull — see README.md. The two entry points are `make run` and `make test`.
export PATH := $(PATH):/usr/local/go/bin
export GOFLAGS := -mod=vendor

TAGS    := containers_image_openpgp exclude_graphdriver_btrfs exclude_graphdriver_devicemapper
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
BIN     := bin/lazypull
GO      := go

.PHONY: all build fork run test test-unit test-e2e test-compat fuzz bench bench-compat bench-e2e bench-fork bench-real vet clean deps-run deps-test deps-fork

all: build

build:
	$(GO) build -tags "$(TAGS)" -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/lazypull

# The fork: podman 5.6.2 and buildah 1.41.5 with the plugin, into bin/podman and bin/buildah
# (contrib/fork/build.sh; cached under /var/cache/lazypull/fork, seconds when nothing changed).
fork:
	contrib/fork/build.sh

deps-fork:
	contrib/dev/install-deps.sh fork

deps-run:
	contrib/dev/install-deps.sh run

deps-test:
	contrib/dev/install-deps.sh test

# The main job: install what is needed, build, and run the layer store in the foreground.
run: deps-run build
	$(BIN) serve

# Every test: vet, unit and in-process tests under the race detector (FUSE mounts included),
# the SOCI compatibility module, and the end-to-end tests with stock podman.
test: deps-test vet test-unit test-compat test-e2e

vet:
	$(GO) vet -tags "$(TAGS)" ./...

test-unit:
	$(GO) test -race -count=1 -timeout 30m -tags "$(TAGS)" $$($(GO) list -tags "$(TAGS)" ./... | grep -v /tests/e2e)

test-e2e: build fork
	LAZYPULL_BIN=$(CURDIR)/$(BIN) LAZYPULL_FORK_BIN_DIR=$(CURDIR)/bin $(GO) test -count=1 -timeout 60m -tags "$(TAGS)" -v ./tests/e2e/...

test-compat: build
	cd tests/compat && LAZYPULL_BIN=$(CURDIR)/$(BIN) GOFLAGS=-mod=mod $(GO) test -count=1 -timeout 30m ./...

fuzz:
	contrib/dev/fuzz.sh $(FUZZTIME)

# Benchmarks (numbers, not pass/fail): ztoc in-package, the three-way builder
# comparison against stdlib and SOCI, and the podman end-to-end script.
bench:
	$(GO) test -run '^$$' -bench . -benchmem -tags "$(TAGS)" ./ztoc/...

bench-compat:
	cd tests/compat && GOFLAGS=-mod=mod $(GO) test -run '^$$' -bench BenchmarkBuild -benchmem .

bench-e2e:
	tests/bench/run.sh

# Pull + first run, forked podman 5.6.2 (lazy) vs stock podman 4.3.1 (eager), same run.
bench-fork: build fork
	LAZYPULL_BIN=$(CURDIR)/$(BIN) LAZYPULL_FORK_BIN_DIR=$(CURDIR)/bin $(GO) test -count=1 -timeout 30m -tags "$(TAGS)" \
		-run '^$$' -bench BenchmarkForkVsStock -benchtime 1x ./tests/e2e/

# The real-distribution image (Debian + python/numpy/pandas/scipy + gcc):
# stock podman, lazypull (first/second machine, cached, prefetch) and
# stargz-store, pull + first run; table and chart in tests/bench/results/.
bench-real:
	tests/bench/real.sh $(BENCHFLAGS)

clean:
	rm -rf bin
