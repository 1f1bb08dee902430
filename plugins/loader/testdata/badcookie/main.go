// Command badcookie is a test plugin built with another magic cookie, like
// a plugin of some other application dropped in the plugin dir.
package main

import (
	"github.com/hashicorp/go-plugin"

	"github.com/corral-dev/corral/drivers/exec"
	"github.com/corral-dev/corral/plugins/drivers"
)

func main() {
	hs := drivers.Handshake
	hs.MagicCookieKey, hs.MagicCookieValue = "OTHER_APP_PLUGIN", "not-corral"
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: hs,
		Plugins:         drivers.PluginSet(exec.New(nil)),
		GRPCServer:      plugin.DefaultGRPCServer,
	})
}
