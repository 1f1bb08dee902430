# plugins.mk: external driver plugins. Included from the Makefile.
#
#   make plugins        builds the example driver plugin and the vm driver
#                       plugin into bin/plugins, the directory to give
#                       `corral agent -plugin-dir`
#   make vm-guest       prepares the vm driver's guest kernel and initramfs
#                       in $(VM_CACHE) (scripts/vm-guest.sh)
#   make plugin-proto   regenerates plugins/drivers/proto from driver.proto
#                       (needs protoc, protoc-gen-go and protoc-gen-go-grpc)

GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
PLUGIN_DIR := bin/plugins
PLUGIN_GOFILES := $(shell find cmd/corral-driver-example cmd/corral-driver-vm plugins drivers structs -name '*.go' -not -name '*_test.go')
VM_CACHE ?= /var/cache/corral/vm

.PHONY: plugins plugin-proto vm-guest

plugins: $(PLUGIN_DIR)/corral-driver-example $(PLUGIN_DIR)/corral-driver-vm

$(PLUGIN_DIR)/corral-driver-example: $(PLUGIN_GOFILES) go.mod go.sum
	@mkdir -p $(PLUGIN_DIR)
	$(GO) build -o $@ ./cmd/corral-driver-example

$(PLUGIN_DIR)/corral-driver-vm: $(PLUGIN_GOFILES) go.mod go.sum
	@mkdir -p $(PLUGIN_DIR)
	$(GO) build -o $@ ./cmd/corral-driver-vm

# The guest kernel (Debian's, from apt) and a busybox initramfs with the
# guest agent (cmd/corral-vm-guest, static): outside the repository, where
# the vm plugin's default configuration looks.
vm-guest:
	GO=$(GO) ./scripts/vm-guest.sh $(VM_CACHE)

plugin-proto:
	cd plugins/drivers/proto && PATH="$$PATH:$$($(GO) env GOPATH)/bin" $(GO) generate .
