# corral: `make run` starts a single-node cluster on loopback, `make test`
# runs the whole suite. Both install what they need when it is missing.

GO      ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/corral-dev/corral/version.Version=$(VERSION)
# seccomp: libcontainer loads the runc kernels' seccomp profile only when
# built with cgo and this tag (libseccomp-dev, installed by `make deps`).
# A build without it works, but runc kernels then run without seccomp.
# make test passes it through GOFLAGS, so that the binaries the e2e tests
# build get it too.
TAGS    ?= seccomp
# go-nvml's header marks many NVML calls deprecated: hundreds of warnings
# from cgo otherwise.
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations
GOFILES := $(shell find . -name '*.go' -not -path './.git/*')

.PHONY: all build run test deps lint bench clean

.DEFAULT_GOAL := all
include plugins.mk

all: build

build: bin/corral plugins

# bin/corral-shim runs the exec kernels' shims for bin/corral, which uses it
# only when both have the same version. bin/corral-kernel (static: it runs
# inside any image) is the ssh server, barrier and launcher of cluster
# kernels; the agent places it into them.
bin/corral: $(GOFILES) go.mod go.sum | deps
	@mkdir -p bin
	$(GO) build -tags "$(TAGS)" -ldflags "$(LDFLAGS)" -o bin/corral ./cmd/corral
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/corral-shim ./cmd/corral-shim
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS) -s -w" -o bin/corral-kernel ./cmd/corral-kernel

# deps installs the Debian packages the tests and drivers use, when missing.
deps:
	@need=""; \
	command -v ip >/dev/null 2>&1 || need="$$need iproute2"; \
	command -v busybox >/dev/null 2>&1 || need="$$need busybox-static"; \
	command -v iptables >/dev/null 2>&1 || need="$$need iptables"; \
	command -v pkg-config >/dev/null 2>&1 || need="$$need pkg-config"; \
	[ -e /usr/include/seccomp.h ] || need="$$need libseccomp-dev"; \
	command -v debootstrap >/dev/null 2>&1 || need="$$need debootstrap"; \
	command -v qemu-system-x86_64 >/dev/null 2>&1 || need="$$need qemu-system-x86"; \
	if [ -n "$$need" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing:$$need"; \
			DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null; \
		else echo "missing packages:$$need (install them as root)"; fi; \
	fi

run: deps build
	./bin/corral dev

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet -tags "$(TAGS)" ./...

test: deps lint
	GOFLAGS="$(GOFLAGS) -tags=$(TAGS)" $(GO) test -count=1 -timeout 20m ./...

bench: build
	$(GO) test -tags "$(TAGS)" -run '^$$' -bench . -benchtime 1x ./server/... 
	@echo "whole-system figures: start 'make run' and then 'bin/corral bench'"

clean:
	rm -rf bin
