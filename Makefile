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

.PHONY: all build run test deps lint bench clean dist

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
	command -v chromium >/dev/null 2>&1 || need="$$need chromium"; \
	command -v qemu-system-x86_64 >/dev/null 2>&1 || need="$$need qemu-system-x86"; \
	command -v mkfs.btrfs >/dev/null 2>&1 || need="$$need btrfs-progs"; \
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

# dist: dist/corral_VERSION_linux_amd64.tar.gz and dist/corral_VERSION_amd64.deb
# (the binaries, the systemd units, example configs in /etc/corral, docs)
# and dist/SHA256SUMS. nfpm runs at a pinned version through `go run`
# (from the Go module proxy; nothing else is fetched).
NFPM_VERSION ?= v2.48.0
# A Debian version: a tag v1.2.3[-N-gHASH][-dirty] -> 1.2.3[+N.gHASH][.dirty];
# an untagged tree -> 0.0.0+git.HASH[.dirty].
DEB_VERSION ?= $(shell v='$(VERSION)'; case "$$v" in (v[0-9]*.*|[0-9]*.*) echo "$$v" | sed 's/^v//; s/-/+/; s/-/./g';; (*) echo "0.0.0+git.$$v" | sed 's/-/./g';; esac)
DIST_NAME := corral_$(DEB_VERSION)_linux_amd64

dist: deps
	@# the binaries again, so that they carry this VERSION
	$(MAKE) -B bin/corral VERSION='$(VERSION)'
	$(MAKE) plugins
	rm -rf dist && mkdir -p dist/$(DIST_NAME)/bin dist/$(DIST_NAME)/plugins dist/$(DIST_NAME)/systemd dist/$(DIST_NAME)/etc dist/$(DIST_NAME)/docs
	cp bin/corral bin/corral-shim bin/corral-kernel dist/$(DIST_NAME)/bin/
	cp bin/plugins/corral-driver-vm dist/$(DIST_NAME)/plugins/
	cp packaging/corral-server.service packaging/corral-agent.service dist/$(DIST_NAME)/systemd/
	cp packaging/server.hcl packaging/agent.hcl dist/$(DIST_NAME)/etc/
	cp packaging/default dist/$(DIST_NAME)/etc/corral.default
	cp README.md dist/$(DIST_NAME)/
	cp docs/operator.md docs/configuration.md docs/metrics.md docs/upgrades.md dist/$(DIST_NAME)/docs/
	cd dist/$(DIST_NAME) && find . -type f ! -name SHA256SUMS | sort | xargs sha256sum > SHA256SUMS
	tar -C dist --owner=0 --group=0 --sort=name -czf dist/$(DIST_NAME).tar.gz $(DIST_NAME)
	rm -rf dist/$(DIST_NAME)
	CORRAL_DEB_VERSION='$(DEB_VERSION)' $(GO) run github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION) package -f packaging/nfpm.yaml -p deb -t dist/
	cd dist && sha256sum *.tar.gz *.deb > SHA256SUMS
	@cat dist/SHA256SUMS

clean:
	rm -rf bin dist
