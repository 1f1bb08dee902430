// Command badapi is a test plugin that passes the handshake but reports an
// old driver API version.
package main

import (
	"context"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/plugins/drivers/proto"
)

// oldDriver answers PluginInfo like a plugin built against API 0.0.1.
type oldDriver struct {
	proto.UnimplementedDriverServer
}

func (oldDriver) PluginInfo(context.Context, *proto.PluginInfoRequest) (*proto.PluginInfoResponse, error) {
	return &proto.PluginInfoResponse{Type: drivers.PluginTypeDriver, Name: "old", ApiVersion: "0.0.1"}, nil
}

// oldPlugin serves oldDriver.
type oldPlugin struct {
	drivers.GRPCDriverPlugin
}

func (oldPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	proto.RegisterDriverServer(s, oldDriver{})
	return nil
}

func main() {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: drivers.Handshake,
		Plugins:         plugin.PluginSet{drivers.PluginTypeDriver: &oldPlugin{}},
		GRPCServer:      plugin.DefaultGRPCServer,
	})
}
