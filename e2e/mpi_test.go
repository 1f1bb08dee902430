package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// mpiCluster is an overlay test bed (a server with a registry, three
// agents with 2 cpus each) with the MPI image pushed to its registry.
type mpiCluster struct {
	*ovCluster
	mpiRef string
}

// newMPICluster builds the MPI image (cached) and the bed, and pushes the
// image to the bed's registry.
func newMPICluster(t *testing.T) *mpiCluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("MPI e2e needs root (network namespaces, VXLAN, runc, debootstrap)")
	}
	img := mpiImage(t, buildNetcheck(t))
	began := time.Now()
	oc := newOvCluster(t)
	key, _ := mpiRootfsKey()
	regHost := strings.SplitN(oc.image, "/", 2)[0]
	ref := regHost + "/corral/mpi:" + key
	pushImage(t, oc.server, img, ref)
	t.Logf("bed, server, 3 agents and the MPI image in the registry in %v", time.Since(began).Round(time.Millisecond))
	return &mpiCluster{ovCluster: oc, mpiRef: ref}
}

// Slots of the MPI tests' kernels: a whole core (a cpuset of one core, one
// MPI slot) or half of one (the shared pool).
var (
	mpiWholeCPU = structs.Slots{structs.SlotCPU: structs.Whole(1), structs.SlotMem: structs.Whole(256 << 20)}
	mpiHalfCPU  = structs.Slots{structs.SlotCPU: 500, structs.SlotMem: structs.Whole(128 << 20)}
)

// logs returns a kernel's stdout and stderr.
func (mc *mpiCluster) logs(t *testing.T, id, kernel string) (string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := mc.c.SessionLogs(ctx, id, kernel)
	if err != nil {
		t.Fatalf("logs of %s of %s: %v", kernel, id, err)
	}
	return string(l.Stdout), string(l.Stderr)
}

// describe renders a session's kernels and logs for a failure message.
func (mc *mpiCluster) describe(t *testing.T, d *api.SessionDetail) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "session %s: %s %s (%s)\n", d.Session.Name, d.Session.Status, d.Session.Result, d.Session.StatusInfo)
	for _, k := range d.Kernels {
		code := "-"
		if k.ExitCode != nil {
			code = strconv.Itoa(*k.ExitCode)
		}
		fmt.Fprintf(&b, "  %s on %s: %s exit %s (%s) cpuset %q\n", k.Hostname, k.AgentID, k.Status, code, k.StatusInfo, k.Cpuset)
		for _, h := range k.History {
			fmt.Fprintf(&b, "    %s %s\n", h.Status, h.Info)
		}
		out, errOut := mc.logs(t, d.Session.ID, k.Hostname)
		fmt.Fprintf(&b, "  --- %s stdout:\n%s\n  --- %s stderr:\n%s\n", k.Hostname, tail(out, 40), k.Hostname, tail(errOut, 40))
	}
	return b.String()
}

// ended waits until the session has ended: TERMINATED with every kernel
// ended. A session in ERROR or CANCELLED fails the test at once.
func (mc *mpiCluster) ended(t *testing.T, id string, timeout time.Duration, what string) *api.SessionDetail {
	t.Helper()
	return mc.wait(t, id, timeout, what, func(d *api.SessionDetail) error {
		if d.Session.Status == structs.SessionError || d.Session.Status == structs.SessionCancelled {
			t.Fatalf("%s: the session ended %s\n%s", what, d.Session.Status, mc.describe(t, d))
		}
		return ovTerminated(d)
	})
}

// TestMPIJobs runs HPC-style jobs on three agents of the overlay test bed
// with an image that has no sshd and runs as root (issue 14). The subtests
// share the bed and the pushed image.
//
// What each subtest relies on besides this branch:
//   - MPIAllreduce: the server's RunOnMain default for batch cluster
//     sessions and its start barrier (server branch); the kernel helper's
//     ssh server and client as Open MPI's rsh agent, /etc/corral/hostfile
//     and OMPI_ALLOW_RUN_AS_ROOT (kernel branch).
//   - ClusterSubFailure: FailOnAny for batch sessions, the failing kernel
//     and its code in the reason, roles' own commands (server branch).
//   - LauncherVars: RunOnAll, ClusterLaunch (server branch) and the
//     variables and files the kernel helper makes of it (kernel branch).
//   - CpusetsDistinct: whole-core cpusets per kernel, reported as
//     Kernel.Cpuset (drivers branch, agent).
func TestMPIJobs(t *testing.T) {
	mc := newMPICluster(t)
	t.Run("MPIAllreduce", func(t *testing.T) { testMPIAllreduce(t, mc) })
	t.Run("ClusterSubFailure", func(t *testing.T) { testClusterSubFailure(t, mc) })
	t.Run("RoleCommandDefaultRunOn", func(t *testing.T) { testRoleCommandDefaultRunOn(t, mc) })
	t.Run("LauncherVars", func(t *testing.T) { testLauncherVars(t, mc) })
	t.Run("CpusetsDistinct", func(t *testing.T) { testCpusetsDistinct(t, mc) })
}

var allreduceRE = regexp.MustCompile(`(?m)^allreduce sum=(\d+) size=(\d+) rank=(\d+) host=(\S+)$`)

// testMPIAllreduce: a stock Open MPI job, `mpirun` with the hostfile corral
// writes and no other flag, across three agents; main1 runs it, the subs
// serve ssh.
func testMPIAllreduce(t *testing.T, mc *mpiCluster) {
	began := time.Now()
	d := mc.create(t, &api.CreateSessionRequest{
		Name: "mpi-allreduce", Type: structs.SessionTypeBatch, Driver: "runc", Image: mc.mpiRef,
		Command:   []string{"mpirun", "-np", "3", "--hostfile", "/etc/corral/hostfile", "./allreduce"},
		Resources: mpiWholeCPU, ClusterSize: 3, ClusterMode: structs.ClusterModeMultiNode,
	})
	dd := mc.ended(t, d.Session.ID, 5*time.Minute, "MPI allreduce session")
	if dd.Session.Result != structs.ResultSuccess {
		t.Fatalf("MPI allreduce: want SUCCESS\n%s", mc.describe(t, dd))
	}
	agents := map[string]bool{}
	for _, k := range dd.Kernels {
		agents[k.AgentID] = true
	}
	if len(agents) != 3 {
		t.Errorf("the 3 kernels ran on %d agents, want 3", len(agents))
	}
	out, _ := mc.logs(t, d.Session.ID, "main1")
	ms := allreduceRE.FindAllStringSubmatch(out, -1)
	ranks, hosts := map[string]bool{}, map[string]bool{}
	for _, m := range ms {
		if m[1] != "6" || m[2] != "3" {
			t.Errorf("rank %s on %s: sum=%s size=%s, want sum=6 size=3", m[3], m[4], m[1], m[2])
		}
		ranks[m[3]], hosts[m[4]] = true, true
	}
	if len(ms) != 3 || len(ranks) != 3 || !hosts["main1"] || !hosts["sub1"] || !hosts["sub2"] {
		t.Errorf("main1's log: want one line of each of ranks 0-2 on main1, sub1 and sub2, got %d lines (ranks %v hosts %v)\n%s",
			len(ms), ranks, hosts, mc.describe(t, dd))
	}
	// mpirun ran once, in main1: the subs ran no command of their own.
	for _, h := range []string{"sub1", "sub2"} {
		if o, _ := mc.logs(t, d.Session.ID, h); allreduceRE.MatchString(o) {
			t.Errorf("%s ran the job too (the session's command must run only in main1):\n%s", h, o)
		}
	}
	t.Logf("main1's log:\n%s", tail(out, 10))
	t.Logf("FIGURE MPI allreduce on 3 agents: create -> SUCCESS in %v", time.Since(began).Round(time.Millisecond))
}

// testClusterSubFailure: a sub kernel that exits 3 at once fails the batch
// session, named with its code, and main1 (sleeping) is stopped.
func testClusterSubFailure(t *testing.T, mc *mpiCluster) {
	d := mc.create(t, &api.CreateSessionRequest{
		Name: "mpi-subfail", Type: structs.SessionTypeBatch, Driver: "runc", Image: mc.mpiRef,
		Command: []string{"sleep", "600"}, RunOn: structs.RunOnAll,
		Roles:     []api.RoleSpec{{Role: "sub", Command: []string{"sh", "-c", "echo sub failing; exit 3"}}},
		Resources: mpiHalfCPU, ClusterSize: 2, ClusterMode: structs.ClusterModeMultiNode,
	})
	dd := mc.ended(t, d.Session.ID, 3*time.Minute, "session with a failing sub")
	if dd.Session.Result != structs.ResultFailure {
		t.Fatalf("want FAILURE when sub1 exits 3\n%s", mc.describe(t, dd))
	}
	if !regexp.MustCompile(`sub1\b.*\b3\b`).MatchString(dd.Session.StatusInfo) {
		t.Errorf("status info %q should name sub1 and its exit code 3\n%s", dd.Session.StatusInfo, mc.describe(t, dd))
	}
	t.Logf("session %s: %s", dd.Session.Result, dd.Session.StatusInfo)
	sub1, main1 := ovKernel(t, dd, "sub1"), ovKernel(t, dd, "main1")
	if sub1.ExitCode == nil || *sub1.ExitCode != 3 {
		t.Errorf("sub1's exit code %v, want 3", sub1.ExitCode)
	}
	// main1 was stopped: its sleep 600 cannot have ended on its own.
	if _, ok := ovFirst(main1, structs.KernelTerminating); !ok {
		t.Errorf("main1 was not stopped (no TERMINATING in its history)\n%s", mc.describe(t, dd))
	}
	if main1.ExitCode != nil && *main1.ExitCode == 0 {
		t.Errorf("main1 exited 0; it should have been stopped while sleeping")
	}
}

// testRoleCommandDefaultRunOn: a role's own command runs even under the
// batch default run_on main (issue 14: "-role sub:command='...' gives a
// role its own command"; the README's example relies on it): sub1's exit 3
// fails the session. Needs the server to run a role's command in its
// kernels instead of only serving.
func testRoleCommandDefaultRunOn(t *testing.T, mc *mpiCluster) {
	d := mc.create(t, &api.CreateSessionRequest{
		Name: "mpi-rolecmd", Type: structs.SessionTypeBatch, Driver: "runc", Image: mc.mpiRef,
		Command:   []string{"sleep", "600"},
		Roles:     []api.RoleSpec{{Role: "sub", Command: []string{"sh", "-c", "echo sub failing; exit 3"}}},
		Resources: mpiHalfCPU, ClusterSize: 2, ClusterMode: structs.ClusterModeMultiNode,
	})
	dd := mc.wait(t, d.Session.ID, 2*time.Minute, "sub1's own command ran and failed the session (run_on default)", func(d *api.SessionDetail) error {
		if d.Session.Status.Terminal() {
			return nil
		}
		// A kernel whose launch says serve runs no command of its own.
		if k := ovKernel(t, d, "sub1"); k.Launch != nil && k.Launch.Serve {
			t.Fatalf("sub1's role has a command, but its launch says serve (the command will never run)\n%s", mc.describe(t, d))
		}
		return fmt.Errorf("session is %s (%s)", d.Session.Status, d.Session.StatusInfo)
	})
	dd = mc.ended(t, dd.Session.ID, time.Minute, "session with a failing sub (run_on default)")
	if dd.Session.Result != structs.ResultFailure || !regexp.MustCompile(`sub1\b.*\b3\b`).MatchString(dd.Session.StatusInfo) {
		t.Fatalf("want FAILURE naming sub1 and code 3\n%s", mc.describe(t, dd))
	}
}

// testLauncherVars: every kernel runs a torchrun-style rendezvous from
// MASTER_ADDR, MASTER_PORT, WORLD_SIZE and NODE_RANK; the hostfile and
// machinefile name every kernel.
func testLauncherVars(t *testing.T, mc *mpiCluster) {
	script := `echo '--- hostfile'; cat /etc/corral/hostfile
echo '--- machinefile'; cat /etc/corral/machinefile
echo '--- env'; env | grep -E '^(CORRAL_(NODE_RANK|NUM_NODES|MASTER_ADDR|MASTER_PORT)|MASTER_ADDR|MASTER_PORT|WORLD_SIZE|NODE_RANK|OMPI_ALLOW_RUN_AS_ROOT)=' | sort
echo '--- end'
exec ./netcheck rendezvous`
	d := mc.create(t, &api.CreateSessionRequest{
		Name: "mpi-rendezvous", Type: structs.SessionTypeBatch, Driver: "runc", Image: mc.mpiRef,
		Command: []string{"sh", "-c", script}, RunOn: structs.RunOnAll,
		Resources: mpiWholeCPU, ClusterSize: 3, ClusterMode: structs.ClusterModeMultiNode,
	})
	dd := mc.ended(t, d.Session.ID, 3*time.Minute, "rendezvous session")
	if dd.Session.Result != structs.ResultSuccess {
		t.Fatalf("rendezvous: want SUCCESS\n%s", mc.describe(t, dd))
	}
	main1 := ovKernel(t, dd, "main1")
	masterAddr := ovHostAddr(main1)
	hostnames := []string{"main1", "sub1", "sub2"}
	var port string
	for rank, h := range hostnames {
		k := ovKernel(t, dd, h)
		out, _ := mc.logs(t, d.Session.ID, h)
		re := regexp.MustCompile(`(?m)^rendezvous host=` + h + ` rank=` + strconv.Itoa(rank) + ` world=3 master=` +
			regexp.QuoteMeta(masterAddr) + `:(\d+) corral_rank=` + strconv.Itoa(rank) + ` corral_nodes=3 corral_master=` +
			regexp.QuoteMeta(masterAddr) + `:(\d+)$`)
		m := re.FindStringSubmatch(out)
		if m == nil {
			t.Errorf("%s: no rendezvous line for rank %d, master %s:\n%s", h, rank, masterAddr, out)
			continue
		}
		if port == "" {
			port = m[1]
		}
		if m[1] != port || m[2] != port {
			t.Errorf("%s: master port %s/%s, main1 said %s", h, m[1], m[2], port)
		}
		for _, want := range []string{"OMPI_ALLOW_RUN_AS_ROOT=1", "CORRAL_NODE_RANK=" + strconv.Itoa(rank), "CORRAL_NUM_NODES=3"} {
			if !strings.Contains(out, "\n"+want+"\n") {
				t.Errorf("%s's environment lacks %s:\n%s", h, want, out)
			}
		}
		// The files name every kernel, main1 first.
		hf := section(out, "hostfile")
		if !regexp.MustCompile(`^main1 slots=1\nsub1 slots=1\nsub2 slots=1\n?$`).MatchString(hf) {
			t.Errorf("%s's /etc/corral/hostfile:\n%s\nwant main1, sub1, sub2 with slots=1 each", h, hf)
		}
		mf := section(out, "machinefile")
		var mhosts []string // MPICH format: "host" or "host:slots"
		for _, l := range strings.Fields(mf) {
			hn, _, _ := strings.Cut(l, ":")
			mhosts = append(mhosts, hn)
		}
		if !slices.Equal(mhosts, hostnames) {
			t.Errorf("%s's /etc/corral/machinefile:\n%s\nwant main1, sub1, sub2", h, mf)
		}
		if rank > 0 && !strings.Contains(out, fmt.Sprintf("rendezvous rank=%d joined master", rank)) {
			t.Errorf("%s did not join the master:\n%s", h, out)
		}
		// The API shows the launch, without the private key.
		if l := k.Launch; l == nil {
			t.Errorf("%s: no launch in the API", h)
		} else {
			if l.NodeRank != rank || l.NumNodes != 3 || l.MasterAddr != masterAddr || strconv.Itoa(l.MasterPort) != port || len(l.Peers) != 3 {
				t.Errorf("%s's launch: rank %d of %d, master %s:%d, %d peers; want rank %d of 3, master %s:%s, 3 peers",
					h, l.NodeRank, l.NumNodes, l.MasterAddr, l.MasterPort, len(l.Peers), rank, masterAddr, port)
			}
			if l.SSHPrivateKey != "" && l.SSHPrivateKey != "(redacted)" {
				t.Errorf("%s: the API shows the session's private key", h)
			}
		}
	}
	if out, _ := mc.logs(t, d.Session.ID, "main1"); !strings.Contains(out, "rendezvous complete world=3 ranks=[0 1 2]") {
		t.Errorf("main1 did not hear all 3 ranks:\n%s", out)
	} else {
		t.Logf("main1's log:\n%s", out)
	}
	raw, _ := json.Marshal(dd)
	if strings.Contains(string(raw), "PRIVATE KEY") {
		t.Errorf("the session's detail holds a private key")
	}
}

// section returns the lines of out between "--- name" and the next "--- ".
func section(out, name string) string {
	_, rest, ok := strings.Cut(out, "--- "+name+"\n")
	if !ok {
		return ""
	}
	if i := strings.Index(rest, "--- "); i >= 0 {
		rest = rest[:i]
	}
	return rest
}

// cpuList parses a Linux cpu list ("0-2,5") into its cpus.
func cpuList(s string) ([]int, error) {
	var out []int
	for _, part := range strings.Split(strings.TrimSpace(s), ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("cpu list %q: %v", s, err)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("cpu list %q: bad range %q", s, part)
			}
		}
		for c := a; c <= b; c++ {
			out = append(out, c)
		}
	}
	return out, nil
}

// testCpusetsDistinct: two 1-cpu kernels on one 2-core agent get different
// cores, reported by the API and seen by their processes.
func testCpusetsDistinct(t *testing.T, mc *mpiCluster) {
	if runtime.NumCPU() < 2 {
		t.Skip("the cpuset check needs a machine with 2 cpus or more")
	}
	d := mc.create(t, &api.CreateSessionRequest{
		Name: "mpi-cpusets", Type: structs.SessionTypeInteractive, Driver: "runc", Image: mc.mpiRef,
		Command: []string{"sleep", "infinity"}, RunOn: structs.RunOnAll,
		Resources: mpiWholeCPU, ClusterSize: 2, ClusterMode: structs.ClusterModeSingleNode,
	})
	dd := mc.wait(t, d.Session.ID, 3*time.Minute, "both kernels running with a cpuset", func(d *api.SessionDetail) error {
		if d.Session.Status.Terminal() {
			t.Fatalf("the session ended: %s\n%s", d.Session.Status, mc.describe(t, d))
		}
		for _, k := range d.Kernels {
			if k.Status != structs.KernelRunning || k.Cpuset == "" {
				return fmt.Errorf("%s is %s with cpuset %q", k.Hostname, k.Status, k.Cpuset)
			}
		}
		return nil
	})
	m1, s1 := ovKernel(t, dd, "main1"), ovKernel(t, dd, "sub1")
	if m1.AgentID != s1.AgentID {
		t.Fatalf("single-node session on two agents: %s and %s", m1.AgentID, s1.AgentID)
	}
	seen := map[int]string{}
	for _, k := range []*structs.Kernel{m1, s1} {
		cpus, err := cpuList(k.Cpuset)
		if err != nil {
			t.Fatalf("%s's cpuset: %v", k.Hostname, err)
		}
		if len(cpus) != 1 {
			t.Errorf("%s (1 cpu) has cpuset %q, want one core", k.Hostname, k.Cpuset)
		}
		for _, c := range cpus {
			if other, dup := seen[c]; dup {
				t.Errorf("cpu %d is in both %s's and %s's cpusets (%q, %q)", c, other, k.Hostname, m1.Cpuset, s1.Cpuset)
			}
			seen[c] = k.Hostname
		}
		code, out, errOut := mc.exec(t, dd.Session.ID, k.Hostname, 30*time.Second, "grep", "-H", "Cpus_allowed_list", "/proc/1/status", "/proc/self/status")
		if code != 0 {
			t.Fatalf("exec in %s: exit %d %s %s", k.Hostname, code, out, errOut)
		}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			_, v, _ := strings.Cut(line, "Cpus_allowed_list:")
			got, err := cpuList(v)
			if err != nil || !slices.Equal(got, cpus) {
				t.Errorf("%s: %q, want the kernel's cpuset %q", k.Hostname, line, k.Cpuset)
			}
		}
	}
	t.Logf("cpusets: main1 %q, sub1 %q on agent %s", m1.Cpuset, s1.Cpuset, m1.AgentID)
	if _, err := mc.c.DestroySession(context.Background(), d.Session.ID); err != nil {
		t.Fatalf("destroy: %v", err)
	}
	mc.wait(t, d.Session.ID, time.Minute, "cpuset session terminated", ovTerminated)
}
