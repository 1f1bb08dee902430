package server_test

import (
	"os"
	"testing"

	"github.com/corral-dev/corral/drivers/shim"
)

// TestMain lets the test binary act as the exec driver's task shim.
func TestMain(m *testing.M) {
	shim.MaybeRun()
	os.Exit(m.Run())
}
