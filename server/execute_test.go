package server_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os/exec"
	"strings"
	"testing"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// TestExecuteRuntimes runs shell and Python code through POST
// /v1/sessions/{id}/execute: output, exit status and run IDs come back, and
// a kernel without Python gets a clear 422 for the python runtime.
func TestExecuteRuntimes(t *testing.T) {
	c := startCluster(t, nil)
	ctx := context.Background()
	running := func(d *api.SessionDetail) bool { return d.Session.Status == structs.SessionRunning || terminal(d) }
	create(t, c, &api.CreateSessionRequest{Name: "nb", Type: "interactive", Command: []string{"sleep", "infinity"}, Resources: small})
	if d := c.waitFor(t, "nb", running); d.Session.Status != structs.SessionRunning {
		t.Fatalf("nb is %s: %s", d.Session.Status, d.Session.StatusInfo)
	}

	var out, errb bytes.Buffer
	runID, code, err := c.client.Execute(ctx, "nb", &api.ExecuteRequest{RunID: "cell-1", Code: "echo run $CORRAL_RUN_ID; echo oops >&2; exit 3"}, &out, &errb)
	if err != nil || code != 3 || runID != "cell-1" || out.String() != "run cell-1\n" || errb.String() != "oops\n" {
		t.Fatalf("shell: run %q code %d err %v stdout %q stderr %q", runID, code, err, out.String(), errb.String())
	}
	out.Reset()
	runID, code, err = c.client.Execute(ctx, "nb", &api.ExecuteRequest{Code: "echo generated"}, &out, nil)
	if err != nil || code != 0 || len(runID) < 8 || out.String() != "generated\n" {
		t.Fatalf("shell with a generated run ID: run %q code %d err %v stdout %q", runID, code, err, out.String())
	}

	var apiErr *api.Error
	_, _, err = c.client.Execute(ctx, "nb", &api.ExecuteRequest{Runtime: "ruby", Code: "puts 1"}, nil, nil)
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadRequest || !strings.Contains(apiErr.Message, "shell or python") {
		t.Fatalf("unknown runtime: %v", err)
	}
	_, _, err = c.client.Execute(ctx, "nb", &api.ExecuteRequest{RunID: "../x", Code: "true"}, nil, nil)
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadRequest {
		t.Fatalf("bad run ID: %v", err)
	}

	if _, err := exec.LookPath("python3"); err != nil {
		t.Log("no python3 on this host: the python runtime with Python is not checked")
	} else {
		out.Reset()
		errb.Reset()
		_, code, err = c.client.Execute(ctx, "nb", &api.ExecuteRequest{Runtime: api.RuntimePython, Code: "import sys\nprint(1+1)\nsys.exit(5)"}, &out, &errb)
		if err != nil || code != 5 || out.String() != "2\n" {
			t.Fatalf("python: code %d err %v stdout %q stderr %q", code, err, out.String(), errb.String())
		}
	}

	// A kernel whose PATH has no Python (Debian's /usr/sbin has none).
	create(t, c, &api.CreateSessionRequest{Name: "nopy", Type: "interactive", Command: []string{"/bin/sleep", "infinity"}, Env: map[string]string{"PATH": "/usr/sbin"}, Resources: small})
	if d := c.waitFor(t, "nopy", running); d.Session.Status != structs.SessionRunning {
		t.Fatalf("nopy is %s: %s", d.Session.Status, d.Session.StatusInfo)
	}
	_, _, err = c.client.Execute(ctx, "nopy", &api.ExecuteRequest{Runtime: api.RuntimePython, Code: "print(1)"}, nil, nil)
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(apiErr.Message, "no python3 or python") {
		t.Fatalf("python without python: %v", err)
	}
	out.Reset()
	if _, code, err := c.client.Execute(ctx, "nopy", &api.ExecuteRequest{Code: "echo still a shell"}, &out, nil); err != nil || code != 0 || out.String() != "still a shell\n" {
		t.Fatalf("shell without python: code %d err %v stdout %q", code, err, out.String())
	}
}
