// Command badproto is a test plugin that speaks another go-plugin protocol
// version than the agent.
package main

import (
	"github.com/hashicorp/go-plugin"

	"github.com/corral-dev/corral/drivers/exec"
	"github.com/corral-dev/corral/plugins/drivers"
)

func main() {
	hs := drivers.Handshake
	hs.ProtocolVersion++
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: hs,
		Plugins:         drivers.PluginSet(exec.New(nil)),
		GRPCServer:      plugin.DefaultGRPCServer,
	})
}
