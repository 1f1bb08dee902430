package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/e2e/testbed"
	"github.com/corral-dev/corral/structs"
)

// pingFigures are one run's ping-pong results: MPI (pingpong.c under
// mpirun) and TCP (netcheck); 0 where a figure is missing.
type pingFigures struct {
	mpiLatUS, mpiBW float64 // µs (half round trip), MB/s
	tcpLatUS, tcpBW float64
}

var (
	mpiLatRE = regexp.MustCompile(`(?m)^pingpong latency_us=([0-9.]+)`)
	mpiBWRE  = regexp.MustCompile(`(?m)^pingpong bandwidth_MBps=([0-9.]+)`)
	tcpLatRE = regexp.MustCompile(`(?m)^tcppingpong latency_us=([0-9.]+)`)
	tcpBWRE  = regexp.MustCompile(`(?m)^tcppingpong bandwidth_MBps=([0-9.]+)`)
)

func parseFigure(re *regexp.Regexp, out string) float64 {
	m := re.FindStringSubmatch(out)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

func parsePing(out string) pingFigures {
	return pingFigures{
		mpiLatUS: parseFigure(mpiLatRE, out), mpiBW: parseFigure(mpiBWRE, out),
		tcpLatUS: parseFigure(tcpLatRE, out), tcpBW: parseFigure(tcpBWRE, out),
	}
}

// Benchmark sizes: 1-byte round trips for latency, 4 MiB messages for
// bandwidth.
const (
	benchLatIters = 5000
	benchBWBytes  = 4 << 20
	benchBWIters  = 100
	benchPort     = "7300"
)

// TestMPIBench measures ping-pong latency and bandwidth between two kernels
// on two agents, over the overlay and with host networking, with and
// without cpusets, against two plain processes in the agents' host
// namespaces (the baseline), and logs FIGURE lines with the ratios. It is
// a measurement, not a check: it runs only with CORRAL_MPI_BENCH=1
// (scripts/mpi-bench).
func TestMPIBench(t *testing.T) {
	if os.Getenv("CORRAL_MPI_BENCH") != "1" {
		t.Skip("a measurement: run it with CORRAL_MPI_BENCH=1 (scripts/mpi-bench)")
	}
	mc := newMPICluster(t)
	nc := buildNetcheck(t)

	type variant struct {
		name    string
		network string
		slots   structs.Slots
	}
	run := func(v variant) (pingFigures, *api.SessionDetail) {
		t.Helper()
		main := fmt.Sprintf(`mpirun -np 2 --hostfile /etc/corral/hostfile ./pingpong %d %d %d || exit $?
exec ./netcheck pingpong -addr sub1:%s -lat-iters %d -bw-bytes %d -bw-iters %d`,
			benchLatIters, benchBWBytes, benchBWIters, benchPort, benchLatIters, benchBWBytes, benchBWIters)
		d := mc.create(t, &api.CreateSessionRequest{
			Name: "bench-" + v.name, Type: structs.SessionTypeBatch, Driver: "runc", Image: mc.mpiRef,
			Command: []string{"sh", "-c", main}, RunOn: structs.RunOnAll, Network: v.network,
			Roles:     []api.RoleSpec{{Role: "sub", Command: []string{"./netcheck", "serve", "-addr", ":" + benchPort}}},
			Resources: v.slots, ClusterSize: 2, ClusterMode: structs.ClusterModeMultiNode,
		})
		dd := mc.ended(t, d.Session.ID, 5*time.Minute, "bench session "+v.name)
		out, _ := mc.logs(t, d.Session.ID, "main1")
		f := parsePing(out)
		if dd.Session.Result != structs.ResultSuccess || f.mpiLatUS == 0 || f.tcpLatUS == 0 {
			t.Fatalf("bench %s: want SUCCESS and four figures, got %+v\n%s", v.name, f, mc.describe(t, dd))
		}
		return f, dd
	}
	var rig *mpiHostRig
	// baseline runs netcheck between the two kernels' agents' host
	// namespaces, pinned to the kernels' cpusets when they had some.
	baseline := func(dd *api.SessionDetail) pingFigures {
		t.Helper()
		m1, s1 := ovKernel(t, dd, "main1"), ovKernel(t, dd, "sub1")
		from, to := mc.hostOf[m1.AgentID], mc.hostOf[s1.AgentID]
		pin := func(h *testbed.Host, cpuset string, args ...string) *exec.Cmd {
			if cpuset != "" {
				return h.Command(context.Background(), "taskset", append([]string{"-c", cpuset, nc}, args...)...)
			}
			return h.Command(context.Background(), nc, args...)
		}
		srv := pin(to, s1.Cpuset, "serve", "-addr", to.IP.String()+":7301")
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
		cpus := map[string]string{from.IP.String(): m1.Cpuset, to.IP.String(): s1.Cpuset}
		if rig == nil {
			rig = newMPIHostRig(t, mc.agents)
		}
		mpiOut := rig.pingpong(t, from, to, cpus, strconv.Itoa(benchLatIters), strconv.Itoa(benchBWBytes), strconv.Itoa(benchBWIters))
		out, err := pin(from, m1.Cpuset, "pingpong", "-addr", to.IP.String()+":7301", "-lat-iters", strconv.Itoa(benchLatIters),
			"-bw-bytes", strconv.Itoa(benchBWBytes), "-bw-iters", strconv.Itoa(benchBWIters)).CombinedOutput()
		if err != nil {
			t.Fatalf("baseline %s -> %s: %v\n%s", from.Name, to.Name, err, out)
		}
		f := parsePing(string(out) + mpiOut)
		if f.mpiLatUS == 0 || f.tcpLatUS == 0 {
			t.Fatalf("baseline %s -> %s: missing figures in\n%s\n%s", from.Name, to.Name, mpiOut, out)
		}
		return f
	}
	report := func(name string, k, b pingFigures, dd *api.SessionDetail) {
		m1, s1 := ovKernel(t, dd, "main1"), ovKernel(t, dd, "sub1")
		t.Logf("FIGURE %-16s cpusets main1=%q sub1=%q", name, m1.Cpuset, s1.Cpuset)
		t.Logf("FIGURE %-16s   MPI: kernels lat %7.1f µs bw %6.0f MB/s | hosts lat %7.1f µs bw %6.0f MB/s | kernels/hosts: lat x%.2f bw x%.2f",
			name, k.mpiLatUS, k.mpiBW, b.mpiLatUS, b.mpiBW, k.mpiLatUS/b.mpiLatUS, k.mpiBW/b.mpiBW)
		t.Logf("FIGURE %-16s   TCP: kernels lat %7.1f µs bw %6.0f MB/s | hosts lat %7.1f µs bw %6.0f MB/s | kernels/hosts: lat x%.2f bw x%.2f",
			name, k.tcpLatUS, k.tcpBW, b.tcpLatUS, b.tcpBW, k.tcpLatUS/b.tcpLatUS, k.tcpBW/b.tcpBW)
	}

	// Without cpusets: half a cpu each, the agents' shared pools.
	for _, v := range []variant{{"overlay-shared", "", mpiHalfCPU}, {"hostnet-shared", structs.NetworkHost, mpiHalfCPU}} {
		k, dd := run(v)
		report(v.name, k, baseline(dd), dd)
	}

	// With cpusets. The bed's three agents share this machine's cores, and
	// each gives its first 1-cpu kernel core 0: fill the agents so that
	// the two measured kernels get different cores, as on two machines.
	// Filler 1 takes a whole agent; filler 2 core 0 of a second one; the
	// measured kernels then land on the second (core 1) and the third
	// (core 0).
	fill := func(name string, size int, mode string) {
		req := &api.CreateSessionRequest{
			Name: name, Type: structs.SessionTypeInteractive, Driver: "runc", Image: mc.mpiRef,
			Command: []string{"sleep", "infinity"}, Resources: mpiWholeCPU,
		}
		if size > 1 {
			req.ClusterSize, req.ClusterMode = size, mode
		}
		d := mc.create(t, req)
		mc.wait(t, d.Session.ID, 3*time.Minute, "filler "+name+" running", func(d *api.SessionDetail) error {
			if d.Session.Status.Terminal() {
				t.Fatalf("filler %s ended\n%s", name, mc.describe(t, d))
			}
			if d.Session.Status != structs.SessionRunning {
				return fmt.Errorf("%s is %s (%s)", name, d.Session.Status, d.Session.StatusInfo)
			}
			return nil
		})
	}
	fill("bench-fill-agent", 2, structs.ClusterModeSingleNode)
	fill("bench-fill-core", 1, "")
	for _, v := range []variant{{"overlay-cpusets", "", mpiWholeCPU}, {"hostnet-cpusets", structs.NetworkHost, mpiWholeCPU}} {
		k, dd := run(v)
		m1, s1 := ovKernel(t, dd, "main1"), ovKernel(t, dd, "sub1")
		if m1.Cpuset == "" || s1.Cpuset == "" || m1.Cpuset == s1.Cpuset {
			t.Logf("%s: cpusets main1=%q sub1=%q are not two distinct cores; the figure is not the one wanted", v.name, m1.Cpuset, s1.Cpuset)
		}
		report(v.name, k, baseline(dd), dd)
	}
	t.Logf("FIGURE sizes: latency %d round trips of 1 byte (half round trip shown), bandwidth %d round trips of %d MiB (MB = 1e6 bytes, both directions counted)",
		benchLatIters, benchBWIters, benchBWBytes>>20)
}
