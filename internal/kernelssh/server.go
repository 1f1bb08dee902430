package kernelssh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/crypto/ssh"
)

// Starter starts cmd and returns a function that waits for its end. The
// default starts it with exec.Cmd and waits with Cmd.Wait; a process that
// reaps every child (PID 1 in a container) supplies its own (Reaper.Start).
type Starter func(cmd *exec.Cmd) (wait func() syscall.WaitStatus, err error)

// Server is a kernel's built-in ssh server. Only the holder of Signer's
// key may log in, and the server presents that key as its host key: the
// one session key authenticates both ends. Sessions run their commands
// with /bin/sh -c as the server's own user, in Dir with Env (plus what the
// client sends with "env" requests), without a pty.
type Server struct {
	// Signer is the session's key: host key and the only key that may
	// log in, with Authorized.
	Signer ssh.Signer
	// Authorized are further public keys that may log in (the launch's
	// authorized_keys); the Signer's public key always may.
	Authorized []ssh.PublicKey
	// Env and Dir are the kernel's environment and working directory.
	Env []string
	Dir string
	// Shell runs commands and shells (default /bin/sh).
	Shell string
	// Start starts commands; nil uses exec.Cmd.Start and Wait.
	Start Starter
	// Logf logs connection errors; nil discards them.
	Logf func(format string, args ...any)

	once   sync.Once
	config *ssh.ServerConfig

	mu     sync.Mutex
	closed bool
	lns    map[net.Listener]bool
	conns  map[*ssh.ServerConn]bool
	groups map[int]bool // process groups of running commands
	// checkedIn are the peers that found this server up at the start
	// barrier (BarrierRequest); checkInCh is closed at each new one.
	checkedIn map[string]bool
	checkInCh chan struct{}
}

// BarrierRequest is the global request a kernel sends each peer whose
// server it found up at the start barrier, with its own hostname as the
// payload. A kernel whose command ends keeps its server up until every
// peer has sent it (WaitCheckedIn): a peer still polling for it at the
// barrier would otherwise wait for a server that is gone, forever.
const BarrierRequest = "corral-barrier@corral"

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("kernelssh: server closed")

func (s *Server) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
	}
}

func (s *Server) init() {
	s.once.Do(func() {
		allowed := [][]byte{s.Signer.PublicKey().Marshal()}
		for _, k := range s.Authorized {
			allowed = append(allowed, k.Marshal())
		}
		s.config = &ssh.ServerConfig{
			PublicKeyCallback: func(md ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
				m := key.Marshal()
				for _, a := range allowed {
					if bytes.Equal(a, m) {
						return &ssh.Permissions{}, nil
					}
				}
				return nil, fmt.Errorf("key %s of %s@%s is not the session's", ssh.FingerprintSHA256(key), md.User(), md.RemoteAddr())
			},
		}
		s.config.AddHostKey(s.Signer)
		s.lns = map[net.Listener]bool{}
		s.conns = map[*ssh.ServerConn]bool{}
		s.groups = map[int]bool{}
		s.checkedIn = map[string]bool{}
		s.checkInCh = make(chan struct{})
	})
}

// handleGlobal answers a connection's global requests: BarrierRequest
// checks the sender in, anything else is refused.
func (s *Server) handleGlobal(reqs <-chan *ssh.Request) {
	for r := range reqs {
		if r.Type == BarrierRequest && len(r.Payload) > 0 && len(r.Payload) <= 255 {
			s.mu.Lock()
			if host := string(r.Payload); !s.checkedIn[host] {
				s.checkedIn[host] = true
				close(s.checkInCh)
				s.checkInCh = make(chan struct{})
			}
			s.mu.Unlock()
			_ = r.Reply(true, nil)
			continue
		}
		if r.WantReply {
			_ = r.Reply(false, nil)
		}
	}
}

// WaitCheckedIn returns once every one of hosts has found this server up
// at the start barrier, or with ctx's error. waiting, when not nil, gets
// the hosts still missing once, if any are.
func (s *Server) WaitCheckedIn(ctx context.Context, hosts []string, waiting func(missing []string)) error {
	s.init()
	told := false
	for {
		s.mu.Lock()
		var missing []string
		for _, h := range hosts {
			if !s.checkedIn[h] {
				missing = append(missing, h)
			}
		}
		ch := s.checkInCh
		s.mu.Unlock()
		if len(missing) == 0 {
			return nil
		}
		if !told && waiting != nil {
			waiting(missing)
			told = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// Serve accepts connections on ln until Close.
func (s *Server) Serve(ln net.Listener) error {
	if s.Signer == nil {
		return errors.New("kernelssh: server has no key")
	}
	s.init()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.lns[ln] = true
	s.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		go s.handleConn(c)
	}
}

// Close stops accepting, closes every connection and kills the process
// groups of the commands still running.
func (s *Server) Close() error {
	s.init()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for ln := range s.lns {
		ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	for pg := range s.groups {
		_ = syscall.Kill(-pg, syscall.SIGKILL)
	}
	return nil
}

func (s *Server) handleConn(c net.Conn) {
	sc, chans, reqs, err := ssh.NewServerConn(c, s.config)
	if err != nil {
		s.logf("ssh: refused %s: %v", c.RemoteAddr(), err)
		c.Close()
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		sc.Close()
		return
	}
	s.conns[sc] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, sc)
		s.mu.Unlock()
		sc.Close()
	}()
	go s.handleGlobal(reqs)
	for nc := range chans {
		if nc.ChannelType() != "session" {
			_ = nc.Reject(ssh.UnknownChannelType, "only session channels are served")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		go s.handleSession(ch, creqs)
	}
}

// session is one session channel's state.
type session struct {
	s   *Server
	ch  ssh.Channel
	env []string
	// replied is closed once the exec/shell request has been answered:
	// a command that ends at once must not close the channel before the
	// client has its reply (it would read EOF instead of the exit status).
	replied chan struct{}

	mu   sync.Mutex
	pgid int  // the running command's process group, 0 before it starts
	done bool // the command ended
}

func (s *Server) handleSession(ch ssh.Channel, reqs <-chan *ssh.Request) {
	ss := &session{s: s, ch: ch, replied: make(chan struct{})}
	started := false
	var replied sync.Once
	defer replied.Do(func() { close(ss.replied) })
	for req := range reqs {
		ok := false
		switch req.Type {
		case "env":
			var kv struct{ Name, Value string }
			if ssh.Unmarshal(req.Payload, &kv) == nil && kv.Name != "" && !strings.Contains(kv.Name, "=") {
				ss.env = append(ss.env, kv.Name+"="+kv.Value)
				ok = true
			}
		case "exec", "shell":
			if started {
				break
			}
			cmd := ""
			if req.Type == "exec" {
				var p struct{ Command string }
				if err := ssh.Unmarshal(req.Payload, &p); err != nil {
					break
				}
				cmd = p.Command
			}
			if err := ss.start(cmd); err != nil {
				fmt.Fprintf(ch.Stderr(), "corral-kernel: %v\r\n", err)
				break
			}
			started, ok = true, true
		case "signal":
			var p struct{ Signal string }
			if ssh.Unmarshal(req.Payload, &p) == nil {
				if sig, known := signalByName[p.Signal]; known {
					ss.signal(sig)
					ok = true
				}
			}
		case "pty-req":
			// No pty: commands and shells run on pipes (the client says
			// so and goes on without one).
		}
		if req.WantReply {
			_ = req.Reply(ok, nil)
		}
		if started {
			replied.Do(func() { close(ss.replied) })
		}
		if !ok && (req.Type == "exec" || req.Type == "shell") && !started {
			_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{127}))
			ch.Close()
		}
	}
	// The channel is gone: a command still running loses its client.
	ss.mu.Lock()
	if ss.pgid != 0 && !ss.done {
		_ = syscall.Kill(-ss.pgid, syscall.SIGKILL)
	}
	ss.mu.Unlock()
	ch.Close()
}

func (ss *session) signal(sig syscall.Signal) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.pgid != 0 && !ss.done {
		_ = syscall.Kill(-ss.pgid, sig)
	}
}

// start runs command (a shell without one) with the session's streams.
func (ss *session) start(command string) error {
	s := ss.s
	shell := s.Shell
	if shell == "" {
		shell = "/bin/sh"
	}
	cmd := exec.Command(shell)
	if command != "" {
		cmd.Args = []string{shell, "-c", command}
	}
	cmd.Dir = s.Dir
	cmd.Env = append(append([]string(nil), s.Env...), ss.env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	inR, inW, err := os.Pipe()
	if err != nil {
		return err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		outR.Close()
		outW.Close()
		return err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	start := s.Start
	if start == nil {
		start = startAndWait
	}
	// The group is registered before a Close can miss it.
	s.mu.Lock()
	wait, err := start(cmd)
	if err == nil {
		s.groups[cmd.Process.Pid] = true
	}
	s.mu.Unlock()
	inR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		errR.Close()
		return fmt.Errorf("starting %s: %w", shell, err)
	}
	pid := cmd.Process.Pid
	ss.mu.Lock()
	ss.pgid = pid
	ss.mu.Unlock()
	go func() {
		_, _ = io.Copy(inW, ss.ch)
		inW.Close()
	}()
	var copies sync.WaitGroup
	copies.Add(2)
	go func() {
		defer copies.Done()
		_, _ = io.Copy(ss.ch, outR)
		outR.Close()
	}()
	go func() {
		defer copies.Done()
		_, _ = io.Copy(ss.ch.Stderr(), errR)
		errR.Close()
	}()
	go func() {
		ws := wait()
		ss.mu.Lock()
		ss.done = true
		ss.mu.Unlock()
		s.mu.Lock()
		delete(s.groups, pid)
		s.mu.Unlock()
		copies.Wait()
		<-ss.replied
		if ws.Signaled() {
			name := signalName(ws.Signal())
			_, _ = ss.ch.SendRequest("exit-signal", false, ssh.Marshal(struct {
				Signal     string
				CoreDumped bool
				Error      string
				Lang       string
			}{name, ws.CoreDump(), "", ""}))
		} else {
			_, _ = ss.ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(ws.ExitStatus())}))
		}
		_ = ss.ch.CloseWrite()
		ss.ch.Close()
	}()
	return nil
}

// startAndWait is the default Starter.
func startAndWait(cmd *exec.Cmd) (func() syscall.WaitStatus, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return func() syscall.WaitStatus {
		_ = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
			return ws
		}
		return syscall.WaitStatus(255 << 8)
	}, nil
}

// signalByName maps ssh's signal names (RFC 4254 6.10) to signals.
var signalByName = map[string]syscall.Signal{
	"ABRT": syscall.SIGABRT, "ALRM": syscall.SIGALRM, "FPE": syscall.SIGFPE, "HUP": syscall.SIGHUP,
	"ILL": syscall.SIGILL, "INT": syscall.SIGINT, "KILL": syscall.SIGKILL, "PIPE": syscall.SIGPIPE,
	"QUIT": syscall.SIGQUIT, "SEGV": syscall.SIGSEGV, "TERM": syscall.SIGTERM, "USR1": syscall.SIGUSR1,
	"USR2": syscall.SIGUSR2,
}

// signalName is sig's ssh name, or "SIG<n>" for one ssh does not name.
func signalName(sig syscall.Signal) string {
	for n, s := range signalByName {
		if s == sig {
			return n
		}
	}
	return fmt.Sprintf("SIG%d", int(sig))
}

// signalNumber is the number of an ssh signal name, 0 when unknown.
func signalNumber(name string) int {
	if s, ok := signalByName[name]; ok {
		return int(s)
	}
	var n int
	if _, err := fmt.Sscanf(name, "SIG%d", &n); err == nil {
		return n
	}
	return 0
}
