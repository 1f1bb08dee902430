package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/structs"
)

// execActivityEvery is how often an open exec marks its session active.
const execActivityEvery = 10 * time.Second

// execRequestWait is how long the exec WebSocket waits for the request
// after the upgrade.
const execRequestWait = 30 * time.Second

// execWSReadLimit bounds one message a client sends on the exec WebSocket.
const execWSReadLimit = 1 << 20

// execSessionWS runs a command in a kernel over a WebSocket: the client's
// first message is an api.ExecRequest, then its input and terminal sizes
// follow; the command's output and its exit code come back. The wire
// format is in docs/api-exec.md.
func (s *Server) execSessionWS(w http.ResponseWriter, r *http.Request) {
	idCtx, ok := s.streamIdentity(w, r)
	if !ok {
		return
	}
	// Origins are checked by Accept (same host only); tokens are not
	// cookies, so a foreign page cannot ride on a browser's session.
	// A browser offers api.ExecProtocol with its token's subprotocol
	// (bearerToken); the answer names api.ExecProtocol, never the token.
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{api.ExecProtocol}})
	if err != nil {
		return // Accept answered the request
	}
	c.SetReadLimit(execWSReadLimit)
	ctx, cancel := context.WithCancel(idCtx)
	defer cancel()
	fail := func(err error) {
		code, msg := errorStatus(err)
		_ = writeExecFrame(ctx, c, &api.ExecFrame{Error: msg})
		_ = c.Close(websocket.StatusCode(4000+code), truncateReason(msg))
	}
	rctx, rcancel := context.WithTimeout(ctx, execRequestWait)
	typ, data, err := c.Read(rctx)
	rcancel()
	if err != nil {
		fail(badRequest("no exec request within %s of the upgrade", execRequestWait))
		return
	}
	var req api.ExecRequest
	if typ != websocket.MessageText {
		fail(badRequest("the first message must be a JSON exec request (text)"))
		return
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		fail(badRequest("malformed exec request: %v", err))
		return
	}
	d, k, ac, err := s.execTarget(ctx, r.PathValue("ref"), &req)
	if err != nil {
		fail(err)
		return
	}
	// An open exec is activity for the idle timeout, input or not.
	defer func() { s.activity.touch(d.Session.ID, time.Now().UTC()) }()
	go func() {
		tick := time.NewTicker(execActivityEvery)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-tick.C:
				s.activity.touch(d.Session.ID, now.UTC())
			}
		}
	}()
	stream, err := ac.ExecInteractive(ctx, &rpc.ExecRequest{
		KernelID: k.ID, Command: req.Command, Env: req.Env,
		Stdin: req.Stdin, TTY: req.TTY, Rows: req.Rows, Cols: req.Cols,
	})
	if err != nil {
		fail(&httpError{code: http.StatusBadGateway, msg: "exec: " + status.Convert(err).Message()})
		return
	}
	go s.execInput(ctx, cancel, c, stream)
	frame, err := stream.Recv()
	if status.Code(err) == codes.Unimplemented {
		fail(&httpError{code: http.StatusNotImplemented, msg: fmt.Sprintf("the agent of kernel %s is too old for exec over a WebSocket: upgrade it, or use POST /v1/sessions/{id}/exec", k.Hostname)})
		return
	}
	if err != nil {
		fail(&httpError{code: http.StatusBadGateway, msg: "exec: " + status.Convert(err).Message()})
		return
	}
	for {
		if len(frame.Data) > 0 {
			kind := api.ExecStdout
			if frame.Stream == "stderr" {
				kind = api.ExecStderr
			}
			if err := c.Write(ctx, websocket.MessageBinary, append([]byte{kind}, frame.Data...)); err != nil {
				return // the client is gone; ending ctx kills the command
			}
		}
		if frame.ExitCode != nil || frame.Error != "" {
			_ = writeExecFrame(ctx, c, &api.ExecFrame{ExitCode: frame.ExitCode, Error: frame.Error})
			_ = c.Close(websocket.StatusNormalClosure, "")
			return
		}
		if frame, err = stream.Recv(); err != nil {
			fail(&httpError{code: http.StatusBadGateway, msg: "exec stream from agent broke: " + status.Convert(err).Message()})
			return
		}
	}
}

// execInput forwards the client's input and terminal sizes to the agent
// until the client ends its input; a client that goes away ends the exec.
func (s *Server) execInput(ctx context.Context, cancel context.CancelFunc, c *websocket.Conn, stream *rpc.ExecClientStream) {
	for {
		typ, data, err := c.Read(ctx)
		if err != nil {
			cancel()
			return
		}
		var in rpc.ExecInput
		switch typ {
		case websocket.MessageBinary:
			if len(data) == 0 || data[0] != api.ExecStdin {
				continue // not a stream this side knows
			}
			in.Data = data[1:]
		case websocket.MessageText:
			var ctl api.ExecControl
			if err := json.Unmarshal(data, &ctl); err != nil {
				continue
			}
			in.Rows, in.Cols, in.CloseIn = ctl.Rows, ctl.Cols, ctl.CloseStdin
		}
		if err := stream.Send(&in); err != nil {
			return
		}
	}
}

func writeExecFrame(ctx context.Context, c *websocket.Conn, f *api.ExecFrame) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	return c.Write(ctx, websocket.MessageText, b)
}

// truncateReason fits msg into a WebSocket close reason (123 bytes).
func truncateReason(msg string) string {
	if len(msg) <= 120 {
		return msg
	}
	return msg[:120]
}

// execTarget resolves an exec request (both the POST and the WebSocket
// form) to its session, a RUNNING kernel and that kernel's agent, and
// counts the exec as the session's activity.
func (s *Server) execTarget(ctx context.Context, ref string, req *api.ExecRequest) (*api.SessionDetail, *structs.Kernel, *rpc.AgentClient, error) {
	if len(req.Command) == 0 || strings.TrimSpace(req.Command[0]) == "" {
		return nil, nil, nil, badRequest("command is empty: give the program to run")
	}
	d, err := s.sessionDetail(ctx, nil, s.state.Snapshot(), ref, nil)
	if err != nil {
		return nil, nil, nil, err
	}
	k, err := kernelOf(d, req.Kernel)
	if err != nil {
		return nil, nil, nil, err
	}
	s.activity.touch(d.Session.ID, time.Now().UTC())
	if k.Status != structs.KernelRunning {
		return nil, nil, nil, &httpError{code: http.StatusConflict, msg: fmt.Sprintf("kernel %s of session %s is %s: exec needs a RUNNING kernel", k.Hostname, d.Session.ID, k.Status)}
	}
	ac, err := s.agentFor(k)
	if err != nil {
		return nil, nil, nil, err
	}
	return d, k, ac, nil
}
