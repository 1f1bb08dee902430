package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"golang.org/x/term"
	"google.golang.org/grpc/grpclog"

	"github.com/corral-dev/corral/agent"
	execdriver "github.com/corral-dev/corral/drivers/exec"
	"github.com/corral-dev/corral/drivers/runc"
	"github.com/corral-dev/corral/gossip"
	"github.com/corral-dev/corral/internal/logging"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/plugins/loader"
	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/rpc/tlsutil"
	"github.com/corral-dev/corral/server"
	"github.com/corral-dev/corral/structs"
)

// runDev, runServer and runAgent start the long-running roles. They are
// wired in this file only; main.go dispatches to them.

func runDev(args []string) int    { return runDaemon("dev", args) }
func runServer(args []string) int { return runDaemon("server", args) }
func runAgent(args []string) int  { return runDaemon("agent", args) }

// listFlag collects a repeatable or comma-separated flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

type daemonFlags struct {
	dataDir, name, httpAddr, rpcAddr, serfAddr, agentSerfAddr string
	group, cpu, mem, logLevel, logFormat, pluginDir           string
	configFile                                                string
	execUser                                                  string
	kernelSubnet                                              string
	enableHostDriver                                          bool
	nvmlLib                                                   string
	kernelHelper                                              string
	noGPUs                                                    bool
	join                                                      listFlag
	volumeRoots                                               volumeRootsFlag
	sftpIdle                                                  time.Duration
	insecureRegistries                                        listFlag
	kernelEgressAllow                                         listFlag
	allowedRegistries                                         listFlag
	maxImageSize                                              string
	maxImageBytes                                             int64
	bootstrapExpect                                           int
	agentLostAfter, heartbeatTTL                              time.Duration
	httpTLS                                                   bool
	metricsAddr                                               string // agent: -metrics-addr
	metricsAnonymous                                          bool   // server, dev: -metrics-anonymous
	fastGossip                                                bool
	insecure                                                  bool
	enrollAddr                                                string
	gcRetention                                               time.Duration
	sec                                                       securityFlags
	runc                                                      runcFlags
}

// runcFlags confine the runc driver's kernels.
type runcFlags struct {
	seccomp                     bool
	userns                      usernsFlag
	maxLogSize, diskLimit       string
	maxLogBytes, diskLimitBytes int64
}

// usernsFlag is -userns: auto (the default), true or false; a bare
// -userns means true.
type usernsFlag struct{ mode runc.UserNSMode }

func (u *usernsFlag) String() string   { return u.mode.String() }
func (u *usernsFlag) IsBoolFlag() bool { return true }
func (u *usernsFlag) Set(v string) (err error) {
	u.mode, err = runc.ParseUserNSMode(v)
	return err
}

// options turns the flags into runc driver options.
func (r *runcFlags) options() []runc.Option {
	return []runc.Option{
		runc.WithSeccomp(r.seccomp), runc.WithUserNS(r.userns.mode),
		runc.WithMaxLogSize(r.maxLogBytes), runc.WithDiskLimit(r.diskLimitBytes),
	}
}

// newDaemonFlagSet defines the flags of a role on f. Each flag is also an
// option of the role's -config file (see configfile.go).
func newDaemonFlagSet(role string, f *daemonFlags) *flag.FlagSet {
	fs := flag.NewFlagSet("corral "+role, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&f.configFile, "config", "", "HCL file of options: each flag below without its dash, '-' written '_' (data_dir = \"/srv/corral\"); flags and the environment override the file (see docs/configuration.md)")
	defDir := map[string]string{"dev": "./.corral-dev", "server": "/var/lib/corral/server", "agent": "/var/lib/corral/agent"}[role]
	fs.StringVar(&f.dataDir, "data-dir", defDir, "directory for state (raft log, snapshots, kernel logs)")
	fs.StringVar(&f.name, "name", "", "node name in gossip (default: the hostname)")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "text", "text (key=value) or json (one object a line); raft, serf, memberlist, gRPC and driver plugins log in it too")
	fs.BoolVar(&f.fastGossip, "fast-gossip", role == "dev", "shorter gossip timers: failure detection in about a second (loopback, tests)")
	gcHelp := map[string]string{
		"dev":    "how long ended sessions stay in the state, and ended kernels' directories and logs on the agent, before they are collected",
		"server": "how long ended sessions and their kernels stay in the state before the leader collects them",
		"agent":  "how long an ended kernel's directory and logs stay on this node after the server acknowledged its end",
	}[role]
	fs.DurationVar(&f.gcRetention, "gc-retention", 24*time.Hour, gcHelp)
	fs.DurationVar(&f.sftpIdle, "sftp-idle-timeout", 10*time.Minute, "servers: end SFTP system sessions (corral volume sftp/cp) after this long without SFTP traffic")
	if role != "agent" {
		fs.StringVar(&f.httpAddr, "http", "127.0.0.1:8640", "HTTP API address")
		fs.DurationVar(&f.agentLostAfter, "agent-lost-after", server.DefaultAgentLostAfter, "grace period of a DISCONNECTED agent (gossip failed and no RPC heartbeat): its kernels keep their slots and are given up only after this")
		fs.DurationVar(&f.heartbeatTTL, "heartbeat-ttl", 0, "how long an agent may send no RPC heartbeat before that signal counts as gone (default 10s, 3s with -fast-gossip)")
		fs.BoolVar(&f.metricsAnonymous, "metrics-anonymous", false, "serve GET /v1/metrics without a token (default: an admin token is needed)")
		fs.IntVar(&f.bootstrapExpect, "bootstrap-expect", 1, "number of servers in the first quorum (1: a single server; 3 or 5: servers find each other through -join and bootstrap raft together)")
	}
	rpcDef := "127.0.0.1:8641"
	serfDef := "127.0.0.1:8642"
	if role == "agent" {
		rpcDef, serfDef = "127.0.0.1:8644", "127.0.0.1:8643"
	}
	fs.StringVar(&f.rpcAddr, "rpc", rpcDef, "gRPC address (agents and servers; raft shares the port)")
	fs.StringVar(&f.serfAddr, "serf", serfDef, "gossip address")
	if role == "agent" {
		fs.StringVar(&f.metricsAddr, "metrics-addr", "", "serve this agent's metrics at GET /v1/metrics on this address, without a token (default: off; corral dev serves them with the server's)")
	}
	if role == "dev" {
		fs.StringVar(&f.agentSerfAddr, "agent-serf", "127.0.0.1:8643", "gossip address of the embedded agent")
	}
	if role != "dev" {
		fs.Var(&f.join, "join", "gossip address of any member to join (repeatable)")
	}
	if role != "dev" {
		fs.StringVar(&f.sec.encrypt, "encrypt", "", "gossip encryption key from 'corral keygen' (env CORRAL_GOSSIP_KEY); every member needs the same")
		fs.StringVar(&f.sec.tlsCA, "tls-ca", "", "CA certificate: with -tls-cert and -tls-key, RPC (gRPC and raft) uses mutual TLS")
		fs.StringVar(&f.sec.tlsCert, "tls-cert", "", "this node's certificate from 'corral tls cert create -"+role+"'")
		fs.StringVar(&f.sec.tlsKey, "tls-key", "", "this node's private key")
		if role == "server" {
			fs.BoolVar(&f.httpTLS, "tls-http", false, "serve the HTTP API over TLS with the -tls-cert (clients: -ca-cert or CORRAL_CACERT)")
		}
		if role == "agent" {
			fs.StringVar(&f.sec.joinToken, "join-token", "", "the cluster's join token from 'corral system join-token' (env CORRAL_JOIN_TOKEN): gets this agent its certificate and the gossip key; with -tls-*: the secret the servers were given")
			fs.StringVar(&f.enrollAddr, "server", "", "RPC address of a server to join with -join-token (default: each -join host at port 8641)")
		} else {
			fs.StringVar(&f.sec.joinToken, "join-token", "", "servers 2, 3… of a cluster: the servers' token the first server printed (it fetches the cluster CA and keys); with -tls-*: a secret agents must present to register (env CORRAL_JOIN_TOKEN)")
			fs.StringVar(&f.enrollAddr, "server", "", "with -join-token: RPC address of a server to join (default: each -join host at port 8641)")
			fs.BoolVar(&f.insecure, "insecure", false, "no automatic TLS: RPC in plaintext and gossip unencrypted unless -tls-*/-encrypt are given (a single server secures itself by default)")
		}
	}
	if role != "server" {
		fs.StringVar(&f.group, "resource-group", structs.DefaultResourceGroup, "resource group of this agent")
		fs.StringVar(&f.cpu, "cpu", "", "override the fingerprinted cpu capacity (cores)")
		fs.StringVar(&f.mem, "mem", "", "override the fingerprinted memory capacity (e.g. 8G)")
		fs.StringVar(&f.pluginDir, "plugin-dir", "", "directory of external driver plugins (executables launched through go-plugin)")
		fs.Var(&f.insecureRegistries, "insecure-registry", "registry host[:port] spoken to over plain HTTP (repeatable; loopback always is)")
		fs.StringVar(&f.maxImageSize, "max-image-size", "50G", "largest unpacked image (its files in all); a pull beyond it fails")
		fs.Var(&f.volumeRoots, "volume-root", volumeRootsHelp)
		fs.StringVar(&f.execUser, "exec-user", execdriver.DefaultUser, "unprivileged user (name or uid, never root) that exec kernels run as, in namespaces of their own")
		fs.BoolVar(&f.enableHostDriver, "enable-host-driver", false, "offer the host driver: kernels run as root in the host's namespaces (for admins only)")
		fs.StringVar(&f.nvmlLib, "nvml-lib", "", "NVIDIA NVML library to fingerprint GPUs with (default libnvidia-ml.so.1 through the loader)")
		fs.StringVar(&f.kernelHelper, "kernel-helper", "", "the static corral-kernel binary put into cluster kernels (ssh, start barrier; default: corral-kernel next to this executable)")
		fs.StringVar(&f.kernelSubnet, "kernel-subnet", "10.88.0.0/16", "IPv4 subnet of the agent's kernel bridge corral0: each container kernel gets an address in it and reaches out through NAT (off: kernels get only loopback, cluster kernels only their overlay)")
		fs.Var(&f.kernelEgressAllow, "kernel-egress-allow", "IPv4 network (CIDR) that container kernels may reach through NAT (repeatable; default: every address but the cluster's control ports); the host's name servers are added. Set it on a resource group's agents to restrict that group's egress")
		fs.BoolVar(&f.noGPUs, "no-gpus", false, "do not look for GPUs (offer none, even with an NVIDIA driver)")
		fs.BoolVar(&f.runc.seccomp, "runc-seccomp", true, "give runc kernels the container runtimes' default seccomp profile (false: an operator's escape hatch)")
		fs.Var(&f.runc.userns, "userns", "run runc kernels in user namespaces, their root an unprivileged host uid: auto (where the kernel supports it), true or false")
		fs.StringVar(&f.runc.maxLogSize, "max-log-size", "100M", "most bytes of each kernel's stdout and stderr kept on disk (exec, host and runc drivers; the log and its rotated .1 together; 0: no cap)")
		fs.StringVar(&f.runc.diskLimit, "runc-disk-limit", "10G", "most bytes a runc kernel without a disk slot may write into its scratch space before it is stopped (0: no limit)")
	}
	allowHelp := "registry host[:port] or *.domain that images may be pulled from although it is not at a public address (repeatable)"
	if role == "dev" {
		allowHelp += "; loopback registries are allowed in dev"
	}
	fs.Var(&f.allowedRegistries, "allow-registry", allowHelp)
	return fs
}

func parseDaemonFlags(role string, args []string) (*daemonFlags, error) {
	f := &daemonFlags{}
	fs := newDaemonFlagSet(role, f)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stdout)
			fmt.Printf("Usage: corral %s [flags]\n", role)
			fs.PrintDefaults()
		}
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	// Flags win over the environment, and both over the config file.
	given := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	for name, env := range map[string]string{"encrypt": "CORRAL_GOSSIP_KEY", "join-token": "CORRAL_JOIN_TOKEN"} {
		if v := os.Getenv(env); v != "" && !given[name] && fs.Lookup(name) != nil {
			if err := fs.Set(name, v); err != nil {
				return nil, fmt.Errorf("%s: %w", env, err)
			}
			given[name] = true
		}
	}
	var fromFile map[string]string
	if f.configFile != "" {
		var err error
		if fromFile, err = applyConfigFile(role, fs, f.configFile, given); err != nil {
			return nil, err
		}
	}
	if err := f.validate(role); err != nil {
		return nil, blameConfigFile(err, fromFile)
	}
	return f, nil
}

// validate checks the options together, whether they came from flags, the
// environment or the config file, and derives the parsed sizes.
func (f *daemonFlags) validate(role string) error {
	if _, err := logging.New(io.Discard, f.logLevel, f.logFormat); err != nil {
		return fmt.Errorf("-log-level/-log-format: %w", err)
	}
	if _, err := f.capacity(); err != nil {
		return err
	}
	if role == "server" && f.sec.joinToken != "" && f.sec.tlsCA == "" && !f.insecure {
		if f.bootstrapExpect <= 1 {
			return errors.New("-join-token on a single server without -tls-*: the server creates its own join token (it prints it on first start; 'corral system join-token' prints it again)")
		}
		if _, _, err := agent.ParseJoinToken(f.sec.joinToken); err != nil {
			return fmt.Errorf("-join-token: %w", err)
		}
		if len(f.join) == 0 && f.enrollAddr == "" {
			return errors.New("-join-token needs -join: the gossip address of a server of the cluster")
		}
	}
	if role == "agent" && f.sec.tlsCA == "" && f.sec.joinToken != "" {
		if _, _, err := agent.ParseJoinToken(f.sec.joinToken); err != nil {
			return fmt.Errorf("-join-token: %w", err)
		}
	}
	if err := f.sec.check(); err != nil {
		return err
	}
	if f.httpTLS && f.sec.tlsCA == "" {
		return errors.New("-tls-http needs -tls-ca, -tls-cert and -tls-key")
	}
	if f.maxImageSize != "" {
		q, err := structs.ParseBytes(f.maxImageSize)
		if err != nil || q <= 0 {
			return fmt.Errorf("-max-image-size %q: want a positive size such as 50G or 500M", f.maxImageSize)
		}
		f.maxImageBytes = int64(q / structs.QuantityScale)
	}
	for _, b := range []struct {
		name, v string
		out     *int64
	}{{"-max-log-size", f.runc.maxLogSize, &f.runc.maxLogBytes}, {"-runc-disk-limit", f.runc.diskLimit, &f.runc.diskLimitBytes}} {
		if b.v == "" {
			continue
		}
		q, err := structs.ParseBytes(b.v)
		if err != nil || q < 0 {
			return fmt.Errorf("%s %q: want a size such as 100M or 10G (0: none)", b.name, b.v)
		}
		*b.out = int64(q / structs.QuantityScale)
	}
	if f.agentLostAfter < 0 || f.heartbeatTTL < 0 {
		return errors.New("-agent-lost-after and -heartbeat-ttl must not be negative")
	}
	if f.gcRetention <= 0 {
		return fmt.Errorf("invalid -gc-retention %s: want a positive duration such as 24h", f.gcRetention)
	}
	if role != "server" {
		if err := execdriver.CheckUser(f.execUser); err != nil {
			return fmt.Errorf("invalid -exec-user: %w", err)
		}
	}
	if role == "agent" && len(f.join) == 0 {
		return errors.New("-join ADDR is required: the gossip address of any server or agent")
	}
	return nil
}

func (f *daemonFlags) capacity() (structs.Slots, error) {
	out := structs.Slots{}
	if f.cpu != "" {
		q, err := structs.ParseQuantity(f.cpu)
		if err != nil || q <= 0 {
			return nil, fmt.Errorf("invalid -cpu %q: want a positive number of cores", f.cpu)
		}
		out[structs.SlotCPU] = q
	}
	if f.mem != "" {
		q, err := structs.ParseBytes(f.mem)
		if err != nil || q <= 0 {
			return nil, fmt.Errorf("invalid -mem %q: want a size such as 8G", f.mem)
		}
		out[structs.SlotMem] = q
	}
	return out, nil
}

// newLogger is the daemon's one logger, on stderr. Every library logs
// through it: the standard log package (slog.SetDefault), gRPC and
// logrus (libcontainer) here, and
// raft, serf, memberlist and go-plugin through the adapters the server,
// agent and plugin loader build from it.
func newLogger(level, format string) (*slog.Logger, error) {
	l, err := logging.New(os.Stderr, level, format)
	if err != nil {
		return nil, err
	}
	slog.SetDefault(l)
	grpclog.SetLoggerV2(logging.GRPCLogger(l))
	logging.RouteLogrus(l)
	return l, nil
}

// builtinDrivers are the in-process drivers; runc keeps its container state
// under the agent's data dir so that a restarted agent finds it again. Exec
// kernels run as f.execUser and never see dataDir (the whole data dir, the
// server's too in dev mode); the host driver is there only with
// -enable-host-driver.
func builtinDrivers(logger *slog.Logger, f *daemonFlags, dataDir, agentDataDir string, runcOpts ...runc.Option) []drivers.Driver {
	abs, err := filepath.Abs(agentDataDir)
	if err != nil {
		abs = agentDataDir
	}
	user := f.execUser
	if user == "" {
		user = execdriver.DefaultUser
	}
	drvs := []drivers.Driver{
		execdriver.New(logger, execdriver.WithUser(user), execdriver.WithHiddenPaths(dataDir, abs), execdriver.WithMaxLogSize(f.runc.maxLogBytes)),
		runc.New(logger, append([]runc.Option{runc.WithStateDir(filepath.Join(abs, "runc"))}, runcOpts...)...),
	}
	if f.enableHostDriver {
		logger.Warn("the host driver is enabled: its kernels run as root in the host's namespaces")
		drvs = append(drvs, execdriver.NewHost(logger, execdriver.WithMaxLogSize(f.runc.maxLogBytes)))
	}
	return drvs
}

func runDaemon(role string, args []string) int {
	f, err := parseDaemonFlags(role, args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "Error: %v (see 'corral %s -h')\n", err, role)
		return 2
	}
	logger, err := newLogger(f.logLevel, f.logFormat)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Error: %v\n", err)
		return 2
	}
	servePprof(logger)
	capacity, err := f.capacity()
	if err != nil {
		fmt.Fprintf(os.Stderr, "Error: %v\n", err)
		return 2
	}
	gossipKey, security, err := f.security(role)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Error: %v\n", err)
		return 2
	}
	serverJoin := ""
	if role == "server" && security.TLS == nil && security.JoinToken != "" && !f.insecure {
		// Not a secret of one's own PKI: the servers' token of a cluster
		// with automatic TLS.
		serverJoin, security.JoinToken = security.JoinToken, ""
	}
	var srv *server.Server
	var agt *agent.Agent
	var devAgent atomic.Pointer[agent.Agent] // agt, for the server's /v1/metrics in corral dev
	if role != "agent" {
		srv, err = server.New(server.Config{
			NodeName: nodeName(f.name, "-server"), DataDir: dataSubdir(role, f.dataDir, "server"),
			HTTPAddr: f.httpAddr, RPCAddr: f.rpcAddr, SerfAddr: f.serfAddr, Join: f.join,
			BootstrapExpect: f.bootstrapExpect, Logger: logger,
			FastGossip: f.fastGossip, GossipKey: gossipKey, Security: security, HTTPTLS: f.httpTLS,
			AgentLostAfter: f.agentLostAfter, HeartbeatTTL: f.heartbeatTTL, SFTPIdleTimeout: f.sftpIdle, OnBootstrapToken: func(token string) { announceToken(role, dataSubdir(role, f.dataDir, "server"), token, logger) },
			OnJoinToken: func(token string) {
				if role == "server" {
					fmt.Printf("Agents join this cluster with (shown again by 'corral system join-token'):\n  corral agent -join %s -join-token %s\n", f.serfAddr, token)
				}
			},
			OnServerJoinToken: func(token string) {
				fmt.Printf("The other servers join this cluster with (keep it secret; it hands out the cluster CA):\n  corral server -bootstrap-expect %d -join %s -join-token %s\n", f.bootstrapExpect, f.serfAddr, token)
			},
			Insecure: f.insecure, EnrollAddr: f.enrollAddr, ServerJoinToken: serverJoin,
			GCRetention:       f.gcRetention,
			AllowedRegistries: f.allowedRegistries, AllowLoopbackRegistries: role == "dev",
			MetricsAnonymous: f.metricsAnonymous, ExtraMetrics: embeddedAgentMetrics(role, &devAgent),
		})
		if err != nil {
			fmt.Fprintf(os.Stderr, "Error: %v\n", err)
			return 1
		}
		go func() {
			if err := srv.Serve(); err != nil {
				logger.Error("gRPC server stopped", "error", err)
			}
		}()
	}
	var killPlugins func()
	if role != "server" {
		useShimHelper(logger)
		drvs := builtinDrivers(logger, f, f.dataDir, dataSubdir(role, f.dataDir, "agent"), f.runc.options()...)
		if f.pluginDir != "" {
			var plugins []drivers.Driver
			var errs []error
			plugins, killPlugins, errs = loader.Load(context.Background(), f.pluginDir, logger)
			for _, p := range plugins {
				logger.Info("loaded driver plugin", "driver", p.Name(), "dir", f.pluginDir)
			}
			_ = errs // each refusal was logged on one line; the agent runs on without it
			drvs = append(drvs, plugins...)
		}
		cfg := agent.Config{
			Name: nodeName(f.name, ""), DataDir: dataSubdir(role, f.dataDir, "agent"), ResourceGroup: f.group,
			RPCAddr: f.rpcAddr, SerfAddr: f.serfAddr, Join: f.join, Drivers: drvs,
			Capacity: capacity, Logger: logger, FastGossip: f.fastGossip,
			InsecureRegistries: f.insecureRegistries, GossipKey: gossipKey, Security: security,
			EnrollAddr:        f.enrollAddr,
			GCRetention:       f.gcRetention,
			AllowedRegistries: f.allowedRegistries, AllowLoopbackRegistries: role == "dev",
		}
		cfg.MaxImageSize = f.maxImageBytes
		cfg.NVMLLib, cfg.NoGPUs = f.nvmlLib, f.noGPUs
		cfg.KernelHelper = f.kernelHelper
		cfg.KernelSubnet = f.kernelSubnet
		cfg.KernelEgressAllow = f.kernelEgressAllow
		cfg.MetricsAddr = f.metricsAddr
		if err := setupVolumes(&cfg, f.volumeRoots, role, f.dataDir, f.execUser); err != nil {
			fmt.Fprintf(os.Stderr, "Error: %v\n", err)
			if srv != nil {
				srv.Shutdown()
			}
			return 1
		}
		if role == "agent" && security.TLS == nil && security.JoinToken != "" {
			// Not a secret of one's own PKI: the cluster's join token.
			cfg.JoinToken, cfg.Security = security.JoinToken, nil
		}
		if role == "dev" {
			// The embedded agent joins its own server like any other: it
			// gets its certificate for the join token over loopback.
			cfg.RPCAddr = "127.0.0.1:0"
			cfg.SerfAddr = f.agentSerfAddr
			cfg.Join = []string{srv.SerfAddr()}
			cfg.JoinToken, cfg.EnrollAddr = srv.JoinToken(), srv.RPCAddr()
		}
		agt, err = agent.New(cfg)
		if err != nil {
			fmt.Fprintf(os.Stderr, "Error: %v\n", err)
			if srv != nil {
				srv.Shutdown()
			}
			if killPlugins != nil {
				killPlugins()
			}
			return 1
		}
	}
	if srv != nil && agt != nil {
		devAgent.Store(agt)
		srv.SetLocalAgent(agt.ID())
	}
	switch role {
	case "dev":
		fmt.Printf("corral dev is running (data in %s)\n", f.dataDir)
		fmt.Printf("  HTTP API:   http://%s\n  gRPC+raft:  %s\n  gossip:     %s (server), %s (agent)\n", srv.HTTPAddr(), srv.RPCAddr(), srv.SerfAddr(), agt.SerfAddr())
		fmt.Printf("Try: bin/corral session create -wait -- sh -c 'echo hello'\n")
	case "server":
		scheme := "http"
		if f.httpTLS {
			scheme = "https"
		}
		fmt.Printf("corral server is running (data in %s): HTTP %s://%s, gRPC+raft %s, gossip %s\n", f.dataDir, scheme, srv.HTTPAddr(), srv.RPCAddr(), srv.SerfAddr())
	case "agent":
		fmt.Printf("corral agent %s is running (data in %s): gRPC %s, gossip %s, joining %s\n", agt.ID(), f.dataDir, f.rpcAddr, agt.SerfAddr(), f.join.String())
	}

	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	s := <-sig
	logger.Info("shutting down", "signal", s.String())
	go func() {
		<-sig
		fmt.Fprintln(os.Stderr, "second signal: exiting now")
		// Driver plugins die with this process (loader.Launch sets their
		// parent-death signal); their tasks run on.
		os.Exit(1)
	}()
	if agt != nil {
		if role == "dev" {
			// corral dev takes its kernels with it: stop them and let their
			// final status reach the server before leaving.
			agt.StopKernels(10 * time.Second)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			agt.Flush(ctx)
			cancel()
		}
		// A standalone agent leaves its kernels running: the next start
		// reattaches to them through the handles in its data dir.
		agt.Shutdown()
	}
	if killPlugins != nil {
		killPlugins()
	}
	if srv != nil {
		srv.Shutdown()
	}
	return 0
}

// dataSubdir keeps the server's and the agent's files apart in `corral dev`.
func dataSubdir(role, dir, sub string) string {
	if role == "dev" {
		return dir + string(os.PathSeparator) + sub
	}
	return dir
}

func nodeName(name, suffix string) string {
	if name == "" {
		name, _ = os.Hostname()
	}
	return name + suffix
}

// adminTokenFile is the file in the server's data dir that keeps the first
// admin token (0600).
const adminTokenFile = "admin-token"

// announceToken hands out the first admin token: it goes to the 0600 file
// adminTokenFile in the server's data dir, is printed as an export line
// only when stdout is a terminal (not into a journal or a log file), and
// for `corral dev` also goes to ~/.corral/token, where the CLI looks when
// CORRAL_TOKEN is unset.
func announceToken(role, dataDir, token string, logger *slog.Logger) {
	path := filepath.Join(dataDir, adminTokenFile)
	if err := writeSecretFile(path, token+"\n"); err != nil {
		logger.Error("could not save the first admin token: it is printed below, and lost if nobody reads it", "path", path, "error", err)
		fmt.Printf("The cluster's first admin key (shown once):\nexport CORRAL_TOKEN=%s\n", token)
	} else if term.IsTerminal(int(os.Stdout.Fd())) {
		fmt.Printf("The cluster's first admin key (also in %s, readable by its owner only):\nexport CORRAL_TOKEN=%s\n", path, token)
	} else {
		fmt.Printf("The cluster's first admin key is in %s (readable by its owner only):\n  export CORRAL_TOKEN=$(cat %s)\n", path, path)
	}
	if role != "dev" {
		return
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return
	}
	dir := filepath.Join(home, ".corral")
	if err := os.MkdirAll(dir, 0o700); err == nil {
		err = writeSecretFile(filepath.Join(dir, "token"), token+"\n")
	}
	if err != nil {
		logger.Warn("could not save the admin token for the CLI", "error", err)
	}
}

// writeSecretFile writes data to path readable by its owner only (also
// when the file was there with a wider mode), through a temporary file
// renamed into place.
func writeSecretFile(path, data string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.WriteString(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// security loads the gossip key and the TLS material of a server or agent.
func (f *daemonFlags) security(role string) ([]byte, *rpc.Security, error) {
	var key []byte
	if f.sec.encrypt != "" {
		var err error
		if key, err = gossip.ParseKey(f.sec.encrypt); err != nil {
			return nil, nil, fmt.Errorf("-encrypt: %w", err)
		}
	}
	sec := &rpc.Security{JoinToken: f.sec.joinToken}
	if f.sec.tlsCA != "" {
		conf, err := tlsutil.Load(f.sec.tlsCA, f.sec.tlsCert, f.sec.tlsKey)
		if err != nil {
			return nil, nil, err
		}
		if string(conf.Role()) != role {
			return nil, nil, fmt.Errorf("-tls-cert %s was issued for role %s; a %s needs one from 'corral tls cert create -%s'", f.sec.tlsCert, conf.Role(), role, role)
		}
		sec.TLS = conf
	}
	return key, sec, nil
}

// embeddedAgentMetrics, for corral dev, gathers the embedded agent's
// metrics (once it exists) with the server's own at /v1/metrics.
func embeddedAgentMetrics(role string, agt *atomic.Pointer[agent.Agent]) prometheus.Gatherer {
	if role != "dev" {
		return nil
	}
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		if a := agt.Load(); a != nil {
			return a.Metrics().Gather()
		}
		return nil, nil
	})
}
