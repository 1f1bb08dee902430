package runc

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/opencontainers/runc/libcontainer"

	"github.com/corral-dev/corral/plugins/drivers"
)

// execIO is the stdio of an exec: the caller's files as they are, else
// pipes whose parent ends goroutines copy from the caller's reader or to
// its writers.
type execIO struct {
	stdin, stdout, stderr *os.File // what the process gets; nil: /dev/null

	childEnds []*os.File // closed here once the process has its copies
	outReads  []*os.File // parent ends of the stdout and stderr pipes
	stdinW    *os.File   // parent end of the stdin pipe
	stdinSrc  io.Reader
	outCopies []func()
	copies    sync.WaitGroup
	closeOnce sync.Once
}

// newExecIO makes the pipes opts needs.
func newExecIO(opts *drivers.ExecOptions) (*execIO, error) {
	e := &execIO{}
	out := func(w io.Writer) (*os.File, error) {
		switch f := w.(type) {
		case nil:
			return nil, nil
		case *os.File:
			return f, nil
		}
		r, cw, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		e.childEnds, e.outReads = append(e.childEnds, cw), append(e.outReads, r)
		e.outCopies = append(e.outCopies, func() { _, _ = io.Copy(w, r) })
		return cw, nil
	}
	var err error
	if e.stdout, err = out(opts.Stdout); err != nil {
		e.close()
		return nil, err
	}
	if e.stderr, err = out(opts.Stderr); err != nil {
		e.close()
		return nil, err
	}
	switch r := opts.Stdin.(type) {
	case nil:
	case *os.File:
		e.stdin = r
	default:
		cr, w, err := os.Pipe()
		if err != nil {
			e.close()
			return nil, err
		}
		e.stdin, e.stdinW, e.stdinSrc = cr, w, r
		e.childEnds = append(e.childEnds, cr)
	}
	return e, nil
}

// attach gives p the process's ends.
func (e *execIO) attach(p *libcontainer.Process) {
	if e.stdin != nil {
		p.Stdin = e.stdin
	}
	if e.stdout != nil {
		p.Stdout = e.stdout
	}
	if e.stderr != nil {
		p.Stderr = e.stderr
	}
}

// started closes the process's ends here and starts copying.
func (e *execIO) started() {
	for _, f := range e.childEnds {
		_ = f.Close()
	}
	e.childEnds = nil
	for _, c := range e.outCopies {
		e.copies.Add(1)
		go func() {
			defer e.copies.Done()
			c()
		}()
	}
	if e.stdinW != nil {
		// Not waited for: the copy may block reading the caller's reader
		// after the process exited; close ends it at its next write.
		go func() {
			_, _ = io.Copy(e.stdinW, e.stdinSrc)
			_ = e.stdinW.Close()
		}()
	}
}

// wait waits for the output copies to reach the end of their pipes, at
// most delay: a background child of the process may hold them open.
func (e *execIO) wait(delay time.Duration) {
	done := make(chan struct{})
	go func() {
		e.copies.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(delay):
	}
}

// close closes every pipe end left open here.
func (e *execIO) close() {
	e.closeOnce.Do(func() {
		for _, f := range e.childEnds {
			_ = f.Close()
		}
		for _, f := range e.outReads {
			_ = f.Close()
		}
		if e.stdinW != nil {
			_ = e.stdinW.Close()
		}
	})
}

// consoleSocket is the socket pair over which libcontainer's init sends
// the master of the terminal it allocated for a process.
type consoleSocket struct {
	parent, child *os.File
}

func newConsoleSocket() (*consoleSocket, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("console socket: %w", err)
	}
	return &consoleSocket{parent: os.NewFile(uintptr(fds[0]), "console-parent"), child: os.NewFile(uintptr(fds[1]), "console-child")}, nil
}

// receive closes the child's end here (the process has its copy) and
// reads the terminal's master; it fails when the process's init ended
// without sending one.
func (c *consoleSocket) receive() (*os.File, error) {
	_ = c.child.Close()
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(int(c.parent.Fd()), buf, oob, 0)
	if err != nil {
		return nil, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return nil, err
	}
	if len(msgs) != 1 {
		return nil, errors.New("the container's init sent no terminal")
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil {
		return nil, err
	}
	if len(fds) != 1 {
		for _, fd := range fds {
			_ = unix.Close(fd)
		}
		return nil, fmt.Errorf("the container's init sent %d descriptors for its terminal, want 1", len(fds))
	}
	unix.CloseOnExec(fds[0])
	return os.NewFile(uintptr(fds[0]), string(buf[:n])), nil
}

func (c *consoleSocket) close() {
	_ = c.parent.Close()
	_ = c.child.Close()
}
