package testutils

import (
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-plugin"

	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/plugins/loader"
)

// InMemoryPlugin serves d over an in-memory go-plugin gRPC connection (a
// socket within the test process) and returns the agent's side of it: a
// driver whose every call goes through the plugin protocol. The connection
// closes when the test ends.
func InMemoryPlugin(t testing.TB, d drivers.Driver) drivers.Driver {
	t.Helper()
	// go-plugin's test connection logs at debug level to stderr, which go
	// test shows only for failing tests or with -v.
	client, _ := plugin.TestPluginGRPCConn(t, false, drivers.PluginSet(d))
	// Closing the client also stops the server, as the agent does with a
	// plugin process.
	t.Cleanup(func() { _ = client.Close() })
	raw, err := client.Dispense(drivers.PluginTypeDriver)
	if err != nil {
		t.Fatalf("dispensing the driver plugin: %v", err)
	}
	return raw.(drivers.Driver)
}

// LaunchPlugin starts the plugin binary at path as a real process, the way
// the agent does, and returns its driver. The process is killed when the
// test ends. The plugin's log goes to the test log.
func LaunchPlugin(t testing.TB, path string) drivers.Driver {
	t.Helper()
	d, kill, err := loader.Launch(path, TestLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kill)
	return d
}

// BuildPlugin builds the main package pkg (as go build takes it, relative
// to the test's package directory) into a temporary directory of t and
// returns the binary's path. It skips the test when the go command is not
// available.
func BuildPlugin(t testing.TB, pkg string) string {
	t.Helper()
	dir := t.TempDir()
	BuildPlugins(t, dir, pkg)
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 {
		t.Fatalf("go build %s: want one binary in %s, found %d (%v)", pkg, dir, len(entries), err)
	}
	return filepath.Join(dir, entries[0].Name())
}

// BuildPlugins builds the main packages pkgs into dir with one go build,
// each binary named as go build names it (after the last element of its
// import path), and skips the test when the go command is not available.
func BuildPlugins(t testing.TB, dir string, pkgs ...string) {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("building plugins needs the go command: %v", err)
	}
	args := append([]string{"build", "-o", dir + string(filepath.Separator)}, pkgs...)
	if out, err := exec.Command(gobin, args...).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", strings.Join(pkgs, " "), err, out)
	}
}

// TestLogger returns a logger that writes to the test log (shown for
// failing tests and with -v), at debug level and above, until the test's
// cleanup runs; what is logged later (a plugin's goroutines may) is dropped.
func TestLogger(t testing.TB) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(w.close)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testWriter writes to t.Log until closed.
type testWriter struct {
	mu     sync.Mutex
	t      testing.TB
	closed bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
}
