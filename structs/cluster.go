package structs

import "fmt"

// How the kernels of a cluster session run the session's command.
const (
	// RunOnMain: main1 runs the command; the sub kernels stay up serving
	// the session's ssh and exec until main1 ends (as sbatch does). The
	// default for batch cluster sessions.
	RunOnMain = "main"
	// RunOnAll: every kernel runs the command (torchrun-style launchers
	// that start one agent per node). The default for the other types.
	RunOnAll = "all"
)

// Which kernel's failure fails a batch cluster session.
const (
	// FailOnAny: the first kernel that ends with a non-zero exit (or in
	// ERROR) ends the session FAILURE and stops the others. The default
	// for batch sessions.
	FailOnAny = "any"
	// FailOnMain: only main1's exit decides; a sub that ends leaves the
	// others running.
	FailOnMain = "main"
)

// When the kernels of a cluster session start their commands.
const (
	// StartBarrier: every kernel is created and ready (its built-in ssh
	// server up, on its network) before any kernel's command starts.
	StartBarrier = "barrier"
	// StartUnordered: each kernel starts its command when it is ready.
	StartUnordered = "unordered"
)

// Kernel network modes.
const (
	// NetworkDefault: cluster kernels on the session's overlay, a single
	// container kernel in a namespace of its own, exec kernels on the host.
	NetworkDefault = ""
	// NetworkHost: the kernel uses its agent's network namespace (fast
	// fabrics, RDMA); peers are the agents' underlay addresses.
	NetworkHost = "host"
	// NetworkNone: a container kernel gets only loopback (no egress
	// interface); a cluster kernel keeps its session's overlay only.
	NetworkNone = "none"
)

// ClusterLaunch is what one kernel of a cluster session needs to take part
// in the job. The server computes it in the raft apply that places the
// session, when every kernel's agent and address is known.
type ClusterLaunch struct {
	// NodeRank is main1's 0, subN's N; NumNodes is the session's kernels.
	NodeRank int `json:"node_rank"`
	NumNodes int `json:"num_nodes"`
	// MasterAddr and MasterPort are main1's address (overlay, or its
	// agent's underlay for host networking) and a port reserved for the
	// session (launcher rendezvous: MASTER_ADDR/MASTER_PORT).
	MasterAddr string `json:"master_addr"`
	MasterPort int    `json:"master_port"`
	// SSHPort is where this kernel's built-in ssh server listens (the
	// same for every kernel on the overlay; see ClusterPeer.SSHPort).
	SSHPort int `json:"ssh_port"`
	// Peers are every kernel of the session, main1 first, in rank order.
	Peers []ClusterPeer `json:"peers"`
	// Barrier makes the kernel wait, before its command, until every
	// peer's ssh server accepts connections.
	Barrier bool `json:"barrier,omitempty"`
	// Serve makes the kernel run no command of its own: it serves ssh and
	// exec until it is stopped (sub kernels under RunOnMain).
	Serve bool `json:"serve,omitempty"`
	// SSHPrivateKey is the session's private key (OpenSSH PEM); the
	// matching public key is in AuthorizedKeys. Never shown by the API.
	SSHPrivateKey  string   `json:"ssh_private_key,omitempty"`
	AuthorizedKeys []string `json:"authorized_keys,omitempty"`
	// HostNetwork is set when the kernels use their agents' networks.
	HostNetwork bool `json:"host_network,omitempty"`
}

// ClusterPeer is one kernel of a cluster session as its peers see it.
type ClusterPeer struct {
	Hostname string `json:"hostname"`
	Addr     string `json:"addr"`
	Rank     int    `json:"rank"`
	// Slots is the number of ranks a launcher may start on the kernel:
	// its GPUs, else its whole cores (at least 1).
	Slots int `json:"slots"`
	// SSHPort is where the peer's ssh server listens. Peers on the overlay
	// all use the launch's SSHPort; host-networked kernels of one session
	// that share an agent (and so an address) each get a port of their
	// own, and each kernel's ClusterLaunch.SSHPort is its own port.
	SSHPort int `json:"ssh_port,omitempty"`
}

// Copy returns a deep copy of l (nil for nil).
func (l *ClusterLaunch) Copy() *ClusterLaunch {
	if l == nil {
		return nil
	}
	c := *l
	c.Peers = append([]ClusterPeer(nil), l.Peers...)
	c.AuthorizedKeys = append([]string(nil), l.AuthorizedKeys...)
	return &c
}

// Redacted returns a copy of l without its private key, for the API.
func (l *ClusterLaunch) Redacted() *ClusterLaunch {
	c := l.Copy()
	if c != nil && c.SSHPrivateKey != "" {
		c.SSHPrivateKey = "(redacted)"
	}
	return c
}

// Ulimit is one resource limit of a kernel's processes (setrlimit);
// -1 is unlimited.
type Ulimit struct {
	Name string `json:"name"` // e.g. "memlock", "nofile"
	Soft int64  `json:"soft"`
	Hard int64  `json:"hard"`
}

// KernelOptions are a kernel's runtime settings beyond its slots, each
// capped by the key's policy.
type KernelOptions struct {
	// ShmBytes is the size of the kernel's /dev/shm (0: the driver's
	// default, 64 MiB for runc).
	ShmBytes int64 `json:"shm_bytes,omitempty"`
	// Ulimits replace the driver's defaults.
	Ulimits []Ulimit `json:"ulimits,omitempty"`
	// CapAdd are capabilities added to the driver's default set, e.g.
	// "CAP_IPC_LOCK", "CAP_SYS_PTRACE".
	CapAdd []string `json:"cap_add,omitempty"`
	// Network is NetworkDefault, NetworkHost or NetworkNone.
	Network string `json:"network,omitempty"`
	// InfiniBand passes the agent's /dev/infiniband devices into the
	// kernel.
	InfiniBand bool `json:"infiniband,omitempty"`
}

// Copy returns a deep copy of o (nil for nil).
func (o *KernelOptions) Copy() *KernelOptions {
	if o == nil {
		return nil
	}
	c := *o
	c.Ulimits = append([]Ulimit(nil), o.Ulimits...)
	c.CapAdd = append([]string(nil), o.CapAdd...)
	return &c
}

// UlimitNames are the limits a kernel may set, by their ulimit names.
var UlimitNames = []string{"core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack"}

// ValidUlimit checks a limit's name and values.
func ValidUlimit(u Ulimit) error {
	known := false
	for _, n := range UlimitNames {
		known = known || n == u.Name
	}
	if !known {
		return fmt.Errorf("unknown ulimit %q: known are %v", u.Name, UlimitNames)
	}
	if u.Soft < -1 || u.Hard < -1 {
		return fmt.Errorf("ulimit %s: negative value (use -1 or \"unlimited\")", u.Name)
	}
	if u.Hard != -1 && (u.Soft == -1 || u.Soft > u.Hard) {
		return fmt.Errorf("ulimit %s: soft limit above the hard limit", u.Name)
	}
	return nil
}
