package runc

import (
	"os"
	"sync/atomic"

	"github.com/opencontainers/runc/libcontainer"
)

// initArg is the first argument with which libcontainer re-executes the
// running binary (through /proc/self/exe) as a container's init process.
const initArg = "init"

// initHooked records that InitIfRequested ran in this process, i.e. that
// the binary can serve as a container's init.
var initHooked atomic.Bool

// InitIfRequested turns this process into a container's init process when
// libcontainer re-executed the binary for that, and then never returns:
// libcontainer sets up the container and executes the kernel's command in
// its place. Otherwise it returns at once. Every binary that uses the runc
// driver must call it first thing in main (and test binaries in TestMain),
// before it starts goroutines or reads flags, and then shim.MaybeRun: the
// containers' shims are re-executions of the binary too, and libcontainer
// re-executes the shim as the init.
func InitIfRequested() {
	// The environment check keeps a CLI subcommand named "init" working:
	// libcontainer always passes its init pipe.
	if len(os.Args) > 1 && os.Args[1] == initArg && os.Getenv("_LIBCONTAINER_INITPIPE") != "" {
		libcontainer.Init() // exits the process
	}
	initHooked.Store(true)
}
