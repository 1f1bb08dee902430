package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLightDependencies keeps corral-shim small: besides the standard
// library it may link only x/sys and the packages that run in a task's
// shim and init. A heavier import (gRPC, protobuf, the driver plugin API)
// would bring back the start-up cost that the binary exists to avoid.
func TestLightDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	allowed := map[string]bool{
		"github.com/corral-dev/corral/cmd/corral-shim":         true,
		"github.com/corral-dev/corral/drivers/shim":            true,
		"github.com/corral-dev/corral/drivers/exec/cgroup":     true,
		"github.com/corral-dev/corral/drivers/exec/taskrun":    true,
		"github.com/corral-dev/corral/drivers/internal/logcap": true,
		"github.com/corral-dev/corral/internal/btrfsioc":       true, // one list of numbers, for the init's seccomp filter
		"github.com/corral-dev/corral/version":                 true, // one string
	}
	for _, p := range strings.Fields(string(out)) {
		first, _, _ := strings.Cut(p, "/")
		if !strings.Contains(first, ".") || allowed[p] || strings.HasPrefix(p, "golang.org/x/sys/") {
			continue
		}
		t.Errorf("corral-shim links %s; keep it to the standard library, x/sys and the task-side packages", p)
	}
}
