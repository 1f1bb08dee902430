package loader_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/plugins/drivers/testutils"
	"github.com/corral-dev/corral/plugins/loader"
)

// The plugin binaries, built once for all tests by binaries.
var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

const examplePkg = "github.com/corral-dev/corral/cmd/corral-driver-example"

// testPlugins are the test plugins under testdata, by binary name.
var testPlugins = []string{"badcookie", "badproto", "badapi", "netrpc"}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// binary returns the path of the built plugin binary name, building all of
// them (one go build) on the first call.
func binary(t *testing.T, name string) string {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skipf("building the test plugins needs the go command: %v", err)
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "corral-plugins-")
		if buildErr != nil {
			return
		}
		pkgs := []string{examplePkg}
		for _, p := range testPlugins {
			pkgs = append(pkgs, "./testdata/"+p)
		}
		// BuildPlugins fails the test that happens to build; the others
		// see the missing binaries.
		testutils.BuildPlugins(t, buildDir, pkgs...)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	path := filepath.Join(buildDir, name)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("plugin binary %s was not built: %v", name, err)
	}
	return path
}

// pluginDir returns a fresh plugin dir holding links to the named binaries.
func pluginDir(t *testing.T, names ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, n := range names {
		if err := os.Symlink(binary(t, n), filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// logBuffer collects log lines of all levels from info up.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) lines() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Split(strings.TrimSpace(b.buf.String()), "\n")
}

func (b *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// loadOne loads dir, which must hold exactly one good plugin, and kills it
// when the test ends.
func loadOne(t *testing.T, dir string) drivers.Driver {
	t.Helper()
	ds, kill, errs := loader.Load(context.Background(), dir, testutils.TestLogger(t))
	t.Cleanup(kill)
	if len(errs) > 0 || len(ds) != 1 {
		t.Fatalf("Load = %d drivers, errors %v; want one driver", len(ds), errs)
	}
	return ds[0]
}

// TestConformanceExternal runs the conformance suite against the example
// driver as a real plugin process, loaded from a plugin dir.
func TestConformanceExternal(t *testing.T) {
	dir := pluginDir(t, "corral-driver-example")
	testutils.RunConformance(t, func(t *testing.T) drivers.Driver { return loadOne(t, dir) }, testutils.WithHostPids(testutils.HostPidsByCgroup))
}

// TestRecoveryConformanceExternal runs the recovery scenarios against the
// example driver as a real plugin process: the restart kills the process
// (SIGKILL) and launches the binary again.
func TestRecoveryConformanceExternal(t *testing.T) {
	bin := binary(t, "corral-driver-example")
	var kills sync.Map // driver -> func that kills its process
	launch := func(t *testing.T) drivers.Driver {
		d, kill, err := loader.Launch(bin, testutils.TestLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(kill)
		kills.Store(drivers.Driver(d), kill)
		return d
	}
	testutils.RunRecoveryConformance(t, launch, func(t *testing.T, old drivers.Driver) drivers.Driver {
		if kill, ok := kills.Load(old); ok {
			kill.(func())()
		}
		return launch(t)
	}, 10*time.Second)
}

func TestLoadExample(t *testing.T) {
	d := loadOne(t, pluginDir(t, "corral-driver-example"))
	if d.Name() != "example" {
		t.Errorf("Name = %q, want example", d.Name())
	}
	s, ok := d.(*loader.Supervisor)
	if !ok {
		t.Fatalf("loaded driver is a %T, want *loader.Supervisor", d)
	}
	if s.Pid() == 0 {
		t.Error("Pid = 0 for a running plugin")
	}
	c, kill, err := loader.Launch(binary(t, "corral-driver-example"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer kill()
	if info := c.PluginInfo(); info.APIVersion != drivers.APIVersion || info.PluginVersion == "" || info.Type != drivers.PluginTypeDriver {
		t.Errorf("PluginInfo = %+v", info)
	}
	if caps := d.Capabilities(); !caps.Exec || !caps.Recover {
		t.Errorf("Capabilities = %+v, want exec and recover", caps)
	}
	fp, err := d.Fingerprint(context.Background())
	if err != nil || fp.Health != drivers.HealthHealthy || !strings.HasPrefix(fp.Description, "example plugin driver") {
		t.Errorf("Fingerprint = %+v, %v", fp, err)
	}
}

// TestLoadRefusesMismatches puts a good plugin, plugins that fail each
// check, a non-executable file and a directory in one plugin dir.
func TestLoadRefusesMismatches(t *testing.T) {
	dir := pluginDir(t, append([]string{"corral-driver-example"}, testPlugins...)...)
	if err := os.WriteFile(filepath.Join(dir, "README"), []byte("not a plugin\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "subdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	var logs logBuffer
	start := time.Now()
	ds, kill, errs := loader.Load(context.Background(), dir, logs.logger())
	defer kill()
	t.Logf("Load took %v", time.Since(start))
	if len(ds) != 1 || ds[0].Name() != "example" {
		t.Fatalf("Load = %v; want the example driver only", ds)
	}
	want := map[string]string{ // plugin -> what its error must say
		"badcookie": "magic cookie",
		"badproto":  "protocol version",
		"badapi":    "API version 0.0.1, agent wants " + drivers.APIVersion,
		"netrpc":    "does not speak gRPC",
	}
	if len(errs) != len(want) {
		t.Errorf("Load returned %d errors, want %d: %v", len(errs), len(want), errs)
	}
	for _, err := range errs {
		var re *loader.RefusedError
		if !errors.As(err, &re) {
			t.Errorf("error %v is no *RefusedError", err)
			continue
		}
		name := filepath.Base(re.Path)
		if name == "badapi" && !errors.Is(err, drivers.ErrIncompatiblePlugin) {
			t.Errorf("the API version error does not wrap ErrIncompatiblePlugin: %v", err)
		}
		if !strings.Contains(err.Error(), want[name]) || !strings.HasPrefix(err.Error(), "plugin "+re.Path+" refused: ") {
			t.Errorf("%s: error %q does not say %q", name, err, want[name])
		}
		delete(want, name)
	}
	for name := range want {
		t.Errorf("%s was not refused", name)
	}
	// One log line per refused plugin, none for the skipped entries.
	for _, name := range testPlugins {
		var n int
		for _, l := range logs.lines() {
			if strings.Contains(l, filepath.Join(dir, name)) {
				n++
				if !strings.Contains(l, "level=ERROR") || !strings.Contains(l, "refused") {
					t.Errorf("log line for %s: %s", name, l)
				}
			}
		}
		if n != 1 {
			t.Errorf("%d log lines for %s, want 1:\n%s", n, name, strings.Join(logs.lines(), "\n"))
		}
	}
	if s := strings.Join(logs.lines(), "\n"); strings.Contains(s, "README") || strings.Contains(s, "subdir") {
		t.Errorf("skipped entries were logged above debug level:\n%s", s)
	}
}

func TestLoadDuplicateName(t *testing.T) {
	dir := pluginDir(t, "corral-driver-example")
	if err := os.Symlink(binary(t, "corral-driver-example"), filepath.Join(dir, "example-copy")); err != nil {
		t.Fatal(err)
	}
	ds, kill, errs := loader.Load(context.Background(), dir, testutils.TestLogger(t))
	defer kill()
	if len(ds) != 1 || len(errs) != 1 || !strings.Contains(errs[0].Error(), `driver name "example" is taken`) {
		t.Fatalf("Load = %d drivers, errors %v; want one driver and one name clash", len(ds), errs)
	}
}

func TestLoadEmptyAndMissingDir(t *testing.T) {
	if ds, kill, errs := loader.Load(context.Background(), "", nil); len(ds) != 0 || len(errs) != 0 {
		t.Errorf("Load(\"\") = %v, %v", ds, errs)
	} else {
		kill()
	}
	ds, kill, errs := loader.Load(context.Background(), t.TempDir(), nil)
	kill()
	if len(ds) != 0 || len(errs) != 0 {
		t.Errorf("Load(empty dir) = %v, %v", ds, errs)
	}
	missing := filepath.Join(t.TempDir(), "nope")
	ds, kill, errs = loader.Load(context.Background(), missing, nil)
	kill()
	if len(ds) != 0 || len(errs) != 1 || !errors.Is(errs[0], os.ErrNotExist) {
		t.Errorf("Load(missing dir) = %v, %v; want one not-exist error", ds, errs)
	}
}

func TestKillEndsProcesses(t *testing.T) {
	ds, kill, errs := loader.Load(context.Background(), pluginDir(t, "corral-driver-example"), nil)
	if len(ds) != 1 || len(errs) != 0 {
		t.Fatalf("Load = %v, %v", ds, errs)
	}
	path := binary(t, "corral-driver-example")
	if len(pluginPids(t, path)) == 0 {
		t.Fatal("no plugin process found")
	}
	kill()
	kill() // twice is fine
	if pids := pluginPids(t, path); len(pids) > 0 {
		// Other tests may run the same binary: only ours must be gone.
		for _, pid := range pids {
			if ppid(pid) == os.Getpid() && !testutils.ProcessGone(pid) {
				t.Errorf("plugin process %d still runs after kill", pid)
			}
		}
	}
	if _, err := ds[0].Inspect(context.Background(), "x"); !errors.Is(err, drivers.ErrPluginExited) {
		t.Errorf("Inspect after kill: err = %v, want ErrPluginExited", err)
	}
}

// TestPluginCrash kills a plugin process under a running task: calls fail
// at once with ErrPluginExited, a pending Wait yields a result saying so,
// and a new plugin process recovers the task from its handle.
func TestPluginCrash(t *testing.T) {
	path := binary(t, "corral-driver-example")
	var logs logBuffer
	d, kill, err := loader.Launch(path, logs.logger())
	if err != nil {
		t.Fatal(err)
	}
	defer kill()
	ctx := context.Background()
	cfg := testutils.TaskConfig(t, "sleep", "1000")
	h, err := d.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := d.Wait(ctx, cfg.ID)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	for _, p := range pluginPids(t, path) {
		if ppid(p) == os.Getpid() {
			pid = p
		}
	}
	if pid == 0 {
		t.Fatal("plugin process not found")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-ch:
		if res == nil || !errors.Is(res.Err, drivers.ErrPluginExited) {
			t.Errorf("pending Wait after the crash: %+v, want an error wrapping ErrPluginExited", res)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("pending Wait hangs after the plugin crashed")
	}
	start := time.Now()
	if _, err := d.Inspect(ctx, cfg.ID); !errors.Is(err, drivers.ErrPluginExited) {
		t.Errorf("Inspect after the crash: err = %v, want ErrPluginExited", err)
	} else if !strings.Contains(err.Error(), `driver "example"`) {
		t.Errorf("error %q does not name the driver", err)
	}
	if _, err := d.Start(ctx, testutils.TaskConfig(t, "true")); !errors.Is(err, drivers.ErrPluginExited) {
		t.Errorf("Start after the crash: err = %v, want ErrPluginExited", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("calls after the crash took %v", el)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(strings.Join(logs.lines(), "\n"), "driver plugin exited") {
		if time.Now().After(deadline) {
			t.Errorf("the crash was not logged:\n%s", strings.Join(logs.lines(), "\n"))
			break
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The task survived its plugin; a new plugin process takes it over.
	d2 := testutils.LaunchPlugin(t, path)
	if err := d2.Recover(ctx, h); err != nil {
		t.Fatalf("Recover: %v", err)
	}
	if st, err := d2.Inspect(ctx, cfg.ID); err != nil || st.State != drivers.TaskStateRunning {
		t.Fatalf("recovered task: %+v, %v; want running", st, err)
	}
	var state struct{ Pid int }
	if err := json.Unmarshal(h.DriverState, &state); err != nil || state.Pid == 0 {
		t.Fatalf("driver state %s: %v", h.DriverState, err)
	}
	if err := d2.Destroy(ctx, cfg.ID, true); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	if !testutils.ProcessGone(state.Pid) {
		t.Errorf("task process %d survived Destroy", state.Pid)
	}
}

// pluginPids returns the pids of the processes running the binary at path.
func pluginPids(t *testing.T, path string) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); err == nil && exe == path && !testutils.ProcessGone(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// ppid returns the parent pid of pid, 0 if unknown.
func ppid(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// TestExecTTYExternal runs interactive exec (terminal, resize, ^C, stdin)
// against the example driver as a real plugin process.
func TestExecTTYExternal(t *testing.T) {
	d := loadOne(t, pluginDir(t, "corral-driver-example"))
	cfg := testutils.TaskConfig(t, "sleep", "1000")
	testutils.StartTask(t, d, cfg)
	testutils.RunExecTTY(t, d, cfg.ID)
}
