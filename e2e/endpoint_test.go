package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/corral-dev/corral/api"
)

// buildEndpointServer builds the replica program of testdata/endpoint,
// static, into dir.
func buildEndpointServer(t *testing.T, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "endpoint-server")
	build := exec.Command("go", "build", "-o", out, "./e2e/testdata/endpoint")
	build.Dir = ".."
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the endpoint server: %v\n%s", err, b)
	}
	return out
}

// endpointImage is an image of one static binary, /server, that serves
// HTTP on 8000 and answers with VERSION.
func endpointImage(t *testing.T, bin, version string) v1.Image {
	t.Helper()
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"etc/", "tmp/", "proc/", "sys/", "dev/"} {
		_ = tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755})
	}
	_ = tw.WriteHeader(&tar.Header{Name: "server", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(b))})
	_, _ = tw.Write(b)
	passwd := "root:x:0:0:root:/:/server\n"
	_ = tw.WriteHeader(&tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(passwd))})
	_, _ = tw.Write([]byte(passwd))
	_ = tw.Close()
	layer, err := tarball.LayerFromReader(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := img.ConfigFile()
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Env = []string{"PORT=8000", "VERSION=" + version}
	cfg.Config.Cmd = []string{"/server"}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// loadResult counts the answers of a load run.
type loadResult struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	sessions   map[string]bool
	versions   map[string]int
}

func (l *loadResult) note(body string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.failed.Add(1)
		if len(l.errs) < 10 {
			l.errs = append(l.errs, err.Error())
		}
		return
	}
	l.ok.Add(1)
	for _, f := range strings.Fields(body) {
		if v, ok := strings.CutPrefix(f, "session="); ok {
			l.sessions[v] = true
		}
		if v, ok := strings.CutPrefix(f, "version="); ok {
			l.versions[v]++
		}
	}
}

// runLoad sends GETs to url at about rps requests per second from
// workers clients until ctx ends; wait for the result with the
// returned function.
func runLoad(ctx context.Context, url, token string, rps, workers int) (*loadResult, func()) {
	res := &loadResult{sessions: map[string]bool{}, versions: map[string]int{}}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}, Timeout: 30 * time.Second}
	ticks := make(chan struct{}, workers)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(ticks)
		t := time.NewTicker(time.Second / time.Duration(rps))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				select {
				case ticks <- struct{}{}:
				default: // the workers are behind: skip, keep the pace
				}
			}
		}
	}()
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range ticks {
				req, _ := http.NewRequest(http.MethodGet, url, nil)
				req.Header.Set("Authorization", "Bearer "+token)
				resp, err := client.Do(req)
				if err != nil {
					res.note("", err)
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					res.note("", fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b))))
					continue
				}
				res.note(string(b), nil)
			}
		}()
	}
	return res, func() { wg.Wait(); client.CloseIdleConnections() }
}

// healthyReplicas counts an endpoint's healthy replicas that are not draining.
func healthyReplicas(d *api.EndpointDetail) int {
	n := 0
	for _, r := range d.Replicas {
		if r.Health == "healthy" && !r.Draining {
			n++
		}
	}
	return n
}

// TestInferenceEndpoint runs an endpoint of runc replicas on a server
// and an agent: routing with the endpoint's token, autoscaling 1 → 3 → 1
// from the request rate, a replica's kernel killed under load (the
// router's loss is logged and must stay under 1%), a rolling image update
// under load that loses nothing, and the router's latency figures.
func TestInferenceEndpoint(t *testing.T) {
	if why := runcUnavailable(); why != "" {
		t.Skip(why)
	}
	bin := buildEndpointServer(t, t.TempDir())
	ref1 := startRegistry(t, endpointImage(t, bin, "1"), "corral/web:1")
	regHost := strings.SplitN(ref1, "/", 2)[0]
	ref2 := strings.TrimSuffix(ref1, ":1") + ":2"
	pushTo(t, endpointImage(t, bin, "2"), ref2)

	ports := serverPorts{http: freePort(t), rpc: freePort(t), serf: freePort(t)}
	addr := "http://" + ports.http
	startServerProc(t, t.TempDir(), ports, "-allow-registry", regHost)
	agentDir := t.TempDir()
	reapKernels(t, agentDir)
	start(t, "agent", append([]string{"agent", "-data-dir", agentDir, "-rpc", freePort(t), "-serf", freePort(t), "-fast-gossip",
		"-allow-registry", regHost}, agentJoin(t, ports)...)...)
	agentAlive(t, addr)
	agentRunsRunc(t, addr)

	// Bad input is a clear 4xx.
	r := mustCLI(t, addr, 1, "endpoint", "create", "web", "-image", ref1)
	if !strings.Contains(r.stderr, "port") {
		t.Fatalf("create without a port: %q", r.stderr)
	}
	r = mustCLI(t, addr, 1, "endpoint", "create", "web", "-image", ref1, "-port", "8000", "-min", "3", "-max", "2")
	if !strings.Contains(r.stderr, "min replicas 3 is above max replicas 2") {
		t.Fatalf("min above max: %q", r.stderr)
	}

	r = mustCLI(t, addr, 0, "endpoint", "create", "web", "-image", ref1, "-port", "8000", "-health", "/healthz",
		"-replicas", "1", "-min", "1", "-max", "3", "-target-rps", "20", "-scale-up-cooldown", "1s", "-scale-down-delay", "5s", "-cpu", "0.1", "-mem", "64M")
	var token string
	for _, line := range strings.Split(r.stdout, "\n") {
		if v, ok := strings.CutPrefix(line, "token:"); ok {
			token = strings.TrimSpace(v)
		}
	}
	if !strings.HasPrefix(token, "ep_") {
		t.Fatalf("no token in the create output:\n%s", r.stdout)
	}
	mustCLI(t, addr, 1, "endpoint", "create", "web", "-image", ref1, "-port", "8000")

	client, err := api.NewClient(addr)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := apiTokens.Load(addr)
	client.SetToken(tok.(string))
	status := func() *api.EndpointDetail {
		d, err := client.GetEndpoint(context.Background(), "web")
		if err != nil {
			t.Fatalf("endpoint status: %v", err)
		}
		return d
	}
	url := addr + "/v1/endpoints/web/hello"
	eventually(t, 120*time.Second, "the first replica answers through the router", func() error {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "version=1") {
			return fmt.Errorf("%s: %s", resp.Status, b)
		}
		return nil
	})
	// No token, a wrong one: refused; the corral token works too.
	if resp, err := http.Get(url); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("without a token: %v %v", resp, err)
	}
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+tok.(string))
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("with the owner's corral token: %v %v", resp, err)
	}

	// Load raises it from 1 to 3 replicas.
	ctx, stop := context.WithCancel(context.Background())
	load, wait := runLoad(ctx, url, token, 100, 16)
	eventually(t, 180*time.Second, "the autoscaler reaches 3 healthy replicas", func() error {
		if d := status(); healthyReplicas(d) < 3 {
			return fmt.Errorf("%d healthy replicas of %d desired, %.1f req/s", healthyReplicas(d), d.Endpoint.Replicas, d.RPS)
		}
		return nil
	})
	// Kill one replica's kernel under load.
	before := load.ok.Load() + load.failed.Load()
	beforeFailed := load.failed.Load()
	victim := status().Replicas[0]
	pids := kernelProcs([]string{victim.KernelID})[victim.KernelID]
	if len(pids) == 0 {
		t.Fatalf("no process of replica %s's kernel %s", victim.SessionID, victim.KernelID)
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	eventually(t, 120*time.Second, "the killed replica is replaced and 3 are healthy again", func() error {
		d := status()
		for _, r := range d.Replicas {
			if r.SessionID == victim.SessionID {
				return fmt.Errorf("the killed replica %s is still listed (%s)", r.SessionID[:8], r.Status)
			}
		}
		if healthyReplicas(d) < 3 {
			return fmt.Errorf("%d healthy replicas", healthyReplicas(d))
		}
		return nil
	})
	during := load.ok.Load() + load.failed.Load() - before
	lost := load.failed.Load() - beforeFailed
	t.Logf("replica killed under load: %d of %d requests failed (%.3f%%) while it was replaced; errors: %v", lost, during, 100*float64(lost)/float64(max(during, 1)), load.errs)
	if during == 0 || float64(lost) >= 0.01*float64(during) {
		t.Fatalf("killing a replica lost %d of %d requests (want < 1%%): %v", lost, during, load.errs)
	}
	stop()
	wait()
	if len(load.sessions) < 3 {
		t.Errorf("answers came from %d replicas, want at least 3", len(load.sessions))
	}
	d := status()
	var events []string
	for _, ev := range d.Endpoint.Events {
		events = append(events, ev.Kind+": "+ev.Reason)
	}
	if !slices.ContainsFunc(events, func(s string) bool { return strings.HasPrefix(s, "scale: scale up") }) ||
		!slices.ContainsFunc(events, func(s string) bool { return strings.HasPrefix(s, "replace: ") }) {
		t.Errorf("events lack a scale-up or a replacement:\n%s", strings.Join(events, "\n"))
	}

	// Without load it goes back to 1.
	eventually(t, 120*time.Second, "the autoscaler scales down to 1 replica", func() error {
		if d := status(); d.Endpoint.Replicas != 1 || len(d.Replicas) != 1 {
			return fmt.Errorf("%d desired, %d live replicas", d.Endpoint.Replicas, len(d.Replicas))
		}
		return nil
	})
	r = mustCLI(t, addr, 0, "endpoint", "status", "web")
	if !strings.Contains(r.stdout, "scale down 3 → 1") && !strings.Contains(r.stdout, "scale down") {
		t.Errorf("endpoint status lacks the scale-down event:\n%s", r.stdout)
	}
	t.Logf("endpoint status after the load:\n%s", r.stdout)

	// A rolling update under load drops nothing.
	ctx, stop = context.WithCancel(context.Background())
	load, wait = runLoad(ctx, url, token, 10, 4)
	mustCLI(t, addr, 0, "endpoint", "update", "web", "-image", ref2)
	eventually(t, 180*time.Second, "every replica runs generation 2", func() error {
		d := status()
		if len(d.Replicas) != d.Endpoint.Replicas {
			return fmt.Errorf("%d live replicas, %d desired", len(d.Replicas), d.Endpoint.Replicas)
		}
		for _, r := range d.Replicas {
			if r.Generation != 2 || r.Health != "healthy" || r.Draining {
				return fmt.Errorf("replica %s: generation %d, %s, draining %v", r.SessionID[:8], r.Generation, r.Health, r.Draining)
			}
		}
		return nil
	})
	// Some requests after the switch reach version 2.
	time.Sleep(time.Second)
	stop()
	wait()
	t.Logf("rolling update under load: %d ok, %d failed, versions %v", load.ok.Load(), load.failed.Load(), load.versions)
	if load.failed.Load() != 0 {
		t.Fatalf("the rolling update lost %d requests: %v", load.failed.Load(), load.errs)
	}
	if load.versions["2"] == 0 || load.versions["1"] == 0 {
		t.Fatalf("answers by version: %v (want both)", load.versions)
	}

	routerFigures(t, bin, url, token)

	mustCLI(t, addr, 0, "endpoint", "delete", "web")
	eventually(t, 60*time.Second, "the replicas end", func() error {
		for _, s := range sessionsJSON(t, addr) {
			if s.Endpoint == "web" && !s.Status.Terminal() {
				return fmt.Errorf("replica %s is %s", s.ID[:8], s.Status)
			}
		}
		return nil
	})
	mustCLI(t, addr, 1, "endpoint", "status", "web")
}

// pushTo pushes img to ref on the test's registry.
func pushTo(t *testing.T, img v1.Image, ref string) {
	t.Helper()
	tag, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
}

// routerFigures logs the router's added latency against a direct
// connection to the same server program on loopback (p50/p99 at 1 and
// 50 concurrent clients) and the requests/s through the router.
func routerFigures(t *testing.T, bin, routed, token string) {
	t.Helper()
	port := freePort(t)
	_, p, _ := net.SplitHostPort(port)
	direct := exec.Command(bin)
	direct.Env = append(os.Environ(), "PORT="+p, "VERSION=direct")
	if err := direct.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = direct.Process.Kill(); _ = direct.Wait() })
	directURL := "http://" + port + "/hello"
	eventually(t, 10*time.Second, "the direct server answers", func() error {
		resp, err := http.Get(directURL)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	for _, clients := range []int{1, 50} {
		n := 2000
		if clients > 1 {
			n = 10000
		}
		dl := measure(t, directURL, "", clients, n)
		rl := measure(t, routed, token, clients, n)
		t.Logf("FIGURE clients=%d direct: p50 %v p99 %v %.0f req/s | router: p50 %v p99 %v %.0f req/s | added p50 %v p99 %v",
			clients, dl.p50, dl.p99, dl.rps, rl.p50, rl.p99, rl.rps, rl.p50-dl.p50, rl.p99-dl.p99)
	}
}

type latency struct {
	p50, p99 time.Duration
	rps      float64
}

// measure sends n GETs from clients concurrent clients and returns the
// latency percentiles and the throughput.
func measure(t *testing.T, url, token string, clients, n int) latency {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	defer hc.CloseIdleConnections()
	lat := make([]time.Duration, n)
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	begin := time.Now()
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				req, _ := http.NewRequest(http.MethodGet, url, nil)
				if token != "" {
					req.Header.Set("Authorization", "Bearer "+token)
				}
				t0 := time.Now()
				resp, err := hc.Do(req)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("%s", resp.Status)
					}
				}
				if err != nil {
					failed.Add(1)
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(begin)
	if failed.Load() > 0 {
		t.Errorf("%s: %d of %d requests failed", url, failed.Load(), n)
	}
	slices.Sort(lat)
	return latency{p50: lat[n/2], p99: lat[n*99/100], rps: float64(n) / elapsed.Seconds()}
}
