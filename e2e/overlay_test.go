package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/e2e/testbed"
	"github.com/corral-dev/corral/netns"
	"github.com/corral-dev/corral/structs"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/vishvananda/netlink"
)

// Fixed ports: every host of the bed has its own network namespace.
const (
	ovHTTPPort      = "8640"
	ovServerRPCPort = "8641"
	ovServerSerf    = "8642"
	ovAgentSerf     = "8643"
	ovAgentRPCPort  = "8644"
	ovEchoPort      = "7000" // kernels' TCP echo
	ovSinkPort      = "7001" // kernels' TCP sink (throughput)
)

// ovCluster is a server, a registry and three agents on a testbed.
type ovCluster struct {
	bed      *testbed.Bed
	server   *testbed.Host
	agents   []*testbed.Host // hosts of the agents
	c        *api.Client
	image    string
	hostOf   map[string]*testbed.Host // agent ID -> its host
	sessions []string                 // IDs of the sessions the test made
	// agentProcs and agentArgs are each agent's process and command line.
	agentProcs []*proc
	agentArgs  [][]string
}

// ovStart runs corral inside host h's network namespace. It forks from a
// thread inside the namespace rather than through h.Command: `ip netns exec`
// mounts a fresh /sys, which hides /sys/fs/cgroup, and the runc driver then
// reports itself unavailable. The daemon also stays in the test's mount
// namespace, so that the bed's cleanup sees the namespaces it mounts.
func ovStart(t *testing.T, h *testbed.Host, pname string, args ...string) *proc {
	t.Helper()
	p := &proc{name: pname, log: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(corralBin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := h.Do(p.cmd.Start); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(10 * time.Second)
		if t.Failed() {
			t.Logf("--- %s output ---\n%s", p.name, p.output())
		}
	})
	return p
}

// ovStartRegistry serves an image registry inside h's namespace on its
// underlay address and pushes the busybox image to it from the test process.
func ovStartRegistry(t *testing.T, h *testbed.Host) string {
	t.Helper()
	img := busyboxImage(t)
	ln, err := h.Listen("tcp", net.JoinHostPort(h.IP.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0)))}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ovPush(t, h, ln.Addr().String(), img, "corral/busybox:1")
}

// ovPush pushes img as repoTag ("corral/ps:1") to the registry that
// ovStartRegistry serves at regHost in h's namespace, and returns its ref.
func ovPush(t *testing.T, h *testbed.Host, regHost string, img v1.Image, repoTag string) string {
	t.Helper()
	ref := regHost + "/" + repoTag
	tag, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{DialContext: h.DialContext}
	defer tr.CloseIdleConnections()
	if err := remote.Write(tag, img, remote.WithTransport(tr)); err != nil {
		t.Fatalf("pushing %s to the registry in %s: %v", ref, h.Name, err)
	}
	return ref
}

func newOvCluster(t *testing.T) *ovCluster { return newOvClusterExtra(t, 0) }

// newOvClusterExtra is newOvCluster with extra hosts on the bed after the
// agents' (Hosts[4:]), running nothing.
func newOvClusterExtra(t *testing.T, extra int) *ovCluster {
	t.Helper()
	return newOvClusterWith(t, extra, nil)
}

// newOvClusterWith is newOvClusterExtra with agentFlags(i) appended to the
// command line of agent i (0-based; nil: none).
func newOvClusterWith(t *testing.T, extra int, agentFlags func(i int) []string) *ovCluster {
	t.Helper()
	b := testbed.New(t, 4+extra)
	oc := &ovCluster{bed: b, server: b.Hosts[0], agents: b.Hosts[1:4], hostOf: map[string]*testbed.Host{}}
	oc.image = ovStartRegistry(t, oc.server)
	regHost := strings.SplitN(oc.image, "/", 2)[0]

	sip := oc.server.IP.String()
	srvDir := filepath.Join(b.Dir(), "server")
	srv := ovStart(t, oc.server, "server", "server", "-name", "server1", "-data-dir", srvDir,
		"-http", net.JoinHostPort(sip, ovHTTPPort), "-rpc", net.JoinHostPort(sip, ovServerRPCPort),
		"-serf", net.JoinHostPort(sip, ovServerSerf), "-fast-gossip", "-allow-registry", regHost)
	var tok, joinTok string
	eventually(t, 20*time.Second, "server writes the admin token", func() error {
		tok, _ = adminTokenIn(srvDir)
		if jt, ok := joinTokenIn(srv.output()); ok && tok != "" {
			joinTok = jt
			return nil
		}
		return errors.New("no token lines yet")
	})
	c, err := api.NewClient("http://" + net.JoinHostPort(sip, ovHTTPPort))
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(tok)
	c.SetHTTPClient(oc.server.HTTPClient())
	oc.c = c

	// Runs after the agents stop: kill whatever kernel is left (a failed
	// test), as agents leave kernels running when they stop.
	t.Cleanup(func() { ovReapKernels(oc.sessions) })
	for i, h := range oc.agents {
		dir := filepath.Join(b.Dir(), fmt.Sprintf("agent%d", i+1))
		reapKernels(t, dir)
		ip := h.IP.String()
		args := []string{"agent", "-name", fmt.Sprintf("agent%d", i+1), "-data-dir", dir,
			"-join", net.JoinHostPort(sip, ovServerSerf), "-rpc", net.JoinHostPort(ip, ovAgentRPCPort),
			"-serf", net.JoinHostPort(ip, ovAgentSerf), "-cpu", "2", "-mem", "1G",
			"-insecure-registry", regHost, "-allow-registry", regHost, "-fast-gossip", "-join-token", joinTok}
		if agentFlags != nil {
			args = append(args, agentFlags(i)...)
		}
		oc.agentArgs = append(oc.agentArgs, args)
		oc.agentProcs = append(oc.agentProcs, ovStart(t, h, fmt.Sprintf("agent%d", i+1), args...))
	}
	eventually(t, 30*time.Second, "3 agents ALIVE with runc", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		agents, err := c.ListAgents(ctx)
		if err != nil {
			return err
		}
		alive := 0
		for _, a := range agents {
			if a.Status == structs.AgentAlive && a.HasDriver("runc") {
				alive++
			}
		}
		if alive != 3 {
			return fmt.Errorf("%d of %d agents ALIVE with runc", alive, len(agents))
		}
		for _, a := range agents {
			host, _, _ := net.SplitHostPort(a.SerfAddr)
			for _, h := range oc.agents {
				if h.IP.String() == host {
					oc.hostOf[a.ID] = h
				}
			}
		}
		if len(oc.hostOf) != 3 {
			return fmt.Errorf("agents' gossip addresses do not match the hosts: %d mapped", len(oc.hostOf))
		}
		return nil
	})
	// Runs before the agents stop: end what a failed test left running.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for _, id := range oc.sessions {
			if d, err := c.GetSession(ctx, id); err == nil && !d.Session.Status.Terminal() {
				_, _ = c.DestroySession(ctx, id)
			}
		}
		for _, id := range oc.sessions {
			for ctx.Err() == nil {
				if d, err := c.GetSession(ctx, id); err != nil || d.Session.Status.Terminal() {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	})
	return oc
}

func (oc *ovCluster) create(t *testing.T, req *api.CreateSessionRequest) *api.SessionDetail {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := oc.c.CreateSession(ctx, req)
	if err != nil {
		t.Fatalf("create session %q: %v", req.Name, err)
	}
	oc.sessions = append(oc.sessions, d.Session.ID)
	return d
}

// wait polls the session until cond holds.
func (oc *ovCluster) wait(t *testing.T, id string, timeout time.Duration, what string, cond func(*api.SessionDetail) error) *api.SessionDetail {
	t.Helper()
	var d *api.SessionDetail
	eventually(t, timeout, what, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		if d, err = oc.c.GetSession(ctx, id); err != nil {
			return err
		}
		return cond(d)
	})
	return d
}

func ovTerminated(d *api.SessionDetail) error {
	if d.Session.Status != structs.SessionTerminated {
		return fmt.Errorf("session is %s (%s)", d.Session.Status, d.Session.StatusInfo)
	}
	for _, k := range d.Kernels {
		if !k.Status.Terminal() {
			return fmt.Errorf("%s is %s", k.Hostname, k.Status)
		}
	}
	return nil
}

func ovRunning(d *api.SessionDetail) error {
	if d.Session.Status.Terminal() {
		return fmt.Errorf("session ended: %s (%s)", d.Session.Status, d.Session.StatusInfo)
	}
	for _, k := range d.Kernels {
		if k.Status != structs.KernelRunning || k.Network == nil {
			return fmt.Errorf("%s is %s", k.Hostname, k.Status)
		}
	}
	if d.Session.Status != structs.SessionRunning {
		return fmt.Errorf("session is %s", d.Session.Status)
	}
	return nil
}

func ovKernel(t *testing.T, d *api.SessionDetail, hostname string) *structs.Kernel {
	t.Helper()
	for _, k := range d.Kernels {
		if k.Hostname == hostname {
			return k
		}
	}
	t.Fatalf("session %s has no kernel %s", d.Session.ID, hostname)
	return nil
}

func ovFirst(k *structs.Kernel, status structs.KernelStatus) (time.Time, bool) {
	for _, h := range k.History {
		if h.Status == string(status) {
			return h.Time, true
		}
	}
	return time.Time{}, false
}

// ovStartup returns the time from the first kernel's SCHEDULED to the last
// kernel's RUNNING, from the kernels' status histories.
func ovStartup(d *api.SessionDetail) (time.Duration, error) {
	var from, to time.Time
	for _, k := range d.Kernels {
		s, ok1 := ovFirst(k, structs.KernelScheduled)
		r, ok2 := ovFirst(k, structs.KernelRunning)
		if !ok1 || !ok2 {
			return 0, fmt.Errorf("%s's history lacks SCHEDULED or RUNNING: %+v", k.Hostname, k.History)
		}
		if from.IsZero() || s.Before(from) {
			from = s
		}
		if r.After(to) {
			to = r
		}
	}
	return to.Sub(from), nil
}

func (oc *ovCluster) exec(t *testing.T, id, kernel string, timeout time.Duration, cmd ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out, errb bytes.Buffer
	code, err := oc.c.Exec(ctx, id, &api.ExecRequest{Kernel: kernel, Command: cmd}, &out, &errb)
	if err != nil {
		t.Fatalf("exec in %s of %s: %v (stdout %q stderr %q)", kernel, id, err, out.String(), errb.String())
	}
	return code, out.String(), errb.String()
}

func (oc *ovCluster) links(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, h := range oc.bed.Hosts {
		ls, err := h.Links()
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = ls
	}
	return out
}

// ovKernelPids lists the processes of the given sessions' kernels, found
// by their environment.
func ovKernelPids(sessions []string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			continue
		}
		for _, id := range sessions {
			if bytes.Contains(env, []byte("\x00CORRAL_SESSION_ID="+id+"\x00")) || bytes.HasPrefix(env, []byte("CORRAL_SESSION_ID="+id+"\x00")) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// ovReapKernels kills the processes of the given sessions' kernels.
func ovReapKernels(sessions []string) {
	for _, pid := range ovKernelPids(sessions) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// ovKernelNetns finds a process of the kernel (by its environment) that
// runs in a network namespace of its own, and returns that namespace's path.
func ovKernelNetns(b *testbed.Bed, kernelID string) (string, error) {
	skip := map[uint64]bool{} // the root's and the hosts' namespaces
	for _, p := range append([]string{"/proc/self/ns/net"}, ovHostPaths(b)...) {
		var st syscall.Stat_t
		if syscall.Stat(p, &st) == nil {
			skip[st.Ino] = true
		}
	}
	want := []byte("CORRAL_KERNEL_ID=" + kernelID + "\x00")
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil || !(bytes.HasPrefix(env, want) || bytes.Contains(env, append([]byte{0}, want...))) {
			continue
		}
		p := fmt.Sprintf("/proc/%d/ns/net", pid)
		var st syscall.Stat_t
		if syscall.Stat(p, &st) != nil || skip[st.Ino] {
			continue
		}
		return p, nil
	}
	return "", fmt.Errorf("no process of kernel %s in a namespace of its own", kernelID)
}

// ovHostPaths lists the network namespace files of the bed's hosts.
func ovHostPaths(b *testbed.Bed) []string {
	var out []string
	for _, h := range b.Hosts {
		out = append(out, h.Path())
	}
	return out
}

// ovEth0 returns the IPv4 addresses of eth0 and the link names in the namespace at path.
func ovEth0(path string) (addrs, links []string, err error) {
	err = netns.Do(path, func() error {
		ls, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range ls {
			links = append(links, l.Attrs().Name)
		}
		slices.Sort(links)
		eth, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		as, err := netlink.AddrList(eth, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, a := range as {
			addrs = append(addrs, a.IPNet.String())
		}
		return nil
	})
	return addrs, links, err
}

// ovDialEcho dials addr from inside the namespace at path and checks that a
// line comes back.
func ovDialEcho(path, addr string, timeout time.Duration) error {
	var c net.Conn
	err := netns.Do(path, func() (err error) {
		c, err = net.DialTimeout("tcp", addr, timeout)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, "l2-probe\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "l2-probe\n" {
		return fmt.Errorf("echo returned %q", line)
	}
	return nil
}

var ovRealRE = regexp.MustCompile(`real\s+(\d+)m\s*([0-9.]+)s`)

// ovReal parses busybox time's "real" line.
func ovReal(s string) (time.Duration, error) {
	m := ovRealRE.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("no real time in %q", s)
	}
	mins, _ := strconv.Atoi(m[1])
	sec, _ := strconv.ParseFloat(m[2], 64)
	return time.Duration(mins)*time.Minute + time.Duration(sec*float64(time.Second)), nil
}

func ovHostAddr(k *structs.Kernel) string {
	p, err := netip.ParsePrefix(k.Network.Address)
	if err != nil {
		return k.Network.Address
	}
	return p.Addr().String()
}

// The kernels of every cluster session run the same script; sub kernels
// serve a TCP echo, main1 of session A checks the echo of every sub kernel
// by host name.
const ovScriptA = `
if [ "$CORRAL_CLUSTER_ROLE" != main ]; then exec busybox nc -ll -p 7000 -e /bin/cat; fi
ok=1
for h in $(echo "$CORRAL_CLUSTER_HOSTS" | busybox tr , ' '); do
  [ "$h" = "$CORRAL_CLUSTER_HOST" ] && continue
  i=0; got=
  while [ $i -lt 100 ]; do
    got=$(echo "ping-$h" | busybox nc -w 1 "$h" 7000 2>/dev/null)
    [ "$got" = "ping-$h" ] && break
    i=$((i+1)); sleep 0.1
  done
  if [ "$got" = "ping-$h" ]; then echo "echo-ok $h after $i retries"; else echo "echo-FAIL $h [$got]"; ok=0; fi
done
env | busybox grep '^CORRAL_' | busybox sort
echo '--- /etc/hosts'
cat /etc/hosts
[ $ok = 1 ]
`

// Interactive kernels: a TCP echo and a TCP sink.
const ovScriptServe = `
busybox nc -ll -p 7001 -e busybox dd of=/dev/null bs=1M 2>/dev/null &
exec busybox nc -ll -p 7000 -e /bin/cat
`

// From C's main1: reach sub1 by name, then try every target "ip:port".
const ovScriptProbe = `
i=0; got=
while [ $i -lt 50 ]; do
  got=$(echo pos | busybox nc -w 1 sub1 7000 2>/dev/null)
  [ "$got" = pos ] && break
  i=$((i+1)); sleep 0.1
done
echo "positive [$got]"
for t in "$@"; do
  out=$(echo neg | busybox nc -w 2 "${t%:*}" "${t##*:}" 2>&1); rc=$?
  echo "probe $t rc=$rc out=[$(echo $out)]"
done
`

// TestOverlayMultiNodeSessions runs multi-node runc cluster sessions on a
// bed of four hosts in network namespaces (a server with an image registry,
// three agents): kernels on different agents reach each other by host name
// over their session's VXLAN overlay, sessions are isolated from each other
// and from the underlay, and every overlay device is gone afterwards.
func TestOverlayMultiNodeSessions(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("overlay e2e needs root (network namespaces, VXLAN, runc)")
	}
	began := time.Now()
	oc := newOvCluster(t)
	t.Logf("bed, registry, server and 3 agents ready in %v", time.Since(began).Round(time.Millisecond))
	before := oc.links(t)

	// Session A: a batch cluster of 3, one kernel per agent.
	big := structs.Slots{structs.SlotCPU: structs.Whole(1) + 500, structs.SlotMem: structs.Whole(128 << 20)}
	a := oc.create(t, &api.CreateSessionRequest{
		Name: "ov-a", Type: structs.SessionTypeBatch, Driver: "runc", Image: oc.image,
		Command: []string{"sh", "-c", ovScriptA}, Resources: big,
		ClusterSize: 3, ClusterMode: structs.ClusterModeMultiNode, RunOn: structs.RunOnAll,
	})
	ad := oc.wait(t, a.Session.ID, 60*time.Second, "session A terminated", ovTerminated)
	logsA, err := oc.c.SessionLogs(context.Background(), a.Session.ID, "main1")
	if err != nil {
		t.Fatalf("logs of A's main1: %v", err)
	}
	if ad.Session.Result != structs.ResultSuccess {
		t.Fatalf("session A: result %s (%s)\nmain1 stdout:\n%s\nstderr:\n%s", ad.Session.Result, ad.Session.StatusInfo, logsA.Stdout, logsA.Stderr)
	}
	agentsA := map[string]string{}
	for _, k := range ad.Kernels {
		if k.AgentID == "" || k.Network == nil {
			t.Fatalf("A's %s: agent %q network %+v", k.Hostname, k.AgentID, k.Network)
		}
		if prev, dup := agentsA[k.AgentID]; dup {
			t.Fatalf("A's %s and %s share agent %s", prev, k.Hostname, k.AgentID)
		}
		agentsA[k.AgentID] = k.Hostname
	}
	for _, want := range []string{"echo-ok sub1", "echo-ok sub2", "CORRAL_CLUSTER_SIZE=3",
		"CORRAL_CLUSTER_HOSTS=main1,sub1,sub2", "CORRAL_CLUSTER_ROLE=main", "CORRAL_CLUSTER_HOST=main1",
		"CORRAL_SESSION_ID=" + ad.Session.ID} {
		if !strings.Contains(logsA.Stdout, want) {
			t.Errorf("A's main1 output lacks %q:\n%s", want, logsA.Stdout)
		}
	}
	for _, k := range ad.Kernels {
		line := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(ovHostAddr(k)) + `\s+` + k.Hostname + `$`)
		if !line.MatchString(logsA.Stdout) {
			t.Errorf("A's /etc/hosts lacks %s %s:\n%s", ovHostAddr(k), k.Hostname, logsA.Stdout)
		}
	}
	main1 := ovKernel(t, ad, "main1")
	mainEnd, _ := ovFirst(main1, structs.KernelTerminated)
	if main1.ExitCode == nil || *main1.ExitCode != 0 {
		t.Errorf("A's main1 exit code %v", main1.ExitCode)
	}
	for _, h := range []string{"sub1", "sub2"} {
		k := ovKernel(t, ad, h)
		stop, ok := ovFirst(k, structs.KernelTerminating)
		if k.Status != structs.KernelTerminated || !ok || stop.Before(mainEnd) {
			t.Errorf("A's %s: %s, history %+v; main1 ended at %v", h, k.Status, k.History, mainEnd)
		}
		for _, e := range k.History {
			if e.Status == string(structs.KernelTerminating) && !strings.Contains(e.Info, "main1 ended") {
				t.Errorf("A's %s was stopped for %q, want main1 ended", h, e.Info)
			}
		}
	}
	if up, err := ovStartup(ad); err != nil {
		t.Error(err)
	} else {
		t.Logf("FIGURE session A (3 kernels on 3 agents, cold image pull): SCHEDULED -> all RUNNING %v", up.Round(time.Millisecond))
	}

	// Session D: 4 kernels on 3 agents, so two of them share an agent's bridge.
	small := structs.Slots{structs.SlotCPU: 500, structs.SlotMem: structs.Whole(64 << 20)}
	dd := oc.create(t, &api.CreateSessionRequest{
		Name: "ov-d", Type: structs.SessionTypeBatch, Driver: "runc", Image: oc.image,
		Command: []string{"sh", "-c", ovScriptA}, Resources: small,
		ClusterSize: 4, ClusterMode: structs.ClusterModeMultiNode, RunOn: structs.RunOnAll,
	})
	ddd := oc.wait(t, dd.Session.ID, 60*time.Second, "session D terminated", ovTerminated)
	logsD, err := oc.c.SessionLogs(context.Background(), dd.Session.ID, "main1")
	if err != nil {
		t.Fatal(err)
	}
	if ddd.Session.Result != structs.ResultSuccess {
		t.Fatalf("session D: result %s (%s)\nmain1 stdout:\n%s\nstderr:\n%s", ddd.Session.Result, ddd.Session.StatusInfo, logsD.Stdout, logsD.Stderr)
	}
	for _, want := range []string{"echo-ok sub1", "echo-ok sub2", "echo-ok sub3", "CORRAL_CLUSTER_SIZE=4", "CORRAL_CLUSTER_HOSTS=main1,sub1,sub2,sub3"} {
		if !strings.Contains(logsD.Stdout, want) {
			t.Errorf("D's main1 output lacks %q:\n%s", want, logsD.Stdout)
		}
	}
	perAgent := map[string][]string{}
	for _, k := range ddd.Kernels {
		perAgent[k.AgentID] = append(perAgent[k.AgentID], k.Hostname)
	}
	if len(perAgent) < 2 {
		t.Errorf("D's kernels all on one agent: %v", perAgent)
	}
	if up, err := ovStartup(ddd); err != nil {
		t.Error(err)
	} else {
		t.Logf("FIGURE session D (4 kernels on %d agents, image cached): SCHEDULED -> all RUNNING %v", len(perAgent), up.Round(time.Millisecond))
	}

	// Sessions B and C at once, on the same agents.
	mk := func(n string) *api.SessionDetail {
		return oc.create(t, &api.CreateSessionRequest{
			Name: n, Type: structs.SessionTypeInteractive, Driver: "runc", Image: oc.image,
			Command: []string{"sh", "-c", ovScriptServe}, Resources: small,
			ClusterSize: 2, ClusterMode: structs.ClusterModeMultiNode,
		})
	}
	b0, c0 := mk("ov-b"), mk("ov-c")
	bd := oc.wait(t, b0.Session.ID, 30*time.Second, "session B running", ovRunning)
	cd := oc.wait(t, c0.Session.ID, 30*time.Second, "session C running", ovRunning)
	for _, d := range []*api.SessionDetail{bd, cd} {
		if up, err := ovStartup(d); err == nil {
			t.Logf("FIGURE session %s (2 kernels, image cached): SCHEDULED -> all RUNNING %v", d.Session.Name, up.Round(time.Millisecond))
		}
	}
	if bd.Session.Network == nil || cd.Session.Network == nil || bd.Session.Network.VNI == cd.Session.Network.VNI ||
		bd.Session.Network.Subnet == cd.Session.Network.Subnet {
		t.Fatalf("B and C overlays: %+v %+v", bd.Session.Network, cd.Session.Network)
	}
	bMain, bSub := ovKernel(t, bd, "main1"), ovKernel(t, bd, "sub1")
	cMain, cSub := ovKernel(t, cd, "main1"), ovKernel(t, cd, "sub1")

	// Each kernel has a namespace of its own with eth0 holding its overlay address.
	nsOf := map[string]string{}
	for _, k := range []*structs.Kernel{bMain, bSub, cMain, cSub} {
		var p string
		eventually(t, 5*time.Second, "namespace of "+k.ID, func() (err error) {
			p, err = ovKernelNetns(oc.bed, k.ID)
			return err
		})
		addrs, links, err := ovEth0(p)
		if err != nil {
			t.Fatalf("%s of %s: %v", k.Hostname, k.SessionID, err)
		}
		// eth1 is the kernel's way out through its agent's kernel bridge.
		if !slices.Equal(addrs, []string{k.Network.Address}) || !slices.Equal(links, []string{"eth0", "eth1", "lo"}) {
			t.Errorf("%s of %s: links %v, eth0 addresses %v, want [eth0 eth1 lo] and %s", k.Hostname, k.SessionID, links, addrs, k.Network.Address)
		}
		nsOf[k.ID] = p
	}
	// The overlay devices exist on the agents of B while it runs.
	for _, k := range []*structs.Kernel{bMain, bSub} {
		h := oc.hostOf[k.AgentID]
		ls, _ := h.Links()
		for _, dev := range []string{netns.BridgeName(k.Network.VNI), netns.VXLANName(k.Network.VNI)} {
			if !slices.Contains(ls, dev) {
				t.Errorf("%s (B's %s) lacks %s: %v", h.Name, k.Hostname, dev, ls)
			}
		}
	}

	// Positive control in B: main1 reaches sub1 by address.
	code, out, errOut := oc.exec(t, bd.Session.ID, "main1", 20*time.Second, "sh", "-c",
		`i=0; while [ $i -lt 50 ]; do got=$(echo posb | busybox nc -w 1 "$1" 7000 2>/dev/null); [ "$got" = posb ] && break; i=$((i+1)); sleep 0.1; done; echo "[$got]"`,
		"sh", ovHostAddr(bSub))
	if code != 0 || strings.TrimSpace(out) != "[posb]" {
		t.Fatalf("B's main1 -> B's sub1 %s: exit %d %q %q", ovHostAddr(bSub), code, out, errOut)
	}

	// From C's main1 (as a user in the kernel): C's sub1 by name works; B's
	// kernels, the agents' and the server's underlay ports do not.
	targets := []string{ovHostAddr(bMain) + ":" + ovEchoPort, ovHostAddr(bSub) + ":" + ovEchoPort}
	underlay := []string{net.JoinHostPort(oc.server.IP.String(), ovHTTPPort), net.JoinHostPort(oc.server.IP.String(), ovServerRPCPort)}
	for _, h := range oc.agents {
		underlay = append(underlay, net.JoinHostPort(h.IP.String(), ovAgentRPCPort))
	}
	// Those underlay ports are open: from another host they answer.
	for _, u := range underlay {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		conn, err := oc.agents[0].DialContext(ctx, "tcp", u)
		cancel()
		if err != nil {
			t.Fatalf("control: %s not reachable over the underlay: %v", u, err)
		}
		conn.Close()
	}
	targets = append(targets, underlay...)
	code, out, errOut = oc.exec(t, cd.Session.ID, "main1", 60*time.Second, append([]string{"sh", "-c", ovScriptProbe, "sh"}, targets...)...)
	if code != 0 || !strings.Contains(out, "positive [pos]") {
		t.Fatalf("C's main1 -> C's sub1 by name: exit %d\n%s%s", code, out, errOut)
	}
	for _, tg := range targets {
		re := regexp.MustCompile(`(?m)^probe ` + regexp.QuoteMeta(tg) + ` rc=(\d+) out=\[(.*)\]$`)
		m := re.FindStringSubmatch(out)
		if m == nil {
			t.Errorf("no probe line for %s in:\n%s", tg, out)
			continue
		}
		if m[1] == "0" || strings.Contains(m[2], "neg") {
			t.Errorf("C's main1 reached %s: rc=%s out=%q", tg, m[1], m[2])
		} else {
			t.Logf("C's main1 -> %s refused: rc=%s %s", tg, m[1], m[2])
		}
	}

	// At layer 2: from inside C's kernels' namespaces, with an extra address
	// in B's subnet so that no routing stands in the way, B's kernels must
	// stay unreachable. The same probe to C's own sub1 shows that it works.
	if err := ovDialEcho(nsOf[cMain.ID], net.JoinHostPort(ovHostAddr(cSub), ovEchoPort), 3*time.Second); err != nil {
		t.Fatalf("control: C's main1 namespace -> C's sub1: %v", err)
	}
	bSubnet := netip.MustParsePrefix(bd.Session.Network.Subnet)
	for i, k := range []*structs.Kernel{cMain, cSub} {
		extra := structs.KernelAddress(bSubnet, 200+i)
		err := netns.Do(nsOf[k.ID], func() error {
			eth, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			return netlink.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: extra.Addr().AsSlice(), Mask: net.CIDRMask(extra.Bits(), 32)}})
		})
		if err != nil {
			t.Fatalf("adding %s to C's %s: %v", extra, k.Hostname, err)
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var sameHost []string
	for _, from := range []*structs.Kernel{cMain, cSub} {
		for _, to := range []*structs.Kernel{bMain, bSub} {
			if from.AgentID == to.AgentID {
				sameHost = append(sameHost, "C."+from.Hostname+"->B."+to.Hostname)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := ovDialEcho(nsOf[from.ID], net.JoinHostPort(ovHostAddr(to), ovEchoPort), 1500*time.Millisecond)
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					t.Errorf("layer 2: C's %s reached B's %s at %s", from.Hostname, to.Hostname, ovHostAddr(to))
				} else {
					t.Logf("layer 2: C's %s -> B's %s: %v", from.Hostname, to.Hostname, err)
				}
			}()
		}
	}
	// Nor do the hosts reach the kernels: the bridges carry no address.
	for _, h := range oc.bed.Hosts {
		for _, to := range []*structs.Kernel{bMain, bSub} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
				defer cancel()
				if conn, err := h.DialContext(ctx, "tcp", net.JoinHostPort(ovHostAddr(to), ovEchoPort)); err == nil {
					conn.Close()
					mu.Lock()
					t.Errorf("%s reached B's %s on the overlay", h.Name, to.Hostname)
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	t.Logf("layer-2 isolation probes on a shared agent: %v", sameHost)

	// Throughput: B's main1 -> B's sub1 over the overlay, against the same
	// tools between the two agents' host namespaces over the plain veths.
	if bMain.AgentID != bSub.AgentID {
		ovThroughput(t, oc, bd.Session.ID, bSub, oc.hostOf[bMain.AgentID], oc.hostOf[bSub.AgentID])
	} else {
		t.Logf("B's kernels share an agent: no throughput figure")
	}

	for _, d := range []*api.SessionDetail{bd, cd} {
		if _, err := oc.c.DestroySession(context.Background(), d.Session.ID); err != nil {
			t.Fatalf("destroy %s: %v", d.Session.Name, err)
		}
	}
	for _, d := range []*api.SessionDetail{bd, cd} {
		oc.wait(t, d.Session.ID, 30*time.Second, "session "+d.Session.Name+" terminated", ovTerminated)
	}

	// Every overlay device, veth and namespace is gone.
	var after map[string][]string
	eventually(t, 10*time.Second, "hosts' links as before the sessions", func() error {
		after = oc.links(t)
		for h, ls := range before {
			if !slices.Equal(ls, after[h]) {
				return fmt.Errorf("%s: before %v, now %v", h, ls, after[h])
			}
		}
		return nil
	})
	// No process of any kernel is left.
	eventually(t, 10*time.Second, "kernel processes gone", func() error {
		if pids := ovKernelPids(oc.sessions); len(pids) > 0 {
			return fmt.Errorf("processes of the sessions' kernels still run: %v", pids)
		}
		return nil
	})
	t.Logf("test body took %v", time.Since(began).Round(time.Millisecond))
}

// ovThroughput sends the same amount of data with busybox nc and dd over
// the overlay (kernel to kernel) and over the underlay (host namespace to
// host namespace), and logs both rates and their ratio.
func ovThroughput(t *testing.T, oc *ovCluster, sessionID string, sink *structs.Kernel, from, to *testbed.Host) {
	t.Helper()
	const count = 512 // of 1 MiB
	const mib = float64(count)
	best := func(f func() (time.Duration, error)) (time.Duration, error) {
		var b time.Duration
		for range 3 {
			d, err := f()
			if err != nil {
				return 0, err
			}
			if b == 0 || d < b {
				b = d
			}
		}
		return b, nil
	}
	overlay, err := best(func() (time.Duration, error) {
		code, out, errOut := oc.exec(t, sessionID, "main1", 30*time.Second, "sh", "-c",
			"busybox time busybox nc -w 2 "+ovHostAddr(sink)+" "+ovSinkPort+" -e busybox dd if=/dev/zero bs=1M count="+strconv.Itoa(count))
		if code != 0 {
			return 0, fmt.Errorf("exit %d: %s %s", code, out, errOut)
		}
		return ovReal(errOut + out)
	})
	if err != nil {
		t.Errorf("overlay throughput: %v", err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := to.Command(ctx, "/bin/busybox", "nc", "-ll", "-p", "7101", "-e", "/bin/busybox", "dd", "of=/dev/null", "bs=1M")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Wait()
	defer srv.Process.Kill()
	eventually(t, 5*time.Second, "underlay sink listening", func() error {
		c, err := to.DialContext(ctx, "tcp", net.JoinHostPort(to.IP.String(), "7101"))
		if err == nil {
			c.Close()
		}
		return err
	})
	underlay, err := best(func() (time.Duration, error) {
		out, err := from.Command(ctx, "/bin/busybox", "time", "/bin/busybox", "nc", "-w", "2", to.IP.String(), "7101",
			"-e", "/bin/busybox", "dd", "if=/dev/zero", "bs=1M", "count="+strconv.Itoa(count)).CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("%v: %s", err, out)
		}
		return ovReal(string(out))
	})
	if err != nil {
		t.Errorf("underlay throughput: %v", err)
		return
	}
	ro, ru := mib/overlay.Seconds(), mib/underlay.Seconds()
	t.Logf("FIGURE throughput (busybox nc+dd, %.0f MiB, best of 3): overlay kernel->kernel %.0f MiB/s (%v), underlay %s->%s %.0f MiB/s (%v), overlay/underlay = %.2f",
		mib, ro, overlay, from.Name, to.Name, ru, underlay, ro/ru)
}
