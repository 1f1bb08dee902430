// Command corral-shim runs the shims and the namespace inits of the exec
// driver's tasks for the corral agent, which starts it instead of
// re-executing its own, much larger binary (see shim.UseHelper): it links
// only the packages that those processes need, so that it starts in a
// fraction of the agent's start-up time. It is not meant to be run by
// hand; `corral-shim version` prints its version, which must be the
// agent's.
package main

import (
	"fmt"
	"os"

	"github.com/corral-dev/corral/drivers/shim"
	buildversion "github.com/corral-dev/corral/version"
	// The task's init runs from taskrun's package initialiser (when the
	// first argument is taskrun.InitArg), which also registers the shim
	// runner of kind taskrun.Kind.
	_ "github.com/corral-dev/corral/drivers/exec/taskrun"
)

// version is the build's, set with -ldflags in the version package.
var version = buildversion.Version

func main() {
	shim.MaybeRun() // exits when the first argument is shim.Arg
	if len(os.Args) == 2 && os.Args[1] == "version" {
		fmt.Printf("corral-shim %s\n", version)
		return
	}
	fmt.Fprintln(os.Stderr, "corral-shim runs task shims for the corral agent only; it is not meant to be run by hand")
	os.Exit(2)
}
