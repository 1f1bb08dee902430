package drivers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/corral-dev/corral/plugins/drivers/proto"
)

// execChunkSize is the largest stdin chunk Exec sends in one message.
const execChunkSize = 32 << 10

// Client is a Driver whose calls go to a driver plugin over gRPC: what the
// agent gets for an external driver. Errors of the plugin keep their
// sentinel (errors.Is(err, ErrTaskNotFound) works); once the plugin process
// has exited, every call fails with an error wrapping ErrPluginExited.
type Client struct {
	rpc  proto.DriverClient
	done context.Context // ends when the plugin process exits
	info PluginInfo
	caps Capabilities
}

var _ Driver = (*Client)(nil)

// NewClient returns a Client for the Driver service on conn. It asks the
// plugin for its PluginInfo, refuses it (with an error wrapping
// ErrIncompatiblePlugin) unless CheckPluginInfo accepts it, and caches its
// name and capabilities. done should end when the plugin process exits;
// pending and later calls then fail at once.
func NewClient(done context.Context, conn grpc.ClientConnInterface) (*Client, error) {
	c := &Client{rpc: proto.NewDriverClient(conn), done: done}
	ctx, cancel := c.callCtx(context.Background())
	defer cancel()
	ctx, cancelTimeout := context.WithTimeout(ctx, pluginInfoTimeout)
	defer cancelTimeout()
	info, err := c.rpc.PluginInfo(ctx, &proto.PluginInfoRequest{})
	if err != nil {
		return nil, fmt.Errorf("asking the plugin for its info: %w", c.callErr(ctx, "PluginInfo", err))
	}
	c.info = PluginInfo{
		Type: info.GetType(), Name: info.GetName(), APIVersion: info.GetApiVersion(), PluginVersion: info.GetPluginVersion(),
	}
	if err := CheckPluginInfo(&c.info); err != nil {
		return nil, err
	}
	caps, err := c.rpc.Capabilities(ctx, &proto.CapabilitiesRequest{})
	if err != nil {
		return nil, fmt.Errorf("asking driver %q for its capabilities: %w", c.info.Name, c.callErr(ctx, "Capabilities", err))
	}
	c.caps = Capabilities{
		Exec: caps.GetExec(), ResourceLimits: caps.GetResourceLimits(), Recover: caps.GetRecover(), HostNetworking: caps.GetHostNetworking(),
	}
	return c, nil
}

// PluginInfo returns what the plugin said about itself when it connected.
func (c *Client) PluginInfo() PluginInfo { return c.info }

// Done returns a channel that is closed once the plugin process has exited
// (never for a plugin served in memory).
func (c *Client) Done() <-chan struct{} { return c.done.Done() }

// callCtx returns a context for one call: ctx, also cancelled when the
// plugin exits.
func (c *Client) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(c.done, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

// callErr turns the error of the call op into a driver error: the plugin's
// sentinel, the caller's context error, or ErrPluginExited.
func (c *Client) callErr(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	name := c.info.Name
	if name == "" {
		name = "(unnamed)"
	}
	if c.done.Err() != nil || status.Code(err) == codes.Unavailable {
		return fmt.Errorf("driver %q: %s: %w: %v", name, op, ErrPluginExited, err)
	}
	if ctxErr := ctx.Err(); ctxErr != nil && (status.Code(err) == codes.Canceled || status.Code(err) == codes.DeadlineExceeded) {
		return fmt.Errorf("driver %q: %s: %w", name, op, ctxErr)
	}
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("driver %q: %s: the plugin ended the stream without an answer", name, op)
	}
	return fromStatus(err)
}

// Name returns the driver name the plugin reported.
func (c *Client) Name() string { return c.info.Name }

// Capabilities returns the capabilities the plugin reported when it
// connected.
func (c *Client) Capabilities() Capabilities { return c.caps }

// Fingerprint asks the plugin to fingerprint the node.
func (c *Client) Fingerprint(ctx context.Context) (*Fingerprint, error) {
	ctx, cancel := c.callCtx(ctx)
	defer cancel()
	resp, err := c.rpc.Fingerprint(ctx, &proto.FingerprintRequest{})
	if err != nil {
		return nil, c.callErr(ctx, "Fingerprint", err)
	}
	return &Fingerprint{
		Health: HealthState(resp.GetHealth()), Description: resp.GetDescription(), Attributes: resp.GetAttributes(),
	}, nil
}

// Start starts a task in the plugin.
func (c *Client) Start(ctx context.Context, cfg *TaskConfig) (*TaskHandle, error) {
	ctx, cancel := c.callCtx(ctx)
	defer cancel()
	resp, err := c.rpc.Start(ctx, &proto.StartRequest{Config: taskConfigToProto(cfg)})
	if err != nil {
		return nil, c.callErr(ctx, "Start", err)
	}
	if resp.GetHandle() == nil {
		return nil, fmt.Errorf("driver %q: Start returned no handle", c.info.Name)
	}
	return taskHandleFromProto(resp.GetHandle()), nil
}

// Wait returns a channel that receives the task's exit result. It fails at
// once for an unknown task. If ctx ends first, nothing is sent; if the
// plugin exits first, the channel receives a result with exit code -1 and
// an Err wrapping ErrPluginExited.
func (c *Client) Wait(ctx context.Context, taskID string) (<-chan *ExitResult, error) {
	sctx, cancel := c.callCtx(ctx)
	stream, err := c.rpc.Wait(sctx, &proto.WaitRequest{TaskId: taskID})
	if err == nil {
		_, err = stream.Recv() // the task is known
	}
	if err != nil {
		cancel()
		return nil, c.callErr(sctx, "Wait", err)
	}
	ch := make(chan *ExitResult, 1)
	go func() {
		defer cancel()
		resp, err := stream.Recv()
		if err == nil && resp.GetResult() != nil {
			ch <- exitResultFromProto(resp.GetResult())
			close(ch)
			return
		}
		if ctx.Err() != nil {
			return // the caller gave up
		}
		if err == nil {
			err = io.EOF
		}
		ch <- &ExitResult{ExitCode: -1, Err: c.callErr(sctx, "Wait", err)}
		close(ch)
	}()
	return ch, nil
}

// Stop asks the plugin to stop the task.
func (c *Client) Stop(ctx context.Context, taskID string, timeout time.Duration, signal string) error {
	ctx, cancel := c.callCtx(ctx)
	defer cancel()
	_, err := c.rpc.Stop(ctx, &proto.StopRequest{TaskId: taskID, Timeout: durationToProto(timeout), Signal: signal})
	return c.callErr(ctx, "Stop", err)
}

// Destroy asks the plugin to destroy the task.
func (c *Client) Destroy(ctx context.Context, taskID string, force bool) error {
	ctx, cancel := c.callCtx(ctx)
	defer cancel()
	_, err := c.rpc.Destroy(ctx, &proto.DestroyRequest{TaskId: taskID, Force: force})
	return c.callErr(ctx, "Destroy", err)
}

// Inspect asks the plugin for the task's state.
func (c *Client) Inspect(ctx context.Context, taskID string) (*TaskStatus, error) {
	ctx, cancel := c.callCtx(ctx)
	defer cancel()
	resp, err := c.rpc.Inspect(ctx, &proto.InspectRequest{TaskId: taskID})
	if err != nil {
		return nil, c.callErr(ctx, "Inspect", err)
	}
	if resp.GetStatus() == nil {
		return nil, fmt.Errorf("driver %q: Inspect returned no status", c.info.Name)
	}
	return taskStatusFromProto(resp.GetStatus()), nil
}

// Stats asks the plugin for the task's resource usage.
func (c *Client) Stats(ctx context.Context, taskID string) (*TaskStats, error) {
	ctx, cancel := c.callCtx(ctx)
	defer cancel()
	resp, err := c.rpc.Stats(ctx, &proto.StatsRequest{TaskId: taskID})
	if err != nil {
		return nil, c.callErr(ctx, "Stats", err)
	}
	if resp.GetStats() == nil {
		return nil, fmt.Errorf("driver %q: Stats returned no sample", c.info.Name)
	}
	return taskStatsFromProto(resp.GetStats()), nil
}

// Recover asks the plugin to reattach to the task of handle.
func (c *Client) Recover(ctx context.Context, handle *TaskHandle) error {
	ctx, cancel := c.callCtx(ctx)
	defer cancel()
	_, err := c.rpc.Recover(ctx, &proto.RecoverRequest{Handle: taskHandleToProto(handle)})
	return c.callErr(ctx, "Recover", err)
}

// Exec runs a command in the task through the plugin, streaming opts.Stdin
// to it and its output to opts.Stdout and opts.Stderr as it comes. Like the
// exec driver, it returns when the command exits even if opts.Stdin still
// blocks; the goroutine reading opts.Stdin then ends with its next read.
func (c *Client) Exec(ctx context.Context, taskID string, opts *ExecOptions) (int, error) {
	if opts == nil {
		opts = &ExecOptions{}
	}
	sctx, cancel := c.callCtx(ctx)
	defer cancel()
	stream, err := c.rpc.Exec(sctx)
	if err != nil {
		return -1, c.callErr(sctx, "Exec", err)
	}
	start := &proto.ExecStart{
		TaskId: taskID, Command: opts.Command, Env: opts.Env,
		Stdin: opts.Stdin != nil, Stdout: opts.Stdout != nil, Stderr: opts.Stderr != nil,
		Tty: opts.TTY, Rows: uint32(opts.Size.Rows), Cols: uint32(opts.Size.Cols),
	}
	resize := opts.Resize
	if !opts.TTY {
		resize = nil
	}
	// A failed Send is followed by a failed Recv, which has the reason.
	if err := stream.Send(&proto.ExecRequest{Msg: &proto.ExecRequest_Start{Start: start}}); err == nil {
		send := &execSender{stream: stream, open: 1}
		if opts.Stdin != nil {
			send.open++
			go send.stdin(opts.Stdin)
		}
		if resize != nil {
			send.open++
			go send.resizes(sctx, resize)
		}
		send.done()
	}
	var writeErr error
	write := func(w io.Writer, p []byte) {
		if w != nil && writeErr == nil {
			_, writeErr = w.Write(p)
		}
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return -1, c.callErr(sctx, "Exec", err)
		}
		switch m := resp.GetMsg().(type) {
		case *proto.ExecResponse_Stdout:
			write(opts.Stdout, m.Stdout)
		case *proto.ExecResponse_Stderr:
			write(opts.Stderr, m.Stderr)
		case *proto.ExecResponse_Exit:
			code := int(m.Exit.GetExitCode())
			if writeErr != nil {
				return code, fmt.Errorf("exec in task %s: writing its output: %w", taskID, writeErr)
			}
			return code, nil
		}
	}
}

// execSender sends an exec's stdin and resizes on its stream, one message
// at a time, and closes the sending side once both ended.
type execSender struct {
	stream proto.Driver_ExecClient
	mu     sync.Mutex
	open   int // senders still running, plus one for Exec itself
	failed bool
}

func (s *execSender) send(msg *proto.ExecRequest) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed {
		return false
	}
	if s.stream.Send(msg) != nil {
		s.failed = true
	}
	return !s.failed
}

// done ends one sender; the last one closes the sending side.
func (s *execSender) done() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open--; s.open == 0 && !s.failed {
		_ = s.stream.CloseSend()
	}
}

// stdin copies r to the stream in chunks and then closes the command's
// stdin; it stops early when the stream ends.
func (s *execSender) stdin(r io.Reader) {
	defer s.done()
	buf := make([]byte, execChunkSize)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			chunk := append([]byte(nil), buf[:n]...)
			if !s.send(&proto.ExecRequest{Msg: &proto.ExecRequest_Stdin{Stdin: chunk}}) {
				return
			}
		}
		if err != nil {
			s.send(&proto.ExecRequest{Msg: &proto.ExecRequest_StdinClose{StdinClose: true}})
			return
		}
	}
}

// resizes sends the terminal sizes ch delivers until it closes or ctx ends.
func (s *execSender) resizes(ctx context.Context, ch <-chan TermSize) {
	defer s.done()
	for {
		select {
		case <-ctx.Done():
			return
		case sz, ok := <-ch:
			if !ok {
				return
			}
			if !s.send(&proto.ExecRequest{Msg: &proto.ExecRequest_Resize{Resize: &proto.TermSize{Rows: uint32(sz.Rows), Cols: uint32(sz.Cols)}}}) {
				return
			}
		}
	}
}
