package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// sessionRun runs code for a runtime in a running kernel through POST
// /v1/sessions/{id}/execute and exits with the code's exit status.
func (c *cli) sessionRun(ctx context.Context, args []string) error {
	f := c.newFlags("session run", "REF [flags] -- CODE|-",
		"Run shell or Python code in a running kernel of a session, print its output and exit with its exit status.\n"+
			"CODE is one argument (several are joined with spaces); - reads it from stdin.", false)
	runtime := f.String("runtime", api.RuntimeShell, "the code's language: shell or python (python3, else python, in the kernel)")
	kernel := f.String("kernel", "main1", "kernel hostname or ID")
	runID := f.String("run-id", "", "the run's ID, seen by the code as $CORRAL_RUN_ID (default: the server makes one)")
	env := envFlag{}
	f.Var(env, "env", "environment variable `KEY=VALUE` for the code (repeatable)")
	pos, rest, err := f.parse(args, 1)
	if err != nil {
		return err
	}
	if len(pos) == 0 || pos[0] == "" {
		return f.usageErr("missing session ID, ID prefix or name")
	}
	if len(rest) == 0 {
		return f.usageErr("missing the code to run: corral session run REF [flags] -- CODE (or - to read it from stdin)")
	}
	code := strings.Join(rest, " ")
	if len(rest) == 1 && rest[0] == "-" {
		in := c.stdin
		if in == nil {
			in = os.Stdin
		}
		b, err := io.ReadAll(in)
		if err != nil {
			return fmt.Errorf("reading the code from stdin: %w", err)
		}
		code = string(b)
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	req := &api.ExecuteRequest{RunID: *runID, Runtime: *runtime, Code: code, Kernel: *kernel}
	if len(env) > 0 {
		req.Env = env
	}
	_, status, err := client.Execute(ctx, pos[0], req, c.stdout, c.stderr)
	if err != nil {
		return err
	}
	if status < 0 || status > 255 {
		status = 1
	}
	if status != 0 {
		return exitCode(status)
	}
	return nil
}

// sessionWait follows a session until it ends (or, with -until running,
// runs) and exits non-zero when it failed or the timeout expired first.
func (c *cli) sessionWait(ctx context.Context, args []string) error {
	f := c.newFlags("session wait", "REF [flags]",
		"Wait for a session to end (or with -until running, to run). Exits 0 when it ended with success (or runs),\n"+
			"1 with one line saying why otherwise, also when -timeout expires first (the session goes on).", false)
	timeout := f.Duration("timeout", 0, "give up after this long (0: wait as long as it takes)")
	until := f.String("until", "ended", "what to wait for: ended or running")
	ref, client, err := f.refClient(args, "session ID, ID prefix or name")
	if err != nil {
		return err
	}
	if *until != "ended" && *until != "running" {
		return f.usageErr("-until %q: want ended or running", *until)
	}
	d, err := client.GetSession(ctx, ref)
	if err != nil {
		return err
	}
	done := func(s *structs.Session) bool {
		return s.Status.Terminal() || (*until == "running" && (s.Status == structs.SessionRunning || s.Status == structs.SessionRunningDegraded))
	}
	wctx, cancel := ctx, context.CancelFunc(func() {})
	if *timeout > 0 {
		wctx, cancel = context.WithTimeout(ctx, *timeout)
	}
	defer cancel()
	d, err = followSession(wctx, client, d, done, nil)
	short := shortID(d.Session.ID)
	if err != nil {
		if wctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
			return fmt.Errorf("session %s is still %s after -timeout %s", short, d.Session.Status, *timeout)
		}
		return fmt.Errorf("waiting for session %s: %w", short, err)
	}
	s := d.Session
	switch {
	case s.Status == structs.SessionRunning || s.Status == structs.SessionRunningDegraded:
		fmt.Fprintf(c.stdout, "session %s: %s\n", short, s.Status)
		return nil
	case s.Result == structs.ResultSuccess || (s.Status == structs.SessionTerminated && s.Result == ""):
		fmt.Fprintf(c.stdout, "session %s: %s%s\n", short, s.Status, suffix(string(s.Result)))
		return nil
	}
	return fmt.Errorf("session %s ended %s (%s)%s", short, s.Status, dash(string(s.Result)), suffix(s.StatusInfo))
}
