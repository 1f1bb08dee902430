// Package testutils holds test helpers for kernel drivers and the
// conformance suite that every driver must pass.
package testutils

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corral-dev/corral/plugins/drivers"
)

// unsafeID matches the characters that TaskID replaces.
var unsafeID = regexp.MustCompile(`[^a-z0-9_.-]+`)

// TaskID returns a task ID unique to this test and run, safe as a file and
// cgroup name.
func TaskID(t testing.TB) string {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	name := strings.Trim(unsafeID.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(name) > 48 {
		name = name[len(name)-48:]
	}
	return name + "-" + hex.EncodeToString(b)
}

// TaskConfig returns a config for command with a fresh ID, a working
// directory and log files in a temporary directory of t.
func TaskConfig(t testing.TB, command ...string) *drivers.TaskConfig {
	t.Helper()
	dir := t.TempDir()
	id := TaskID(t)
	return &drivers.TaskConfig{
		ID:         id,
		SessionID:  "session-" + id,
		Hostname:   "kernel",
		Command:    command,
		WorkDir:    filepath.Join(dir, "work"),
		TaskDir:    dir,
		StdoutPath: filepath.Join(dir, "logs", "stdout.log"),
		StderrPath: filepath.Join(dir, "logs", "stderr.log"),
	}
}

// StartTask starts cfg on d, fails the test if that fails, and destroys the
// task (with force) when the test ends.
func StartTask(t testing.TB, d drivers.Driver, cfg *drivers.TaskConfig) *drivers.TaskHandle {
	t.Helper()
	h, err := d.Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Start(%v): %v", cfg.Command, err)
	}
	if h == nil {
		t.Fatalf("Start(%v) returned a nil handle", cfg.Command)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := d.Destroy(ctx, cfg.ID, true); err != nil && !errors.Is(err, drivers.ErrTaskNotFound) {
			t.Errorf("cleanup: Destroy(%s): %v", cfg.ID, err)
		}
	})
	return h
}

// WaitResult waits up to timeout for the task's exit result.
func WaitResult(t testing.TB, d drivers.Driver, taskID string, timeout time.Duration) *drivers.ExitResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ch, err := d.Wait(ctx, taskID)
	if err != nil {
		t.Fatalf("Wait(%s): %v", taskID, err)
	}
	select {
	case res := <-ch:
		if res == nil {
			t.Fatalf("Wait(%s) yielded a nil result", taskID)
		}
		return res
	case <-ctx.Done():
		t.Fatalf("task %s did not exit within %v", taskID, timeout)
		return nil
	}
}

// ReadLog returns the content of a log file, "" if it does not exist yet.
func ReadLog(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("reading log: %v", err)
	}
	return string(b)
}

// WaitForLog polls the log at path until it contains substr and returns it.
func WaitForLog(t testing.TB, path, substr string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := ReadLog(t, path)
		if strings.Contains(s, substr) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("log %s does not contain %q after %v; it has %q", path, substr, timeout, s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// WaitForPids polls the log at path until its first line holds n
// space-separated pids (as printed by `echo $$ $!`) and returns them.
func WaitForPids(t testing.TB, path string, n int, timeout time.Duration) []int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		line, _, _ := strings.Cut(ReadLog(t, path), "\n")
		if f := strings.Fields(line); len(f) == n {
			pids := make([]int, n)
			for i, s := range f {
				pid, err := strconv.Atoi(s)
				if err != nil {
					t.Fatalf("log %s: %q is not a pid", path, s)
				}
				pids[i] = pid
			}
			return pids
		}
		if time.Now().After(deadline) {
			t.Fatalf("log %s has no line with %d pids after %v", path, n, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ProcessGone reports whether pid no longer runs on this host: no /proc
// entry, or only a zombie that nobody reaped yet (an orphan waits for init,
// which in some containers never reaps).
func ProcessGone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false
	}
	state := s[i+2]
	return state == 'Z' || state == 'X'
}

// SafeBuffer is a bytes buffer that may be written and read concurrently,
// for collecting the streamed output of Exec.
type SafeBuffer struct {
	mu  sync.Mutex
	buf []byte
}

// Write appends p.
func (b *SafeBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	return len(p), nil
}

// String returns everything written so far.
func (b *SafeBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// WaitFor polls until the buffer contains substr or timeout passes, and
// reports whether it does.
func (b *SafeBuffer) WaitFor(substr string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for !strings.Contains(b.String(), substr) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}
