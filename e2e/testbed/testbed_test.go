package testbed_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/e2e/testbed"
)

// The test binary doubles as the programs the tests run inside hosts.
const helperEnv = "CORRAL_TESTBED_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "echo": // serve a TCP echo on $CORRAL_TESTBED_ADDR
		ln, err := net.Listen("tcp", os.Getenv("CORRAL_TESTBED_ADDR"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("ready")
		for {
			c, err := ln.Accept()
			if err != nil {
				os.Exit(1)
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	case "dial": // talk to the echo server at $CORRAL_TESTBED_ADDR
		timeout, err := time.ParseDuration(os.Getenv("CORRAL_TESTBED_TIMEOUT"))
		if err != nil {
			timeout = 2 * time.Second
		}
		c, err := net.DialTimeout("tcp", os.Getenv("CORRAL_TESTBED_ADDR"), timeout)
		if err == nil {
			err = echoOver(c)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	case "sleep":
		fmt.Println("ready")
		time.Sleep(time.Hour)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// helper returns a command that runs the test binary as helper mode inside h.
func helper(ctx context.Context, h *testbed.Host, mode, addr string) *exec.Cmd {
	cmd := h.Command(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, "CORRAL_TESTBED_ADDR="+addr)
	return cmd
}

// echoOver sends a line over c and checks it comes back.
func echoOver(c net.Conn) error {
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if got != "ping\n" {
		return fmt.Errorf("echo returned %q", got)
	}
	return nil
}

func dialEcho(ctx context.Context, h *testbed.Host, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := h.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return echoOver(c)
}

func TestBed(t *testing.T) {
	start := time.Now()
	b := testbed.New(t, 3)
	t.Logf("bed of 3 hosts on %v built in %v", b.Subnet, time.Since(start))
	h1, h2, h3 := b.Hosts[0], b.Hosts[1], b.Hosts[2]
	ctx := t.Context()

	for i, h := range b.Hosts {
		if ls, err := h.Links(); err != nil || !slices.Equal(ls, []string{testbed.UnderlayLink, "lo"}) {
			t.Errorf("%s links = %v, %v; want [eth0 lo]", h.Name, ls, err)
		}
		if !b.Subnet.Contains(h.IP) || h.Name != fmt.Sprintf("host%d", i+1) || !strings.HasPrefix(h.NS, testbed.Prefix) {
			t.Errorf("host %+v", h)
		}
	}

	// An echo server process on host1.
	addr := h1.AddrPort(7000).String()
	srv := helper(ctx, h1, "echo", addr)
	out, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Process.Kill()
		srv.Wait()
	})
	if line, err := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
		t.Fatalf("echo server: %q, %v", line, err)
	}

	t.Run("process on another host", func(t *testing.T) {
		if out, err := helper(ctx, h2, "dial", addr).CombinedOutput(); err != nil {
			t.Errorf("dial from host2: %v: %s", err, out)
		}
	})
	t.Run("test process through DialContext", func(t *testing.T) {
		if err := dialEcho(ctx, h3, addr, 2*time.Second); err != nil {
			t.Error(err)
		}
	})
	t.Run("loopback is per host", func(t *testing.T) {
		ln, err := h2.Listen("tcp", "127.0.0.1:7001")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		if err := dialEcho(ctx, h3, "127.0.0.1:7001", 300*time.Millisecond); err == nil {
			t.Error("host3 reached host2's loopback")
		}
	})

	// An HTTP server in the test process, listening inside host1.
	ln, err := h1.Listen("tcp", h1.AddrPort(8080).String())
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.RemoteAddr)
	})}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	client := h2.HTTPClient()
	client.Timeout = time.Second
	get := func() (string, error) {
		resp, err := client.Get("http://" + h1.AddrPort(8080).String() + "/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return string(body), err
	}
	t.Run("HTTP client", func(t *testing.T) {
		body, err := get()
		if err != nil {
			t.Fatal(err)
		}
		if want := "hello " + h2.IP.String() + ":"; !strings.HasPrefix(body, want) {
			t.Errorf("body = %q, want it to start with %q", body, want)
		}
	})

	t.Run("cut and heal", func(t *testing.T) {
		if err := h1.Cut(); err != nil {
			t.Fatal(err)
		}
		if err := dialEcho(ctx, h3, addr, 300*time.Millisecond); err == nil {
			t.Error("host3 reached host1 after Cut")
		}
		dial := helper(ctx, h2, "dial", addr)
		dial.Env = append(dial.Env, "CORRAL_TESTBED_TIMEOUT=300ms")
		if out, err := dial.CombinedOutput(); err == nil {
			t.Errorf("host2 process reached host1 after Cut: %s", out)
		}
		client.CloseIdleConnections()
		client.Timeout = 300 * time.Millisecond
		if _, err := get(); err == nil {
			t.Error("HTTP to host1 worked after Cut")
		}
		// Hosts other than the cut one still talk.
		ln3, err := h3.Listen("tcp", h3.AddrPort(7002).String())
		if err != nil {
			t.Fatal(err)
		}
		defer ln3.Close()
		go func() {
			if c, err := ln3.Accept(); err == nil {
				io.Copy(c, c)
				c.Close()
			}
		}()
		if err := dialEcho(ctx, h2, h3.AddrPort(7002).String(), 2*time.Second); err != nil {
			t.Errorf("host2 -> host3 during host1's cut: %v", err)
		}

		if err := h1.Heal(); err != nil {
			t.Fatal(err)
		}
		client.Timeout = 2 * time.Second
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := dialEcho(ctx, h3, addr, time.Second)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("host1 unreachable after Heal: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if _, err := get(); err != nil {
			t.Errorf("HTTP after Heal: %v", err)
		}
	})
}

func nsExists(name string) bool {
	_, err := os.Stat(filepath.Join("/run/netns", name))
	return err == nil
}

// gone reports whether process pid has ended (a zombie counts as ended).
func gone(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// startSleeper starts a process in h that sleeps for an hour, and waits
// until it runs.
func startSleeper(t *testing.T, h *testbed.Host) *exec.Cmd {
	t.Helper()
	cmd := helper(context.Background(), h, "sleep", "")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
		t.Fatalf("sleeper: %q, %v", line, err)
	}
	return cmd
}

func TestCleanup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("testbed: needs root to create network namespaces")
	}
	var names []string
	var dir string
	var sleeper *exec.Cmd
	t.Run("bed", func(t *testing.T) {
		b := testbed.New(t, 2)
		names, dir = b.Namespaces(), b.Dir()
		for _, n := range names {
			if !nsExists(n) {
				t.Errorf("namespace %s missing", n)
			}
		}
		// A process left running is killed with the bed.
		sleeper = startSleeper(t, b.Hosts[0])
		// A leftover bed of this same, living process is not a leftover.
		if err := testbed.CleanLeftovers(); err != nil {
			t.Error(err)
		}
		for _, n := range names {
			if !nsExists(n) {
				t.Errorf("CleanLeftovers removed %s of a live bed", n)
			}
		}
	})
	for _, n := range names {
		if nsExists(n) {
			t.Errorf("namespace %s left after cleanup", n)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("bed directory %s left after cleanup: %v", dir, err)
	}
	if sleeper != nil {
		done := make(chan error, 1)
		go func() { done <- sleeper.Wait() }()
		select {
		case err := <-done:
			t.Logf("process in the bed ended: %v", err)
		case <-time.After(5 * time.Second):
			sleeper.Process.Kill()
			t.Error("process in the bed still running after cleanup")
		}
	}
}

// TestCrashHelper builds a bed, starts a process in it and exits without
// cleaning up, as a crashed test would. TestLeftovers runs it.
func TestCrashHelper(t *testing.T) {
	if os.Getenv(helperEnv) != "crash" {
		t.Skip("only run by TestLeftovers")
	}
	b := testbed.New(t, 2)
	sleeper := startSleeper(t, b.Hosts[1])
	fmt.Printf("CRASHINFO %s %d\n", b.RunID(), sleeper.Process.Pid)
	os.Exit(3)
}

func TestLeftovers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("testbed: needs root to create network namespaces")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$")
	cmd.Env = append(os.Environ(), helperEnv+"=crash")
	out, _ := cmd.Output()
	var runID string
	var pid int
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "CRASHINFO" {
			runID = f[1]
			pid, _ = strconv.Atoi(f[2])
		}
	}
	if runID == "" {
		t.Fatalf("crash helper printed no CRASHINFO: %s", out)
	}
	left := func() []string {
		var names []string
		ents, _ := os.ReadDir("/run/netns")
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), testbed.Prefix) && strings.HasSuffix(e.Name(), "-"+runID) {
				names = append(names, e.Name())
			}
		}
		return names
	}
	if n := left(); len(n) != 3 {
		// A concurrent test process may have cleaned up already.
		t.Logf("crashed run left namespaces %v, want 3", n)
	}

	b := testbed.New(t, 1) // cleans leftovers first
	if n := left(); len(n) != 0 {
		t.Errorf("leftover namespaces after New: %v", n)
	}
	for _, p := range []string{"/run/corral-testbed/" + runID, "/run/corral-testbed/" + runID + ".lock"} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("leftover %s after New: %v", p, err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for !gone(pid) {
		if time.Now().After(deadline) {
			t.Errorf("process %d of the crashed run still running", pid)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if ls, err := b.Hosts[0].Links(); err != nil || len(ls) != 2 {
		t.Errorf("new bed's host links = %v, %v", ls, err)
	}
}
