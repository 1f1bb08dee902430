package main

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/term"

	"github.com/corral-dev/corral/api"
)

// execInteractive runs req over the exec WebSocket with this process's
// stdin streamed (withStdin) and, with tty, on a remote terminal: the
// local terminal is put in raw mode (restored on return) and its size
// changes (SIGWINCH) are sent along.
func (c *cli) execInteractive(ctx context.Context, client *api.Client, ref string, req *api.ExecRequest, withStdin, tty bool) (int, error) {
	streams := api.ExecStreams{Stdout: c.stdout, Stderr: c.stderr}
	req.Stdin = withStdin
	if withStdin {
		streams.Stdin = os.Stdin
	}
	if tty {
		fd := int(os.Stdin.Fd())
		if !term.IsTerminal(fd) {
			return -1, errors.New("-t needs a terminal on stdin: run without -t to stream stdin over pipes")
		}
		req.TTY = true
		if cols, rows, err := term.GetSize(fd); err == nil {
			req.Rows, req.Cols = uint16(rows), uint16(cols)
		}
		if withStdin {
			// Raw mode: keys (^C, ^D, arrows) reach the remote terminal
			// as typed, and its echo is the only one shown.
			old, err := term.MakeRaw(fd)
			if err != nil {
				return -1, err
			}
			defer func() { _ = term.Restore(fd, old) }()
		}
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		resize := make(chan api.TermSize, 1)
		streams.Resize = resize
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-winch:
					cols, rows, err := term.GetSize(fd)
					if err != nil {
						continue
					}
					select {
					case resize <- api.TermSize{Rows: uint16(rows), Cols: uint16(cols)}:
					case <-ctx.Done():
						return
					}
				}
			}
		}()
		return client.ExecInteractive(ctx, ref, req, streams)
	}
	return client.ExecInteractive(ctx, ref, req, streams)
}
