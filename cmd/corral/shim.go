package main

import "github.com/corral-dev/corral/drivers/shim"

// runShimIfRequested makes this process a task's shim, and never returns,
// when a driver re-executed the binary for that (shim.Launch); otherwise it
// returns at once and tells Launch that this binary can act as a shim. main
// calls it before anything else.
func runShimIfRequested() { shim.MaybeRun() }
