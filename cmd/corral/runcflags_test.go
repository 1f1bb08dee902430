package main

import (
	"strings"
	"testing"

	"github.com/corral-dev/corral/drivers/runc"
)

func TestRuncFlags(t *testing.T) {
	f, err := parseDaemonFlags("agent", []string{"-join", "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	if r := f.runc; !r.seccomp || r.userns.mode != runc.UserNSAuto || r.maxLogBytes != 100<<20 || r.diskLimitBytes != 10<<30 {
		t.Errorf("defaults = %+v, want seccomp on, userns auto, 100 MiB logs, 10 GiB disk", r)
	}
	f, err = parseDaemonFlags("agent", []string{"-join", "127.0.0.1:1", "-runc-seccomp=false", "-userns",
		"-max-log-size", "1M", "-runc-disk-limit", "0"})
	if err != nil {
		t.Fatal(err)
	}
	if r := f.runc; r.seccomp || r.userns.mode != runc.UserNSOn || r.maxLogBytes != 1<<20 || r.diskLimitBytes != 0 {
		t.Errorf("flags = %+v, want seccomp off, userns on, 1 MiB logs, no disk limit", r)
	}
	if f, err = parseDaemonFlags("dev", []string{"-userns=false"}); err != nil || f.runc.userns.mode != runc.UserNSOff {
		t.Errorf("-userns=false: %+v, %v", f, err)
	}
	for _, bad := range [][]string{{"-userns=maybe"}, {"-max-log-size", "lots"}, {"-runc-disk-limit", "-1G"}} {
		if _, err := parseDaemonFlags("dev", bad); err == nil || !strings.Contains(err.Error(), strings.SplitN(bad[0], "=", 2)[0]) {
			t.Errorf("%v: err = %v, want it refused", bad, err)
		}
	}
}
