package drivers

import (
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/corral-dev/corral/plugins/drivers/proto"
	"github.com/corral-dev/corral/structs"
)

// server serves a Driver as the gRPC Driver service, inside a plugin
// process.
type server struct {
	proto.UnimplementedDriverServer
	impl Driver
}

var _ proto.DriverServer = (*server)(nil)

func newServer(d Driver) *server { return &server{impl: d} }

func (s *server) PluginInfo(ctx context.Context, _ *proto.PluginInfoRequest) (*proto.PluginInfoResponse, error) {
	resp := &proto.PluginInfoResponse{Type: PluginTypeDriver, Name: s.impl.Name(), ApiVersion: APIVersion}
	if v, ok := s.impl.(PluginVersioner); ok {
		resp.PluginVersion = v.PluginVersion()
	}
	return resp, nil
}

func (s *server) Fingerprint(ctx context.Context, _ *proto.FingerprintRequest) (*proto.FingerprintResponse, error) {
	fp, err := s.impl.Fingerprint(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	if fp == nil {
		return &proto.FingerprintResponse{}, nil
	}
	return &proto.FingerprintResponse{Health: string(fp.Health), Description: fp.Description, Attributes: fp.Attributes}, nil
}

func (s *server) Capabilities(context.Context, *proto.CapabilitiesRequest) (*proto.CapabilitiesResponse, error) {
	c := s.impl.Capabilities()
	return &proto.CapabilitiesResponse{
		Exec: c.Exec, ResourceLimits: c.ResourceLimits, Recover: c.Recover, HostNetworking: c.HostNetworking,
	}, nil
}

func (s *server) Start(ctx context.Context, req *proto.StartRequest) (*proto.StartResponse, error) {
	h, err := s.impl.Start(ctx, taskConfigFromProto(req.GetConfig()))
	if err != nil {
		return nil, toStatus(err)
	}
	return &proto.StartResponse{Handle: taskHandleToProto(h)}, nil
}

func (s *server) Wait(req *proto.WaitRequest, stream proto.Driver_WaitServer) error {
	ch, err := s.impl.Wait(stream.Context(), req.GetTaskId())
	if err != nil {
		return toStatus(err)
	}
	if err := stream.Send(&proto.WaitResponse{}); err != nil {
		return err
	}
	select {
	case res, ok := <-ch:
		if !ok || res == nil {
			return status.Errorf(codes.Aborted, "driver %s closed the wait for task %s without a result", s.impl.Name(), req.GetTaskId())
		}
		return stream.Send(&proto.WaitResponse{Result: exitResultToProto(res)})
	case <-stream.Context().Done():
		return toStatus(stream.Context().Err())
	}
}

func (s *server) Stop(ctx context.Context, req *proto.StopRequest) (*proto.StopResponse, error) {
	err := s.impl.Stop(ctx, req.GetTaskId(), req.GetTimeout().AsDuration(), req.GetSignal())
	if err != nil {
		return nil, toStatus(err)
	}
	return &proto.StopResponse{}, nil
}

func (s *server) Destroy(ctx context.Context, req *proto.DestroyRequest) (*proto.DestroyResponse, error) {
	if err := s.impl.Destroy(ctx, req.GetTaskId(), req.GetForce()); err != nil {
		return nil, toStatus(err)
	}
	return &proto.DestroyResponse{}, nil
}

func (s *server) Inspect(ctx context.Context, req *proto.InspectRequest) (*proto.InspectResponse, error) {
	st, err := s.impl.Inspect(ctx, req.GetTaskId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &proto.InspectResponse{Status: taskStatusToProto(st)}, nil
}

func (s *server) Stats(ctx context.Context, req *proto.StatsRequest) (*proto.StatsResponse, error) {
	st, err := s.impl.Stats(ctx, req.GetTaskId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &proto.StatsResponse{Stats: taskStatsToProto(st)}, nil
}

func (s *server) Recover(ctx context.Context, req *proto.RecoverRequest) (*proto.RecoverResponse, error) {
	if err := s.impl.Recover(ctx, taskHandleFromProto(req.GetHandle())); err != nil {
		return nil, toStatus(err)
	}
	return &proto.RecoverResponse{}, nil
}

// Exec runs the command of the stream's first message, feeding it the stdin
// chunks that follow and streaming its output back as it comes.
func (s *server) Exec(stream proto.Driver_ExecServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil {
		return status.Error(codes.InvalidArgument, "exec: the first message must start the command")
	}
	out := &execOutput{stream: stream}
	opts := &ExecOptions{Command: start.GetCommand(), Env: start.GetEnv()}
	if start.GetStdout() {
		opts.Stdout = out.writer(false)
	}
	if start.GetStderr() {
		opts.Stderr = out.writer(true)
	}
	var resize chan TermSize
	if start.GetTty() {
		opts.TTY = true
		opts.Size = TermSize{Rows: uint16(start.GetRows()), Cols: uint16(start.GetCols())}
		resize = make(chan TermSize, 16)
		opts.Resize = resize
	}
	var pw *io.PipeWriter
	if start.GetStdin() {
		var pr *io.PipeReader
		pr, pw = io.Pipe()
		// Unblocks the driver's stdin copier once the command is done.
		defer pr.CloseWithError(errExecDone)
		opts.Stdin = pr
	}
	if pw != nil || resize != nil {
		go func() {
			for {
				msg, err := stream.Recv()
				if err != nil {
					if pw != nil {
						pw.CloseWithError(err)
					}
					return
				}
				switch m := msg.GetMsg().(type) {
				case *proto.ExecRequest_Stdin:
					if pw != nil {
						// An error: the command no longer reads; resizes
						// may still come.
						_, _ = pw.Write(m.Stdin)
					}
				case *proto.ExecRequest_StdinClose:
					if pw != nil {
						pw.Close()
					}
					if resize == nil {
						return
					}
				case *proto.ExecRequest_Resize:
					if resize != nil {
						select {
						case resize <- TermSize{Rows: uint16(m.Resize.GetRows()), Cols: uint16(m.Resize.GetCols())}:
						default: // the driver is behind; a later size follows
						}
					}
				}
			}
		}()
	}
	code, err := s.impl.Exec(stream.Context(), start.GetTaskId(), opts)
	if err != nil {
		return toStatus(err)
	}
	out.mu.Lock()
	defer out.mu.Unlock()
	if out.err != nil {
		return out.err
	}
	return stream.Send(&proto.ExecResponse{Msg: &proto.ExecResponse_Exit{Exit: &proto.ExecExit{ExitCode: int64(code)}}})
}

// errExecDone is what a driver still reading an exec's stdin gets once the
// exec has returned.
var errExecDone = errors.New("exec finished")

// execOutput serializes the stdout and stderr chunks of one exec onto its
// stream, which allows one sender at a time.
type execOutput struct {
	stream proto.Driver_ExecServer
	mu     sync.Mutex
	err    error // the first send error
}

func (o *execOutput) writer(stderr bool) io.Writer {
	return execWriter(func(p []byte) (int, error) {
		o.mu.Lock()
		defer o.mu.Unlock()
		if o.err != nil {
			return 0, o.err
		}
		// The caller may reuse p once Write returns: send a copy.
		msg := &proto.ExecResponse{Msg: &proto.ExecResponse_Stdout{Stdout: bytes.Clone(p)}}
		if stderr {
			msg.Msg = &proto.ExecResponse_Stderr{Stderr: bytes.Clone(p)}
		}
		if err := o.stream.Send(msg); err != nil {
			o.err = err
			return 0, err
		}
		return len(p), nil
	})
}

// execWriter adapts a function to io.Writer.
type execWriter func([]byte) (int, error)

func (w execWriter) Write(p []byte) (int, error) { return w(p) }

// Conversions between the driver types and their protocol messages; a nil
// pointer stays nil both ways and the zero time stays zero.

func timeToProto(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func timeFromProto(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime().Local()
}

func durationToProto(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

func taskConfigToProto(c *TaskConfig) *proto.TaskConfig {
	if c == nil {
		return nil
	}
	var res map[string]int64
	if len(c.Resources) > 0 {
		res = make(map[string]int64, len(c.Resources))
		for k, v := range c.Resources {
			res[k] = int64(v)
		}
	}
	return &proto.TaskConfig{
		Id: c.ID, SessionId: c.SessionID, Hostname: c.Hostname, Image: c.Image,
		Command: c.Command, Env: c.Env, WorkDir: c.WorkDir, TaskDir: c.TaskDir,
		Resources: res, StdoutPath: c.StdoutPath, StderrPath: c.StderrPath, User: c.User,
		Rootfs: c.RootFS, ImageConfig: imageConfigToProto(c.ImageConfig), NetnsPath: c.NetNSPath, Hosts: c.Hosts,
		Devices: devicesToProto(c.Devices), Mounts: mountsToProto(c.Mounts), Cpuset: c.Cpuset, CpusetMems: c.CpusetMems,
		Options: optionsToProto(c.Options),
	}
}

func devicesToProto(r *structs.DeviceReservation) *proto.DeviceReservation {
	if r == nil {
		return nil
	}
	p := &proto.DeviceReservation{Ids: r.IDs, Nodes: deviceNodesToProto(r.Nodes), Deny: deviceNodesToProto(r.Deny), Env: r.Env}
	for _, m := range r.Mounts {
		p.Mounts = append(p.Mounts, &proto.DeviceMount{HostPath: m.HostPath, Path: m.Path, ReadOnly: m.ReadOnly})
	}
	return p
}

func deviceNodesToProto(nodes []structs.DeviceNode) []*proto.DeviceNode {
	var out []*proto.DeviceNode
	for _, n := range nodes {
		out = append(out, &proto.DeviceNode{Path: n.Path, Type: n.Type, Major: n.Major, Minor: n.Minor, Perms: n.Perms})
	}
	return out
}

func devicesFromProto(p *proto.DeviceReservation) *structs.DeviceReservation {
	if p == nil {
		return nil
	}
	r := &structs.DeviceReservation{
		IDs: slices.Clone(p.GetIds()), Nodes: deviceNodesFromProto(p.GetNodes()), Deny: deviceNodesFromProto(p.GetDeny()),
	}
	for _, m := range p.GetMounts() {
		r.Mounts = append(r.Mounts, structs.DeviceMount{HostPath: m.GetHostPath(), Path: m.GetPath(), ReadOnly: m.GetReadOnly()})
	}
	if len(p.GetEnv()) > 0 {
		r.Env = maps.Clone(p.GetEnv())
	}
	return r
}

func deviceNodesFromProto(nodes []*proto.DeviceNode) []structs.DeviceNode {
	var out []structs.DeviceNode
	for _, n := range nodes {
		out = append(out, structs.DeviceNode{Path: n.GetPath(), Type: n.GetType(), Major: n.GetMajor(), Minor: n.GetMinor(), Perms: n.GetPerms()})
	}
	return out
}

func imageConfigToProto(c *ImageConfig) *proto.ImageConfig {
	if c == nil {
		return nil
	}
	return &proto.ImageConfig{Entrypoint: c.Entrypoint, Cmd: c.Cmd, Env: c.Env, WorkingDir: c.WorkingDir, User: c.User}
}

func imageConfigFromProto(c *proto.ImageConfig) *ImageConfig {
	if c == nil {
		return nil
	}
	return &ImageConfig{Entrypoint: c.GetEntrypoint(), Cmd: c.GetCmd(), Env: c.GetEnv(), WorkingDir: c.GetWorkingDir(), User: c.GetUser()}
}

func taskConfigFromProto(c *proto.TaskConfig) *TaskConfig {
	if c == nil {
		return nil
	}
	var res structs.Slots
	if len(c.GetResources()) > 0 {
		res = make(structs.Slots, len(c.GetResources()))
		for k, v := range c.GetResources() {
			res[k] = structs.Quantity(v)
		}
	}
	var env map[string]string
	if len(c.GetEnv()) > 0 {
		env = maps.Clone(c.GetEnv())
	}
	return &TaskConfig{
		ID: c.GetId(), SessionID: c.GetSessionId(), Hostname: c.GetHostname(), Image: c.GetImage(),
		Command: c.GetCommand(), Env: env, WorkDir: c.GetWorkDir(), TaskDir: c.GetTaskDir(),
		Resources: res, StdoutPath: c.GetStdoutPath(), StderrPath: c.GetStderrPath(), User: c.GetUser(),
		RootFS: c.GetRootfs(), ImageConfig: imageConfigFromProto(c.GetImageConfig()), NetNSPath: c.GetNetnsPath(), Hosts: c.GetHosts(),
		Devices: devicesFromProto(c.GetDevices()), Mounts: mountsFromProto(c.GetMounts()), Cpuset: c.GetCpuset(),
		CpusetMems: c.GetCpusetMems(), Options: optionsFromProto(c.GetOptions()),
	}
}

func taskHandleToProto(h *TaskHandle) *proto.TaskHandle {
	if h == nil {
		return nil
	}
	return &proto.TaskHandle{
		Version: int64(h.Version), Driver: h.Driver, Config: taskConfigToProto(h.Config),
		State: string(h.State), DriverState: h.DriverState, StartedAt: timeToProto(h.StartedAt),
	}
}

func taskHandleFromProto(h *proto.TaskHandle) *TaskHandle {
	if h == nil {
		return nil
	}
	return &TaskHandle{
		Version: int(h.GetVersion()), Driver: h.GetDriver(), Config: taskConfigFromProto(h.GetConfig()),
		State: TaskState(h.GetState()), DriverState: h.GetDriverState(), StartedAt: timeFromProto(h.GetStartedAt()),
	}
}

func exitResultToProto(r *ExitResult) *proto.ExitResult {
	if r == nil {
		return nil
	}
	p := &proto.ExitResult{ExitCode: int64(r.ExitCode), Signal: int64(r.Signal), OomKilled: r.OOMKilled}
	if r.Err != nil {
		p.Error = r.Err.Error()
	}
	return p
}

func exitResultFromProto(r *proto.ExitResult) *ExitResult {
	if r == nil {
		return nil
	}
	res := &ExitResult{ExitCode: int(r.GetExitCode()), Signal: int(r.GetSignal()), OOMKilled: r.GetOomKilled()}
	if r.GetError() != "" {
		res.Err = errors.New(r.GetError())
	}
	return res
}

func taskStatusToProto(s *TaskStatus) *proto.TaskStatus {
	if s == nil {
		return nil
	}
	return &proto.TaskStatus{
		Id: s.ID, State: string(s.State), StartedAt: timeToProto(s.StartedAt),
		CompletedAt: timeToProto(s.CompletedAt), ExitResult: exitResultToProto(s.ExitResult),
	}
}

func taskStatusFromProto(s *proto.TaskStatus) *TaskStatus {
	if s == nil {
		return nil
	}
	return &TaskStatus{
		ID: s.GetId(), State: TaskState(s.GetState()), StartedAt: timeFromProto(s.GetStartedAt()),
		CompletedAt: timeFromProto(s.GetCompletedAt()), ExitResult: exitResultFromProto(s.GetExitResult()),
	}
}

func taskStatsToProto(s *TaskStats) *proto.TaskStats {
	if s == nil {
		return nil
	}
	return &proto.TaskStats{
		Time: timeToProto(s.Time), CpuUsageNanos: s.CPUUsageNanos, MemoryRssBytes: s.MemoryRSSBytes, Pids: s.Pids,
	}
}

func taskStatsFromProto(s *proto.TaskStats) *TaskStats {
	if s == nil {
		return nil
	}
	return &TaskStats{
		Time: timeFromProto(s.GetTime()), CPUUsageNanos: s.GetCpuUsageNanos(), MemoryRSSBytes: s.GetMemoryRssBytes(), Pids: s.GetPids(),
	}
}

func mountsToProto(ms []Mount) []*proto.Mount {
	var out []*proto.Mount
	for _, m := range ms {
		pm := &proto.Mount{Source: m.Source, Destination: m.Destination, ReadOnly: m.ReadOnly, Volume: m.Volume}
		if m.Owner != nil {
			pm.Owner = &proto.MountOwner{Uid: m.Owner.UID, Gid: m.Owner.GID}
		}
		out = append(out, pm)
	}
	return out
}

func mountsFromProto(ms []*proto.Mount) []Mount {
	var out []Mount
	for _, m := range ms {
		mt := Mount{Source: m.GetSource(), Destination: m.GetDestination(), ReadOnly: m.GetReadOnly(), Volume: m.GetVolume()}
		if o := m.GetOwner(); o != nil {
			mt.Owner = &MountOwner{UID: o.GetUid(), GID: o.GetGid()}
		}
		out = append(out, mt)
	}
	return out
}

func optionsToProto(o *structs.KernelOptions) *proto.KernelOptions {
	if o == nil {
		return nil
	}
	p := &proto.KernelOptions{ShmBytes: o.ShmBytes, CapAdd: o.CapAdd, Network: o.Network, Infiniband: o.InfiniBand}
	for _, u := range o.Ulimits {
		p.Ulimits = append(p.Ulimits, &proto.Ulimit{Name: u.Name, Soft: u.Soft, Hard: u.Hard})
	}
	return p
}

func optionsFromProto(p *proto.KernelOptions) *structs.KernelOptions {
	if p == nil {
		return nil
	}
	o := &structs.KernelOptions{ShmBytes: p.GetShmBytes(), CapAdd: p.GetCapAdd(), Network: p.GetNetwork(), InfiniBand: p.GetInfiniband()}
	for _, u := range p.GetUlimits() {
		o.Ulimits = append(o.Ulimits, structs.Ulimit{Name: u.GetName(), Soft: u.GetSoft(), Hard: u.GetHard()})
	}
	return o
}
