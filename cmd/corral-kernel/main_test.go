package main

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/corral-dev/corral/internal/kernelssh"
)

// binary is the corral-kernel built for the tests, static as make builds it.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "corral-kernel-test")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "corral-kernel")
	cmd := exec.Command("go", "build", "-o", binary, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building corral-kernel: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// TestLightDependencies keeps corral-kernel small and static: the standard
// library, golang.org/x/crypto and x/sys, and its own package; and, for
// its SFTP server (sftp.go), github.com/pkg/sftp and its github.com/kr/fs
// (pure Go).
func TestLightDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		first, _, _ := strings.Cut(p, "/")
		if !strings.Contains(first, ".") || p == "github.com/corral-dev/corral/cmd/corral-kernel" ||
			p == "github.com/corral-dev/corral/internal/kernelssh" || p == "github.com/corral-dev/corral/version" ||
			strings.HasPrefix(p, "golang.org/x/sys/") || strings.HasPrefix(p, "golang.org/x/crypto/") ||
			p == "github.com/pkg/sftp" || strings.HasPrefix(p, "github.com/pkg/sftp/internal/") || p == "github.com/kr/fs" {
			continue
		}
		t.Errorf("corral-kernel links %s; keep it to the standard library, x/crypto and x/sys", p)
	}
}

// freePort returns a TCP port free on 127.0.0.1 now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// writeLaunch writes a launch file for one kernel, main1 on 127.0.0.1,
// with a fresh session key, and returns its path.
func writeLaunch(t *testing.T, barrier bool) string {
	t.Helper()
	dir := t.TempDir()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "ssh"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ssh", "id_ed25519"), pem.EncodeToMemory(blk), 0o600); err != nil {
		t.Fatal(err)
	}
	l := kernelssh.Launch{Hostname: "main1", ListenAddr: "127.0.0.1", SSHPort: freePort(t), Barrier: barrier,
		Peers: []kernelssh.Peer{{Hostname: "main1", Addr: "127.0.0.1", Rank: 0, Slots: 1}}, KeyFile: "ssh/id_ed25519"}
	b, _ := json.Marshal(l)
	path := filepath.Join(dir, "launch.json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func exitCode(t *testing.T, err error) int {
	t.Helper()
	if err == nil {
		return 0
	}
	ee, ok := err.(*exec.ExitError)
	if !ok {
		t.Fatalf("running corral-kernel: %v", err)
	}
	return ee.ExitCode()
}

func TestRunExitCodes(t *testing.T) {
	tests := []struct {
		name string
		cmd  []string
		want int
	}{
		{"success", []string{"true"}, 0},
		{"exit 5", []string{"sh", "-c", "exit 5"}, 5},
		{"killed by SIGKILL", []string{"sh", "-c", "kill -KILL $$"}, 128 + 9},
		{"not found", []string{"/no/such/program"}, 127},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			launch := writeLaunch(t, true)
			cmd := exec.Command(binary, append([]string{"run", "-launch", launch, "--"}, tc.cmd...)...)
			cmd.Stderr = os.Stderr
			if got := exitCode(t, cmd.Run()); got != tc.want {
				t.Errorf("exit code %d, want %d", got, tc.want)
			}
		})
	}
}

// startReady starts corral-kernel with args and waits for "ready" on the
// command's stdout.
func startReady(t *testing.T, env []string, args ...string) (*exec.Cmd, *bufio.Reader) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() })
	r := bufio.NewReader(out)
	if line, err := r.ReadString('\n'); line != "ready\n" {
		t.Fatalf("corral-kernel's command said %q, %v; want ready", line, err)
	}
	return cmd, r
}

func TestRunForwardsSignals(t *testing.T) {
	launch := writeLaunch(t, true)
	cmd, r := startReady(t, nil, "run", "-launch", launch, "--", "sh", "-c", `trap 'echo got-term; exit 9' TERM; echo ready; while :; do sleep 0.05; done`)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(r)
	if got := exitCode(t, cmd.Wait()); got != 9 {
		t.Errorf("exit code %d, want 9 from the command's trap", got)
	}
	if !strings.Contains(string(rest), "got-term") {
		t.Errorf("the command did not see SIGTERM: %q", rest)
	}
}

// TestSSHThroughLink runs the client under a link named ssh, with the
// options Open MPI's rsh agent passes, against a kernel in run mode.
func TestSSHThroughLink(t *testing.T) {
	launch := writeLaunch(t, false)
	_, _ = startReady(t, nil, "run", "-launch", launch, "--", "sh", "-c", `echo ready; exec sleep 1000`)
	link := filepath.Join(t.TempDir(), "ssh")
	if err := os.Symlink(binary, link); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(link, "-x", "-o", "StrictHostKeyChecking=no", "main1", "echo", "$CORRAL_TEST_VAR", ";", "cat", ";", "exit", "6")
	cmd.Env = append(os.Environ(), kernelssh.LaunchEnv+"="+launch)
	cmd.Stdin = strings.NewReader("stdin-line\n")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	if got := exitCode(t, cmd.Run()); got != 6 {
		t.Errorf("ssh exit code %d, want 6", got)
	}
	// The remote command has the kernel's environment (the server's).
	if out.String() != "from-kernel\nstdin-line\n" {
		t.Errorf("ssh output %q", out.String())
	}
}

func init() {
	// The kernel's environment, inherited by the run-mode server.
	os.Setenv("CORRAL_TEST_VAR", "from-kernel")
}

func TestServeUntilSIGTERM(t *testing.T) {
	launch := writeLaunch(t, false)
	cmd := exec.Command(binary, "serve", "-launch", launch)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// It serves: the client gets through (retrying until it listens).
	var out []byte
	for {
		c := exec.Command(binary, "ssh", "-n", "main1", "echo", "served")
		c.Env = append(os.Environ(), kernelssh.LaunchEnv+"="+launch)
		var err error
		if out, err = c.Output(); err == nil {
			break
		}
		if cmd.ProcessState != nil {
			t.Fatal("serve exited")
		}
	}
	if string(out) != "served\n" {
		t.Errorf("output %q", out)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if got := exitCode(t, cmd.Wait()); got != 0 {
		t.Errorf("serve exit code %d after SIGTERM, want 0", got)
	}
}
