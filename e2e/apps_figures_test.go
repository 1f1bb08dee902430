package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestAppFigures measures what the app tunnel (`corral session app`) and
// the app HTTP proxy add to a direct connection to a kernel's port:
// latency percentiles of small HTTP requests at 1 and 50 concurrent
// clients, and requests per second. It only reports (no assertion on
// times); set CORRAL_APP_FIGURES=1 to run it:
//
//	CORRAL_APP_FIGURES=1 go test ./e2e -run TestAppFigures -v
func TestAppFigures(t *testing.T) {
	if os.Getenv("CORRAL_APP_FIGURES") == "" {
		t.Skip("figures only: set CORRAL_APP_FIGURES=1")
	}
	ac := newAppCluster(t)
	ctx := context.Background()
	d := ac.startApps(t, ac.admin, "bench")
	id := d.Session.ID

	// The kernel's own address on the agent's bridge: the direct path.
	code, body := appGet(t, http.DefaultClient, ac.addr+"/v1/sessions/"+id+"/apps/web/ip", ac.token)
	if code != 200 {
		t.Fatalf("kernel address: %d %s", code, body)
	}
	kernelIP := strings.Fields(body)[0]

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go ac.admin.ServeApp(sctx, ln, id, "web", nil)

	paths := []struct {
		name, url, token string
		keepAlive        bool
	}{
		{"direct (kernel bridge address)", "http://" + net.JoinHostPort(kernelIP, "8000") + "/x", "", true},
		{"app tunnel, kept connections", "http://" + ln.Addr().String() + "/x", "", true},
		{"app tunnel, a connection a request", "http://" + ln.Addr().String() + "/x", "", false},
		{"HTTP proxy (token)", ac.addr + "/v1/sessions/" + id + "/apps/web/x", ac.token, true},
	}
	var report strings.Builder
	fmt.Fprintf(&report, "\n%-36s %5s %9s %9s %9s %10s\n", "path", "conc", "requests", "p50", "p99", "req/s")
	for _, p := range paths {
		for _, conc := range []int{1, 50} {
			n := 1000
			if conc > 1 {
				n = 5000
			}
			lat, rps, errs := appLoad(p.url, p.token, p.keepAlive, conc, n)
			if errs > 0 {
				t.Errorf("%s at %d clients: %d of %d requests failed", p.name, conc, errs, n)
			}
			slices.Sort(lat)
			fmt.Fprintf(&report, "%-36s %5d %9d %9s %9s %10.0f\n", p.name, conc, n,
				pct(lat, 50).Round(time.Microsecond), pct(lat, 99).Round(time.Microsecond), rps)
		}
	}
	t.Log(report.String())
}

// appLoad sends n GETs to u from conc clients and returns each latency,
// the requests per second and the number of failures.
func appLoad(u, token string, keepAlive bool, conc, n int) ([]time.Duration, float64, int) {
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc, DisableKeepAlives: !keepAlive}}
	defer hc.CloseIdleConnections()
	var (
		mu   sync.Mutex
		lat  = make([]time.Duration, 0, n)
		errs int
		wg   sync.WaitGroup
	)
	work := make(chan struct{}, n)
	for range n {
		work <- struct{}{}
	}
	close(work)
	began := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				req, _ := http.NewRequest(http.MethodGet, u, nil)
				if token != "" {
					req.Header.Set("Authorization", "Bearer "+token)
				}
				t0 := time.Now()
				resp, err := hc.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						err = fmt.Errorf("%s", resp.Status)
					}
				}
				el := time.Since(t0)
				mu.Lock()
				if err != nil {
					errs++
				} else {
					lat = append(lat, el)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return lat, float64(n) / time.Since(began).Seconds(), errs
}

// pct is the p-th percentile of sorted durations.
func pct(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}
