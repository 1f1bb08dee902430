package exec

import (
	"os"
	"testing"

	"github.com/corral-dev/corral/drivers/shim"
)

// TestMain lets the test binary act as the tasks' shim (shim.Launch
// re-executes it) and as the fake agent of TestAgentKilled.
func TestMain(m *testing.M) {
	shim.MaybeRun()
	if os.Getenv(fakeAgentEnv) != "" {
		os.Exit(runFakeAgent())
	}
	os.Exit(m.Run())
}
