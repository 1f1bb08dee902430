package main

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestBenchAgainstFake(t *testing.T) {
	f := newFakeCorral(t)
	r := mustRun(t, f.url, 0, "bench", "-n", "20", "-concurrency", "4", "-latency-runs", "3", "-pid", strconv.Itoa(os.Getpid()))
	for _, want := range []string{
		"1 ALIVE agents", "cpu=0.05 mem=16MiB", "throughput: 20 sessions from 4 submitters", "20 SUCCESS",
		"latency: 3 sessions one at a time; 3 SUCCESS", "submit -> RUNNING     p50", "submit -> TERMINATED  p50", "server RSS: ",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("report lacks %q:\n%s", want, r.stdout)
		}
	}
	if len(f.creates) != 23 {
		t.Fatalf("%d sessions submitted, want 23", len(f.creates))
	}
	for _, c := range f.creates {
		if strings.Join(c.Command, " ") != "true" || c.Type != "batch" {
			t.Fatalf("submitted %+v", c)
		}
	}
}

func TestBenchReportsFailures(t *testing.T) {
	f := newFakeCorral(t)
	f.agent.Status = "LOST"
	r := mustRun(t, f.url, 1, "bench", "-n", "1")
	if !strings.Contains(r.stderr, "no ALIVE agent") {
		t.Fatalf("%+v", r)
	}
}

func TestPercentiles(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	if got := strings.Join(strings.Fields(percentiles(ds)), " "); got != "p50 50ms p95 95ms max 100ms" {
		t.Fatalf("%q", got)
	}
	if got := strings.Join(strings.Fields(percentiles(ds[99:])), " "); got != "p50 1ms p95 1ms max 1ms" {
		t.Fatalf("one sample: %q", got)
	}
	if percentiles(nil) != "no samples" {
		t.Fatal("empty")
	}
}

func TestParseVmRSS(t *testing.T) {
	rss, err := parseVmRSS(strings.NewReader("Name:\tcorral\nVmPeak:\t  999 kB\nVmRSS:\t   51200 kB\nThreads: 12\n"))
	if err != nil || rss != 50<<20 {
		t.Fatalf("%d %v", rss, err)
	}
	if _, err := parseVmRSS(strings.NewReader("Name:\tkthreadd\n")); err == nil {
		t.Fatal("want an error without VmRSS")
	}
	if _, err := readRSS(1 << 30); err == nil || !strings.Contains(err.Error(), "cannot read the RSS") {
		t.Fatalf("missing pid: %v", err)
	}
}
