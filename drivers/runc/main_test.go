package runc

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/corral-dev/corral/drivers/shim"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/plugins/drivers/testutils"
)

// busyboxApplets are the commands the test image links to busybox.
var busyboxApplets = []string{
	"sh", "echo", "sleep", "cat", "hostname", "id", "ls", "true", "false", "env",
	"printenv", "pwd", "kill", "grep", "tr", "wc", "rm", "touch", "mkdir", "ps", "head", "tail", "stat", "readlink",
	"unshare", "mount", "dd", "seq", "df",
}

// testCgroupParent keeps this test binary's cgroups apart from everybody
// else's, so that leak checks can look for the parent itself.
var testCgroupParent = fmt.Sprintf("corral-runc-test-%d", os.Getpid())

// imageRoot is a directory for the test image, removed after the tests.
var imageRoot string

// TestMain lets the test binary act as a container's init (libcontainer
// re-executes it, from the shim too), as the containers' shim (shim.Launch
// re-executes it) and as the fake agent of TestAgentKilled.
func TestMain(m *testing.M) {
	InitIfRequested() // the container init never gets past this
	if os.Getenv(noShimEnv) == "" {
		shim.MaybeRun() // nor does a shim
	}
	if os.Getenv(fakeAgentEnv) != "" {
		os.Exit(runFakeAgent())
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "corral-runc-image-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	imageRoot = dir
	return m.Run()
}

var (
	imageOnce sync.Once
	imageDirP string
	imageErr  error
)

// testImage returns a tiny image directory built from the host's static
// busybox: the shared, read-only rootfs of the tests' kernels. It skips
// the test when this machine cannot run containers.
func testImage(t testing.TB) string {
	t.Helper()
	needRoot(t)
	imageOnce.Do(func() { imageDirP, imageErr = buildImage(filepath.Join(imageRoot, "busybox")) })
	if imageErr != nil {
		t.Skipf("no test image: %v", imageErr)
	}
	return imageDirP
}

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("runc driver tests need root")
	}
}

func buildImage(root string) (string, error) {
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return "", fmt.Errorf("%v (apt-get install busybox-static)", err)
	}
	for _, d := range []string{"bin", "etc", "proc", "sys", "dev", "tmp", "root", "home/alice"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return "", err
		}
	}
	if err := os.Chmod(filepath.Join(root, "tmp"), 0o1777); err != nil {
		return "", err
	}
	if err := os.Chown(filepath.Join(root, "home/alice"), 1234, 1235); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), busybox, 0o755); err != nil {
		return "", err
	}
	for _, a := range busyboxApplets {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", a)); err != nil {
			return "", err
		}
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nalice:x:1234:1235:Alice:/home/alice:/bin/sh\n",
		"etc/group":  "root:x:0:\nalice:x:1235:\nstaff:x:50:alice\n",
		"etc/motd":   "image file\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			return "", err
		}
	}
	return root, nil
}

// newTestDriver returns a driver with its state in a temporary directory
// and its cgroups below testCgroupParent, logging to the test log.
func newTestDriver(t testing.TB, opts ...Option) *Driver {
	t.Helper()
	needRoot(t)
	opts = append([]Option{WithStateDir(t.TempDir()), WithCgroupParent(testCgroupParent)}, opts...)
	return New(testutils.TestLogger(t), opts...)
}

// taskConfig is testutils.TaskConfig running command in the test image.
func taskConfig(t testing.TB, command ...string) *drivers.TaskConfig {
	t.Helper()
	cfg := testutils.TaskConfig(t, command...)
	cfg.RootFS = testImage(t)
	cfg.WorkDir = ""
	return cfg
}

// imageDriver gives every task without a RootFS the test image, for the
// conformance suite, whose configs know nothing of images.
type imageDriver struct {
	*Driver
	image string
}

func (d imageDriver) Start(ctx context.Context, cfg *drivers.TaskConfig) (*drivers.TaskHandle, error) {
	if cfg != nil && cfg.RootFS == "" {
		c := *cfg
		c.RootFS = d.image
		cfg = &c
	}
	return d.Driver.Start(ctx, cfg)
}

// hostPids turns pids of a task's pid namespace into the host's, through
// the NSpid lines of the processes in the task's cgroups.
func hostPids(t testing.TB, d drivers.Driver, taskID string, pids []int) []int {
	t.Helper()
	rd := d.(imageDriver).Driver
	tk, err := rd.get(taskID)
	if err != nil {
		t.Fatal(err)
	}
	byNS := map[int]int{}
	for _, hp := range cgroupPids(tk.state.CgroupPaths) {
		if ns, err := nsPid(hp); err == nil {
			byNS[ns] = hp
		}
	}
	out := make([]int, len(pids))
	for i, p := range pids {
		hp, ok := byNS[p]
		if !ok {
			t.Fatalf("task %s: no process with pid %d in its namespace (have %v)", taskID, p, byNS)
		}
		out[i] = hp
	}
	return out
}

// nsPid returns the pid that host process pid has in its own (innermost)
// pid namespace.
func nsPid(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			return strconv.Atoi(f[len(f)-1])
		}
	}
	return 0, fmt.Errorf("process %d: no NSpid", pid)
}
