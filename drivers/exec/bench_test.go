package exec

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/corral-dev/corral/drivers/exec/taskrun"
	"github.com/corral-dev/corral/drivers/shim"
	"github.com/corral-dev/corral/plugins/drivers/testutils"
)

// BenchmarkStart measures how long Start takes to get a kernel running,
// with the exec driver's isolation (init, namespaces, mounts) and without
// it (the host driver), with shims that re-execute the test binary
// ("reexec") and shims from corral-shim ("helper"). Both use cgroups where
// the host has them.
func BenchmarkStart(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("isolation needs root")
	}
	helper := buildShimHelper(b)
	b.Cleanup(func() { shim.UseHelper("", taskrun.Kind) })
	for _, sc := range []struct{ name, helper string }{{"reexec", ""}, {"helper", helper}} {
		for _, bc := range []struct {
			name string
			d    *Driver
		}{
			{"namespaces", New(nil)},
			{"host", NewHost(nil)},
		} {
			b.Run(bc.name+"/"+sc.name, func(b *testing.B) {
				shim.UseHelper(sc.helper, taskrun.Kind)
				var total time.Duration
				for b.Loop() {
					cfg := testutils.TaskConfig(b, "true")
					start := time.Now()
					if _, err := bc.d.Start(context.Background(), cfg); err != nil {
						b.Fatal(err)
					}
					total += time.Since(start)
					testutils.WaitResult(b, bc.d, cfg.ID, testTimeout)
					if err := bc.d.Destroy(context.Background(), cfg.ID, true); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/start")
			})
		}
	}
}
