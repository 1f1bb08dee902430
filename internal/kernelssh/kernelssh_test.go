package kernelssh

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func newSigner(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// serve starts srv on addr (127.0.0.1:0 when empty) and returns its address.
func serve(t *testing.T, srv *Server, addr string) string {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func dial(t *testing.T, key ssh.Signer, addr string) *ssh.Client {
	t.Helper()
	c, err := Dial(context.Background(), key, addr, time.Minute)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestExecStreamsAndExitCode(t *testing.T) {
	key := newSigner(t)
	dir := t.TempDir()
	addr := serve(t, &Server{Signer: key, Env: []string{"PATH=" + os.Getenv("PATH"), "KERNEL_VAR=from-kernel"}, Dir: dir}, "")
	c := dial(t, key, addr)
	var out, errOut bytes.Buffer
	code, err := Run(c, `cat; echo "$KERNEL_VAR $(pwd)"; echo to-stderr >&2; exit 3`,
		Streams{Stdin: strings.NewReader("hello from stdin\n"), Stdout: &out, Stderr: &errOut}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if code != 3 {
		t.Errorf("exit code %d, want 3", code)
	}
	if want := "hello from stdin\nfrom-kernel " + dir + "\n"; out.String() != want {
		t.Errorf("stdout %q, want %q", out.String(), want)
	}
	if errOut.String() != "to-stderr\n" {
		t.Errorf("stderr %q, want %q", errOut.String(), "to-stderr\n")
	}

	// A second session on the same connection, with an env request, and
	// a command killed by a signal.
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Setenv("FROM_CLIENT", "yes"); err != nil {
		t.Fatalf("env request refused: %v", err)
	}
	b, err := sess.Output(`echo "$FROM_CLIENT"`)
	if err != nil || string(b) != "yes\n" {
		t.Errorf("env request: output %q, %v; want \"yes\\n\"", b, err)
	}
	code, err = Run(c, `kill -USR1 $$`, Streams{Stdout: io.Discard, Stderr: io.Discard}, nil)
	if err != nil || code != 128+int(syscall.SIGUSR1) {
		t.Errorf("killed command: code %d, %v; want %d", code, err, 128+int(syscall.SIGUSR1))
	}
}

func TestShellWithoutPty(t *testing.T) {
	key := newSigner(t)
	addr := serve(t, &Server{Signer: key, Env: []string{"PATH=" + os.Getenv("PATH")}}, "")
	c := dial(t, key, addr)
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	// A pty is refused (commands run on pipes); the shell still runs.
	if err := sess.RequestPty("xterm", 24, 80, ssh.TerminalModes{}); err == nil {
		t.Error("pty-req accepted, but the server allocates no pty")
	}
	var out bytes.Buffer
	sess.Stdin = strings.NewReader("echo shell-ok\nexit 4\n")
	sess.Stdout = &out
	if err := sess.Shell(); err != nil {
		t.Fatal(err)
	}
	err = sess.Wait()
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.ExitStatus() != 4 {
		t.Errorf("shell: %v, want exit status 4", err)
	}
	if out.String() != "shell-ok\n" {
		t.Errorf("shell output %q", out.String())
	}
}

func TestWrongKeyRefused(t *testing.T) {
	key, other := newSigner(t), newSigner(t)
	var mu sync.Mutex
	var logged []string
	addr := serve(t, &Server{Signer: key, Logf: func(f string, a ...any) {
		mu.Lock()
		logged = append(logged, fmt.Sprintf(f, a...))
		mu.Unlock()
	}}, "")
	// A client that trusts the server's host key but holds another key.
	cfg := &ssh.ClientConfig{User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(other)}, HostKeyCallback: ssh.FixedHostKey(key.PublicKey())}
	c, err := ssh.Dial("tcp", addr, cfg)
	if err == nil {
		c.Close()
		t.Fatal("a key that is not the session's logged in")
	}
	if !strings.Contains(err.Error(), "unable to authenticate") {
		t.Errorf("error %v, want an authentication failure", err)
	}
	// No key at all (password, keyboard-interactive) gets in either.
	cfg.Auth = []ssh.AuthMethod{ssh.Password("root")}
	if c, err := ssh.Dial("tcp", addr, cfg); err == nil {
		c.Close()
		t.Fatal("a password logged in")
	}
}

func TestHostKeyMismatchRefused(t *testing.T) {
	key, other := newSigner(t), newSigner(t)
	// The server would let key in, but presents another host key: the
	// client must not talk to it.
	addr := serve(t, &Server{Signer: other, Authorized: []ssh.PublicKey{key.PublicKey()}}, "")
	c, err := Dial(context.Background(), key, addr, time.Minute)
	if err == nil {
		c.Close()
		t.Fatal("client accepted a server whose host key is not the session's")
	}
	if !strings.Contains(err.Error(), "is not the session's") {
		t.Errorf("error %v, want a host key mismatch", err)
	}
}

func TestSignalAndChannelClose(t *testing.T) {
	key := newSigner(t)
	addr := serve(t, &Server{Signer: key, Env: []string{"PATH=" + os.Getenv("PATH")}}, "")
	c := dial(t, key, addr)

	// A signal is forwarded to the command's process group.
	pr, pw := io.Pipe()
	sigs := make(chan os.Signal, 1)
	res := make(chan int, 1)
	go func() {
		code, _ := Run(c, `trap 'exit 7' INT; echo ready; while :; do sleep 0.05; done`, Streams{Stdout: pw, Stderr: os.Stderr}, sigs)
		pw.Close()
		res <- code
	}()
	line, _ := bufio.NewReader(pr).ReadString('\n')
	if line != "ready\n" {
		t.Fatalf("got %q, want ready", line)
	}
	go io.Copy(io.Discard, pr)
	sigs <- syscall.SIGINT
	if code := <-res; code != 7 {
		t.Errorf("after SIGINT: exit code %d, want 7 from the trap", code)
	}

	// Closing the channel kills what the command left running.
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	out, _ := sess.StdoutPipe()
	if err := sess.Start(`sleep 1000 & echo $!; wait`); err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Fscan(out, &pid); err != nil || pid <= 0 {
		t.Fatalf("reading the background pid: %v", err)
	}
	sess.Close()
	for syscall.Kill(pid, 0) == nil {
		time.Sleep(10 * time.Millisecond)
	}
}

func TestParseArgs(t *testing.T) {
	tests := []struct {
		argv []string
		want Args
		err  string
	}{
		{[]string{"sub1", "hostname"}, Args{Host: "sub1", Command: []string{"hostname"}}, ""},
		// Open MPI's rsh agent form.
		{[]string{"-x", "-o", "StrictHostKeyChecking=no", "sub1", "orted", "-mca", "ess", "env"},
			Args{Host: "sub1", Command: []string{"orted", "-mca", "ess", "env"}}, ""},
		// MPICH Hydra and assorted options.
		{[]string{"-x", "-T", "-q", "-l", "root", "-oBatchMode=yes", "-i", "/k", "main1", "/usr/bin/hydra_pmi_proxy", "--control-port", "main1:3000"},
			Args{Host: "main1", Command: []string{"/usr/bin/hydra_pmi_proxy", "--control-port", "main1:3000"}}, ""},
		{[]string{"-p", "2200", "-n", "user@10.0.0.2"}, Args{Host: "10.0.0.2", Port: 2200, NoStdin: true}, ""},
		{[]string{"-xqp2201", "h", "a b"}, Args{Host: "h", Port: 2201, Command: []string{"a b"}}, ""},
		{[]string{"-o", "Port 2202", "h"}, Args{Host: "h", Port: 2202}, ""},
		{[]string{"-oPort=2203", "--", "h", "-x"}, Args{Host: "h", Port: 2203, Command: []string{"-x"}}, ""},
		{[]string{"-x"}, Args{}, "no host given"},
		{[]string{"-p"}, Args{}, "needs an argument"},
		{[]string{"-p", "x", "h"}, Args{}, "bad port"},
		{[]string{"-Z", "h"}, Args{}, "unknown option -Z"},
	}
	for _, tc := range tests {
		got, err := ParseArgs(tc.argv)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseArgs(%q): %v, want error %q", tc.argv, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseArgs(%q): %v", tc.argv, err)
			continue
		}
		if len(got.Command) == 0 {
			got.Command = nil
		}
		if !reflect.DeepEqual(*got, tc.want) {
			t.Errorf("ParseArgs(%q) = %+v, want %+v", tc.argv, *got, tc.want)
		}
	}
}

// notReady accepts connections and drops them at once, as a peer whose
// port is open but whose server is not ssh yet; ready hands the listener
// to the real server.
type notReady struct {
	ln   net.Listener
	stop chan struct{}
	done chan struct{}
}

func (n *notReady) run() {
	defer close(n.done)
	for {
		c, err := n.ln.Accept()
		if err != nil {
			return
		}
		c.Close()
		select {
		case <-n.stop:
			return
		default:
		}
	}
}

func TestBarrierWaitsForLatePeer(t *testing.T) {
	key := newSigner(t)
	// main1 on 127.0.0.1, sub1 on 127.0.0.2, the same port as in a session.
	ln1, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln1.Addr().(*net.TCPAddr).Port
	ln2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.2:%d", port))
	if err != nil {
		ln1.Close()
		t.Skipf("cannot listen on 127.0.0.2: %v", err)
	}
	main := &Server{Signer: key}
	go func() { _ = main.Serve(ln1) }()
	t.Cleanup(func() { main.Close() })

	// sub1's port refuses ssh until the test sees the barrier waiting.
	late := &notReady{ln: ln2, stop: make(chan struct{}), done: make(chan struct{})}
	go late.run()

	l := &Launch{SSHPort: port, Peers: []Peer{{Hostname: "main1", Addr: "127.0.0.1", Rank: 0}, {Hostname: "sub1", Addr: "127.0.0.2", Rank: 1}}}
	var mu sync.Mutex
	var lines []string
	waiting := make(chan struct{})
	logf := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		line := fmt.Sprintf(format, args...)
		lines = append(lines, line)
		if strings.Contains(line, "waiting for peer sub1") {
			close(waiting)
		}
	}
	done := make(chan error, 1)
	go func() { done <- WaitForPeers(context.Background(), l, key, logf) }()
	<-waiting
	select {
	case err := <-done:
		t.Fatalf("barrier passed while sub1 was not up: %v", err)
	default:
	}
	close(late.stop)
	// Unblock the accept loop so that it sees stop, then serve for real.
	if c, err := net.Dial("tcp", ln2.Addr().String()); err == nil {
		c.Close()
	}
	<-late.done
	sub := &Server{Signer: key}
	go func() { _ = sub.Serve(ln2) }()
	t.Cleanup(func() { sub.Close() })
	if err := <-done; err != nil {
		t.Fatalf("barrier: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	var waits, ups int
	for _, line := range lines {
		if strings.Contains(line, "waiting for peer") {
			waits++
		}
		if strings.Contains(line, "sub1 (rank 1)") && strings.Contains(line, "is up") {
			ups++
		}
	}
	if waits != 1 || ups != 1 {
		t.Errorf("log lines %q: want one waiting line (sub1) and one up line", lines)
	}
}

// TestPeerAddrOwnPorts: host-networked kernels of one session on one agent
// share an address and differ by port; a peer without a port of its own
// uses the launch's.
func TestPeerAddrOwnPorts(t *testing.T) {
	l := &Launch{SSHPort: 20000, Peers: []Peer{
		{Hostname: "main1", Addr: "192.0.2.1", SSHPort: 20000},
		{Hostname: "sub1", Addr: "192.0.2.1", SSHPort: 20001},
		{Hostname: "sub2", Addr: "192.0.2.2"},
	}}
	for _, tc := range []struct {
		host string
		port int
		want string
	}{
		{"main1", 0, "192.0.2.1:20000"},
		{"sub1", 0, "192.0.2.1:20001"},
		{"sub2", 0, "192.0.2.2:20000"},
		{"sub1", 2222, "192.0.2.1:2222"}, // -p wins
		{"elsewhere", 0, "elsewhere:20000"},
	} {
		if got := l.PeerAddr(tc.host, tc.port); got != tc.want {
			t.Errorf("PeerAddr(%q, %d) = %q, want %q", tc.host, tc.port, got, tc.want)
		}
	}
}

// TestBarrierCheckIn: a kernel's server counts the peers that found it up
// at the barrier; WaitCheckedIn holds until each has, so that a kernel
// whose command ended first does not leave a peer polling for it.
func TestBarrierCheckIn(t *testing.T) {
	key := newSigner(t)
	ln1, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln1.Addr().(*net.TCPAddr).Port
	ln2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.2:%d", port))
	if err != nil {
		ln1.Close()
		t.Skipf("cannot listen on 127.0.0.2: %v", err)
	}
	main, sub := &Server{Signer: key}, &Server{Signer: key}
	go func() { _ = main.Serve(ln1) }()
	go func() { _ = sub.Serve(ln2) }()
	t.Cleanup(func() { main.Close(); sub.Close() })
	peers := []Peer{{Hostname: "main1", Addr: "127.0.0.1", Rank: 0}, {Hostname: "sub1", Addr: "127.0.0.2", Rank: 1}}

	missing := make(chan []string, 1)
	done := make(chan error, 1)
	go func() {
		done <- main.WaitCheckedIn(context.Background(), []string{"main1", "sub1"}, func(m []string) { missing <- m })
	}()
	if m := <-missing; strings.Join(m, ",") != "main1,sub1" {
		t.Fatalf("missing %v, want main1,sub1", m)
	}
	// sub1 passes its barrier: it checks in at main1 (and itself).
	if err := WaitForPeers(context.Background(), &Launch{Hostname: "sub1", SSHPort: port, Peers: peers}, key, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("WaitCheckedIn returned (%v) before main1 checked in", err)
	default:
	}
	if err := sub.WaitCheckedIn(context.Background(), []string{"sub1"}, nil); err != nil {
		t.Fatalf("sub1's own check-in: %v", err)
	}
	if err := WaitForPeers(context.Background(), &Launch{Hostname: "main1", SSHPort: port, Peers: peers}, key, nil); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("WaitCheckedIn after both checked in: %v", err)
	}

	// A stopped wait returns ctx's error; other global requests are refused.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := main.WaitCheckedIn(ctx, []string{"sub2"}, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled wait: %v", err)
	}
	c, err := Dial(context.Background(), key, ln1.Addr().String(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ok, _, err := c.SendRequest("tcpip-forward", true, nil); err != nil || ok {
		t.Fatalf("tcpip-forward: ok %v err %v, want refused", ok, err)
	}
}
