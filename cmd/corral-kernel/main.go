// Command corral-kernel is the helper that the corral agent places into
// every kernel of a cluster session (at /.corral/bin in containers): a
// small static binary, so that it runs in any image, with no sshd and no
// ssh client needed there.
//
//	corral-kernel run -launch FILE -- CMD...   ssh server, start barrier, then CMD
//	corral-kernel serve -launch FILE           ssh server only, until SIGTERM
//	corral-kernel ssh [ssh options] HOST CMD   client (also as a link named ssh)
//	corral-kernel sftp -root DIR -host-key F -authorized-keys F [-listen ADDR]
//	corral-kernel version
//
// run starts the kernel's built-in ssh server, waits (when the launch file
// says Barrier) until every peer's server accepts the session key, runs
// CMD as its child with the kernel's environment, forwards SIGTERM,
// SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to it, reaps every orphan
// (it may be PID 1) and exits with CMD's exit code (128+n when signal n
// killed it). The server keeps serving while CMD runs.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/corral-dev/corral/internal/kernelssh"
	buildversion "github.com/corral-dev/corral/version"
)

// version is the build's, set with -ldflags in the version package.
var version = buildversion.Version

// dialTimeout bounds the client's connection to a peer.
const dialTimeout = 30 * time.Second

func main() {
	if filepath.Base(os.Args[0]) == "ssh" {
		os.Exit(sshMain(os.Args[1:]))
	}
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "run":
		os.Exit(runMain(os.Args[2:], false))
	case "serve":
		os.Exit(runMain(os.Args[2:], true))
	case "ssh":
		os.Exit(sshMain(os.Args[2:]))
	case "sftp":
		os.Exit(sftpMain(os.Args[2:]))
	case "version":
		fmt.Printf("corral-kernel %s\n", version)
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: corral-kernel run -launch FILE -- CMD... | serve -launch FILE | ssh [options] HOST [CMD...] | version")
	os.Exit(2)
}

func logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }

// forwarded are the signals run passes on to its command.
var forwarded = []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}

// runMain is `run` (serveOnly false) and `serve`.
func runMain(args []string, serveOnly bool) int {
	name := "run"
	if serveOnly {
		name = "serve"
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	launchPath := fs.String("launch", kernelssh.DefaultLaunchPath, "the kernel's launch file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cmdArgs := fs.Args()
	if !serveOnly && len(cmdArgs) == 0 {
		logf("corral-kernel run: no command given (corral-kernel run -launch FILE -- CMD...)")
		return 2
	}
	// Signals are caught from the start: a SIGTERM during the barrier
	// ends the kernel as the command's would.
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, forwarded...)

	l, err := kernelssh.LoadLaunch(*launchPath)
	if err != nil {
		logf("corral-kernel %s: %v", name, err)
		return 125
	}
	signer, err := l.Signer()
	if err != nil {
		logf("corral-kernel %s: %v", name, err)
		return 125
	}
	authorized, err := l.AuthorizedKeys()
	if err != nil {
		logf("corral-kernel %s: %v", name, err)
		return 125
	}
	reaper := kernelssh.NewReaper()
	dir, _ := os.Getwd()
	srv := &kernelssh.Server{Signer: signer, Authorized: authorized, Env: os.Environ(), Dir: dir, Start: reaper.Start, Logf: logf}
	ln, err := net.Listen("tcp", l.ListenAddress())
	if err != nil {
		logf("corral-kernel %s: ssh server: %v", name, err)
		return 125
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, kernelssh.ErrServerClosed) {
			logf("corral-kernel: ssh server stopped: %v", err)
		}
	}()
	defer srv.Close()

	if serveOnly {
		if l.Barrier {
			// Check in with the peers that run commands: each keeps its
			// server up after its command until every peer has.
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() { _ = kernelssh.WaitForPeers(ctx, l, signer, nil) }()
		}
		for s := range sigs {
			if s == syscall.SIGTERM || s == syscall.SIGINT {
				return 0
			}
		}
	}

	if l.Barrier {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			_ = kernelssh.WaitForPeers(ctx, l, signer, logf)
			close(done)
		}()
		select {
		case <-done:
			cancel()
		case s := <-sigs:
			cancel()
			logf("corral-kernel: %v before every peer was up; not starting the command", s)
			return 128 + int(s.(syscall.Signal))
		}
	}

	cmd := exec.Command(cmdArgs[0], cmdArgs[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// The command dies with corral-kernel, even when a SIGKILL ends it
	// outside a pid namespace of its own.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	wait, err := reaper.Start(cmd)
	if err != nil {
		logf("corral-kernel run: %v", err)
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return 127
		}
		return 126
	}
	exited := make(chan syscall.WaitStatus, 1)
	go func() { exited <- wait() }()
	stopping := false // a SIGTERM or SIGINT came: the kernel is being stopped
	for {
		select {
		case s := <-sigs:
			stopping = stopping || s == syscall.SIGTERM || s == syscall.SIGINT
			_ = cmd.Process.Signal(s)
		case ws := <-exited:
			code := ws.ExitStatus()
			if ws.Signaled() {
				code = 128 + int(ws.Signal())
			}
			if l.Barrier && !stopping {
				awaitCheckIns(srv, l, sigs, code)
			}
			return code
		}
	}
}

// awaitCheckIns keeps the kernel's ssh server up, after its command ended
// with code, until every peer has found it up at the start barrier: a
// peer still polling for it would otherwise wait there forever (its
// session going on when this kernel's end does not decide it). The peers
// are all up or coming (the server ends the session when one fails to
// start, and its SIGTERM ends this wait).
func awaitCheckIns(srv *kernelssh.Server, l *kernelssh.Launch, sigs <-chan os.Signal, code int) {
	hosts := make([]string, len(l.Peers))
	for i, p := range l.Peers {
		hosts[i] = p.Hostname
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for s := range sigs {
			if s == syscall.SIGTERM || s == syscall.SIGINT {
				cancel()
				return
			}
		}
	}()
	_ = srv.WaitCheckedIn(ctx, hosts, func(missing []string) {
		logf("corral-kernel: the command ended (code %d); serving until %s pass the start barrier", code, strings.Join(missing, ", "))
	})
}

// sshMain is the client: `corral-kernel ssh ...` or a link named ssh.
func sshMain(argv []string) int {
	a, err := kernelssh.ParseArgs(argv)
	if err != nil {
		logf("ssh (corral): %v\nusage: ssh [options] HOST [COMMAND...]", err)
		return 255
	}
	l, err := kernelssh.FindLaunch()
	if err != nil {
		logf("ssh (corral): %v", err)
		return 255
	}
	signer, err := l.Signer()
	if err != nil {
		logf("ssh (corral): %v", err)
		return 255
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	addr := l.PeerAddr(a.Host, a.Port)
	c, err := kernelssh.Dial(context.Background(), signer, addr, dialTimeout)
	if err != nil {
		logf("ssh (corral): %s (%s): %v", a.Host, addr, err)
		return 255
	}
	defer c.Close()
	st := kernelssh.Streams{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
	if a.NoStdin {
		st.Stdin = nil
	}
	code, err := kernelssh.Run(c, strings.Join(a.Command, " "), st, sigs)
	if err != nil {
		logf("ssh (corral): %s: %v", a.Host, err)
	}
	return code
}
