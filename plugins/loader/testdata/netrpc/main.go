// Command netrpc is a test plugin that passes the handshake but speaks
// go-plugin's net/rpc protocol instead of gRPC.
package main

import (
	"net/rpc"

	"github.com/hashicorp/go-plugin"

	"github.com/corral-dev/corral/plugins/drivers"
)

// netRPCPlugin is a go-plugin plugin over net/rpc only.
type netRPCPlugin struct{}

// Greeter is the net/rpc service served.
type Greeter struct{}

// Hello answers.
func (Greeter) Hello(_ string, reply *string) error { *reply = "hello"; return nil }

func (netRPCPlugin) Server(*plugin.MuxBroker) (any, error) { return Greeter{}, nil }
func (netRPCPlugin) Client(_ *plugin.MuxBroker, c *rpc.Client) (any, error) {
	return c, nil
}

func main() {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: drivers.Handshake,
		Plugins:         plugin.PluginSet{drivers.PluginTypeDriver: netRPCPlugin{}},
	})
}
