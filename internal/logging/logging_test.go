package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/sirupsen/logrus"
)

// records decodes the JSON lines a logger wrote.
func records(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimRight(buf.String(), "\n"), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("not a JSON line (%v): %s", err, line)
		}
		out = append(out, rec)
	}
	return out
}

func newJSON(t *testing.T, level string) (*bytes.Buffer, *slog.Logger) {
	t.Helper()
	var buf bytes.Buffer
	l, err := New(&buf, level, "json")
	if err != nil {
		t.Fatal(err)
	}
	return &buf, l
}

func TestNew(t *testing.T) {
	var buf bytes.Buffer
	l, err := New(&buf, "warn", "text")
	if err != nil {
		t.Fatal(err)
	}
	l.Info("hidden")
	l.Warn("shown", "agent_id", "a")
	if got := buf.String(); strings.Contains(got, "hidden") || !strings.Contains(got, `level=WARN msg=shown agent_id=a`) {
		t.Errorf("text log %q", got)
	}
	for _, tc := range []struct{ level, format, want string }{
		{"loud", "text", `invalid log level "loud"`},
		{"info", "xml", `invalid log format "xml": want text or json`},
	} {
		if _, err := New(&buf, tc.level, tc.format); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%q, %q): %v, want %q", tc.level, tc.format, err, tc.want)
		}
	}
}

func TestStdLogger(t *testing.T) {
	buf, l := newJSON(t, "info")
	std := StdLogger(l, "gossip")
	std.Printf("[WARN] memberlist: Was able to connect to b over TCP but UDP probes failed")
	std.Printf("[INFO] serf: EventMemberJoin: a 127.0.0.1") // chatter: debug
	std.Printf("[ERR] memberlist: Failed to send ping: boom")
	std.Printf("[WARN] serf: Shutdown without a Leave") // on purpose: debug
	std.Printf("[WARN] no component here")
	std.Printf("untagged line")
	got := records(t, buf)
	want := []struct{ level, component, msg string }{
		{"WARN", "memberlist", "Was able to connect to b over TCP but UDP probes failed"},
		{"ERROR", "memberlist", "Failed to send ping: boom"},
		{"WARN", "gossip", "no component here"},
	}
	if len(got) != len(want) {
		t.Fatalf("records %v, want %d", got, len(want))
	}
	for i, w := range want {
		if got[i]["level"] != w.level || got[i]["component"] != w.component || got[i]["msg"] != w.msg {
			t.Errorf("record %d: %v, want %+v", i, got[i], w)
		}
	}

	buf, l = newJSON(t, "debug")
	std = StdLogger(l, "gossip")
	std.Printf("[INFO] serf: EventMemberJoin: a 127.0.0.1\n[DEBUG] memberlist: Stream connection from=127.0.0.1:4")
	got = records(t, buf)
	if len(got) != 2 || got[0]["level"] != "DEBUG" || got[0]["component"] != "serf" || got[1]["component"] != "memberlist" {
		t.Errorf("debug records %v", got)
	}
}

type stringer struct{}

func (stringer) String() string { return "Node at 127.0.0.1:1 [Leader]" }

func TestHCLog(t *testing.T) {
	buf, l := newJSON(t, "info")
	h := HCLog(l, "raft")
	h.Info("entering leader state", "leader", stringer{}) // chatter: debug
	h.Warn("failed to contact", "server-id", "0b7c3f4e-9a1d-4c55-8f0e-1d2c3b4a5f60", "error", errors.New("i/o timeout"))
	h.Error("failed to appendEntries", "peer", hclog.Fmt("%s@%d", "b", 7), "node", stringer{})
	h.Warn("heartbeat timeout reached, starting election", "last-leader-addr", "", "last-leader-id", "")
	h.Warn("heartbeat timeout reached, starting election", "last-leader-addr", "127.0.0.1:2", "last-leader-id", "x")
	h.Named("snapshot").Warn("slow")
	got := records(t, buf)
	if len(got) != 5 {
		t.Fatalf("records %v, want 5", got)
	}
	if r := got[0]; r["level"] != "WARN" || r["component"] != "raft" || r["server-id"] != "0b7c3f4e-9a1d-4c55-8f0e-1d2c3b4a5f60" || r["error"] != "i/o timeout" {
		t.Errorf("warn record %v", r)
	}
	if r := got[1]; r["level"] != "ERROR" || r["peer"] != "b@7" || r["node"] != "Node at 127.0.0.1:1 [Leader]" {
		t.Errorf("error record %v", r)
	}
	if r := got[2]; r["level"] != "INFO" {
		t.Errorf("the first election of a node without a leader: %v, want INFO", r)
	}
	if r := got[3]; r["level"] != "WARN" {
		t.Errorf("an election after a leader was known: %v, want WARN", r)
	}
	if r := got[4]; r["component"] != "raft.snapshot" {
		t.Errorf("named record %v", r)
	}
	if h.IsDebug() || !h.IsWarn() || h.GetLevel() != hclog.Warn {
		t.Errorf("levels at info: IsDebug %v, IsWarn %v, GetLevel %v (raft's info is our debug)", h.IsDebug(), h.IsWarn(), h.GetLevel())
	}
	h.StandardLogger(nil).Print("[ERR] raft-net: failed to accept")
	if got := records(t, buf); got[len(got)-1]["component"] != "raft-net" || got[len(got)-1]["level"] != "ERROR" {
		t.Errorf("standard logger record %v", got[len(got)-1])
	}
}

func TestGRPCLogger(t *testing.T) {
	buf, l := newJSON(t, "debug")
	g := GRPCLogger(l)
	g.Infof("[core] channel switches to state %s", "READY") // trace: hidden at debug
	g.Warningf("[transport] closing: %v", "EOF")
	g.Errorln("[core] grpc: server failed to encode response")
	got := records(t, buf)
	if len(got) != 2 || got[0]["level"] != "DEBUG" || got[0]["component"] != "grpc.transport" || got[0]["msg"] != "closing: EOF" ||
		got[1]["level"] != "ERROR" || got[1]["msg"] != "grpc: server failed to encode response" {
		t.Errorf("grpc records %v", got)
	}
	if g.V(0) || g.V(2) {
		t.Error("V is on below trace level")
	}
}

func TestRouteLogrus(t *testing.T) {
	buf, l := newJSON(t, "info")
	RouteLogrus(l)
	t.Cleanup(func() { logrus.StandardLogger().ReplaceHooks(logrus.LevelHooks{}); logrus.SetOutput(os.Stderr) })
	logrus.Info("chatter")
	logrus.WithField("id", "0b7c3f4e").WithError(errors.New("EBUSY")).Warn("unable to remove cgroup")
	logrus.Error("exec failed")
	got := records(t, buf)
	if len(got) != 2 || got[0]["level"] != "WARN" || got[0]["component"] != "libcontainer" || got[0]["id"] != "0b7c3f4e" || got[0]["error"] != "EBUSY" ||
		got[1]["level"] != "ERROR" || got[1]["msg"] != "exec failed" {
		t.Errorf("logrus records %v", got)
	}
}
