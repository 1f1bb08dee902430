package kernelssh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

// Args is an ssh command line as the client understands it.
type Args struct {
	// Host is the peer (hostname or address; a user@ prefix is dropped).
	Host string
	// Port overrides the launch's SSH port (-p, -o Port=); 0: the launch's.
	Port int
	// Command is the remote command's words, joined with spaces as ssh
	// does; empty runs a shell.
	Command []string
	// NoStdin is -n: stdin is not read.
	NoStdin bool
}

// OpenSSH's options: those without an argument and those with one. The
// client accepts all of them, so that launchers that pass their own
// (Open MPI's plm_rsh, MPICH's Hydra: -x, -T, -q, -o ..., -l ...) work
// unchanged, and honours -p, -n and -o Port.
const (
	flagsNoArg   = "46AaCfGgKkMNnqsTtVvXxY"
	flagsWithArg = "BbcDEeFIiJLlmOoPpQRSWw"
)

// ParseArgs reads an ssh command line (without the program name).
func ParseArgs(argv []string) (*Args, error) {
	a := &Args{}
	i := 0
	for ; i < len(argv); i++ {
		arg := argv[i]
		if arg == "--" {
			i++
			break
		}
		if len(arg) < 2 || arg[0] != '-' {
			break
		}
		for j := 1; j < len(arg); j++ {
			c := arg[j]
			switch {
			case strings.IndexByte(flagsNoArg, c) >= 0:
				if c == 'n' {
					a.NoStdin = true
				}
			case strings.IndexByte(flagsWithArg, c) >= 0:
				val := arg[j+1:]
				if val == "" {
					i++
					if i >= len(argv) {
						return nil, fmt.Errorf("option -%c needs an argument", c)
					}
					val = argv[i]
				}
				if err := a.option(c, val); err != nil {
					return nil, err
				}
				j = len(arg) // the rest of arg was the value
			default:
				return nil, fmt.Errorf("unknown option -%c", c)
			}
		}
	}
	if i >= len(argv) {
		return nil, errors.New("no host given")
	}
	a.Host = argv[i]
	if at := strings.LastIndexByte(a.Host, '@'); at >= 0 {
		a.Host = a.Host[at+1:]
	}
	if a.Host == "" {
		return nil, errors.New("empty host")
	}
	a.Command = argv[i+1:]
	return a, nil
}

func (a *Args) option(c byte, val string) error {
	switch c {
	case 'p':
		return a.setPort(val)
	case 'o':
		// "Name=value" or "Name value"; only Port matters here.
		name, v, ok := strings.Cut(val, "=")
		if !ok {
			name, v, _ = strings.Cut(strings.TrimSpace(val), " ")
		}
		if strings.EqualFold(strings.TrimSpace(name), "port") {
			return a.setPort(strings.TrimSpace(v))
		}
	}
	return nil
}

func (a *Args) setPort(v string) error {
	p, err := strconv.Atoi(v)
	if err != nil || p <= 0 || p > 65535 {
		return fmt.Errorf("bad port %q", v)
	}
	a.Port = p
	return nil
}

// ClientConfig authenticates with the session key and accepts only a
// server that presents that same key as its host key.
func ClientConfig(signer ssh.Signer, timeout time.Duration) *ssh.ClientConfig {
	want := signer.PublicKey().Marshal()
	user := os.Getenv("USER")
	if user == "" {
		user = "corral"
	}
	return &ssh.ClientConfig{
		User: user,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: func(host string, remote net.Addr, key ssh.PublicKey) error {
			if !bytes.Equal(key.Marshal(), want) {
				return fmt.Errorf("host key %s of %s (%s) is not the session's: not a kernel of this session", ssh.FingerprintSHA256(key), host, remote)
			}
			return nil
		},
		Timeout: timeout,
	}
}

// Dial connects to addr (host:port) with the session key.
func Dial(ctx context.Context, signer ssh.Signer, addr string, timeout time.Duration) (*ssh.Client, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if timeout > 0 {
		_ = c.SetDeadline(time.Now().Add(timeout))
	}
	conn, chans, reqs, err := ssh.NewClientConn(c, addr, ClientConfig(signer, timeout))
	if err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return ssh.NewClient(conn, chans, reqs), nil
}

// Streams are a remote command's standard streams.
type Streams struct {
	Stdin          io.Reader // nil: the command reads EOF
	Stdout, Stderr io.Writer
}

// Run runs command (a shell when empty) on c and returns its exit code:
// the remote exit status, 128+n when a signal n ended it, 255 when the
// session ended without one. Signals from sigs are sent to the remote
// command; SIGTERM and SIGHUP also end the session at once (the server then
// kills the command), as they end OpenSSH's client.
func Run(c *ssh.Client, command string, st Streams, sigs <-chan os.Signal) (int, error) {
	sess, err := c.NewSession()
	if err != nil {
		return 255, fmt.Errorf("opening a session: %w", err)
	}
	defer sess.Close()
	sess.Stdin, sess.Stdout, sess.Stderr = st.Stdin, st.Stdout, st.Stderr
	if command == "" {
		err = sess.Shell()
	} else {
		err = sess.Start(command)
	}
	if err != nil {
		return 255, fmt.Errorf("starting the remote command: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()
	for {
		select {
		case err = <-done:
			return exitCode(err)
		case s := <-sigs:
			sig, ok := s.(syscall.Signal)
			if !ok {
				continue
			}
			_ = sess.Signal(ssh.Signal(signalName(sig)))
			if sig == syscall.SIGTERM || sig == syscall.SIGHUP {
				return 128 + int(sig), nil
			}
		}
	}
}

func exitCode(err error) (int, error) {
	var ee *ssh.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee):
		if ee.Signal() != "" {
			if n := signalNumber(ee.Signal()); n > 0 {
				return 128 + n, nil
			}
			return 255, nil
		}
		return ee.ExitStatus(), nil
	}
	var missing *ssh.ExitMissingError
	if errors.As(err, &missing) {
		return 255, errors.New("the remote command ended without an exit status (connection lost?)")
	}
	return 255, err
}
