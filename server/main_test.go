package server_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/corral-dev/corral/drivers/runc"
	"github.com/corral-dev/corral/drivers/shim"
)

// TestMain lets the test binary act as the exec driver's task shim and
// as a runc container's init and shim.
func TestMain(m *testing.M) {
	runc.InitIfRequested() // the container init never gets past this
	shim.MaybeRun()
	os.Exit(runTests(m))
}

// kernelHelper is a corral-kernel built for the test agents: cluster
// kernels run their commands under it.
var kernelHelper string

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "corral-server-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	kernelHelper = filepath.Join(dir, "corral-kernel")
	build := exec.Command("go", "build", "-o", kernelHelper, "./cmd/corral-kernel")
	build.Dir = ".."
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "building corral-kernel: %v\n", err)
		return 1
	}
	return m.Run()
}
