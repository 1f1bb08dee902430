package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/rpc"
)

// defaultLogTail is how much of each log stream Logs returns by default.
const defaultLogTail = 8 << 20

// agentService implements the gRPC service servers call on agents.
type agentService struct{ a *Agent }

var _ rpc.AgentService = (*agentService)(nil)

// frameWriter turns writes into exec frames on a shared stream.
type frameWriter struct {
	mu     *sync.Mutex
	stream rpc.ExecStream
	name   string
}

func (w *frameWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	data := append([]byte(nil), p...)
	if err := w.stream.Send(&rpc.ExecFrame{Stream: w.name, Data: data}); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Exec runs a command in a kernel and streams its output and exit code.
func (s *agentService) Exec(req *rpc.ExecRequest, stream rpc.ExecStream) error {
	s.a.mu.Lock()
	r, ok := s.a.kernels[req.KernelID]
	s.a.mu.Unlock()
	if !ok || r.isDone() {
		return status.Errorf(codes.NotFound, "kernel %s is not running on agent %s", req.KernelID, s.a.cfg.Name)
	}
	var mu sync.Mutex
	opts := &drivers.ExecOptions{
		Command: req.Command, Env: req.Env,
		Stdout: &frameWriter{mu: &mu, stream: stream, name: "stdout"},
		Stderr: &frameWriter{mu: &mu, stream: stream, name: "stderr"},
	}
	if req.Stdin || req.TTY {
		var resize chan drivers.TermSize
		if req.TTY {
			resize = make(chan drivers.TermSize, 16)
			opts.TTY, opts.Size, opts.Resize = true, drivers.TermSize{Rows: req.Rows, Cols: req.Cols}, resize
		}
		var pw *io.PipeWriter
		if req.Stdin {
			var pr *io.PipeReader
			pr, pw = io.Pipe()
			// Unblocks the driver's stdin copier once the command is done.
			defer pr.CloseWithError(errExecDone)
			opts.Stdin = pr
		}
		go readExecInput(stream, pw, resize)
	}
	code, err := r.driver.Exec(stream.Context(), req.KernelID, opts)
	mu.Lock()
	defer mu.Unlock()
	if err != nil {
		if errors.Is(err, drivers.ErrNotSupported) {
			return stream.Send(&rpc.ExecFrame{Error: fmt.Sprintf("driver %s cannot exec", r.driver.Name())})
		}
		return stream.Send(&rpc.ExecFrame{Error: err.Error()})
	}
	return stream.Send(&rpc.ExecFrame{ExitCode: &code})
}

// errExecDone is what a driver still reading an exec's stdin gets once the
// exec has returned.
var errExecDone = errors.New("exec finished")

// readExecInput feeds the caller's ExecInput messages to the command: data
// to stdin (pw, nil without stdin), sizes to resize (nil without a
// terminal), until the caller ends its input or the stream ends.
func readExecInput(stream rpc.ExecStream, pw *io.PipeWriter, resize chan<- drivers.TermSize) {
	closeIn := func(err error) {
		if pw != nil {
			pw.CloseWithError(err)
			pw = nil
		}
	}
	for {
		in, err := stream.Recv()
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			closeIn(err)
			return
		}
		if len(in.Data) > 0 && pw != nil {
			// An error: the command no longer reads; sizes may still come.
			if _, err := pw.Write(in.Data); err != nil {
				pw = nil
			}
		}
		if in.CloseIn {
			closeIn(nil)
		}
		if in.Rows != 0 && in.Cols != 0 && resize != nil {
			select {
			case resize <- drivers.TermSize{Rows: in.Rows, Cols: in.Cols}:
			default: // the driver is behind; a later size follows
			}
		}
	}
}

// Logs returns the tail of a kernel's stdout and stderr.
func (s *agentService) Logs(ctx context.Context, req *rpc.LogsRequest) (*rpc.LogsResponse, error) {
	if req.KernelID == "" || filepath.Base(req.KernelID) != req.KernelID {
		return nil, status.Error(codes.InvalidArgument, "logs: invalid kernel ID")
	}
	dir := s.a.kernelDir(req.KernelID)
	if _, err := os.Stat(dir); err != nil {
		return nil, status.Errorf(codes.NotFound, "no logs for kernel %s on agent %s: the kernel never started there, or its logs were collected %s after it ended (agent -gc-retention)", req.KernelID, s.a.cfg.Name, s.a.gcRetention())
	}
	max := req.MaxBytes
	if max <= 0 {
		max = defaultLogTail
	}
	out := &rpc.LogsResponse{}
	var err error
	var t1, t2 bool
	outFrom, errFrom := int64(-1), int64(-1) // -1: the tail
	if req.From {
		outFrom, errFrom = req.StdoutOffset, req.StderrOffset
		if outFrom < 0 || errFrom < 0 {
			return nil, status.Error(codes.InvalidArgument, "logs: negative offset")
		}
	}
	if out.Stdout, out.StdoutEnd, t1, err = readLog(filepath.Join(dir, "stdout.log"), outFrom, max); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if out.Stderr, out.StderrEnd, t2, err = readLog(filepath.Join(dir, "stderr.log"), errFrom, max); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	out.Truncated = t1 || t2
	return out, nil
}

// readLog reads at most limit bytes of a log file: from offset from, or
// (from < 0) its tail; a file shorter than from was cut (a size limit):
// it is read from its start. It returns the offset past what it read and
// whether bytes were left out; a missing file is empty.
func readLog(path string, from, limit int64) ([]byte, int64, bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return []byte{}, 0, false, nil
	}
	if err != nil {
		return nil, 0, false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, 0, false, err
	}
	size := st.Size()
	truncated := false
	switch {
	case from < 0 && size > limit:
		from, truncated = size-limit, true
	case from < 0 || from > size:
		from = 0
	}
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return nil, 0, false, err
	}
	b, err := io.ReadAll(io.LimitReader(f, limit))
	return b, from + int64(len(b)), truncated || from+int64(len(b)) < size, err
}

// Stats samples the resource usage of running kernels through their drivers.
func (s *agentService) Stats(ctx context.Context, req *rpc.StatsRequest) (*rpc.StatsResponse, error) {
	out := &rpc.StatsResponse{}
	for _, id := range req.KernelIDs {
		ks := &rpc.KernelStats{KernelID: id}
		out.Kernels = append(out.Kernels, ks)
		s.a.mu.Lock()
		r, ok := s.a.kernels[id]
		s.a.mu.Unlock()
		if !ok || r.isDone() {
			ks.Error = "not running on this agent"
			continue
		}
		st, err := r.driver.Stats(ctx, id)
		if err != nil {
			ks.Error = err.Error()
			continue
		}
		ks.Time, ks.CPUUsageNanos, ks.MemoryRSSBytes, ks.Pids = st.Time, st.CPUUsageNanos, st.MemoryRSSBytes, st.Pids
		if len(r.kernel.GPUs) > 0 {
			ks.GPUUtilPercent, ks.GPUMemoryUsedBytes, ks.GPUs = s.a.kernelGPUStats(r.kernel)
		}
	}
	return out, nil
}
