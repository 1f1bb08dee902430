// Command corral-driver-vm is the vm driver as an external plugin: each
// kernel is a qemu virtual machine (package drivers/vm), served over
// go-plugin with drivers.Serve. Build it with `make plugins`
// (bin/plugins/corral-driver-vm), prepare the guest's kernel and initramfs
// with `make vm-guest`, and start the agent with `-plugin-dir bin/plugins`.
// Its configuration is described in docs/plugins.md ("The vm driver").
package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/corral-dev/corral/drivers/vm"
	"github.com/corral-dev/corral/plugins/drivers"
)

func main() {
	logger := drivers.PluginLogger(slog.LevelInfo)
	self, err := os.Executable()
	if err != nil {
		self = ""
	}
	cfg, err := vm.LoadConfig(self)
	if err != nil {
		// Say why on stderr: the agent logs it with the refused plugin.
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	drivers.Serve(vm.New(cfg, logger))
}
