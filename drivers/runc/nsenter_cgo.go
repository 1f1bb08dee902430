//go:build cgo

package runc

import (
	// The container init's first stage (joining and creating namespaces
	// before the Go runtime starts) is C code that only cgo builds.
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
	// Without it libcontainer cannot set device cgroup rules and refuses
	// configurations that have some (every default one does).
	_ "github.com/opencontainers/cgroups/devices"
)

// cgoEnabled says whether the binary holds libcontainer's nsenter stage.
const cgoEnabled = true
