package runc

import (
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
