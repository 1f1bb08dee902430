package server

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// jobSettings validates and defaults a cluster session's run_on, fail_on
// and start_order (cluster is whether it has 2 or more kernels). A single
// kernel's session keeps them empty.
func jobSettings(req *api.CreateSessionRequest, cluster bool) (runOn, failOn, startOrder string, err error) {
	switch req.RunOn {
	case "", structs.RunOnMain, structs.RunOnAll:
	default:
		return "", "", "", badRequest("unknown run_on %q: use main (main1 runs the command, the sub kernels serve ssh) or all (every kernel runs it)", req.RunOn)
	}
	switch req.FailOn {
	case "", structs.FailOnAny, structs.FailOnMain:
	default:
		return "", "", "", badRequest("unknown fail_on %q: use any (the first kernel that fails fails the session) or main (only main1 decides)", req.FailOn)
	}
	switch req.StartOrder {
	case "", structs.StartBarrier, structs.StartUnordered:
	default:
		return "", "", "", badRequest("unknown start_order %q: use barrier (no command starts before every kernel is ready) or unordered", req.StartOrder)
	}
	if !cluster {
		return "", "", "", nil
	}
	runOn, failOn, startOrder = req.RunOn, req.FailOn, req.StartOrder
	batch := req.Type == structs.SessionTypeBatch
	if runOn == "" {
		runOn = structs.RunOnAll
		if batch {
			runOn = structs.RunOnMain
		}
	}
	if failOn == "" {
		failOn = structs.FailOnMain
		if batch {
			failOn = structs.FailOnAny
		}
	}
	if startOrder == "" {
		startOrder = structs.StartBarrier
	}
	return runOn, failOn, startOrder, nil
}

// maxShmBytes bounds /dev/shm: anything beyond is a typo.
const maxShmBytes = 64 << 40

// kernelOptions validates the request's kernel options and returns them
// normalised (capabilities as CAP_X, ulimits parsed), nil when none is set.
func kernelOptions(req *api.CreateSessionRequest) (*structs.KernelOptions, error) {
	o := &structs.KernelOptions{InfiniBand: req.InfiniBand}
	if req.Shm != "" {
		q, err := structs.ParseBytes(req.Shm)
		if err != nil {
			return nil, badRequest("shm: %v", err)
		}
		b := int64(q / structs.QuantityScale)
		if b < 1<<20 || b > maxShmBytes {
			return nil, badRequest("shm %q is out of range [1M, 64T]", req.Shm)
		}
		o.ShmBytes = b
	}
	seen := map[string]bool{}
	for _, s := range req.Ulimits {
		u, err := structs.ParseUlimit(s)
		if err != nil {
			return nil, badRequest("%v", err)
		}
		if seen[u.Name] {
			return nil, badRequest("ulimit %s is given twice", u.Name)
		}
		seen[u.Name] = true
		o.Ulimits = append(o.Ulimits, u)
	}
	for _, s := range req.CapAdd {
		c, err := structs.NormalizeCapability(s)
		if err != nil {
			return nil, badRequest("cap_add: %v", err)
		}
		if !slices.Contains(o.CapAdd, c) {
			o.CapAdd = append(o.CapAdd, c)
		}
	}
	switch req.Network {
	case structs.NetworkDefault, structs.NetworkHost, structs.NetworkNone:
		o.Network = req.Network
	default:
		return nil, badRequest("unknown network %q: use host (the agents' network, for fast fabrics), none (loopback only) or leave it empty (the agent's kernel bridge with NAT)", req.Network)
	}
	if o.ShmBytes == 0 && len(o.Ulimits) == 0 && len(o.CapAdd) == 0 && o.Network == "" && !o.InfiniBand {
		return nil, nil
	}
	return o, nil
}

// checkOptionsPolicy caps a kernel's options by the key's policy (pol nil:
// the key has none, and a fresh policy's defaults apply). Admin keys are
// not capped.
func checkOptionsPolicy(key *structs.AccessKey, pol *structs.ResourcePolicy, k *structs.Kernel) error {
	o := k.Options
	if o == nil || (key != nil && key.Admin) {
		return nil
	}
	name := "(none: the key has no policy, so a fresh policy's defaults apply)"
	p := &structs.ResourcePolicy{}
	if pol != nil {
		name, p = pol.Name, pol
	}
	forbid := func(format string, args ...any) error {
		return &httpError{code: http.StatusForbidden, msg: fmt.Sprintf("kernel %s: ", k.Hostname) + fmt.Sprintf(format, args...)}
	}
	mem := int64(k.Resources[structs.SlotMem] / structs.QuantityScale)
	if o.ShmBytes > 0 {
		limit, what := p.MaxShmBytes, ""
		if limit == 0 {
			limit, what = mem, " (the kernel's mem)"
		}
		if o.ShmBytes > limit {
			return forbid("shm of %s is above policy %s's limit of %s%s", structs.FormatBytes(structs.Whole(o.ShmBytes)), name, structs.FormatBytes(structs.Whole(limit)), what)
		}
	}
	for _, u := range o.Ulimits {
		if err := structs.UlimitAllowed(pol, u.Name); err != nil {
			return forbid("%v", err)
		}
		if u.Name != "memlock" || p.MaxMemlockBytes == -1 {
			continue
		}
		limit, what := p.MaxMemlockBytes, ""
		if limit == 0 {
			limit, what = mem, " (the kernel's mem)"
		}
		if u.Soft == -1 || u.Hard == -1 || u.Hard > limit {
			return forbid("ulimit %s is above policy %s's memlock limit of %s%s; an admin may raise the policy's max_memlock (or make it unlimited)", structs.FormatUlimit(u), name, structs.FormatBytes(structs.Whole(limit)), what)
		}
	}
	for _, c := range o.CapAdd {
		if !slices.Contains(p.AllowedCapabilities, c) {
			allowed := "none"
			if len(p.AllowedCapabilities) > 0 {
				allowed = strings.Join(p.AllowedCapabilities, ", ")
			}
			return forbid("capability %s is not allowed by policy %s (allowed: %s)", c, name, allowed)
		}
	}
	if o.Network == structs.NetworkHost && !p.AllowHostNetwork {
		return forbid("host networking is not allowed by policy %s (allow_host_network)", name)
	}
	if o.InfiniBand && !p.AllowInfiniBand {
		return forbid("InfiniBand devices are not allowed by policy %s (allow_infiniband)", name)
	}
	return nil
}

// sessionKeys makes a cluster session's ssh keypair: an ed25519 private key
// in OpenSSH PEM and its authorized_keys line.
func sessionKeys(sessionID string) (private string, authorized string, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", "", err
	}
	block, err := ssh.MarshalPrivateKey(priv, "corral session "+sessionID)
	if err != nil {
		return "", "", err
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return "", "", err
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))) + " corral-session-" + sessionID
	return string(pem.EncodeToMemory(block)), line, nil
}

// clusterLaunch gives every kernel of a cluster session its part of the
// job that is known at create time: the session's keys, its rank, and
// whether it waits at the barrier or only serves. The raft apply that
// places the session fills in the peers, addresses and ports.
// A kernel serves (runs no command) under run_on main unless it is main1
// or its role was given a command of its own.
func clusterLaunch(sess *structs.Session, kernels []*structs.Kernel, ownCommand map[string]bool) error {
	if len(kernels) < 2 {
		return nil
	}
	priv, auth, err := sessionKeys(sess.ID)
	if err != nil {
		return fmt.Errorf("making the session's ssh key: %w", err)
	}
	sorted := slices.Clone(kernels)
	slices.SortFunc(sorted, structs.CompareKernels)
	for rank, k := range sorted {
		k.Launch = &structs.ClusterLaunch{
			NodeRank: rank, NumNodes: len(kernels),
			Barrier:       sess.StartOrder == structs.StartBarrier,
			Serve:         sess.RunOn == structs.RunOnMain && !(k.Role == "main" && k.Idx == 1) && !ownCommand[k.Role],
			SSHPrivateKey: priv, AuthorizedKeys: []string{auth},
		}
	}
	return nil
}

// rolesWithCommand names the roles that the request gives a command of
// their own.
func rolesWithCommand(req *api.CreateSessionRequest) map[string]bool {
	m := map[string]bool{}
	for _, rs := range req.Roles {
		if len(rs.Command) > 0 {
			m[rs.Role] = true
		}
	}
	return m
}

// redactKernels returns the kernels as the API shows them: their launch
// without the session's private key (the stored kernels are not changed).
func redactKernels(ks []*structs.Kernel) []*structs.Kernel {
	out := make([]*structs.Kernel, len(ks))
	for i, k := range ks {
		out[i] = k
		if k.Launch != nil {
			c := *k
			c.Launch = k.Launch.Redacted()
			out[i] = &c
		}
	}
	return out
}
