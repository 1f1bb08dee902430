package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// Runtimes of POST /v1/sessions/{id}/execute.
const (
	RuntimeShell  = "shell"  // the code is a script for sh -c
	RuntimePython = "python" // the code is a Python program (python3, else python, in the kernel)
)

// RunIDHeader carries the run ID of an execute answer.
const RunIDHeader = "X-Corral-Run-ID"

// ExecuteRequest is the body of POST /v1/sessions/{id}/execute: code for a
// runtime, run in a running kernel (docs/api-exec.md).
type ExecuteRequest struct {
	// RunID names the run; empty: the server makes one. The code sees it
	// as $CORRAL_RUN_ID.
	RunID string `json:"run_id,omitempty"`
	// Runtime is "shell" (the default) or "python".
	Runtime string `json:"runtime,omitempty"`
	Code    string `json:"code"`
	// Kernel is the hostname ("main1", the default) or ID of the kernel.
	Kernel string            `json:"kernel,omitempty"`
	Env    map[string]string `json:"env,omitempty"`
}

// ExecuteFrame is one line of the answer of POST
// /v1/sessions/{id}/execute: an exec frame with the run's ID.
type ExecuteFrame struct {
	RunID string `json:"run_id"`
	ExecFrame
}

// Execute runs code in a running kernel of a session, copies its output to
// stdout and stderr as it comes, and returns the run's ID and the code's
// exit code.
func (c *Client) Execute(ctx context.Context, ref string, req *ExecuteRequest, stdout, stderr io.Writer) (runID string, code int, err error) {
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	resp, err := c.send(ctx, http.MethodPost, sessionPath(ref, "/execute"), nil, req)
	if err != nil {
		return "", -1, err
	}
	defer closeBody(resp)
	runID = resp.Header.Get(RunIDHeader)
	dec := json.NewDecoder(resp.Body)
	for {
		var f ExecuteFrame
		if err := dec.Decode(&f); err != nil {
			if errors.Is(err, io.EOF) {
				return runID, -1, errors.New("execute: the stream ended without an exit code")
			}
			if ctx.Err() != nil {
				return runID, -1, ctx.Err()
			}
			return runID, -1, fmt.Errorf("execute: reading the output stream: %w", err)
		}
		if f.RunID != "" {
			runID = f.RunID
		}
		if len(f.Data) > 0 {
			w := stdout
			if f.Stream == "stderr" {
				w = stderr
			}
			if _, err := w.Write(f.Data); err != nil {
				return runID, -1, fmt.Errorf("execute: writing %s: %w", f.Stream, err)
			}
		}
		if f.Error != "" {
			return runID, -1, fmt.Errorf("execute: %s", f.Error)
		}
		if f.ExitCode != nil {
			return runID, *f.ExitCode, nil
		}
	}
}
