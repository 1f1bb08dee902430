// Package version holds corral's build version: one variable, set by the
// build (make) with
//
//	-ldflags "-X github.com/corral-dev/corral/version.Version=v1.2.3"
//
// and read by every binary (corral version, the agent's registration and
// gossip tags, the shim and kernel helpers), so that they all agree.
package version

// Version is the build's version ("dev" for a plain go build).
var Version = "dev"
