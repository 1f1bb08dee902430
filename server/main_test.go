package server_test

import (
	"os"
	"testing"

	"github.com/corral-dev/corral/drivers/runc"
	"github.com/corral-dev/corral/drivers/shim"
)

// TestMain lets the test binary act as the exec driver's task shim and
// as a runc container's init and shim.
func TestMain(m *testing.M) {
	runc.InitIfRequested() // the container init never gets past this
	shim.MaybeRun()
	os.Exit(m.Run())
}
