package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/coder/websocket"
)

// ExecProtocol is the WebSocket subprotocol of the exec WebSocket. A
// client that cannot set an Authorization header (a browser) offers it
// together with WSTokenProtocolPrefix+TOKEN; the server's answer names
// ExecProtocol only, never the token.
const ExecProtocol = "corral.exec.v1"

// WSTokenProtocolPrefix starts the subprotocol that carries a client's
// token on a WebSocket upgrade ("corral.bearer.AK....SECRET"), read only
// when the request has no Authorization header.
const WSTokenProtocolPrefix = "corral.bearer."

// TermSize is a terminal's size in characters.
type TermSize struct{ Rows, Cols uint16 }

// ExecStreams are what ExecInteractive connects to the remote command.
type ExecStreams struct {
	// Stdin is copied to the command when req.Stdin is set; its end
	// closes the command's stdin.
	Stdin io.Reader
	// Stdout and Stderr receive the output (nil discards); on a terminal
	// all of it goes to Stdout.
	Stdout, Stderr io.Writer
	// Resize delivers new terminal sizes (with req.TTY); nil: none.
	Resize <-chan TermSize
}

// ExecInteractive runs a command in a running kernel of a session over the
// exec WebSocket (docs/api-exec.md), with stdin streamed and, with
// req.TTY, on a pseudo-terminal; it returns the command's exit code.
// Ending ctx ends the command.
func (c *Client) ExecInteractive(ctx context.Context, ref string, req *ExecRequest, streams ExecStreams) (int, error) {
	stdout, stderr := streams.Stdout, streams.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	u := c.base + sessionPath(ref, "/exec/ws")
	u = "ws" + strings.TrimPrefix(u, "http") // http→ws, https→wss
	h := http.Header{}
	if c.token != "" {
		h.Set("Authorization", "Bearer "+c.token)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: c.http, HTTPHeader: h})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			if resp.Body != nil {
				if e := decodeError(resp); e != nil {
					return -1, e
				}
			}
			return -1, fmt.Errorf("exec: %s answered %s", c.base, resp.Status)
		}
		return -1, fmt.Errorf("exec: connecting to %s: %w", c.base, err)
	}
	defer conn.CloseNow()
	conn.SetReadLimit(64 << 20)
	first, err := json.Marshal(req)
	if err != nil {
		return -1, err
	}
	if err := conn.Write(ctx, websocket.MessageText, first); err != nil {
		return -1, fmt.Errorf("exec: sending the request: %w", err)
	}
	if req.Stdin && streams.Stdin != nil {
		go func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := streams.Stdin.Read(buf)
				if n > 0 {
					msg := append([]byte{ExecStdin}, buf[:n]...)
					if conn.Write(ctx, websocket.MessageBinary, msg) != nil {
						return
					}
				}
				if err != nil {
					b, _ := json.Marshal(ExecControl{CloseStdin: true})
					_ = conn.Write(ctx, websocket.MessageText, b)
					return
				}
			}
		}()
	}
	if req.TTY && streams.Resize != nil {
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case sz, ok := <-streams.Resize:
					if !ok {
						return
					}
					b, _ := json.Marshal(ExecControl{Rows: sz.Rows, Cols: sz.Cols})
					if conn.Write(ctx, websocket.MessageText, b) != nil {
						return
					}
				}
			}
		}()
	}
	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return -1, ctx.Err()
			}
			var ce websocket.CloseError
			if errors.As(err, &ce) && ce.Reason != "" {
				return -1, fmt.Errorf("exec: %s", ce.Reason)
			}
			return -1, fmt.Errorf("exec: the stream ended without an exit code: %w", err)
		}
		switch typ {
		case websocket.MessageBinary:
			if len(data) == 0 {
				continue
			}
			w := stdout
			if data[0] == ExecStderr {
				w = stderr
			}
			if _, err := w.Write(data[1:]); err != nil {
				return -1, fmt.Errorf("exec: writing its output: %w", err)
			}
		case websocket.MessageText:
			var f ExecFrame
			if err := json.Unmarshal(data, &f); err != nil {
				return -1, fmt.Errorf("exec: malformed frame from the server: %w", err)
			}
			if f.Error != "" {
				return -1, fmt.Errorf("exec: %s", f.Error)
			}
			if f.ExitCode != nil {
				_ = conn.Close(websocket.StatusNormalClosure, "")
				return *f.ExitCode, nil
			}
		}
	}
}
