package runc

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// reportLatency reports the median and 95th percentile of lat in ms.
func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.95), "p95-ms")
	b.ReportMetric(0, "ns/op") // the percentiles say it better
}

// BenchmarkStartLatency measures Start of `sleep 1000` until it runs: the
// overlay over a prepared image, /etc files, cgroups, namespaces and the
// init's exec of the command. Destroy is not timed.
func BenchmarkStartLatency(b *testing.B) {
	testImage(b)
	d := New(nil, WithStateDir(b.TempDir()), WithCgroupParent(testCgroupParent))
	ctx := context.Background()
	var lat []time.Duration
	for b.Loop() {
		cfg := taskConfig(b, "sleep", "1000")
		start := time.Now()
		if _, err := d.Start(ctx, cfg); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		b.StopTimer()
		if err := d.Destroy(ctx, cfg.ID, true); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	reportLatency(b, lat)
}

// runcBinary returns the path of a runc executable, or "".
func runcBinary() string {
	if p, err := exec.LookPath("runc"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/runc"); err == nil {
		return "/usr/sbin/runc"
	}
	return ""
}

// BenchmarkRuncBinary measures `runc run -d` of `sleep 1000` on the same
// image (read-only, no overlay) with runc's default spec and the same
// cgroup limits, for comparison with BenchmarkStartLatency. Deleting the
// container is not timed. It skips without a runc binary (apt-get install
// runc).
func BenchmarkRuncBinary(b *testing.B) {
	image := testImage(b)
	runc := runcBinary()
	if runc == "" {
		b.Skip("no runc binary on PATH or in /usr/sbin")
	}
	root := b.TempDir()
	bundle := b.TempDir()
	spec := specconv.Example()
	spec.Root = &specs.Root{Path: image, Readonly: true}
	spec.Process.Terminal = false
	spec.Process.Args = []string{"sleep", "1000"}
	spec.Hostname = "kernel"
	limit := int64(DefaultPidsLimit)
	spec.Linux.Resources.Pids = &specs.LinuxPids{Limit: &limit}
	var i int
	ctx := context.Background()
	var lat []time.Duration
	for b.Loop() {
		i++
		id := fmt.Sprintf("bench-%d-%d", os.Getpid(), i)
		spec.Linux.CgroupsPath = "/" + testCgroupParent + "/runc-" + id
		buf, err := json.Marshal(spec)
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(bundle, "config.json"), buf, 0o644); err != nil {
			b.Fatal(err)
		}
		// The container inherits runc's stdio: a file, as a pipe would
		// stay open until the container ends.
		stderr, err := os.Create(filepath.Join(root, "stderr"))
		if err != nil {
			b.Fatal(err)
		}
		cmd := exec.CommandContext(ctx, runc, "--root", root, "run", "-d", "--bundle", bundle, id)
		cmd.Stderr = stderr
		start := time.Now()
		err = cmd.Run()
		lat = append(lat, time.Since(start))
		b.StopTimer()
		stderr.Close()
		if err != nil {
			msg, _ := os.ReadFile(stderr.Name())
			b.Fatalf("runc run: %v: %s", err, msg)
		}
		if out, err := exec.Command(runc, "--root", root, "delete", "-f", id).CombinedOutput(); err != nil {
			b.Fatalf("runc delete: %v: %s", err, out)
		}
		b.StartTimer()
	}
	reportLatency(b, lat)
	// runc removes the leaves, not the parent it made.
	removeBenchParents()
}

// removeBenchParents removes the test parent cgroup the runc binary made,
// where empty.
func removeBenchParents() {
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*/" + testCgroupParent)
	more, _ := filepath.Glob("/sys/fs/cgroup/" + testCgroupParent)
	for _, d := range append(dirs, more...) {
		_ = os.Remove(d)
	}
}

// BenchmarkStartConfinement measures Start of `sleep 1000` until it runs
// with the default confinement (seccomp profile and a user namespace with
// an idmapped image layer, where this binary and host support them) and
// without either, and reports ms/start for each. Destroy is not timed.
func BenchmarkStartConfinement(b *testing.B) {
	testImage(b)
	for _, c := range []struct {
		name string
		opts []Option
	}{
		{"plain", []Option{WithSeccomp(false), WithUserNS(UserNSOff)}},
		{"seccomp", []Option{WithSeccomp(true), WithUserNS(UserNSOff)}},
		{"userns", []Option{WithSeccomp(false), WithUserNS(UserNSAuto)}},
		{"seccomp+userns", []Option{WithSeccomp(true), WithUserNS(UserNSAuto)}},
	} {
		b.Run(c.name, func(b *testing.B) {
			opts := append([]Option{WithStateDir(b.TempDir()), WithCgroupParent(testCgroupParent)}, c.opts...)
			d := New(nil, opts...)
			if c.name == "seccomp+userns" && (!d.seccompOn() || d.usernsWanted() != nil) {
				b.Logf("confinement partial here: seccomp %s, userns error %v", d.seccompMode(), d.usernsWanted())
			}
			ctx := context.Background()
			var total time.Duration
			for b.Loop() {
				cfg := taskConfig(b, "sleep", "1000")
				start := time.Now()
				if _, err := d.Start(ctx, cfg); err != nil {
					b.Fatal(err)
				}
				total += time.Since(start)
				b.StopTimer()
				if err := d.Destroy(ctx, cfg.ID, true); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/start")
		})
	}
}
