package main

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

func TestCreateSendsRequestAndPrintsID(t *testing.T) {
	f := newFakeCorral(t)
	r := mustRun(t, f.url, 0, "session", "create", "-name", "job1", "-cpu", "2", "-env", "K=V", "--", "python", "-c", "print(1)")
	if r.stdout != "00000001-1111-2222-3333-444444444444 job1\n" || r.stderr != "" {
		t.Fatalf("%+v", r)
	}
	want := api.CreateSessionRequest{Name: "job1", Type: "batch", Command: []string{"python", "-c", "print(1)"},
		Env: map[string]string{"K": "V"}, Resources: structs.Slots{structs.SlotCPU: structs.Whole(2)}}
	if len(f.creates) != 1 || !reflect.DeepEqual(f.creates[0], want) {
		t.Fatalf("sent %+v", f.creates)
	}
	r = mustRun(t, f.url, 0, "session", "create", "true")
	if r.stdout != "00000002-1111-2222-3333-444444444444\n" {
		t.Fatalf("unnamed: %q", r.stdout)
	}
}

func TestCreateWaitBatchSuccess(t *testing.T) {
	f := newFakeCorral(t)
	r := mustRun(t, f.url, 0, "session", "create", "-wait", "--", "sh", "-c", "echo hello")
	if r.stdout != "hello\n" {
		t.Fatalf("stdout %q: want only the command's output", r.stdout)
	}
	wantErr := []string{
		"00000001-1111-2222-3333-444444444444",
		"session 00000001: PENDING: waiting to be scheduled",
		"session 00000001: PENDING -> SCHEDULED: placed on node-1",
		"session 00000001: SCHEDULED -> RUNNING",
		"session 00000001: RUNNING -> TERMINATED: main1 exited with code 0",
		"warn",
	}
	if got := strings.Split(strings.TrimSpace(r.stderr), "\n"); !reflect.DeepEqual(got, wantErr) {
		t.Fatalf("stderr:\n%s\nwant:\n%s", r.stderr, strings.Join(wantErr, "\n"))
	}
}

func TestCreateWaitBatchFailure(t *testing.T) {
	f := newFakeCorral(t)
	r := mustRun(t, f.url, 1, "session", "create", "-wait", "--", "sh", "-c", "exit 3")
	last := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if got := last[len(last)-1]; got != "Error: session 00000001 ended TERMINATED (FAILURE): main1 exited with code 3" {
		t.Fatalf("last line %q\n%s", got, r.stderr)
	}
	if r.stdout != "hello\n" {
		t.Fatalf("a failed session's output is still printed: %q", r.stdout)
	}
	// A session that never reached an agent has no logs to print.
	r = mustRun(t, f.url, 1, "session", "create", "-wait", "--", "unplaceable")
	if r.stdout != "" || !strings.HasSuffix(r.stderr, "Error: session 00000002 ended ERROR (FAILURE): no agent has driver exec\n") || strings.Contains(r.stderr, "Warning") {
		t.Fatalf("%+v", r)
	}
}

func TestCreateWaitInteractive(t *testing.T) {
	f := newFakeCorral(t)
	r := mustRun(t, f.url, 0, "session", "create", "-type", "interactive", "-name", "nb", "-wait", "--", "sleep", "infinity")
	if r.stdout != "00000001-1111-2222-3333-444444444444 nb\n" || !strings.Contains(r.stderr, "SCHEDULED -> RUNNING") {
		t.Fatalf("%+v", r)
	}
	if s := f.sessions[0].d.Session; s.Status != structs.SessionRunning {
		t.Fatalf("followed past RUNNING: %s", s.Status)
	}
	r = mustRun(t, f.url, 1, "session", "create", "-type", "interactive", "-wait", "--", "unplaceable")
	if !strings.HasSuffix(r.stderr, "Error: session 00000002 ended ERROR: no agent has driver exec\n") {
		t.Fatalf("%+v", r)
	}
}

func TestCreateAPIErrorExits1(t *testing.T) {
	f := newFakeCorral(t)
	r := mustRun(t, f.url, 1, "session", "create", "-name", "taken", "--", "true")
	if r.stderr != "Error: a session named \"taken\" already exists\n" || r.stdout != "" {
		t.Fatalf("%+v", r)
	}
}

func TestSessionReadCommands(t *testing.T) {
	f := newFakeCorral(t)
	mustRun(t, f.url, 0, "session", "create", "-wait", "--", "echo", "hello")
	mustRun(t, f.url, 1, "session", "create", "-wait", "--", "sh", "-c", "exit 3")
	mustRun(t, f.url, 0, "session", "create", "-type", "interactive", "-name", "nb", "-wait", "--", "sleep", "infinity")

	r := mustRun(t, f.url, 0, "session", "list")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 4 || strings.Join(strings.Fields(lines[0]), " ") != "ID NAME TYPE STATUS RESULT AGE" {
		t.Fatalf("list:\n%s", r.stdout)
	}
	if got := strings.Join(strings.Fields(lines[3]), " "); got != "00000003 nb interactive RUNNING UNDEFINED 0s" {
		t.Fatalf("row %q", got)
	}
	if !strings.Contains(lines[1], "SUCCESS") || !strings.Contains(lines[2], "FAILURE") {
		t.Fatalf("list:\n%s", r.stdout)
	}

	r = mustRun(t, f.url, 0, "session", "list", "-status", "RUNNING", "-json")
	var list []*structs.Session
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil || len(list) != 1 || list[0].Name != "nb" {
		t.Fatalf("list -json: %v\n%s", err, r.stdout)
	}

	r = mustRun(t, f.url, 0, "session", "status", "00000002")
	for _, want := range []string{
		"00000002-1111-2222-3333-444444444444", "TERMINATED", "FAILURE", "main1 exited with code 3",
		"HOSTNAME", "node-1", "k0000002", "cpu=1", "Session history", "Kernel main1 history", "placed on node-1", "PENDING",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, r.stdout)
		}
	}
	r = mustRun(t, f.url, 0, "session", "status", "nb", "-json")
	var d api.SessionDetail
	if err := json.Unmarshal([]byte(r.stdout), &d); err != nil || d.Session.Name != "nb" || len(d.Kernels) != 1 {
		t.Fatalf("status -json: %v\n%s", err, r.stdout)
	}
	r = mustRun(t, f.url, 1, "session", "status", "does-not-exist")
	if r.stderr != "Error: no session with ID, ID prefix or name \"does-not-exist\"\n" {
		t.Fatalf("%q", r.stderr)
	}

	r = mustRun(t, f.url, 0, "session", "logs", "00000001")
	if r.stdout != "hello\n" || r.stderr != "warn\n" {
		t.Fatalf("logs: %+v", r)
	}
	r = mustRun(t, f.url, 1, "session", "logs", "-kernel", "sub9", "00000001")
	if !strings.Contains(r.stderr, `no kernel "sub9"`) {
		t.Fatalf("logs -kernel: %+v", r)
	}
}

func TestSessionExecAndDestroy(t *testing.T) {
	f := newFakeCorral(t)
	mustRun(t, f.url, 0, "session", "create", "-type", "interactive", "-name", "nb", "-wait", "--", "sleep", "infinity")
	r := mustRun(t, f.url, 4, "session", "exec", "nb", "-env", "X=1", "--", "sh", "-c", "echo from inside; exit 4")
	if r.stdout != "from inside\n" || r.stderr != "e\n" {
		t.Fatalf("exec: %+v", r)
	}
	want := api.ExecRequest{Kernel: "main1", Command: []string{"sh", "-c", "echo from inside; exit 4"}, Env: map[string]string{"X": "1"}}
	if !reflect.DeepEqual(f.execs[0], want) {
		t.Fatalf("sent %+v", f.execs[0])
	}
	r = mustRun(t, f.url, 0, "session", "destroy", "nb")
	if r.stdout != "session 00000001-1111-2222-3333-444444444444 destroyed (TERMINATING)\n" {
		t.Fatalf("destroy: %q", r.stdout)
	}
	r = mustRun(t, f.url, 1, "session", "exec", "nb", "true")
	if r.stderr != "Error: kernel main1 is TERMINATING: exec needs a RUNNING kernel\n" {
		t.Fatalf("exec after destroy: %q", r.stderr)
	}
	// Right after a create without -wait the session is still starting:
	// exec waits for it to run instead of failing.
	mustRun(t, f.url, 0, "session", "create", "-type", "interactive", "-name", "nb2", "--", "sleep", "infinity")
	r = mustRun(t, f.url, 4, "session", "exec", "nb2", "--", "sh", "-c", "echo from inside; exit 4")
	if r.stdout != "from inside\n" {
		t.Fatalf("exec into a starting session: %+v", r)
	}
	mustRun(t, f.url, 0, "session", "create", "-type", "interactive", "-name", "nb3", "--", "sleep", "infinity")
	r = mustRun(t, f.url, 1, "session", "exec", "nb3", "-wait-start", "0", "--", "true")
	if !strings.Contains(r.stderr, "exec needs a RUNNING kernel") {
		t.Fatalf("exec without waiting: %q", r.stderr)
	}
}

func TestNodeCommands(t *testing.T) {
	f := newFakeCorral(t)
	r := mustRun(t, f.url, 0, "node", "list")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 {
		t.Fatalf("node list:\n%s", r.stdout)
	}
	if got := strings.Join(strings.Fields(lines[1]), " "); got != "a1b2c3d4 node-1 ALIVE - eligible default exec 1.5/8 512MiB/16GiB - 3h" {
		t.Fatalf("row %q", got)
	}
	r = mustRun(t, f.url, 0, "node", "list", "-json")
	var agents []*structs.Agent
	if err := json.Unmarshal([]byte(r.stdout), &agents); err != nil || len(agents) != 1 || agents[0].Capacity[structs.SlotCPU] != structs.Whole(8) {
		t.Fatalf("node list -json: %v\n%s", err, r.stdout)
	}
	r = mustRun(t, f.url, 0, "node", "status", "node-1")
	for _, want := range []string{"a1b2c3d4-0000", "ALIVE", "SLOT", "cpu", "1.5", "6.5", "15.5GiB"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("node status lacks %q:\n%s", want, r.stdout)
		}
	}
	mustRun(t, f.url, 1, "node", "status", "zzz")
}

func TestNewChanges(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	h := []structs.StatusChange{
		{Status: "PENDING", Info: "queued", Time: t0},
		{Status: "PENDING", Info: "no agent has 64 cpu free", Time: t0.Add(time.Second)},
		{Status: "SCHEDULED", Time: t0.Add(2 * time.Second)},
		{Status: "RUNNING", Time: t0.Add(3 * time.Second)},
	}
	s := &structs.Session{Status: "RUNNING", History: h}
	if got := newChanges(s, structs.StatusChange{}); !reflect.DeepEqual(got, h[3:]) {
		t.Errorf("first look: %v", got)
	}
	if got := newChanges(s, h[1]); !reflect.DeepEqual(got, h[2:]) {
		t.Errorf("after h[1]: %v", got)
	}
	if got := newChanges(s, h[3]); len(got) != 0 {
		t.Errorf("nothing new: %v", got)
	}
	// The entry seen last fell out of a bounded history: only the latest.
	if got := newChanges(s, structs.StatusChange{Status: "PENDING", Time: t0.Add(-time.Hour)}); !reflect.DeepEqual(got, h[3:]) {
		t.Errorf("trimmed: %v", got)
	}
	// No history at all: the current status stands in for it.
	bare := &structs.Session{Status: "PENDING", StatusInfo: "queued"}
	if got := newChanges(bare, structs.StatusChange{}); len(got) != 1 || got[0].Status != "PENDING" {
		t.Errorf("bare: %v", got)
	}
	if got := newChanges(bare, structs.StatusChange{Status: "PENDING", Info: "queued"}); len(got) != 0 {
		t.Errorf("bare, unchanged: %v", got)
	}
}

func TestCreateRetriesUnderOneIdempotencyKey(t *testing.T) {
	createBackoff = time.Millisecond
	f := newFakeCorral(t)
	// A 503, then a leader that made the session and died before answering.
	f.failCreates = []int{503, 0}
	r := mustRun(t, f.url, 0, "session", "create", "-name", "job1", "--", "true")
	if r.stdout != "00000001-1111-2222-3333-444444444444 job1\n" {
		t.Fatalf("stdout %q: want the one session's ID", r.stdout)
	}
	if len(f.sessions) != 1 || len(f.keys) != 3 {
		t.Fatalf("%d sessions after %d sends, want 1 after 3", len(f.sessions), len(f.keys))
	}
	if f.keys[0] == "" || f.keys[1] != f.keys[0] || f.keys[2] != f.keys[0] {
		t.Fatalf("idempotency keys %q: want one key, the same on every send", f.keys)
	}
	if !strings.Contains(r.stderr, "retrying") {
		t.Errorf("stderr %q: want a note about the retries", r.stderr)
	}
	// The next invocation is another session: another key.
	mustRun(t, f.url, 0, "session", "create", "--", "true")
	if len(f.sessions) != 2 || f.keys[3] == f.keys[0] {
		t.Fatalf("second invocation: %d sessions, keys %q", len(f.sessions), f.keys)
	}
	// Errors that are answers are not retried.
	f.failCreates = []int{400}
	mustRun(t, f.url, 1, "session", "create", "--", "true")
	if len(f.keys) != 5 {
		t.Fatalf("a 400 was sent %d times, want once", len(f.keys)-4)
	}
}
