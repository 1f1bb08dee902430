package main

import "github.com/corral-dev/corral/drivers/runc"

// runcInitIfRequested makes this process a container's init when the runc
// driver re-executed the binary for that (it then never returns); main
// calls it before anything else.
func runcInitIfRequested() { runc.InitIfRequested() }
