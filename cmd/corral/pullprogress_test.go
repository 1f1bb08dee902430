package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/corral-dev/corral/structs"
)

// TestPullProgressLinesThrottled: create -wait shows an image pull's
// progress at most once per pullLineEvery, however often the kernels
// report it; other status changes still show at once.
func TestPullProgressLinesThrottled(t *testing.T) {
	var errb bytes.Buffer
	c := &cli{stdout: &bytes.Buffer{}, stderr: &errb}
	sess := &structs.Session{Status: structs.SessionPulling, StatusInfo: "pulling image r/x:1",
		History: []structs.StatusChange{{Status: string(structs.SessionPulling), Info: "pulling image r/x:1"}}}
	last := c.printProgress("abc", structs.StatusChange{}, sess)
	for _, info := range []string{"pulling image r/x:1: 4.0MiB / 64MiB (layer 1 of 2)", "pulling image r/x:1: 8.0MiB / 64MiB (layer 1 of 2)",
		"pulling image r/x:1: 12MiB / 64MiB (layer 1 of 2)", "pulling image r/x:1: 16MiB / 64MiB (layer 2 of 2)"} {
		s := *sess
		s.StatusInfo = info
		last = c.printProgress("abc", last, &s)
	}
	lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[1], "4.0MiB / 64MiB") {
		t.Fatalf("progress lines: want the status and one progress line, got:\n%s", errb.String())
	}
	s := *sess
	s.Status, s.StatusInfo = structs.SessionRunning, "running"
	s.History = append(s.History, structs.StatusChange{Status: string(structs.SessionRunning), Info: "running"})
	c.printProgress("abc", last, &s)
	if !strings.Contains(errb.String(), "PULLING -> RUNNING") {
		t.Fatalf("the status change after the pull is missing:\n%s", errb.String())
	}
}
