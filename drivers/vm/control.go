package vm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"

	"github.com/corral-dev/corral/drivers/vm/guestproto"
)

// control is the host's side of a VM's control port: one connection to
// qemu's socket chardev, shared by the task's execs and signals.
type control struct {
	socket string

	mu     sync.Mutex
	conn   net.Conn
	nextID uint32
	execs  map[uint32]*execSession
	wmu    sync.Mutex // serializes frames on conn
}

type execSession struct {
	stdout, stderr io.Writer
	done           chan guestproto.Exit
}

// connect returns the live connection, dialing (and greeting the guest
// agent) when there is none. mu is held.
func (c *control) connectLocked(ctx context.Context) (net.Conn, error) {
	if c.conn != nil {
		return c.conn, nil
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return nil, fmt.Errorf("connecting to the guest agent: %w", err)
	}
	if err := guestproto.WriteFrame(conn, guestproto.Frame{Type: guestproto.FrameHello}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("greeting the guest agent: %w", err)
	}
	c.conn = conn
	if c.execs == nil {
		c.execs = map[uint32]*execSession{}
	}
	go c.read(conn)
	return conn, nil
}

func (c *control) send(conn net.Conn, f guestproto.Frame) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return guestproto.WriteFrame(conn, f)
}

// read dispatches the guest's frames until the connection fails; then
// every exec of it ends with an error.
func (c *control) read(conn net.Conn) {
	r := bufio.NewReader(conn)
	for {
		f, err := guestproto.ReadFrame(r)
		if err != nil {
			break
		}
		c.mu.Lock()
		s := c.execs[f.ID]
		if f.Type == guestproto.FrameExit {
			delete(c.execs, f.ID)
		}
		c.mu.Unlock()
		if s == nil {
			continue
		}
		switch f.Type {
		case guestproto.FrameStdout:
			_, _ = s.stdout.Write(f.Payload)
		case guestproto.FrameStderr:
			_, _ = s.stderr.Write(f.Payload)
		case guestproto.FrameExit:
			var e guestproto.Exit
			if err := json.Unmarshal(f.Payload, &e); err != nil {
				e = guestproto.Exit{ExitCode: -1, Error: "unreadable exit record"}
			}
			s.done <- e
		}
	}
	conn.Close()
	c.mu.Lock()
	if c.conn == conn {
		c.conn = nil
	}
	for id, s := range c.execs {
		delete(c.execs, id)
		s.done <- guestproto.Exit{ExitCode: -1, Error: "the connection to the guest agent ended"}
	}
	c.mu.Unlock()
}

// signal sends sig to the session's command.
func (c *control) signal(ctx context.Context, sig syscall.Signal) error {
	c.mu.Lock()
	conn, err := c.connectLocked(ctx)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	return c.send(conn, guestproto.Frame{Type: guestproto.FrameSignal, ID: guestproto.MainID, Payload: []byte{byte(sig)}})
}

// exec runs argv in the guest and streams its output; it returns the exit
// code, or ctx's error after killing the command when ctx ends first.
func (c *control) exec(ctx context.Context, argv, env []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	start, err := json.Marshal(guestproto.ExecStart{Command: argv, Env: env})
	if err != nil {
		return 0, err
	}
	s := &execSession{stdout: stdout, stderr: stderr, done: make(chan guestproto.Exit, 1)}
	c.mu.Lock()
	conn, err := c.connectLocked(ctx)
	if err != nil {
		c.mu.Unlock()
		return 0, err
	}
	c.nextID++
	id := c.nextID
	c.execs[id] = s
	c.mu.Unlock()
	if err := c.send(conn, guestproto.Frame{Type: guestproto.FrameStart, ID: id, Payload: start}); err != nil {
		return 0, fmt.Errorf("starting the exec in the guest: %w", err)
	}
	go func() {
		if stdin != nil {
			buf := make([]byte, 32<<10)
			for {
				n, err := stdin.Read(buf)
				if n > 0 {
					if c.send(conn, guestproto.Frame{Type: guestproto.FrameStdin, ID: id, Payload: append([]byte(nil), buf[:n]...)}) != nil {
						return
					}
				}
				if err != nil {
					break
				}
				select {
				case <-s.done:
					return
				default:
				}
			}
		}
		_ = c.send(conn, guestproto.Frame{Type: guestproto.FrameStdinClose, ID: id})
	}()
	select {
	case e := <-s.done:
		// Put it back for the stdin copier, which may look.
		s.done <- e
		if e.Error != "" && e.ExitCode < 0 {
			return 0, errors.New("exec in the guest: " + e.Error)
		}
		return e.ExitCode, nil
	case <-ctx.Done():
		_ = c.send(conn, guestproto.Frame{Type: guestproto.FrameSignal, ID: id, Payload: []byte{byte(syscall.SIGKILL)}})
		return 0, ctx.Err()
	}
}

// close ends the connection.
func (c *control) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}
