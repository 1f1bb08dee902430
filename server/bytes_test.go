package server_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// TestOutputIsBytes: logs and exec output are not text; what a kernel
// writes comes back through the agent, the server's HTTP API and the Go
// client byte for byte, invalid UTF-8 included.
func TestOutputIsBytes(t *testing.T) {
	c := startCluster(t, nil)
	ctx := context.Background()
	want, wantErr := []byte("\xff\xfeok"), []byte("\xc3(err\x00")

	b := create(t, c, &api.CreateSessionRequest{Type: "batch", Command: []string{"sh", "-c", `printf '\377\376ok'; printf '\303(err\000' >&2`}, Resources: small})
	d := c.waitFor(t, b.Session.ID, terminal)
	if d.Session.Result != structs.ResultSuccess {
		t.Fatalf("batch: %s/%s (%s)", d.Session.Status, d.Session.Result, d.Session.StatusInfo)
	}
	logs, err := c.client.SessionLogs(ctx, b.Session.ID, "main1")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(logs.StdoutData(), want) || !bytes.Equal(logs.StderrData(), wantErr) {
		t.Fatalf("logs: stdout %q, stderr %q; want %q, %q", logs.StdoutData(), logs.StderrData(), want, wantErr)
	}
	if logs.Stdout != "\ufffd\ufffdok" {
		t.Fatalf("text form of stdout: %q", logs.Stdout)
	}

	create(t, c, &api.CreateSessionRequest{Name: "bytes", Type: "interactive", Command: []string{"sleep", "infinity"}, Resources: small})
	c.waitFor(t, "bytes", func(d *api.SessionDetail) bool { return d.Session.Status == structs.SessionRunning || terminal(d) })
	var out, errb bytes.Buffer
	code, err := c.client.Exec(ctx, "bytes", &api.ExecRequest{Command: []string{"sh", "-c", `printf '\377\376ok'; printf '\303(err\000' >&2`}}, &out, &errb)
	if err != nil || code != 0 {
		t.Fatalf("exec: %d, %v", code, err)
	}
	if !bytes.Equal(out.Bytes(), want) || !bytes.Equal(errb.Bytes(), wantErr) {
		t.Fatalf("exec: stdout %q, stderr %q; want %q, %q", out.Bytes(), errb.Bytes(), want, wantErr)
	}
}
