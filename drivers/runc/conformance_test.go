package runc

import (
	"sync"
	"time"

	"testing"

	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/plugins/drivers/testutils"
)

func TestConformance(t *testing.T) {
	image := testImage(t)
	testutils.RunConformance(t,
		func(t *testing.T) drivers.Driver { return imageDriver{newTestDriver(t), image} },
		testutils.WithHostPids(hostPids),
		testutils.SkipConformance("KilledBySignal",
			"a container's command is its pid namespace's init, which the kernel does not let kill itself (kill -KILL $$ is ignored, see pid_namespaces(7)); TestKilledBySignal covers signals from outside"),
	)
}

// TestRecoveryConformance runs the recovery scenarios; the restart is a new
// driver on the same state dir, as a restarted agent has.
func TestRecoveryConformance(t *testing.T) {
	image := testImage(t)
	var dirs sync.Map // driver -> its state dir
	mk := func(t *testing.T, dir string) drivers.Driver {
		d := imageDriver{newTestDriver(t, WithStateDir(dir)), image}
		dirs.Store(drivers.Driver(d), dir)
		return d
	}
	testutils.RunRecoveryConformance(t, func(t *testing.T) drivers.Driver { return mk(t, t.TempDir()) },
		func(t *testing.T, old drivers.Driver) drivers.Driver {
			dir, _ := dirs.Load(old)
			return mk(t, dir.(string))
		}, 10*time.Second)
}
