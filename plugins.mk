# plugins.mk: external driver plugins. Included from the Makefile.
#
#   make plugins        builds the example driver plugin into bin/plugins,
#                       the directory to give `corral agent -plugin-dir`
#   make plugin-proto   regenerates plugins/drivers/proto from driver.proto
#                       (needs protoc, protoc-gen-go and protoc-gen-go-grpc)

GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
PLUGIN_DIR := bin/plugins
PLUGIN_GOFILES := $(shell find cmd/corral-driver-example plugins drivers structs -name '*.go' -not -name '*_test.go')

.PHONY: plugins plugin-proto

plugins: $(PLUGIN_DIR)/corral-driver-example

$(PLUGIN_DIR)/corral-driver-example: $(PLUGIN_GOFILES) go.mod go.sum
	@mkdir -p $(PLUGIN_DIR)
	$(GO) build -o $@ ./cmd/corral-driver-example

plugin-proto:
	cd plugins/drivers/proto && PATH="$$PATH:$$($(GO) env GOPATH)/bin" $(GO) generate .
