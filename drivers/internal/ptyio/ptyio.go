// Package ptyio is the parent's side of a command run on a pseudo-terminal
// by a driver's Exec: opening the terminal, copying its input and output,
// and resizing it.
package ptyio

import (
	"io"
	"os"
	"sync"
	"time"

	"github.com/creack/pty"

	"github.com/corral-dev/corral/plugins/drivers"
)

// Open allocates a pseudo-terminal of rows x cols (either zero: the
// kernel's default) and returns its master and slave ends.
func Open(rows, cols uint16) (master, slave *os.File, err error) {
	master, slave, err = pty.Open()
	if err != nil {
		return nil, nil, err
	}
	if rows != 0 && cols != 0 {
		if err := Resize(master, rows, cols); err != nil {
			_ = master.Close()
			_ = slave.Close()
			return nil, nil, err
		}
	}
	return master, slave, nil
}

// Resize sets the size of the terminal whose master is f (TIOCSWINSZ); the
// kernel sends SIGWINCH to its foreground process group.
func Resize(f *os.File, rows, cols uint16) error {
	return pty.Setsize(f, &pty.Winsize{Rows: rows, Cols: cols})
}

// Terminal copies a running command's terminal to and from its caller.
type Terminal struct {
	master    *os.File
	out       sync.WaitGroup
	stop      chan struct{}
	closeOnce sync.Once
}

// Serve starts copying master's output to out, in (when not nil) to
// master, and applying the sizes resize delivers (when not nil), until
// Close.
func Serve(master *os.File, in io.Reader, out io.Writer, resize <-chan drivers.TermSize) *Terminal {
	t := &Terminal{master: master, stop: make(chan struct{})}
	if out == nil {
		out = io.Discard
	}
	t.out.Add(1)
	go func() {
		defer t.out.Done()
		// Reading the master fails with EIO once no process holds the
		// slave any more: the end of the output.
		_, _ = io.Copy(out, master)
	}()
	if in != nil {
		// Not waited for: the copy may block reading in after the command
		// exited; Close ends it at its next write.
		go func() { _, _ = io.Copy(master, in) }()
	}
	if resize != nil {
		go func() {
			for {
				select {
				case <-t.stop:
					return
				case s, ok := <-resize:
					if !ok {
						return
					}
					if s.Rows != 0 && s.Cols != 0 {
						_ = Resize(master, s.Rows, s.Cols)
					}
				}
			}
		}()
	}
	return t
}

// Close waits for the output copy to reach the end of the terminal's
// output, at most delay (a background child of the command may hold the
// terminal open), then closes the master.
func (t *Terminal) Close(delay time.Duration) {
	done := make(chan struct{})
	go func() {
		t.out.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(delay):
	}
	t.closeOnce.Do(func() {
		close(t.stop)
		_ = t.master.Close()
	})
}
