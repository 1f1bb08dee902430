package testutils

import (
	"context"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/plugins/drivers"
)

// ttyWait bounds each wait for output in RunExecTTY; it only keeps a broken
// driver from hanging the test, the checks never depend on it.
const ttyWait = 60 * time.Second

// ttyExec is one interactive exec RunExecTTY drives: its input, its output
// and its result once it ended.
type ttyExec struct {
	in     *io.PipeWriter
	out    *SafeBuffer
	resize chan drivers.TermSize
	done   chan struct{}
	code   int
	err    error
}

func startExec(t *testing.T, d drivers.Driver, taskID string, opts *drivers.ExecOptions) *ttyExec {
	t.Helper()
	pr, pw := io.Pipe()
	e := &ttyExec{in: pw, out: &SafeBuffer{}, resize: make(chan drivers.TermSize, 1), done: make(chan struct{})}
	opts.Stdin, opts.Stdout, opts.Stderr = pr, e.out, e.out
	if opts.TTY {
		opts.Resize = e.resize
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		pw.Close()
		<-e.done
	})
	go func() {
		defer close(e.done)
		e.code, e.err = d.Exec(ctx, taskID, opts)
	}()
	return e
}

func (e *ttyExec) waitOutput(t *testing.T, substr string) {
	t.Helper()
	if !e.out.WaitFor(substr, ttyWait) {
		t.Fatalf("output %q never showed %q", e.out.String(), substr)
	}
}

func (e *ttyExec) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-e.done:
	case <-time.After(ttyWait):
		t.Fatalf("exec did not end; output so far %q", e.out.String())
	}
	if e.err != nil {
		t.Fatalf("Exec: %v (output %q)", e.err, e.out.String())
	}
	return e.code
}

// RunExecTTY checks interactive exec in the running task taskID of d: a
// command on a terminal (its name, its size, a resize, ^C, echo of its
// input) and stdin streamed over pipes without one.
func RunExecTTY(t *testing.T, d drivers.Driver, taskID string) {
	t.Run("tty name", func(t *testing.T) {
		e := startExec(t, d, taskID, &drivers.ExecOptions{Command: []string{"/bin/sh", "-c", "tty"}, TTY: true})
		if code := e.wait(t); code != 0 {
			t.Fatalf("tty exited %d: %q", code, e.out.String())
		}
		if !regexp.MustCompile(`^/dev/pts/[0-9]+\r?\n$`).MatchString(e.out.String()) {
			t.Errorf("tty printed %q, want /dev/pts/N", e.out.String())
		}
	})
	t.Run("size and resize", func(t *testing.T) {
		// The trap is set before "ready", so the resize that follows
		// it is seen.
		e := startExec(t, d, taskID, &drivers.ExecOptions{
			Command: []string{"/bin/sh", "-c", `trap 'stty size; exit 7' WINCH; stty size; echo ready; while :; do sleep 0.05; done`},
			TTY:     true, Size: drivers.TermSize{Rows: 30, Cols: 100},
		})
		e.waitOutput(t, "ready")
		if !strings.HasPrefix(e.out.String(), "30 100\r\n") {
			t.Errorf("stty size at start printed %q, want 30 100", e.out.String())
		}
		e.resize <- drivers.TermSize{Rows: 41, Cols: 132}
		if code := e.wait(t); code != 7 {
			t.Fatalf("exit code %d after the resize, want 7 (output %q)", code, e.out.String())
		}
		if !strings.Contains(e.out.String(), "ready\r\n41 132\r\n") {
			t.Errorf("stty size after the resize printed %q, want 41 132", e.out.String())
		}
	})
	t.Run("ctrl-c", func(t *testing.T) {
		e := startExec(t, d, taskID, &drivers.ExecOptions{Command: []string{"/bin/sh", "-c", "echo ready; exec sleep 100"}, TTY: true})
		e.waitOutput(t, "ready")
		if _, err := e.in.Write([]byte{0x03}); err != nil {
			t.Fatal(err)
		}
		if code := e.wait(t); code != 130 {
			t.Errorf("^C ended sleep with %d, want 130 (output %q)", code, e.out.String())
		}
	})
	t.Run("echo", func(t *testing.T) {
		e := startExec(t, d, taskID, &drivers.ExecOptions{Command: []string{"/bin/sh", "-c", "read x; echo got:$x"}, TTY: true})
		if _, err := e.in.Write([]byte("hello\r")); err != nil {
			t.Fatal(err)
		}
		if code := e.wait(t); code != 0 {
			t.Fatalf("exit code %d, want 0 (output %q)", code, e.out.String())
		}
		if got := e.out.String(); got != "hello\r\ngot:hello\r\n" {
			t.Errorf("terminal output %q, want the echo of hello then got:hello", got)
		}
	})
	t.Run("pipes", func(t *testing.T) {
		e := startExec(t, d, taskID, &drivers.ExecOptions{Command: []string{"/bin/sh", "-c", "read x; echo got:$x; tty || true"}})
		if _, err := e.in.Write([]byte("hello\n")); err != nil {
			t.Fatal(err)
		}
		e.in.Close()
		if code := e.wait(t); code != 0 {
			t.Fatalf("exit code %d, want 0 (output %q)", code, e.out.String())
		}
		if got := e.out.String(); got != "got:hello\nnot a tty\n" {
			t.Errorf("output %q, want got:hello and not a tty", got)
		}
	})
}
