// Package agent is corral's node process: it joins the gossip pool,
// fingerprints the node, registers with a server, receives the kernels
// placed on it over a long-lived gRPC stream, runs them through drivers and
// reports their status changes back.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/hashicorp/serf/serf"
	"google.golang.org/grpc"

	"github.com/corral-dev/corral/gossip"
	"github.com/corral-dev/corral/gpu"
	"github.com/corral-dev/corral/images"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/rpc/tlsutil"
	"github.com/corral-dev/corral/structs"
	buildversion "github.com/corral-dev/corral/version"
)

// Version is reported in gossip tags and registration: the build's (see
// the version package).
var Version = buildversion.Version

// Config configures an agent.
type Config struct {
	// Name names the node; default the hostname.
	Name string
	// DataDir holds the agent's ID and the kernels' directories and logs.
	DataDir string
	// ResourceGroup is the group the agent's slots belong to (default "default").
	ResourceGroup string
	// RPCAddr is where the agent's own gRPC service (exec, logs) listens,
	// or, with GRPC set, the address of the shared port to advertise.
	RPCAddr string
	// SerfAddr is the agent's gossip bind address.
	SerfAddr string
	// Join lists gossip addresses of any members (servers or agents).
	Join []string
	// GRPC, when set, is a gRPC server shared with an in-process gossip.
	GRPC *grpc.Server
	// Drivers are the drivers this agent offers.
	Drivers []drivers.Driver
	// DockerConfig is a docker config.json with registry credentials.
	DockerConfig string
	// InsecureRegistries are spoken to over plain HTTP (loopback always is).
	InsecureRegistries []string
	// AllowedRegistries may be pulled from whatever their address (host,
	// host:port or *.domain; -allow-registry). Others must be at public
	// addresses: the agent never pulls from loopback, private, link-local,
	// unspecified or multicast addresses unless they are listed here.
	AllowedRegistries []string
	// AllowLoopbackRegistries also allows registries on loopback
	// addresses (corral dev, tests).
	AllowLoopbackRegistries bool
	// MaxImageSize bounds the files of one unpacked image, in bytes
	// (-max-image-size; default images.DefaultMaxImageSize).
	MaxImageSize int64
	// KernelSubnet is the IPv4 subnet of the kernels' egress bridge
	// (netns.Egress; default 10.88.0.0/16), "off" for none.
	KernelSubnet string
	// KernelEgressAllow, when set, are the only IPv4 networks (CIDR)
	// kernels reach through NAT, plus the host's name servers.
	KernelEgressAllow []string
	// Capacity overrides fingerprinted slots (e.g. to reserve some for the host).
	Capacity structs.Slots
	// Logger receives structured logs, serf's and memberlist's too.
	Logger *slog.Logger
	// LogOutput, when set, receives the logs of serf and memberlist in
	// their own format instead (tests: io.Discard).
	LogOutput io.Writer
	// FastGossip shortens gossip timers (tests, dev).
	FastGossip bool
	// GossipKey, when set, encrypts gossip (see gossip.Encrypt).
	GossipKey []byte
	// Security is the agent's certificate (its own gRPC port then accepts
	// only servers) and the join token it presents to servers.
	Security *rpc.Security
	// JoinToken, "<ca-sha256-hex>:<secret>" (corral system join-token),
	// gets the agent a certificate and the gossip key from a server of a
	// cluster with automatic TLS (autotls.go); they are kept in DataDir.
	JoinToken string
	// EnrollAddr is the RPC address of a server to join with JoinToken
	// (default: each Join host at port DefaultServerRPCPort).
	EnrollAddr string
	// NVMLLib is the NVML library to load (-nvml-lib; default
	// libnvidia-ml.so.1 through the loader). NoGPUs skips NVML.
	NVMLLib string
	NoGPUs  bool
	// DevRoot is where the host's device nodes are (default /dev; tests).
	DevRoot string
	// KernelHelper is the corral-kernel binary placed into cluster
	// kernels (default: corral-kernel next to the agent's executable).
	KernelHelper string
	// VolumeRoots maps the storage backends this agent reaches to their
	// root directories (-volume-root NAME=PATH); VolumeOwner gives the
	// uid and gid that a kernel's files in a volume belong to (nil:
	// root's). See volumes.go.
	VolumeRoots map[string]string
	VolumeOwner func(k *structs.Kernel) (uid, gid int, err error)
	// GCRetention is how long an ended kernel's directory and logs stay
	// after a server acknowledged its end (0: DefaultGCRetention).
	GCRetention time.Duration
	// MetricsAddr, when set, serves the agent's metrics at
	// GET /v1/metrics on this address, without authentication (metrics.go).
	MetricsAddr string
}

// Agent is one running agent.
type Agent struct {
	// started is when New made the agent (for the start-up grace of
	// reconnectLevel).
	started time.Time
	cfg     Config
	id      string
	logger  *slog.Logger
	drivers map[string]drivers.Driver

	capacity structs.Slots
	// nvml, gpuInv (under mu) and driverFiles: the node's GPUs (gpus.go).
	nvml        *gpu.NVML
	gpuInv      *structs.GPUInventory
	driverFiles []structs.DeviceMount
	serf        *serf.Serf
	events      chan serf.Event

	grpc    *grpc.Server
	ownGRPC bool
	ln      net.Listener

	mu      sync.Mutex
	kernels map[string]*kernelRunner
	conn    *serverConn
	// unhealthy holds the drivers not advertised now, and why; healthGen
	// counts its changes.
	unhealthy map[string]string
	healthGen int
	// lastPrune is when old kernel start records were last pruned.
	lastPrune time.Time

	// autoTLS is the certificate from the cluster CA, nil without one.
	autoTLS *tlsutil.Config

	reporter *reporter
	overlays *overlays
	store    *localStore
	// cpusetState holds the kernels' exclusive cores (cpuset.go).
	cpusetState agentCPUSets
	images      *images.Store

	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	shutdown sync.Once

	// metrics and metricsAddr: the agent's own metrics (metrics.go).
	metrics     *agentMetrics
	metricsAddr string
}

// New starts an agent: fingerprint, gossip join, and the connection loop
// to the servers it finds through gossip.
func New(cfg Config) (*Agent, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("agent: a data dir is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ResourceGroup == "" {
		cfg.ResourceGroup = structs.DefaultResourceGroup
	}
	if cfg.Name == "" {
		cfg.Name, _ = os.Hostname()
	}
	if cfg.SerfAddr == "" {
		cfg.SerfAddr = "127.0.0.1:8643"
	}
	if cfg.RPCAddr == "" {
		cfg.RPCAddr = "127.0.0.1:8644"
	}
	if len(cfg.Drivers) == 0 {
		return nil, errors.New("agent: no drivers configured")
	}
	abs, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("agent: data dir: %w", err)
	}
	cfg.DataDir = abs
	if err := os.MkdirAll(filepath.Join(cfg.DataDir, "kernels"), 0o700); err != nil {
		return nil, fmt.Errorf("agent: data dir: %w", err)
	}
	// Kernels' logs, handles and shim files are the agent's: private to
	// it even when the directories existed before with looser modes.
	for _, d := range []string{cfg.DataDir, filepath.Join(cfg.DataDir, "kernels")} {
		if err := os.Chmod(d, 0o700); err != nil {
			return nil, fmt.Errorf("agent: data dir: %w", err)
		}
	}
	id, err := agentID(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &Agent{started: time.Now(), cfg: cfg, id: id, logger: cfg.Logger.With("agent_id", id), drivers: map[string]drivers.Driver{},
		kernels: map[string]*kernelRunner{}, unhealthy: map[string]string{}, ctx: ctx, cancel: cancel}
	a.reporter = newReporter(a)
	a.overlays = &overlays{a: a}
	a.overlays.open()
	ok := false
	defer func() {
		if !ok {
			a.Shutdown()
		}
	}()
	for _, d := range cfg.Drivers {
		fp, err := d.Fingerprint(ctx)
		if err != nil {
			a.logger.Warn("driver unavailable on this node", "driver", d.Name(), "error", err)
			continue
		}
		if fp.Health != drivers.HealthHealthy {
			a.logger.Warn("driver unavailable on this node", "driver", d.Name(), "health", fp.Health, "reason", fp.Description)
			continue
		}
		a.drivers[d.Name()] = d
	}
	if len(a.drivers) == 0 {
		return nil, errors.New("agent: none of the configured drivers is healthy on this node")
	}
	if a.store, err = openLocalStore(cfg.DataDir); err != nil {
		return nil, err
	}
	imgOpts := []images.Option{images.WithLogger(a.logger.With("component", "images"))}
	if cfg.DockerConfig != "" {
		imgOpts = append(imgOpts, images.WithDockerConfig(cfg.DockerConfig))
	}
	if len(cfg.InsecureRegistries) > 0 {
		imgOpts = append(imgOpts, images.WithInsecureRegistries(cfg.InsecureRegistries...))
	}
	imgOpts = append(imgOpts, images.WithDefaultRegistryPolicy(images.RegistryPolicy{
		AlsoAllowed:   slices.Clone(cfg.AllowedRegistries),
		AllowLoopback: cfg.AllowLoopbackRegistries,
		Hint:          "an agent pulls only from registries at public addresses unless it is started with -allow-registry HOST[:PORT]",
	}))
	if cfg.MaxImageSize != 0 {
		imgOpts = append(imgOpts, images.WithUnpackLimits(cfg.MaxImageSize, images.DefaultMaxImageFiles))
	}
	if a.images, err = images.NewStore(filepath.Join(cfg.DataDir, "images"), imgOpts...); err != nil {
		return nil, fmt.Errorf("agent: image store: %w", err)
	}
	a.capacity, err = fingerprint()
	if err != nil {
		return nil, err
	}
	for k, v := range cfg.Capacity {
		a.capacity[k] = v
	}
	a.setupGPUs()

	if err := a.setupAutoTLS(ctx); err != nil {
		return nil, err
	}
	cfg = a.cfg
	a.grpc = cfg.GRPC
	if a.grpc == nil {
		a.ln, err = net.Listen("tcp", cfg.RPCAddr)
		if err != nil {
			return nil, fmt.Errorf("agent: rpc listen on %s: %w", cfg.RPCAddr, err)
		}
		a.cfg.RPCAddr = a.ln.Addr().String()
		a.grpc = grpc.NewServer(cfg.Security.ServerOptions(tlsutil.RoleServer)...)
		a.ownGRPC = true
	}
	rpc.RegisterAgentService(a.grpc, &agentService{a: a})
	a.metrics = newAgentMetrics(a)
	if cfg.MetricsAddr != "" {
		if err := a.serveMetrics(cfg.MetricsAddr); err != nil {
			return nil, err
		}
	}
	if a.ownGRPC {
		a.wg.Add(1)
		go func() { defer a.wg.Done(); _ = a.grpc.Serve(a.ln) }()
	}
	a.recoverKernels()
	if err := a.setupSerf(); err != nil {
		return nil, err
	}
	if a.autoTLS != nil {
		a.wg.Add(1)
		go func() { defer a.wg.Done(); a.renewLoop() }()
	}
	a.wg.Add(3)
	go func() { defer a.wg.Done(); a.runGC() }()
	go func() { defer a.wg.Done(); a.connectLoop() }()
	go func() { defer a.wg.Done(); a.reporter.run(a.ctx) }()
	if a.nvml != nil {
		a.wg.Add(1)
		go func() { defer a.wg.Done(); a.watchGPUs() }()
	}
	for _, d := range a.drivers {
		if w, ok := d.(drivers.HealthWatcher); ok {
			a.wg.Add(1)
			go func() { defer a.wg.Done(); a.watchHealth(d.Name(), w) }()
		}
	}
	ok = true
	a.logger.Info("agent started", "name", cfg.Name, "capacity", a.slots().String(), "drivers", a.driverNames(), "rpc", a.cfg.RPCAddr, "gossip", a.SerfAddr())
	return a, nil
}

// ID is the agent's node ID.
func (a *Agent) ID() string { return a.id }

// RPCAddr is the address of the agent's gRPC service (exec, logs).
func (a *Agent) RPCAddr() string { return a.cfg.RPCAddr }

// SerfAddr is the agent's gossip address.
func (a *Agent) SerfAddr() string {
	if a.serf == nil {
		return a.cfg.SerfAddr
	}
	m := a.serf.LocalMember()
	return net.JoinHostPort(m.Addr.String(), fmt.Sprint(m.Port))
}

// Shutdown stops the agent without leaving the pool: its kernels keep
// running and keep their slots, the servers see the agent DISCONNECTED,
// and the next start with the same data dir reattaches them (within the
// servers' -agent-lost-after). Giving a node up is explicit: corral node
// leave, or a forced drain.
func (a *Agent) Shutdown() {
	a.shutdown.Do(func() {
		a.cancel()
		if a.serf != nil {
			_ = a.serf.Shutdown()
		}
		if a.ownGRPC && a.grpc != nil {
			a.grpc.Stop()
		}
		a.wg.Wait()
		if a.store != nil {
			_ = a.store.close()
		}
		if a.images != nil {
			_ = a.images.Close()
		}
		a.overlays.close()
	})
}

// StopKernels stops every kernel this agent runs (used by `corral dev` on exit).
func (a *Agent) StopKernels(timeout time.Duration) {
	a.mu.Lock()
	var rs []*kernelRunner
	for _, r := range a.kernels {
		rs = append(rs, r)
	}
	a.mu.Unlock()
	for _, r := range rs {
		r.requestStop("agent shutting down")
	}
	deadline := time.After(timeout)
	for _, r := range rs {
		select {
		case <-r.done:
		case <-deadline:
			return
		}
	}
}

// driverNames lists the drivers the agent advertises: all but the unhealthy.
func (a *Agent) driverNames() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for n := range a.drivers {
		if _, bad := a.unhealthy[n]; !bad {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

func (a *Agent) inventory() *structs.Agent {
	a.mu.Lock()
	var unhealthy map[string]string
	if len(a.unhealthy) > 0 {
		unhealthy = maps.Clone(a.unhealthy)
	}
	a.mu.Unlock()
	return &structs.Agent{
		ID: a.id, Name: a.cfg.Name, ResourceGroup: a.cfg.ResourceGroup, RPCAddr: a.cfg.RPCAddr,
		SerfAddr: a.SerfAddr(), Drivers: a.driverNames(), UnhealthyDrivers: unhealthy,
		Capacity: a.slots(), GPUs: a.gpus(), Version: Version,
		VolumeRoots: maps.Clone(a.cfg.VolumeRoots),
	}
}

// tags are the agent's gossip tags.
func (a *Agent) tags() map[string]string {
	return map[string]string{
		gossip.TagRole: "agent", gossip.TagID: a.id, gossip.TagRPC: a.cfg.RPCAddr,
		gossip.TagGroup: a.cfg.ResourceGroup, gossip.TagSlots: gossip.FormatSlots(a.slots()),
		gossip.TagDrivers: strings.Join(a.driverNames(), ","), gossip.TagVersion: Version,
	}
}

// watchHealth follows the health of a driver that can change while the
// agent runs (a supervised plugin): the driver is advertised only while
// it is healthy. Its kernels keep running either way.
func (a *Agent) watchHealth(name string, w drivers.HealthWatcher) {
	for {
		h, reason, changed := w.Health()
		a.mu.Lock()
		old, wasBad := a.unhealthy[name]
		if h == drivers.HealthHealthy {
			delete(a.unhealthy, name)
		} else {
			a.unhealthy[name] = strings.TrimSpace(string(h) + ": " + reason)
		}
		now, isBad := a.unhealthy[name]
		update := wasBad != isBad || old != now
		if update {
			a.healthGen++
		}
		a.mu.Unlock()
		switch {
		case isBad && !wasBad:
			a.logger.Warn("driver unhealthy: no longer advertised for placements", "driver", name, "reason", now)
		case !isBad && wasBad:
			a.logger.Info("driver healthy again: advertised for placements", "driver", name)
		}
		if update {
			a.advertise() // also when only the reason changed
		}
		select {
		case <-changed:
		case <-a.ctx.Done():
			return
		}
	}
}

// advertise tells the cluster the agent's current drivers: in its gossip
// tags and by registering again with the server it is connected to (the
// next connection registers anyway).
func (a *Agent) advertise() {
	if a.serf != nil {
		if err := a.serf.SetTags(a.tags()); err != nil {
			a.logger.Warn("updating gossip tags failed", "error", err)
		}
	}
	a.mu.Lock()
	c := a.conn
	a.mu.Unlock()
	if c == nil {
		return
	}
	ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
	defer cancel()
	if _, err := c.client.Register(ctx, &rpc.RegisterRequest{Agent: a.inventory()}); err != nil {
		a.logger.Warn("registering the agent's new drivers failed; the next connection will", "server", c.addr, "error", err)
	}
}

func (a *Agent) setupSerf() error {
	a.events = make(chan serf.Event, 64)
	conf, err := gossip.NewConfig(a.cfg.Name, a.cfg.SerfAddr, a.tags(), a.cfg.FastGossip, a.events)
	if err != nil {
		return err
	}
	gossip.SetLogger(conf, a.cfg.Logger, a.cfg.LogOutput)
	if err := gossip.Encrypt(conf, a.cfg.GossipKey); err != nil {
		return err
	}
	sf, err := serf.Create(conf)
	if err != nil {
		return fmt.Errorf("agent: gossip on %s: %w", a.cfg.SerfAddr, err)
	}
	a.serf = sf
	a.wg.Add(2)
	go func() { defer a.wg.Done(); a.joinLoop() }()
	go func() {
		defer a.wg.Done()
		for {
			select {
			case <-a.ctx.Done():
				return
			case <-a.events:
			}
		}
	}()
	return nil
}

// joinLoop joins the gossip pool and keeps retrying while no server is known.
func (a *Agent) joinLoop() {
	if len(a.cfg.Join) == 0 {
		return
	}
	// The loop runs for the agent's life: an agent cut off the network
	// sees every server fail, and gossip alone retries a failed member
	// only every ReconnectInterval; joining again as soon as no server is
	// alive brings a healed agent back in a second or two.
	delay := 100 * time.Millisecond
	for {
		wait := time.Second
		if len(a.servers()) > 0 {
			delay = 100 * time.Millisecond
		} else if _, err := a.serf.Join(a.cfg.Join, true); err != nil {
			a.logger.Warn("gossip join failed, retrying", "addrs", a.cfg.Join, "error", err, "retry_in", delay)
			wait, delay = delay, min(2*delay, 5*time.Second)
		}
		select {
		case <-a.ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// servers lists the RPC addresses of alive servers seen through gossip.
func (a *Agent) servers() []string {
	var out []string
	for _, m := range a.serf.Members() {
		if m.Status == serf.StatusAlive && m.Tags[gossip.TagRole] == "server" && m.Tags[gossip.TagRPC] != "" {
			out = append(out, m.Tags[gossip.TagRPC])
		}
	}
	return out
}

// agentID reads the agent's ID from the data dir, creating it on first start.
func agentID(dir string) (string, error) {
	p := filepath.Join(dir, "agent-id")
	if b, err := os.ReadFile(p); err == nil {
		if id := strings.TrimSpace(string(b)); id != "" {
			return id, nil
		}
	}
	id := uuid.NewString()
	if err := os.WriteFile(p, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write agent id: %w", err)
	}
	return id, nil
}

// Flush waits until every queued status report reached a server, or ctx ends.
func (a *Agent) Flush(ctx context.Context) {
	for {
		a.reporter.mu.Lock()
		n := len(a.reporter.pending)
		a.reporter.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// recoverKernels reattaches to the kernels an earlier agent process started
// (their driver handles are in the local store) and re-queues final reports
// that never reached a server.
func (a *Agent) recoverKernels() {
	recs, err := a.store.all()
	if err != nil {
		a.logger.Error("reading local kernel records failed; kernels of the last run cannot be recovered", "error", err)
		return
	}
	var runners []*kernelRunner
	for _, rec := range recs {
		k := rec.Kernel
		forget := func() {
			if err := a.store.delete(k.ID); err != nil {
				a.logger.Warn("removing kernel record failed", "kernel_id", k.ID, "error", err)
			}
		}
		if rec.Final != nil {
			a.reporter.reportUpdate(rec.Final, forget)
			continue
		}
		if rec.Handle == nil {
			a.reporter.reportUpdate(newUpdate(k.ID, structs.KernelError, "kernel lost: the agent restarted before the kernel started", nil), forget)
			continue
		}
		d, ok := a.drivers[rec.Handle.Driver]
		if !ok {
			a.reporter.reportUpdate(newUpdate(k.ID, structs.KernelError, fmt.Sprintf("kernel lost: driver %q is not available after the agent restarted", rec.Handle.Driver), nil), forget)
			continue
		}
		if err := d.Recover(a.ctx, rec.Handle); err != nil {
			a.logger.Warn("reattaching to kernel failed", "kernel_id", k.ID, "driver", d.Name(), "error", err)
			_ = d.Destroy(context.Background(), k.ID, true)
			a.overlays.release(k, d)
			a.reporter.reportUpdate(newUpdate(k.ID, structs.KernelError, fmt.Sprintf("kernel lost: driver %s could not reattach after the agent restarted: %v", d.Name(), err), nil), forget)
			continue
		}
		r := newKernelRunner(a, k, d)
		r.handle = rec.Handle
		a.mu.Lock()
		a.kernels[k.ID] = r
		a.mu.Unlock()
		runners = append(runners, r)
	}
	// Overlays of the last run that no recovered kernel uses go first.
	a.overlays.reconcile(runners)
	for _, r := range runners {
		a.wg.Add(1)
		go func() { defer a.wg.Done(); r.run(a.ctx) }()
	}
	if len(recs) > 0 {
		a.logger.Info("recovered kernels from the last run", "records", len(recs))
	}
}
