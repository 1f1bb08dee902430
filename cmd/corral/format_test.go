package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

func TestFormatAge(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second:                          "0s",
		0:                                     "0s",
		12*time.Second + 900*time.Millisecond: "12s",
		59 * time.Second:                      "59s",
		3*time.Minute + 59*time.Second:        "3m",
		2*time.Hour + 30*time.Minute:          "2h",
		47 * time.Hour:                        "47h",
		50 * time.Hour:                        "2d",
		400 * 24 * time.Hour:                  "400d",
	} {
		if got := formatAge(d); got != want {
			t.Errorf("formatAge(%v) = %q, want %q", d, got, want)
		}
	}
	if since(time.Time{}, time.Now()) != "-" {
		t.Error("zero time")
	}
}

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		850 * time.Microsecond:            "850µs",
		12345 * time.Microsecond:          "12.3ms",
		1234567 * time.Microsecond:        "1.23s",
		90*time.Second + time.Millisecond: "1m30s",
	} {
		if got := formatDuration(d); got != want {
			t.Errorf("formatDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestShortID(t *testing.T) {
	if shortID("0123456789abcdef") != "01234567" || shortID("abc") != "abc" {
		t.Fatal(shortID("0123456789abcdef"))
	}
}

// fields splits a rendered table into rows of whitespace-separated cells.
func fields(s string) [][]string {
	var rows [][]string
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		rows = append(rows, strings.Fields(l))
	}
	return rows
}

func TestRenderSessions(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	var b bytes.Buffer
	err := renderSessions(&b, []*structs.Session{
		{ID: "11111111-aaaa", Type: "batch", Status: "TERMINATED", Result: "SUCCESS", CreatedAt: now.Add(-12 * time.Second)},
		{ID: "22222222-bbbb", Name: "a-long-session-name", Type: "interactive", Status: "PENDING", CreatedAt: now.Add(-3 * time.Hour)},
	}, now)
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{
		{"ID", "NAME", "TYPE", "STATUS", "RESULT", "AGE"},
		{"11111111", "-", "batch", "TERMINATED", "SUCCESS", "12s"},
		{"22222222", "a-long-session-name", "interactive", "PENDING", "-", "3h"},
	}
	got := fields(b.String())
	if len(got) != len(want) {
		t.Fatalf("table:\n%s", b.String())
	}
	for i := range want {
		if strings.Join(got[i], "|") != strings.Join(want[i], "|") {
			t.Errorf("row %d: %v, want %v", i, got[i], want[i])
		}
	}
	// Columns line up: every row has STATUS at the same offset.
	lines := strings.Split(b.String(), "\n")
	col := strings.Index(lines[0], "STATUS")
	if strings.Index(lines[1], "TERMINATED") != col || strings.Index(lines[2], "PENDING") != col {
		t.Errorf("columns do not line up:\n%s", b.String())
	}
}

func TestRenderSessionDetail(t *testing.T) {
	created := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	code := 3
	d := &api.SessionDetail{
		Session: &structs.Session{
			ID: "11111111-aaaa", Name: "job", Type: "batch", ResourceGroup: "default", Status: "TERMINATED",
			StatusInfo: "main1 exited with code 3", Result: "FAILURE", CreatedAt: created, TerminatedAt: created.Add(1500 * time.Millisecond),
			ScheduleAttempts: 2,
			History: []structs.StatusChange{
				{Status: "PENDING", Info: "no agent has 4 cpu free\n(2 agents checked)", Time: created},
				{Status: "TERMINATED", Info: "main1 exited with code 3", Time: created.Add(1500 * time.Millisecond)},
			},
		},
		Kernels: []*structs.Kernel{{
			ID: "kkkkkkkk-1111", Hostname: "main1", AgentID: "agent-id-1234", Status: "TERMINATED", ExitCode: &code,
			Resources: structs.Slots{structs.SlotCPU: structs.Whole(4), structs.SlotMem: structs.Whole(1 << 30)},
			History:   []structs.StatusChange{{Status: "RUNNING", Time: created.Add(time.Second)}},
		}},
	}
	var b bytes.Buffer
	if err := renderSessionDetail(&b, d, map[string]*structs.Agent{"agent-id-1234": {Name: "node-7"}}, created.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"Status info:", "main1 exited with code 3", "Result:", "FAILURE", "Schedule attempts:  2", "(after 1.5s)",
		"main1     kkkkkkkk  node-7  TERMINATED  3     -     -       cpu=4 mem=1GiB",
		"+0s", "no agent has 4 cpu free (2 agents checked)", "+1.5s", "Kernel main1 history", "+1s",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("lacks %q:\n%s", want, out)
		}
	}
}

// TestRenderClusterSessionDetail: a cluster session shows its job settings
// and each kernel's rank and cpuset.
func TestRenderClusterSessionDetail(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	d := &api.SessionDetail{
		Session: &structs.Session{ID: "22222222-bbbb", Type: "batch", Status: "RUNNING", CreatedAt: now, ClusterSize: 2,
			RunOn: "main", FailOn: "any", StartOrder: "barrier"},
		Kernels: []*structs.Kernel{
			{ID: "k1", Hostname: "main1", Status: "RUNNING", Cpuset: "0-1", Launch: &structs.ClusterLaunch{NodeRank: 0, NumNodes: 2}},
			{ID: "k2", Hostname: "sub1", Status: "RUNNING", Cpuset: "2-3,6", Launch: &structs.ClusterLaunch{NodeRank: 1, NumNodes: 2}},
		},
	}
	var b bytes.Buffer
	if err := renderSessionDetail(&b, d, nil, now); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"Job:", "run_on main, fail_on any, start_order barrier",
		"HOSTNAME  ID  AGENT  STATUS   EXIT  RANK  CPUSET  RESOURCES",
		"main1     k1  -      RUNNING  -     0/2   0-1     -",
		"sub1      k2  -      RUNNING  -     1/2   2-3,6   -",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("lacks %q:\n%s", want, out)
		}
	}
}

// TestRenderKernelOnDisconnectedAgent: a live kernel on a DISCONNECTED
// agent shows UNKNOWN with its last known status; an ended one does not.
func TestRenderKernelOnDisconnectedAgent(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	d := &api.SessionDetail{
		Session: &structs.Session{ID: "ssssssss-1", Type: "interactive", Status: "RUNNING", CreatedAt: now.Add(-time.Hour)},
		Kernels: []*structs.Kernel{
			{ID: "kkkkkkkk-1", Hostname: "main1", AgentID: "a1", Status: structs.KernelRunning},
			{ID: "kkkkkkkk-2", Hostname: "sub1", AgentID: "a1", Status: structs.KernelTerminated},
		},
	}
	agents := map[string]*structs.Agent{"a1": {Name: "node-1", Status: structs.AgentDisconnected, DisconnectedAt: now.Add(-90 * time.Second)}}
	var b bytes.Buffer
	if err := renderSessionDetail(&b, d, agents, now); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if !strings.Contains(out, "UNKNOWN (agent disconnected 1m; last RUNNING)") {
		t.Errorf("the running kernel is not shown UNKNOWN:\n%s", out)
	}
	if !strings.Contains(out, "sub1      kkkkkkkk  node-1  TERMINATED") {
		t.Errorf("the ended kernel changed:\n%s", out)
	}
}

func TestRenderAgentsUnhealthyDriver(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	a := &structs.Agent{
		ID: "33333333-cccc", Name: "n1", Status: structs.AgentAlive, Drivers: []string{"exec"},
		UnhealthyDrivers: map[string]string{"example": "unhealthy: driver plugin crashed 5 times within 3m0s"},
		RegisteredAt:     now.Add(-time.Minute),
	}
	var b bytes.Buffer
	if err := renderAgents(&b, []*structs.Agent{a}, now); err != nil {
		t.Fatal(err)
	}
	if got := fields(b.String()); len(got) != 2 || got[1][6] != "exec,example(unhealthy)" {
		t.Errorf("node list:\n%s", b.String())
	}
	b.Reset()
	if err := renderAgent(&b, a, now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"exec, example(unhealthy)", "Driver example:", "crashed 5 times"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("node status does not say %q:\n%s", want, b.String())
		}
	}
}

func TestRenderAgentsDrained(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	a := &structs.Agent{ID: "44444444-dddd", Name: "n2", Status: structs.AgentAlive, Drain: true, Drivers: []string{"exec"}, RegisteredAt: now}
	var b bytes.Buffer
	if err := renderAgents(&b, []*structs.Agent{a}, now); err != nil {
		t.Fatal(err)
	}
	if got := fields(b.String()); len(got) != 2 || got[0][3] != "DRAIN" || got[0][4] != "ELIGIBILITY" || got[1][2] != "ALIVE" || got[1][3] != "drained" || got[1][4] != "ineligible" {
		t.Errorf("node list of a drained agent:\n%s", b.String())
	}
	// Drained with kernels still there: draining; an agent that is not
	// drained but DISCONNECTED is not eligible either.
	busy := *a
	busy.Occupied = structs.Slots{structs.SlotCPU: structs.Whole(1)}
	off := &structs.Agent{ID: "66666666", Name: "n3", Status: structs.AgentDisconnected, RegisteredAt: now}
	up := &structs.Agent{ID: "77777777", Name: "n4", Status: structs.AgentAlive, RegisteredAt: now}
	b.Reset()
	if err := renderAgents(&b, []*structs.Agent{&busy, off, up}, now); err != nil {
		t.Fatal(err)
	}
	got := fields(b.String())
	if len(got) != 4 || got[1][3] != "draining" || got[1][4] != "ineligible" || got[2][3] != "-" || got[2][4] != "ineligible" || got[3][3] != "-" || got[3][4] != "eligible" {
		t.Errorf("node list:\n%s", b.String())
	}
}
