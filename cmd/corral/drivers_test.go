package main

import (
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"
)

// driverNames returns the names of the built-in drivers an agent started
// with args offers.
func driverNames(t *testing.T, args ...string) []string {
	t.Helper()
	f, err := parseDaemonFlags("agent", append([]string{"-join", "127.0.0.1:1"}, args...))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var names []string
	for _, d := range builtinDrivers(slog.New(slog.DiscardHandler), f, dir, dir) {
		names = append(names, d.Name())
	}
	return names
}

func TestHostDriverOnlyWithFlag(t *testing.T) {
	if names := driverNames(t); slices.Contains(names, "host") || !slices.Contains(names, "exec") {
		t.Errorf("default drivers %v: want exec and no host driver", names)
	}
	if names := driverNames(t, "-enable-host-driver"); !slices.Contains(names, "host") {
		t.Errorf("drivers with -enable-host-driver %v: want the host driver", names)
	}
}

func TestExecUserFlag(t *testing.T) {
	for _, u := range []string{"root", "0", "corral-no-such-user"} {
		if _, err := parseDaemonFlags("agent", []string{"-join", "127.0.0.1:1", "-exec-user", u}); err == nil || !strings.Contains(err.Error(), "-exec-user") {
			t.Errorf("-exec-user %s: err = %v, want it refused", u, err)
		}
	}
	if _, err := parseDaemonFlags("dev", []string{"-exec-user", "daemon"}); err != nil {
		t.Errorf("-exec-user daemon: %v", err)
	}
}

// TestLivenessFlags: negative grace periods are usage errors that name the flag.
func TestLivenessFlags(t *testing.T) {
	for _, args := range [][]string{{"-agent-lost-after", "-1s"}, {"-heartbeat-ttl", "-5s"}} {
		if _, err := parseDaemonFlags("server", args); err == nil || !strings.Contains(err.Error(), "-agent-lost-after and -heartbeat-ttl must not be negative") {
			t.Errorf("server %v: %v", args, err)
		}
	}
	f, err := parseDaemonFlags("server", []string{"-agent-lost-after", "90s"})
	if err != nil || f.agentLostAfter != 90*time.Second {
		t.Fatalf("-agent-lost-after 90s: %+v %v", f, err)
	}
}
